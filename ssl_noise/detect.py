"""Noisy-label detectors and the runner behind ``ssl-noise detect``: which training labels are wrong?

Each detector in ``DETECTORS`` (``knn``, ``cleanlab``, ``loss``, ``ehn``) scores every training sample (higher =
more likely wrong) and flags some; all are measured by the same detection metrics against the known flips.
:func:`collect` (``ssl-noise detections``) reads detection folders and selecting runs into one table.
Detectors and sources: docs/methods.md#detectors-ssl_noisedetectpy-ssl-noise-detect
Output folder: docs/formats.md#detection-folder
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ssl_noise import estimate, io, noise
from ssl_noise._registry import Registry
from ssl_noise.config import FinetuneConfig, check_noise_estimate, resolve
from ssl_noise.errors import UserError
from ssl_noise.finetune import prepare
from ssl_noise.finetune.prepare import oracle_rate
from ssl_noise.knn import extract_features, knn_scores, top_fraction
from ssl_noise.metrics import detection_metrics, kept_metrics
from ssl_noise.provenance import versions
from ssl_noise.robust.hsa_nrl import EASY, NOISY, easy_score
from ssl_noise.runs import RunFolder

SCHEMA_VERSION = 1
DETECTORS: Registry = Registry("detector")


# ============ pure functions ============

def correction_metrics(given: np.ndarray, clean: np.ndarray, labels: np.ndarray, keep: np.ndarray) -> Dict[str, Any]:
    """How a label correction did: relabelled samples right, dropped samples noisy, noise left in the kept set."""
    given, clean, labels, keep = (np.asarray(a) for a in (given, clean, labels, keep))
    changed, noisy = keep & (labels != given), given != clean

    def share(mask, of):
        return float(np.mean(mask[of])) if of.any() else None

    return {"n_relabelled": int(changed.sum()), "relabel_acc": share(labels == clean, changed),
            "n_dropped": int((~keep).sum()), "dropped_noisy": share(noisy, ~keep),
            "given_noise_rate": float(noisy.mean()), "kept_noise_rate": share(labels != clean, keep),
            "noisy_fixed": share(keep & (labels == clean), noisy), "n_kept": int(keep.sum())}


# ============ sources and detectors ============

@dataclass
class Source:
    """What a detector may read: the given labels plus frozen features (``--init``) or a run folder (``--run``).
    ``clean`` is only used to score the detector afterwards."""

    id: str
    given: np.ndarray
    clean: np.ndarray
    index: np.ndarray
    num_classes: int
    noise_rate: Optional[float]               # the configured noise's expected rate; None for a noise file
    identity: Dict[str, Any]
    features: Optional[np.ndarray] = None
    run: Optional[Path] = None
    timing: Dict[str, float] = field(default_factory=dict)
    dataset: Optional[str] = None             # these three name the rows and columns of a collected table
    class_names: Optional[list] = None
    init: Optional[str] = None                # the encoder: of the features, or the run's init
    paths: Optional[List[str]] = None         # each row's image file (folder and CSV data), for the user to open
    ground_truth: bool = True                 # False: labels as given, nothing injected: scores only, no precision


@dataclass
class DetectOptions:
    k: int = 20
    t: float = 0.1
    folds: int = 5
    cv_model: str = "linear"
    seed: int = 0
    skip: int = 10
    noise_estimate: estimate.Setting = "auto"   # auto | oracle | a rate: the share knn and loss flag

    def __post_init__(self) -> None:
        self.noise_estimate = check_noise_estimate(self.noise_estimate)


@dataclass
class Detection:
    scores: np.ndarray
    flagged: np.ndarray
    rule: str
    info: Dict[str, Any] = field(default_factory=dict)
    labels: Optional[np.ndarray] = None       # a correcting detector's labels and kept mask (ehn)
    keep: Optional[np.ndarray] = None
    rate: Optional[float] = None              # the share it flagged by (knn, loss), or its own estimate (cleanlab)
    rate_source: Optional[str] = None         # auto | oracle | given
    suggested: Optional[np.ndarray] = None    # the label the detector would give instead (knn vote, cleanlab probs)
    borderline: Optional[np.ndarray] = None   # flagged at the rate interval's upper end but not at its lower (knn)


def _register(name: str, needs: str, options: Tuple[str, ...]) -> Callable:
    def add(fn: Callable) -> Callable:
        fn.needs, fn.options = needs, options
        return DETECTORS.register(name)(fn)
    return add


def _flag_top(scores: np.ndarray, source: Source, opts: DetectOptions, auto: Callable[[], float], **info) -> Detection:
    """Flag the top ε̂ share by score; ε̂ from ``--noise-estimate`` (auto: ``auto()``, oracle: the injected rate)."""
    rate, how = estimate.resolve(opts.noise_estimate, oracle=source.noise_rate, auto=auto)
    return Detection(scores, top_fraction(scores, rate), f"top {rate:.3f} share by score ({how} estimate)", info,
                     rate=rate, rate_source=how)


@_register("knn", "features", ("k", "t"))
def _knn(source: Source, opts: DetectOptions) -> Detection:
    scores, votes = knn_scores(source.features, source.given, source.num_classes, k=opts.k, t=opts.t)
    interval: Dict[str, Any] = {}

    def auto() -> float:  # the default estimator on the same features; its interval goes into metrics.json
        rate = estimate.estimate(source.features, source.given, source.num_classes, seed=opts.seed)
        interval.update({k: v for k, v in rate.record().items() if k != "noise_rate_estimate"})
        return rate.rate

    found = _flag_top(scores, source, opts, auto, vote_disagrees=int(np.sum(votes.argmax(1) != source.given)))
    found.info.update(interval)
    found.suggested = votes.argmax(1)
    if interval:  # where the cut falls is uncertain: the samples whose flag depends on where in the interval
        found.borderline = (top_fraction(scores, interval["noise_rate_estimate_hi"])
                            & ~top_fraction(scores, interval["noise_rate_estimate_lo"]))
    return found


@_register("cleanlab", "features", ("folds", "cv_model", "seed"))
def _cleanlab(source: Source, opts: DetectOptions) -> Detection:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs = estimate.out_of_fold_probs(source.features, source.given, source.num_classes, folds=opts.folds,
                                       seed=opts.seed)
    flagged = find_label_issues(source.given, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    scores = 1.0 - get_label_quality_scores(source.given, probs, method="self_confidence")
    return Detection(scores, np.asarray(flagged, bool), "cleanlab find_label_issues (prune_by_noise_rate)",
                     {"oof_acc_given": float(np.mean(probs.argmax(1) == source.given))},
                     rate=estimate.confident_joint_rate(source.given, probs), rate_source="auto",
                     suggested=probs.argmax(1))


@_register("loss", "run", ("skip",))
def _loss(source: Source, opts: DetectOptions) -> Detection:
    history = RunFolder(source.run).array("history")
    if history.shape[0] != len(source.given) or not np.isfinite(history).all():
        raise UserError(f"{source.run}: history.npy is not a full (N, epochs) record of the given labels "
                        f"(method {source.identity.get('method')}); use a --method ce run")
    scores = 1.0 - easy_score(history, opts.skip)
    return _flag_top(scores, source, opts, lambda: estimate.mixture_rate(scores, seed=opts.seed),
                     epochs=int(history.shape[1]), skip_used=min(opts.skip, history.shape[1] - 1))


@_register("ehn", "run", ())
def _ehn(source: Source, opts: DetectOptions) -> Detection:
    run = RunFolder(source.run)
    if not all(run.has(n) for n in ("split", "ehn_scores", "easy_score", "corrected_labels", "dropped")):
        raise UserError(f"{source.run} is not an hsa_nrl run (no split.npy/ehn_scores.npy)")
    split, ehn, easy = (run.array(n)[0] for n in ("split", "ehn_scores", "easy_score"))
    labels, dropped = run.array("corrected_labels"), run.array("dropped")
    keep = np.ones(len(labels), dtype=bool)
    keep[dropped] = False
    scores = np.where(split == EASY, 1.0 - easy, 1.0 + np.nan_to_num(ehn))
    return Detection(scores, split == NOISY, "EHN verdict (round 1)", {"n_dirty": int(np.sum(split != EASY))},
                     labels, keep, suggested=labels)


# ============ building sources, running, writing ============

def source_from_init(cfg, *, data_root: Optional[str], checkpoints: Path, device: str = "cpu") -> Source:
    """Labels exactly as ``ssl-noise finetune`` with the same noise flags would train on, plus the frozen (L2-
    normalised) features of ``cfg.init`` on the training images. All input checks are :func:`finetune.prepare`'s."""
    prep = prepare(cfg, data_root=data_root, checkpoints=checkpoints)
    start, norm, nz, data = time.perf_counter(), prep.init["normalisation"], prep.noise, prep.data
    features = extract_features(prep.encoder.to(device), data.train.images, mean=norm["mean"], std=norm["std"],
                                device=device, bf16=cfg.precision == "bf16")
    kind = noise.short_label(nz["type"], nz["rate"])
    identity = {"init": prep.init["id"], "encoder_sha256": prep.init["sha256"], "labels_sha256": nz["labels_sha256"],
                "dataset": data.name, "data_md5": data.md5, "n_train": len(data.train), "image_size": data.image_size,
                "noise": {k: nz[k] for k in ("source", "type", "rate", "seed", "mode", "realised_rate")}}
    given = prep.train_noise.noisy
    return Source(f"{prep.init['method']}-{data.name}-{kind}n{nz['seed']}", given, data.train.labels,
                  data.train_indices, data.num_classes, oracle_rate(nz),
                  identity, features=features, timing={"features_s": time.perf_counter() - start},
                  dataset=data.name, class_names=list(data.class_names), init=prep.init["id"],
                  paths=data.train.paths, ground_truth=_has_truth(nz, given, data.train.labels))


def _has_truth(noise_record: Dict[str, Any], given: np.ndarray, clean: np.ndarray) -> bool:
    """Whether the true labels are known: noise was injected (or read from a file), or the data carries clean labels
    beside the given ones. Without either, a detector finds *real* wrong labels and can only rank them."""
    injected = noise_record.get("source") == "file" or bool(noise_record.get("rate"))
    return injected or bool(np.any(given != clean))


def source_from_run(folder: Path) -> Source:
    """The labels (``noisy_labels.csv``, in history row order) and folder of a finished fine-tuning run."""
    run_folder = RunFolder(folder)
    run_folder.require("metrics.json", message="{path} is not a finished fine-tuning run (no {name})")
    labels = run_folder.labels()
    metrics, cfg, run = run_folder.metrics(), run_folder.config(), run_folder.provenance()
    nz = metrics["noise"]
    identity = {"run": run_folder.name, "method": cfg.get("method"), "labels_sha256": nz["labels_sha256"],
                "noise": {k: nz.get(k) for k in ("source", "type", "rate", "seed", "mode", "realised_rate")}}
    return Source(run_folder.name, labels.noisy, labels.clean, labels.index, len(metrics["class_names"]),
                  oracle_rate(nz), identity, run=run_folder.path,
                  ground_truth=_has_truth(nz, labels.noisy, labels.clean),
                  timing={"run_wall_time_s": float(run.get("wall_time_s") or 0.0)},
                  dataset=run.get("result", {}).get("dataset"), class_names=list(metrics["class_names"]),
                  init=metrics.get("init", {}).get("id"))


def source_for(name: str, *, run: Optional[Path] = None, flags: Optional[Dict[str, Any]] = None,
               data_root: Optional[str] = None, checkpoints: Path = Path("checkpoints"),
               device: str = "cpu") -> Source:
    """The input detector ``name`` reads: a finished run folder, or frozen features of ``flags["init"]`` on the
    labels ``finetune`` with the same flags (FinetuneConfig fields, None: not given) would train on. Refuses a
    mix of the two, which would silently ignore half of what was asked."""

    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    if DETECTORS.get_or_fail(name).needs == "run":
        if run is None or any(k in flags for k in ("init", "noise_rate", "noise_file")):
            raise UserError(f"detector {name} reads a run folder: give --run RUN (and no --init/--noise)")
        return source_from_run(run)
    if flags.get("init") is None or run is not None:
        raise UserError(f"detector {name} uses frozen features: give --init REF (not --run); to reuse a "
                        f"run's labels pass --noise-file RUN/noisy_labels.csv")
    return source_from_init(resolve(FinetuneConfig, flags), data_root=data_root, checkpoints=checkpoints,
                            device=device)


def run_detector(name: str, source: Source, opts: DetectOptions, *, runs: Path,
                 command: Optional[list] = None) -> Tuple[Path, Dict[str, Any], bool]:
    """Run ``name`` on ``source``; write ``<runs>/detect/<id>/``. Returns (folder, metrics, computed); an identical
    finished detection is returned as it is (computed False)."""
    from datetime import datetime, timezone

    detector = DETECTORS.get_or_fail(name)
    if (detector.needs == "features") != (source.features is not None):
        need = "--init (frozen features)" if detector.needs == "features" else "--run"
        raise UserError(f"detector {name} needs {need}")
    options = {k: getattr(opts, k) for k in detector.options}
    key = {"detector": name, "options": options, "source": source.identity, "noise_estimate": opts.noise_estimate}
    folder = Path(runs) / "detect" / f"{name}-{source.id}-{io.short_hash(key)}"
    if RunFolder(folder).is_finished():
        return folder, RunFolder(folder).metrics(), False
    start = time.perf_counter()
    result = detector(source, opts)
    elapsed = time.perf_counter() - start
    is_noisy = source.given != source.clean
    if source.ground_truth:
        detection = {**detection_metrics(is_noisy, result.flagged, result.scores),
                     **kept_metrics(is_noisy, ~result.flagged, source.clean, source.num_classes)}
    else:  # nothing to score against: what was flagged, nothing measured
        detection = {"n_flagged": int(result.flagged.sum()), "n_kept": int((~result.flagged).sum())}
    if result.borderline is not None:
        detection["n_borderline"] = int(result.borderline.sum())
        if source.ground_truth and result.borderline.any():
            detection["borderline_noisy"] = float(np.mean(is_noisy[result.borderline]))
    metrics = {"schema_version": SCHEMA_VERSION, "id": folder.name, "detector": name, "options": options,
               "source": {"id": source.id, **source.identity},
               "noise_estimate": opts.noise_estimate, "noise_rate_estimate": result.rate,
               "noise_rate_source": result.rate_source, "configured_rate": source.noise_rate,
               "realised_rate": float(np.mean(is_noisy)) if source.ground_truth else None,
               "ground_truth": source.ground_truth, "flag_rule": result.rule, "n": int(len(source.given)),
               "dataset": source.dataset, "class_names": source.class_names, "init": source.init,
               "detection": detection, "info": result.info}
    if result.labels is not None:
        metrics["correction"] = correction_metrics(source.given, source.clean, result.labels, result.keep)
    timing = {**source.timing, "detector_s": round(elapsed, 3)}
    with io.atomic_dir(folder) as tmp:
        score_table(source, result).to_csv(tmp / "scores.csv", index=False, float_format="%.6g")
        io.write_json(tmp / "metrics.json", metrics)
        io.write_json(tmp / "run.json", {"schema_version": SCHEMA_VERSION, "id": folder.name, "timing": timing,
                                         "wall_time_s": round(sum(timing.values()), 3), "command": command,
                                         "options": asdict(opts), "versions": versions(),
                                         "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return folder, metrics, True


def score_table(source: Source, result: Detection) -> "pd.DataFrame":  # noqa: F821
    """``scores.csv``: one row per training sample, most suspicious first, with what a person needs to act on it:
    the file (folder and CSV data), the given and the suggested label as class names, the score and its rank.
    ``clean_label`` only where the true labels are known."""
    import pandas as pd

    names = np.asarray(source.class_names or [str(k) for k in range(source.num_classes)], dtype=object)
    scores = np.asarray(result.scores, np.float64)
    columns: Dict[str, Any] = {"index": source.index}
    if source.paths is not None:
        columns["path"] = source.paths
    columns["given_label"] = names[source.given]
    columns["suggested_label"] = names[result.suggested] if result.suggested is not None else ""
    if source.ground_truth:
        columns["clean_label"] = names[source.clean]
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(len(scores), np.int64)
    rank[order] = np.arange(1, len(scores) + 1)
    columns.update({"score": scores, "rank": rank, "flagged": result.flagged.astype(int)})
    if result.borderline is not None:
        columns["borderline"] = result.borderline.astype(int)
    return pd.DataFrame(columns).iloc[order].reset_index(drop=True)


# ============ collecting detections into one table ============

def detection_folders(paths) -> List[Path]:
    """The folders among ``paths`` that hold a metrics.json, else their children and ``detect/*`` that do (so a
    whole runs folder can be given), in order, each once."""
    found: List[Path] = []
    for path in map(Path, paths):
        if RunFolder(path).is_finished():
            found.append(path)
        else:
            inside = sorted(path.glob("*/metrics.json")) + sorted(path.glob("detect/*/metrics.json"))
            found += [m.parent for m in inside]
    return list(dict.fromkeys(found))


def detection_row(folder: Path) -> Optional[Dict[str, Any]]:
    """One row of the side-by-side table for a ``detect`` folder or a selecting fine-tuning run (its selection as a
    detector); None for anything else (a ``ce`` run, a registry entry).

    Rows of both kinds carry the same detection metrics, the labels they were scored on (``labels_sha256``: equal
    values mean byte-identical noisy labels) and the wall time: the detector's own (``detector_s``) and everything
    it needed (``wall_time_s``: features or the run it reads, plus the detector; a run's own wall time)."""
    folder = RunFolder(folder)
    metrics, run = folder.metrics(), folder.provenance()
    found = metrics.get("detection") if isinstance(metrics, dict) else None
    if not isinstance(found, dict) or "f1" not in found:
        return None
    if "detector" in metrics:                                   # ssl-noise detect
        src = metrics["source"]
        noise, dataset = src.get("noise", {}), metrics.get("dataset") or src.get("dataset")
        init = metrics.get("init") or src.get("init")
        row = {"kind": "detect", "detector": metrics["detector"], "options": json.dumps(metrics["options"])}
        labels_sha, detector_s = src.get("labels_sha256"), run.get("timing", {}).get("detector_s")
        realised = metrics.get("realised_rate", noise.get("realised_rate"))
    else:                                                       # a fine-tuning run that selects samples
        cfg = folder.config()
        noise, dataset = metrics["noise"], run.get("result", {}).get("dataset")
        init = (metrics.get("init") or {}).get("id")
        row = {"kind": "run", "detector": cfg.get("method"), "options": json.dumps(cfg.get("method_args") or {})}
        labels_sha, detector_s = noise.get("labels_sha256"), None
        realised = noise.get("realised_rate")
    row.update({"folder": folder.name, "init": init, "dataset": dataset, "noise_type": noise.get("type"),
                "noise_rate": noise.get("rate"), "noise_seed": noise.get("seed"), "labels_sha256": labels_sha,
                "realised_rate": realised, "noise_rate_estimate": metrics.get("noise_rate_estimate"),
                "noise_rate_source": metrics.get("noise_rate_source")})
    row.update({k: found.get(k) for k in ("precision", "recall", "f1", "auroc", "ap", "n_noisy", "n_flagged",
                                         "n_kept", "kept_purity", "clean_kept")})
    per_class, classes = found.get("clean_kept_per_class") or [], metrics.get("class_names")
    names = classes if classes and len(classes) == len(per_class) else [str(k) for k in range(len(per_class))]
    row.update({f"clean_kept_{name}": value for name, value in zip(names, per_class)})
    correction = metrics.get("correction") or {}
    row.update({"relabel_acc": correction.get("relabel_acc"), "kept_noise_rate": correction.get("kept_noise_rate"),
                "wall_time_s": run.get("wall_time_s"), "detector_s": detector_s})
    return row


def collect(paths) -> "pd.DataFrame":  # noqa: F821
    """The table behind ``ssl-noise detections``: one :func:`detection_row` per detection found under ``paths``,
    sorted by dataset, noise and detector. A UserError when there is none."""
    import pandas as pd

    rows = [row for row in map(detection_row, detection_folders(paths)) if row is not None]
    if not rows:
        raise UserError(f"no detections under {', '.join(map(str, paths))}: give `ssl-noise detect` folders, "
                        f"selecting fine-tuning runs, or a runs folder holding them")
    frame = pd.DataFrame(rows)
    tail = [c for c in ("relabel_acc", "kept_noise_rate", "wall_time_s", "detector_s") if c in frame]
    frame = frame[[c for c in frame.columns if c not in tail] + tail]   # per-class columns before the tail
    order = ["dataset", "noise_type", "noise_rate", "noise_seed", "kind", "detector", "init", "folder"]
    return frame.sort_values(order, kind="stable", na_position="last").reset_index(drop=True)
