"""The Python API: the library the ``ssl-noise`` command runs, for notebooks and scripts (docs/api.md).

Same semantics as the CLI (the CLI's finetune, pretrain and detect commands call the same functions) and the same
checks, raised as :class:`~ssl_noise.errors.UserError` instead of an exit. Nothing is printed unless
``show_progress=True``; runs, entries and detections are written where the CLI writes them (``runs``,
``checkpoints``), so a run made here is found by the CLI and the other way round.

A dataset is a spec string (``"bloodmnist"``, ``"csv:/data/cells.csv"``, ...: docs/formats.md) or an
:class:`ImageDataset`; one built from arrays (:meth:`ImageDataset.from_arrays`) is written once as a content-
addressed ``.npz`` under ``<cache>/arrays/`` when a run needs a spec, so the same arrays give the same run ids.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from ssl_noise.data import ImageDataset
from ssl_noise.errors import UserError
from ssl_noise.estimate import Estimate
from ssl_noise.noise import NoisyLabels

DataLike = Union[str, os.PathLike, ImageDataset]
PathLike = Union[str, os.PathLike]

__all__ = ["Encoder", "Estimate", "ImageDataset", "NoisyLabels", "Run", "UserError", "advise", "corrupt_labels",
           "estimate_noise_rate", "find_label_issues", "finetune", "load_dataset", "load_encoder", "pretrain",
           "report", "sweep"]


def _device(device: str) -> str:
    from ssl_noise.settings import resolve_device

    return resolve_device(device)


def _spec(data: DataLike, cache: Optional[PathLike] = None) -> str:
    """The spec a run records: a spec string as given, an in-memory dataset as its content-addressed ``.npz``."""
    if not isinstance(data, ImageDataset):
        return str(data)
    from ssl_noise.data.arrays import to_npz
    from ssl_noise.settings import data_roots

    return str(to_npz(data, Path(cache) if cache else data_roots()[-1] / "arrays"))


def load_dataset(spec: PathLike, *, image_size: Optional[int] = None, subset: Optional[int] = None, seed: int = 0,
                 data_root: Optional[PathLike] = None) -> ImageDataset:
    """The dataset a spec names, as ``ssl-noise data info SPEC`` reads it (uint8 images, train/val/test splits).

    >>> data = load_dataset("synthetic:n_train=40,n_val=8,n_test=8", image_size=8)
    >>> data.num_classes, len(data.train), data.train.images.dtype.name
    (4, 40, 'uint8')
    """
    from ssl_noise.data import load_dataset as load

    return load(spec, data_root=None if data_root is None else str(data_root), size=image_size, subset=subset,
                seed=seed)


def corrupt_labels(labels, noise_type: str = "symmetric", rate: float = 0.2, *, seed: int = 0,
                   num_classes: Optional[int] = None, images: Optional[np.ndarray] = None,
                   mode: str = "sampled") -> NoisyLabels:
    """Noisy labels as ``finetune --noise-type T --noise RATE --noise-seed SEED`` makes them for its training split:
    ``.noisy``, ``.flipped``, ``.T`` and ``.realised_rate`` (``images`` only for instance-dependent noise).

    >>> out = corrupt_labels(np.repeat(np.arange(4), 50), "symmetric", 0.3, seed=1)
    >>> round(out.realised_rate, 2), out.T.shape
    (0.28, (4, 4))
    """
    from ssl_noise import noise

    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    K = num_classes if num_classes is not None else int(labels.max(initial=0)) + 1
    process = noise.build_noise(noise_type, K, rate, seed=seed)
    return noise.corrupt(labels, process, rng=np.random.default_rng(seed), mode=mode, images=images)


def _train_images_and_labels(data, labels) -> tuple:
    """(images, labels, dataset or None): a dataset's training split and the labels it trains on, or arrays."""
    if isinstance(data, ImageDataset):
        given = data.train.given if data.train.given is not None else data.train.labels
        return data.train.images, np.asarray(given if labels is None else labels, dtype=np.int64), data
    if labels is None:
        raise UserError("give the labels with the images (or an ImageDataset)")
    from ssl_noise.data.arrays import images_array

    images, labels = images_array(data), np.asarray(labels).reshape(-1)
    if len(images) != len(labels) or not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0:
        raise UserError(f"give one integer label 0..K-1 per image: {len(images)} images, {len(labels)} labels "
                        f"of type {labels.dtype}")
    return images, labels.astype(np.int64), None


def _features(images: np.ndarray, labels: np.ndarray, encoder: Optional[str], data: Optional[ImageDataset], *,
              checkpoints: PathLike, device: str, seed: int) -> np.ndarray:
    """Pixel principal components (``encoder=None``), or an init's frozen, L2-normalised embedding."""
    from ssl_noise import estimate

    if encoder is None:
        return estimate.pixel_features(images, seed=seed)
    from ssl_noise import inits, knn
    from ssl_noise.data.arrays import from_arrays

    if data is None:  # the init needs a dataset for its input contract (channels, size, pixel statistics)
        data = from_arrays(images, labels, splits={"train": np.arange(len(labels)), "val": [], "test": []})
    init = inits.resolve(encoder, data, checkpoints=Path(checkpoints), seed=seed)
    return knn.extract_features(init.encoder.to(device), images, **init.normalisation, device=device)


def estimate_noise_rate(data: Union[ImageDataset, np.ndarray], labels=None, *, encoder: Optional[str] = None,
                        estimator: str = "auto", seed: int = 0, checkpoints: PathLike = "checkpoints",
                        device: str = "auto") -> Estimate:
    """How many labels are wrong, between which classes (``.T``), and a 90 % interval, without clean labels:
    ``auto`` is the estimator ``finetune`` tells methods (on the pixels' principal components when ``encoder`` is
    None, else on that init's features: ``"random"``, ``"imagenet"`` or a registry entry). ``data``: a dataset
    (its training split and the labels it trains on) or images with ``labels``.

    >>> clean = np.repeat(np.arange(3), 100)
    >>> images = (np.eye(3)[clean][:, None, None, :] * 200 + 20).astype(np.uint8).repeat(8, 1).repeat(8, 2)
    >>> noisy = corrupt_labels(clean, "symmetric", 0.2, seed=0).noisy
    >>> found = estimate_noise_rate(images, noisy)
    >>> found.estimator, found.lo <= float(np.mean(noisy != clean)) <= found.hi
    ('knn_agreement', True)
    """
    from ssl_noise import estimate

    images, labels, whole = _train_images_and_labels(data, labels)
    K = data.num_classes if isinstance(data, ImageDataset) else int(labels.max(initial=0)) + 1
    features = _features(images, labels, encoder, whole, checkpoints=checkpoints, device=_device(device), seed=seed)
    return estimate.estimate(features, labels, K, estimator=estimator, seed=seed)


def pretrain(method: str = "simclr", dataset: DataLike = "bloodmnist", *, checkpoints: PathLike = "checkpoints",
             runs: PathLike = "runs", data_root: Optional[PathLike] = None, device: str = "auto",
             recipe: Optional[PathLike] = None, resume: bool = False, show_progress: bool = False,
             **overrides: Any) -> str:
    """``ssl-noise pretrain --method METHOD --dataset DATASET`` with ``overrides`` as its flags or ``--set`` keys
    (``epochs=2``, ``method_args={"temperature": 0.2}``): trains and returns the new registry entry's id.

    >>> import tempfile; tmp = Path(tempfile.mkdtemp())
    >>> entry = pretrain("simclr", "synthetic:n_train=32,n_val=8,n_test=8", image_size=16, epochs=1, batch_size=16,
    ...                  checkpoints=tmp / "ck", runs=tmp / "runs", device="cpu")
    >>> entry.startswith("simclr-resnet18-synthetic-e1-s0-")
    True
    """
    from ssl_noise.config import PretrainConfig
    from ssl_noise.pretrain import pretrain as run_pretrain
    from ssl_noise.pretrain import resolve_config

    flags = {**overrides, "method": method, "dataset": _spec(dataset)}
    cfg, _ = resolve_config(_known(PretrainConfig, flags), recipe=None if recipe is None else str(recipe))
    return run_pretrain(cfg, data_root=None if data_root is None else str(data_root), checkpoints=Path(checkpoints),
                        runs=Path(runs), device=_device(device), resume=resume, show_progress=show_progress)


def _known(cls, flags: Dict[str, Any]) -> Dict[str, Any]:
    """``flags`` checked against the config's fields (a typo is an error, as an unknown --set key is)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(flags) - fields)
    if unknown:
        raise UserError(f"unknown {cls.__name__} option(s) {', '.join(unknown)}; "
                        f"choose from: {', '.join(sorted(fields))}")
    return flags


@dataclass(frozen=True)
class Encoder:
    """A registry entry's encoder with its input contract: feed it ``(x / 255 - mean) / std`` at ``image_size``
    px, ``channels`` channels; it returns ``feat_dim`` pooled features (``fc`` is Identity)."""

    module: Any
    id: str
    image_size: int
    channels: int
    stem: str
    mean: List[float]
    std: List[float]
    feat_dim: int
    meta: Dict[str, Any]


def load_encoder(entry: str, *, checkpoints: PathLike = "checkpoints") -> Encoder:
    """The encoder of a registry entry (id, unique prefix or method name), sha256-checked and loaded strictly, in
    eval mode on CPU."""
    from ssl_noise import registry

    module, meta = registry.load_encoder(Path(checkpoints), entry)
    norm = meta["normalisation"]
    return Encoder(module.eval(), meta["id"], int(meta["image_size"]), int(meta["channels"]), meta["stem"],
                   list(norm["mean"]), list(norm["std"]), int(meta["feat_dim"]), meta)


@dataclass(frozen=True)
class Run:
    """A finished fine-tuning run: its folder, metrics.json, and whether this call trained it (False: an identical
    run had finished before and was returned as it was)."""

    folder: Path
    metrics: Dict[str, Any]
    trained: bool
    recipe: Optional[Path] = None   # the recipe file its config was layered on (None: defaults only)

    @property
    def id(self) -> str:
        return self.folder.name

    @property
    def test_acc(self) -> float:
        """Clean test accuracy at the validation-selected epoch."""
        return float(self.metrics["test"]["best"]["acc"])

    def history(self) -> np.ndarray:
        """(N, epochs) probability of each training sample's given label per epoch."""
        from ssl_noise.runs import RunFolder

        return RunFolder(self.folder).array("history")

    def log(self) -> List[Dict[str, Any]]:
        """train_log.jsonl: one record per epoch."""
        import json

        return [json.loads(line) for line in (self.folder / "train_log.jsonl").read_text().splitlines() if line]


def finetune(init: Optional[str] = None, dataset: Optional[DataLike] = None, *, noise: Optional[float] = None,
             method: Optional[str] = None, runs: PathLike = "runs", checkpoints: PathLike = "checkpoints",
             data_root: Optional[PathLike] = None, device: str = "auto", recipe: Optional[PathLike] = None,
             like: Optional[str] = None, resume: Optional[bool] = False, show_progress: bool = False,
             sets: Sequence[str] = (), command: Optional[List[str]] = None, trackers: Sequence[str] = (),
             **overrides: Any) -> Run:
    """``ssl-noise finetune --init INIT --dataset DATASET --noise NOISE --method METHOD`` (the command calls this):
    ``overrides`` are its other flags as config fields (``epochs=3``, ``freeze=True``, ``noise_seed=2``,
    ``method_args={...}``), ``sets`` its ``--set KEY=VALUE`` strings; None means "not given" (the recipe's value,
    else the default: random init, bloodmnist, CE). The same config resolution, run id and run folder as the
    command; an identical finished run is returned without training (``Run.trained`` False).

    >>> import tempfile; tmp = Path(tempfile.mkdtemp())
    >>> run = finetune("random", "synthetic:n_train=32,n_val=16,n_test=32", noise=0.2, image_size=16, epochs=1,
    ...                batch_size=16, runs=tmp, device="cpu")
    >>> run.trained, run.metrics["noise"]["rate"], run.history().shape
    (True, 0.2, (32, 1))
    """
    import dataclasses

    from ssl_noise import inits
    from ssl_noise.config import FinetuneConfig
    from ssl_noise.finetune import finetune as run_finetune
    from ssl_noise.finetune import resolve_config
    from ssl_noise.runs import RunFolder

    given = {"init": init, "dataset": None if dataset is None else _spec(dataset), "method": method,
             **({"noise_rate": noise} if noise is not None else {}), **overrides}
    flags = _known(FinetuneConfig, {k: v for k, v in given.items() if v is not None})
    cfg, recipe_file = resolve_config(flags, recipe=None if recipe is None else str(recipe), overrides=sets)
    contract = inits.like(cfg.init, like, dataset=cfg.dataset, checkpoints=Path(checkpoints), given=flags)
    cfg = dataclasses.replace(cfg, **contract)
    folder, trained = run_finetune(cfg, data_root=None if data_root is None else str(data_root),
                                   checkpoints=Path(checkpoints), runs=Path(runs), device=_device(device),
                                   command=command, show_progress=show_progress, resume=resume, log=trackers)
    return Run(folder, RunFolder(folder).metrics(), trained, recipe_file and Path(recipe_file))


def find_label_issues(data: Union[DataLike, np.ndarray, Run], labels=None, *, encoder: Optional[str] = None,
                      detector: str = "knn", k: int = 20, noise_estimate: Union[str, float] = "auto",
                      seed: int = 0, checkpoints: PathLike = "checkpoints", device: str = "auto"):
    """The training labels most likely wrong, most suspicious first, as a DataFrame with the columns of
    ``scores.csv`` (``index``, ``path`` for image files, ``given_label``, ``suggested_label``, ``score``, ``rank``,
    ``flagged``: the top ε̂ share, ε̂ from ``noise_estimate``; for ``knn`` with ``auto`` also ``borderline``: flagged
    at the upper end of ε̂'s 90 % interval but not at its lower). ``data``: images (N, H, W[, C]) with ``labels``, a
    dataset (its training split), or a finished :class:`Run` for ``detector="loss"`` (its CE history).
    ``detector``: ``knn`` (neighbours in ``encoder``'s features; None: the pixels' principal components) or
    ``cleanlab`` (find_label_issues on out-of-fold linear-model probabilities of the same features).

    >>> clean = np.repeat(np.arange(2), 60)
    >>> images = (clean[:, None, None, None] * 180 + 30 + np.zeros((1, 8, 8, 1))).astype(np.uint8)
    >>> given = clean.copy(); given[[3, 70]] = 1 - given[[3, 70]]       # two wrong labels
    >>> sorted(find_label_issues(images, given)["index"][:2])
    [3, 70]
    """
    from ssl_noise import detect

    options = detect.DetectOptions(k=k, seed=seed, noise_estimate=noise_estimate)
    if isinstance(data, Run):
        source = detect.source_from_run(data.folder)
    else:
        if isinstance(data, (str, os.PathLike)):
            data = load_dataset(data)
        images, given, whole = _train_images_and_labels(data, labels)
        clean = whole.train.labels if whole is not None else given
        K = whole.num_classes if whole is not None else int(given.max(initial=0)) + 1
        names = list(whole.class_names) if whole is not None else [str(c) for c in range(K)]
        features = _features(images, given, encoder, whole, checkpoints=checkpoints, device=_device(device),
                             seed=seed)
        source = detect.Source("arrays", given, clean, np.arange(len(given)), K, None, {}, features=features,
                               class_names=names, paths=whole.train.paths if whole is not None else None,
                               ground_truth=bool(np.any(given != clean)))
    found = detect.DETECTORS.get_or_fail(detector)
    if (found.needs == "run") != isinstance(data, Run):
        raise UserError(f"detector {detector} reads {'a finished Run' if found.needs == 'run' else 'images'}")
    return detect.score_table(source, found(source, options))


def sweep(spec: PathLike, *, runs: PathLike = "runs", checkpoints: PathLike = "checkpoints",
          data_root: Optional[PathLike] = None, device: str = "auto", jobs: int = 1, overrides: Sequence[str] = (),
          show_progress: bool = False):
    """``ssl-noise sweep SPEC``: every cell not finished yet (resumable; finished cells are skipped), then the
    sweep's results table as a DataFrame (one row per finished cell); a failed cell raises UserError."""
    import pandas as pd

    from ssl_noise import sweep as sweeps
    from ssl_noise.config import parse_overrides

    parsed = sweeps.load_spec(str(spec))
    cells = sweeps.expand(parsed, checkpoints=Path(checkpoints), overrides=parse_overrides(overrides),
                          runs=Path(runs), log=lambda message: None)
    done = sweeps.run_sweep(cells, runs=Path(runs), checkpoints=Path(checkpoints),
                            data_root=None if data_root is None else str(data_root), device=_device(device),
                            jobs=jobs, show_progress=show_progress, log=lambda message: None)
    if done.failed:
        raise UserError(f"{len(done.failed)} cell(s) of sweep {parsed.name} failed; errors in {Path(runs) / '.failed'}")
    table = sweeps.write_table(cells, Path(runs), parsed.name)
    return pd.read_csv(table) if table is not None else pd.DataFrame()


def report(table, out: PathLike = "report.md", *, metric: str = "test_acc") -> str:
    """``ssl-noise report``: mean ± sd per init and rate, paired gains over random init and over CE with their
    paired tests, written to ``out`` (.md or .html, beside its robustness figure); returns the report's text.
    ``table``: a results CSV path or DataFrame (:func:`sweep`'s)."""
    from ssl_noise.report import write_report

    written = write_report(table, out, metric=metric)
    return Path(written[0]).read_text()


def advise(dataset: DataLike, out: PathLike = "advice", *, time_budget: Union[str, float] = "2h",
           test_answers: Optional[PathLike] = None, checkpoints: PathLike = "checkpoints",
           data_root: Optional[PathLike] = None, device: str = "auto", show_progress: bool = False, **options: Any):
    """``ssl-noise advise``: how noisy the labels are, which files to check, and which init and method to train
    with, from a pilot sized to ``time_budget`` ("45m", "2h", or seconds); ``options`` are the command's other flags
    (``methods=["gce"]``, ``seeds=3``, ``epochs=10``, ``pretrain_epochs=5``, ``subset=2000``, ``encoder=ENTRY``,
    ``jobs=2``). Returns the :class:`~ssl_noise.advise.Advice` (``.page`` is advice.md); a rerun continues."""
    from ssl_noise.advise import run_advise
    from ssl_noise.advise.plan import parse_duration
    from ssl_noise.sweep import log_stderr

    budget = float(time_budget) if isinstance(time_budget, (int, float)) else parse_duration(time_budget)
    return run_advise(_spec(dataset), out, time_budget_s=budget, test_answers=test_answers,
                      checkpoints=checkpoints, data_root=None if data_root is None else str(data_root),
                      device=_device(device), show_progress=show_progress,
                      log=log_stderr if show_progress else (lambda message: None), **options)
