"""Active label refinement (Khanal et al., MICCAI 2024, arXiv 2407.05973): relabel what the LNL phase rejected.

An LNL run of a selecting method (``coteaching``, ``vog``) leaves ``kept.npy`` (its clean set: network 1's pick in
the last epoch, as ALR) and ``model.safetensors`` (its selected-epoch state). The samples it rejected form the
*pool*. Round 0 evaluates the LNL model; every later round

1. scores the pool with the current model and acquires ``budget`` samples (:data:`ssl_noise.acquisition.ACQUISITION`,
   eval mode on un-augmented images; ALR scored augmented images),
2. asks an oracle for their labels: ``simulated`` reads the clean labels of **the acquired indices only** from the
   run's ``noisy_labels.csv``; ``expert`` = ``export`` a review sheet, then ``import`` the answers,
3. fine-tunes on kept + refined samples with cross-entropy (the fine-tuning loop of :mod:`ssl_noise.finetune`, the
   run's config with ``epochs``/``lr`` of the refinement, fresh optimiser, cosine per round, best epoch on the
   run's validation labels) and evaluates on the clean test split.

Kept samples keep their given (possibly noisy) labels: ALR's ``clean_labels`` reset *every* sample of the cleaned
set to ground truth, so LNL's false positives were corrected for free; here only acquired samples change.
Deviations from ALR, on purpose: refinement continues network 1 alone (ALR does too) from the previous round's
selected epoch (ALR: its last epoch), and round 0 therefore reports network 1 alone, not the run's ensemble.

Session folder ``<run>/refine/<name>/`` (default name ``<acquisition>-b<budget>-s<seed>``, ``expert-...`` for the
expert oracle): ``state.json`` (config, last completed round, samples awaiting review), ``rounds.csv`` (one row
per round: cumulative budget vs. metrics), ``labels_r<r>.csv`` (index, given_label, label, source = kept | oracle
| pool after round r), ``acquired_r<r>.csv``, ``metrics_r<r>.json`` (full validation/test metrics) and
``model.safetensors`` (the latest round's classifier). Every file is written atomically; state.json last.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import html
import io as _io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from ssl_noise import engine, io, noise
from ssl_noise.acquisition import ACQUISITION
from ssl_noise.config import FinetuneConfig, resolve
from ssl_noise.errors import UserError
from ssl_noise.finetune import Inputs, Prepared, evaluate, fit
from ssl_noise.io import derive_seed, read_csv_strict
from ssl_noise.metrics import SCALARS, kept_mask
from ssl_noise.robust.base import Batch, Classifier, RobustMethod
from ssl_noise.robust.ce import ce_step
from ssl_noise.runs import RunFolder

SCHEMA_VERSION = 1
POOL, KEPT, ORACLE = 0, 1, 2
SOURCES = ("pool", "kept", "oracle")


@dataclass
class RefineConfig:
    """A refinement session's settings (fixed once the session exists)."""

    acquisition: str = "entropy"
    budget: int = 70                 # samples relabelled per round (ALR README: 70)
    oracle: str = "simulated"        # simulated | expert
    epochs: int = 10                 # fine-tuning epochs per round (ALR: 25 recalibration epochs)
    lr: float = 0.01                 # peak lr per round (ALR's lr_AL); other optimiser settings from the run
    seed: int = 0                    # acquisition (random, BALD) and fine-tuning order/augmentation
    bald_passes: int = 10            # stochastic passes for BALD

    def validate(self) -> None:
        ACQUISITION.get_or_fail(self.acquisition)
        if self.oracle not in ("simulated", "expert"):
            raise UserError(f"unknown oracle {self.oracle!r}; choose from: expert, simulated")
        for name in ("budget", "epochs", "bald_passes"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.seed < 0:
            raise UserError(f"lr must be positive and seed non-negative (got {self.lr}, {self.seed})")

    def default_name(self) -> str:
        return f"{'expert-' if self.oracle == 'expert' else ''}{self.acquisition}-b{self.budget}-s{self.seed}"



# ============ the LNL run ============

@dataclass
class LNLRun:
    """What refinement needs from a finished run folder (never its clean labels: see :class:`SimulatedOracle`)."""

    folder: Path
    cfg: FinetuneConfig
    init: Dict[str, Any]
    data: Any                       # ssl_noise.data.ImageDataset (its train labels are only used for metrics)
    index: np.ndarray               # (N,) original training indices (noisy_labels.csv)
    given: np.ndarray               # (N,) given (noisy) labels
    kept: np.ndarray                # (N,) bool, the LNL clean set
    val_noise: Optional[noise.NoisyLabels]
    state: Dict[str, torch.Tensor]  # classifier state (network 1)

    @property
    def class_names(self) -> List[str]:
        return list(self.data.class_names)


def classifier_state(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The first classifier of a method's state dict (``net1.`` for Co-teaching, ``model.`` for CE), unprefixed."""
    prefixes = sorted(k[:-len("head.weight")] for k in state if k.endswith("head.weight"))
    if not prefixes:
        raise UserError("model.safetensors holds no classifier (no head.weight)")
    return {k[len(prefixes[0]):]: v for k, v in state.items() if k.startswith(prefixes[0])}


def load_run(folder: str | Path, *, data_root: Optional[str] = None) -> LNLRun:
    """Read a run folder and reload its data; raises UserError when it is not a finished run of a selecting method."""
    from ssl_noise.data import load_dataset

    run = RunFolder(folder)
    run.require("config.yaml", "run.json", "noisy_labels.csv", "metrics.json")
    run.require("kept.npy", "model.safetensors", message="{path} has no {name}: refinement needs a run of a selecting "
                "method (ssl-noise finetune --method coteaching|vog)")
    cfg = resolve(FinetuneConfig, run.config())
    init = run.provenance()["init"]
    data = load_dataset(cfg.dataset, data_root=data_root, size=init["image_size"], subset=cfg.subset,
                        seed=cfg.noise_seed)
    labels = run.labels(num_classes=data.num_classes, indices=data.train_indices)
    if not np.array_equal(labels.clean, data.train.labels):
        raise UserError(f"{cfg.dataset} as loaded here differs from the data of run {run.name}")
    val = run.val_labels(num_samples=len(data.val), num_classes=data.num_classes)
    val_noise = None if val is None else noise.NoisyLabels.from_labels(data.val.labels, val.noisy,
                                                                       np.eye(data.num_classes))
    try:
        kept = kept_mask(run.array("kept"), len(data.train))
    except (ValueError, IndexError) as e:
        raise UserError(f"{run.path / 'kept.npy'} does not describe the {len(data.train)} training samples: "
                        f"{e}") from None
    return LNLRun(run.path, cfg, init, data, labels.index, labels.noisy, kept, val_noise,
                  classifier_state(run.model_state()))


class SimulatedOracle:
    """The clean label of each *asked* training row, read from the run's ``noisy_labels.csv`` on every call.

    Nothing else in refinement reads the clean labels for training: the oracle is the only way in, and it is asked
    about acquired samples only.
    """

    def __init__(self, run: LNLRun):
        self.run = run

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        file = RunFolder(self.run.folder).labels(num_classes=self.run.data.num_classes, indices=self.run.index)
        return file.clean[np.asarray(rows, dtype=np.int64)]


# ============ the model side: scoring the pool, fine-tuning a round ============

class _Refit(RobustMethod):
    """Cross-entropy on kept + refined samples, continuing from a saved classifier state."""

    def __init__(self, ctx, state, keep: np.ndarray, labels: np.ndarray):
        super().__init__(ctx)
        self._start, self._keep, self._labels = state, keep, labels

    def setup(self) -> None:
        self.model = self.ctx.build_model(0)
        self.model.load_state_dict(self._start, strict=True)
        self.ctx.build_optimizer(self.model)

    def training_set(self):
        return self._keep, self._labels

    def train_step(self, batch: Batch, epoch: int) -> Dict[str, torch.Tensor]:
        return ce_step(self.model, batch)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PoolView:
    """What the current model says about the pool, computed on first use (see :mod:`ssl_noise.acquisition`)."""

    def __init__(self, session: "Session", model: Classifier, pool_rows: np.ndarray, labelled_rows: np.ndarray):
        self.s, self.model, self.rows, self.labelled = session, model, pool_rows, labelled_rows
        self.size = len(pool_rows)
        self._probs: Optional[np.ndarray] = None

    def _apply(self, fn, rows: np.ndarray) -> np.ndarray:
        self.model.eval()
        with self.s.autocast():
            return self.s.inputs.apply(fn, self.s.run.data.train.images[rows])

    def probs(self) -> np.ndarray:
        if self._probs is None:
            self._probs = torch.from_numpy(self._apply(self.model, self.rows)).softmax(dim=1).numpy()
        return self._probs

    def _features(self, rows: np.ndarray) -> np.ndarray:
        f = self._apply(self.model.encoder, rows)
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)

    def features(self) -> np.ndarray:
        return self._features(self.rows)

    def labelled_features(self) -> np.ndarray:
        return self._features(self.labelled)

    @torch.no_grad()
    def mc_probs(self) -> np.ndarray:
        """(T, P, K): train mode (BatchNorm batch statistics; ResNets have no dropout) on augmented, shuffled
        batches; every parameter and BN running statistic is restored afterwards."""
        s, saved = self.s, copy.deepcopy(self.model.state_dict())
        images, rows = torch.from_numpy(s.run.data.train.images), torch.from_numpy(self.rows)
        out = np.zeros((s.config.bald_passes, self.size, s.run.data.num_classes), np.float32)
        self.model.train()
        try:
            for t in range(s.config.bald_passes):
                for batch in s.inputs.batches(images, torch.zeros(len(images), dtype=torch.int64), rows,
                                              augment=True, shuffle=True, epoch=1_000_000 + t):
                    with s.autocast():
                        p = self.model(batch.x).float().softmax(dim=1).cpu().numpy()
                    out[t, np.searchsorted(self.rows, batch.index.cpu().numpy())] = p
        finally:
            self.model.load_state_dict(saved)
            self.model.eval()
        return out


class _Predictor(torch.nn.Module):
    """A bare classifier behind the ``predict`` hook that :func:`ssl_noise.finetune.evaluate` calls."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# ============ the session ============

class Session:
    """One refinement session of one LNL run: its state on disk and the three steps (evaluate, acquire, round)."""

    def __init__(self, run: LNLRun, name: str, config: RefineConfig, state: Optional[dict], device: str):
        self.run, self.name, self.config, self.device = run, name, config, device
        self.folder = run.folder / "refine" / name
        self.state = state or {"schema_version": SCHEMA_VERSION, "run_id": run.folder.name, "name": name,
                               "config": dataclasses.asdict(config), "round": -1, "budget_used": 0,
                               "pending": None}
        n = len(run.given)
        if self.state["round"] >= 0:
            frame = _read_csv(self.folder / f"labels_r{self.state['round']}.csv")
            self.labels = np.array(frame["label"], dtype=np.int64)  # writable copies
            self.source = np.array(frame["source"].map({s: i for i, s in enumerate(SOURCES)}), dtype=np.int64)
        else:
            self.labels, self.source = run.given.copy(), np.where(run.kept, KEPT, POOL)
        assert len(self.labels) == n
        self.inputs = Inputs(run.cfg, run.init["normalisation"], device)

    def autocast(self):
        return engine.autocast(self.device, self.run.cfg.precision)

    @property
    def round(self) -> int:
        return int(self.state["round"])

    @property
    def pool_rows(self) -> np.ndarray:
        return np.flatnonzero(self.source == POOL)

    def model(self) -> Classifier:
        """The current classifier (latest round's, else the LNL run's network 1), in eval mode."""
        from ssl_noise.backbones import build_backbone

        init, data = self.run.init, self.run.data
        encoder, feat_dim = build_backbone(init["backbone"], stem=init["stem"], in_channels=data.channels)
        model = Classifier(encoder, feat_dim, data.num_classes, freeze=self.run.cfg.freeze)
        path = self.folder / "model.safetensors"
        model.load_state_dict(engine.load_state(path) if path.is_file() else self.run.state)
        return model.to(self.device, memory_format=engine.memory_format(self.run.cfg.channels_last)).eval()

    def check_budget(self, rounds: int) -> None:
        need, have = self.config.budget * rounds, len(self.pool_rows)
        if need > have:
            raise UserError(f"budget {self.config.budget} x {rounds} round(s) = {need} relabels, but the pool of "
                            f"samples the LNL run rejected holds {have}")

    def acquire(self) -> Dict[str, np.ndarray]:
        """The next ``budget`` pool rows to relabel, with their acquisition scores and the model's prediction."""
        model, pool = self.model(), self.pool_rows
        view = PoolView(self, model, pool, np.flatnonzero(self.source != POOL))
        rng = np.random.default_rng(derive_seed(self.config.seed, self.round + 1))
        picks, scores = ACQUISITION[self.config.acquisition](view, self.config.budget, rng)
        probs = view.probs()[picks] if view._probs is not None else PoolView(self, model, pool[picks], pool).probs()
        return {"rows": pool[picks], "score": np.asarray(scores, np.float64)[picks], "probs": probs}

    def evaluate_lnl(self) -> Dict[str, Any]:
        """Round 0: the LNL run's network 1 on the validation and clean test splits."""
        wrap, data = _Predictor(self.model()), self.run.data
        val_labels = data.val.labels if self.run.val_noise is None else self.run.val_noise.noisy
        val = evaluate(wrap, self.inputs, data.val.images, val_labels, task=data.task, autocast=self.autocast)[0]
        test = evaluate(wrap, self.inputs, data.test.images, data.test.labels, task=data.task,
                        autocast=self.autocast)[0]
        return self._write_round(0, np.zeros(0, np.int64), None, {"val": val, "test": test, "selected_epoch": None})

    def complete_round(self, rows: np.ndarray, score: np.ndarray, oracle_labels: np.ndarray,
                       show_progress: bool = False) -> Dict[str, Any]:
        """Merge the oracle's labels of ``rows``, fine-tune on kept + refined samples, evaluate, write the round."""
        r, run, data = self.round + 1, self.run, self.run.data
        self.labels[rows], self.source[rows] = oracle_labels, ORACLE
        keep, labels = self.source != POOL, self.labels.copy()
        cfg = dataclasses.replace(run.cfg, epochs=self.config.epochs, lr=self.config.lr, warmup_epochs=0.0,
                                  method="ce", method_args={}, seed=derive_seed(self.config.seed, r))
        start = self.model()
        state = {k: v.detach().clone() for k, v in start.state_dict().items()}
        prep = Prepared(cfg, data, start.encoder, start.head.in_features, run.init,
                        noise.NoisyLabels.from_labels(data.train.labels, labels, np.eye(data.num_classes)),
                        run.val_noise, {"source": "refine", "expected_rate": None},
                        f"{run.folder.name}/refine/{self.name}/r{r}")
        result = fit(prep, device=self.device, show_progress=show_progress,
                     make_method=lambda ctx: _Refit(ctx, state, keep, labels))
        b = result.best_epoch
        self._save_model(result.method.model.state_dict())
        return self._write_round(r, rows, score, {"val": result.val[b], "test": result.test[b],
                                                  "selected_epoch": b + 1, "train": result.train["best"]})

    def _save_model(self, state: Dict[str, torch.Tensor]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        engine.save_state(state, self.folder / "model.safetensors")

    def _write_round(self, r: int, rows: np.ndarray, score: Optional[np.ndarray], m: Dict[str, Any]) -> Dict:
        import pandas as pd

        run, keep = self.run, self.source != POOL
        given, clean = run.given, run.data.train.labels  # clean: a diagnostic column only, never trained on
        self.folder.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame({"index": run.index, "given_label": given, "label": self.labels,
                              "source": np.asarray(SOURCES)[self.source]})
        _write_csv(self.folder / f"labels_r{r}.csv", frame)
        if len(rows):
            _write_csv(self.folder / f"acquired_r{r}.csv", pd.DataFrame(
                {"index": run.index[rows], "score": score, "given_label": given[rows],
                 "oracle_label": self.labels[rows]}))
        io.write_json(self.folder / f"metrics_r{r}.json", {"round": r, **m})
        budget = int(self.state["budget_used"]) + len(rows)
        row = {"round": r, "budget": budget, "acquired": len(rows), "n_train": int(keep.sum()),
               "n_pool": int((~keep).sum()), "n_changed": int((self.labels[rows] != given[rows]).sum()),
               "train_label_noise": float(np.mean(self.labels[keep] != clean[keep])),
               "selected_epoch": m["selected_epoch"],
               **{f"test_{k}": m["test"][k] for k in SCALARS},
               "val_acc": m["val"]["acc"], "val_macro_f1": m["val"]["macro_f1"],
               "acquisition": self.config.acquisition, "oracle": self.config.oracle}
        path = self.folder / "rounds.csv"
        old = pd.read_csv(path) if path.is_file() else pd.DataFrame()
        old = old[old["round"] < r] if len(old) else old
        table = pd.concat([old, pd.DataFrame([row])], ignore_index=True)
        table["selected_epoch"] = table["selected_epoch"].astype("Int64")  # round 0 has none
        _write_csv(path, table)
        self.state.update(round=r, budget_used=budget, pending=None)
        io.write_json(self.folder / "state.json", self.state)
        return row


def _write_csv(path: Path, frame) -> None:
    with io.atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _read_csv(path: Path):
    import pandas as pd

    return pd.read_csv(path)


def open_session(run: LNLRun, name: Optional[str], given: Dict[str, Any], *, device: str) -> Session:
    """The session ``name`` of ``run``: resumed when it exists (explicitly ``given`` settings must match), else new
    with ``given`` over the defaults. None values in ``given`` mean "not given"."""
    config = resolve(RefineConfig, given)
    name = name or config.default_name()
    path = run.folder / "refine" / name / "state.json"
    if not path.is_file():
        return Session(run, name, config, None, device)
    state = json.loads(path.read_text())
    stored = RefineConfig(**state["config"])
    for key, value in given.items():
        if value is not None and getattr(stored, key) != value:
            raise UserError(f"refine session {name} was started with {key}={getattr(stored, key)!r}, not "
                            f"{value!r}; pass --name NEW for another session")
    return Session(run, name, stored, state, device)


# ============ the two oracles' workflows ============

def refine_run(run_folder: str | Path, *, rounds: int, given: Dict[str, Any], name: Optional[str] = None,
               data_root: Optional[str] = None, device: str = "cpu", show_progress: bool = True,
               on_round: Optional[Callable[[Dict[str, Any]], None]] = None) -> Path:
    """Rounds 1..``rounds`` with the simulated oracle (resuming a session that has fewer); returns its folder."""
    if rounds < 1:
        raise UserError(f"rounds must be at least 1, got {rounds}")
    run = load_run(run_folder, data_root=data_root)
    session = open_session(run, name, {**given, "oracle": "simulated"}, device=device)
    session.check_budget(max(0, rounds - max(session.round, 0)))
    oracle = SimulatedOracle(run)
    if session.round < 0:
        _report(on_round, session.evaluate_lnl())
    while session.round < rounds:
        picked = session.acquire()
        _report(on_round, session.complete_round(picked["rows"], picked["score"], oracle(picked["rows"]),
                                                 show_progress=show_progress))
    return session.folder


def _report(on_round, row) -> None:
    if on_round is not None:
        on_round(row)


def export_review(run_folder: str | Path, out: str | Path, *, given: Dict[str, Any], name: Optional[str] = None,
                  data_root: Optional[str] = None, device: str = "cpu") -> Session:
    """Acquire the next batch for an expert (or re-export the batch awaiting review) and write
    ``out/to_review.csv`` and ``out/to_review.html``."""
    run = load_run(run_folder, data_root=data_root)
    name = name or _matching_expert_session(run, given)
    session = open_session(run, name, {**given, "oracle": "expert"}, device=device)
    pending = session.state["pending"]
    if pending is None:
        session.check_budget(1)
        if session.round < 0:
            session.evaluate_lnl()
        picked = session.acquire()
        pending = {"rows": picked["rows"].tolist(), "score": picked["score"].tolist(),
                   "probs": np.round(picked["probs"], 6).tolist()}
    write_review(Path(out), session, pending)
    session.state["pending"] = pending
    io.write_json(session.folder / "state.json", session.state)
    return session


def _matching_expert_session(run: LNLRun, given: Dict[str, Any]) -> Optional[str]:
    """Without --name, export continues the one expert session whose settings agree with every option given."""
    found = []
    for path in sorted((run.folder / "refine").glob("*/state.json")):
        config = json.loads(path.read_text())["config"]
        if config["oracle"] == "expert" and all(v is None or config[k] == v for k, v in given.items()):
            found.append(path.parent.name)
    if len(found) > 1:
        raise UserError(f"several expert refine sessions match ({', '.join(found)}); pass --name")
    return found[0] if found else None


_SHEET_CSS = ("body{font-family:sans-serif;margin:1em}.grid{display:flex;flex-wrap:wrap;gap:12px}"
              "figure{margin:0;width:170px;font-size:12px}"
              "img{width:160px;height:160px;image-rendering:pixelated;border:1px solid #999}")


def write_review(out: Path, session: Session, pending: Dict[str, list]) -> None:
    """``to_review.csv`` (fill the ``label`` column; class index or name) and the contact sheet."""
    import pandas as pd

    run, names = session.run, session.run.class_names
    rows, probs = np.asarray(pending["rows"], np.int64), np.asarray(pending["probs"], np.float64)
    pred, given = probs.argmax(axis=1), run.given[rows]
    frame = pd.DataFrame({"index": run.index[rows], "current_label": given,
                          "current_name": [names[k] for k in given], "predicted_label": pred,
                          "predicted_name": [names[k] for k in pred],
                          "p_current": np.round(probs[np.arange(len(rows)), given], 4),
                          "p_predicted": np.round(probs.max(axis=1), 4),
                          "score": np.round(pending["score"], 6), "label": ""})
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "to_review.csv", frame)
    cells = []
    for i, row in enumerate(frame.to_dict("records")):
        cells.append(f'<figure><img src="data:image/png;base64,{_png(run.data.train.images[rows[i]])}" '
                     f'alt="index {row["index"]}"><figcaption><b>index {row["index"]}</b><br>current: '
                     f'{html.escape(row["current_name"])} ({row["current_label"]})<br>predicted: '
                     f'{html.escape(row["predicted_name"])} ({row["predicted_label"]}, p={row["p_predicted"]:.2f})'
                     f'<br>score {row["score"]:.4g}</figcaption></figure>')
    legend = ", ".join(f"{k} = {html.escape(n)}" for k, n in enumerate(names))
    title = html.escape(run.folder.name)
    page = (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>ssl-noise review: {title}</title>"
            f"<style>{_SHEET_CSS}</style></head><body>\n<h1>{len(rows)} samples to review</h1><p>Run {title}, "
            f"refine session {html.escape(session.name)}, round {session.round + 1}, acquisition "
            f"{session.config.acquisition}. Write the right class in the <code>label</code> column of to_review.csv "
            f"(index or name), then <code>ssl-noise refine import {html.escape(str(run.folder))} "
            f"{html.escape(str(out / 'to_review.csv'))}</code>.</p>"
            f"<p>Classes: {legend}</p>\n<div class=\"grid\">\n" + "\n".join(cells) + "\n</div></body></html>\n")
    with io.atomic_path(out / "to_review.html") as tmp:
        tmp.write_text(page)


def _png(image: np.ndarray) -> str:
    from PIL import Image

    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    buf = _io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def read_answers(path: str | Path, session: Session) -> np.ndarray:
    """The expert's labels for the samples awaiting review, in their order; UserError on any problem."""
    path, run = Path(path), session.run
    frame = read_csv_strict(path, what="answer file", columns=("index", "label"))
    rows = np.asarray(session.state["pending"]["rows"], np.int64)
    wanted = {int(i): k for k, i in enumerate(run.index[rows])}
    names = {n: k for k, n in enumerate(run.class_names)}
    K, out, seen = run.data.num_classes, np.full(len(rows), -1, np.int64), set()
    for line, (raw_index, raw_label) in enumerate(zip(frame["index"].str.strip(), frame["label"].str.strip()), 2):
        if not raw_index.lstrip("+-").isdigit():
            raise UserError(f"{path} line {line}: index {raw_index!r} is not an integer")
        index = int(raw_index)
        if index not in wanted:
            where = ("a training sample of this run" if index not in set(run.index.tolist())
                     else "among the samples under review")
            raise UserError(f"{path} line {line}: index {index} is not {where}")
        if index in seen:
            raise UserError(f"{path} line {line}: index {index} is answered twice")
        seen.add(index)
        if raw_label in names:
            label = names[raw_label]
        elif raw_label.lstrip("+-").isdigit() and 0 <= int(raw_label) < K:
            label = int(raw_label)
        else:
            raise UserError(f"{path} line {line}: label {raw_label!r} of index {index} is not a class "
                            f"(0..{K - 1} or a name: {', '.join(run.class_names)})")
        out[wanted[index]] = label
    if (out < 0).any():
        missing = run.index[rows][out < 0]
        raise UserError(f"{path} answers {len(rows) - len(missing)} of the {len(rows)} samples under review; "
                        f"missing: index {', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''}")
    return out


def import_review(run_folder: str | Path, answers: str | Path, *, name: Optional[str] = None,
                  data_root: Optional[str] = None, device: str = "cpu", show_progress: bool = True) -> tuple:
    """Merge an expert's answers into the session awaiting them and run that round.

    Returns ``(session folder, the round's rounds.csv row)``; raises UserError (nothing changed) on a bad file.
    """
    folder = Path(run_folder)
    waiting = sorted(p.parent.name for p in (folder / "refine").glob("*/state.json")
                     if json.loads(p.read_text()).get("pending") and (name is None or p.parent.name == name))
    if not waiting:
        raise UserError(f"no refine session of {folder} awaits answers"
                        f"{f' under the name {name}' if name else ''}; run `ssl-noise refine export` first")
    if len(waiting) > 1:
        raise UserError(f"several refine sessions await answers ({', '.join(waiting)}); pass --name")
    run = load_run(folder, data_root=data_root)
    session = open_session(run, waiting[0], {}, device=device)
    labels = read_answers(answers, session)
    pending = session.state["pending"]
    return session.folder, session.complete_round(np.asarray(pending["rows"], np.int64),
                                                  np.asarray(pending["score"]), labels, show_progress=show_progress)
