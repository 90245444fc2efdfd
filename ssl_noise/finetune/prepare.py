"""Everything that depends on user input, checked before anything is written: the init, the data, the noisy labels.

The training labels are corrupted with ``default_rng(noise_seed)`` (so they equal ``ssl-noise noise --seed``'s
file), the validation labels with the same matrix and ``default_rng([noise_seed, 1])`` unless ``clean_val``, the
test labels never. The run id hashes the resolved config, the encoder, the data and the noisy labels.
"""

from __future__ import annotations

import dataclasses

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from ssl_noise import inits, noise, runs
from ssl_noise.runs import RunFolder
from ssl_noise.config import FinetuneConfig, from_recipe, hashed_dict
from ssl_noise.data import ImageDataset, load_dataset
from ssl_noise.errors import UserError
from ssl_noise.robust import ROBUST


@dataclass
class Prepared:
    """A checked fine-tuning job: config, data, encoder and noisy labels, and the id of its run folder."""

    cfg: FinetuneConfig
    data: ImageDataset
    encoder: torch.nn.Module
    feat_dim: int
    init: Dict[str, Any]            # inits.Init.record(): kind, id, sha256, method, backbone, stem, normalisation ...
    train_noise: noise.NoisyLabels
    val_noise: Optional[noise.NoisyLabels]
    noise: Dict[str, Any]           # summary recorded in metrics.json
    run_id: str


def resolve_config(flags: Dict[str, Any], *, recipe: Optional[str] = None, overrides=()) -> tuple:
    """The fine-tuning config of ``flags`` over the recipe (``linear_probe`` with ``freeze``, else ``default``);
    returns ``(config, recipe file or None)``. An unknown method fails before any file is read."""
    if flags.get("method"):
        ROBUST.get_or_fail(flags["method"])
    name = "linear_probe" if flags.get("freeze") else "default"
    return from_recipe(FinetuneConfig, "finetune", name, flags, recipe=recipe, overrides=overrides)


def prepare(cfg: FinetuneConfig, *, data_root: Optional[str], checkpoints: Path) -> Prepared:
    """Resolve the init, load the data, corrupt the labels and compute the run id; raises UserError on bad input."""
    ROBUST.get_or_fail(cfg.method).parse_args(cfg.method_args)
    if cfg.noise_file is None:
        noise.check_noise_type(cfg.noise_type)
    elif cfg.noise_rate is not None:
        raise UserError("--noise-file gives the noisy labels itself; drop --noise (the rate)")
    size = inits.image_size(cfg.init, cfg.dataset, checkpoints=checkpoints, requested=cfg.image_size)
    data = load_dataset(cfg.dataset, data_root=data_root, size=size, subset=cfg.subset, seed=cfg.noise_seed,
                        label_column=cfg.label_column)
    if data.multilabel:
        raise UserError(f"{data.name} is multi-label ({data.task}); fine-tuning needs one class per image")
    if data.num_classes < 2:
        raise UserError(f"{data.name} has {data.num_classes} class(es); a classifier needs at least 2")
    if len(data.train) == 0:
        raise UserError(f"{data.name}: the training split is empty; nothing to fine-tune on")
    if cfg.noise_file is not None and cfg.subset is None:
        data = rows_of_noise_file(data, cfg.noise_file)
    init = inits.resolve(cfg.init, data, checkpoints=checkpoints, backbone=cfg.backbone, stem=cfg.stem,
                         seed=cfg.seed)
    record = init.record()
    if record["kind"] == "registry" and cfg.backbone not in (FinetuneConfig.backbone, record["backbone"]):
        raise UserError(f"encoder {record['id']} is a {record['backbone']}; its entry defines the architecture, "
                        f"so drop --backbone {cfg.backbone}")
    train_noise, val_noise, summary = corrupt(cfg, data)
    return Prepared(cfg, data, init.encoder, init.feat_dim, record, train_noise, val_noise, summary,
                    run_id(cfg, data, record, summary))


def check_trainable(prep: Prepared) -> None:
    """What training needs beyond what :func:`prepare` checks (``detect`` prepares without training): a batch
    that fits the training split, as pretraining requires."""
    if prep.cfg.batch_size > len(prep.data.train):
        raise UserError(f"batch size {prep.cfg.batch_size} is larger than the {len(prep.data.train)} training "
                        f"images; lower --batch-size or raise --subset")


def rows_of_noise_file(data: ImageDataset, path: str) -> ImageDataset:
    """The training rows a noise file covers. A ``--subset`` run's ``noisy_labels.csv`` names the subset's original
    indices, so reusing it trains on exactly those images, as the run it came from did, without repeating
    ``--subset`` and its seed; a file covering the whole split leaves the data as it is."""
    index = noise.read_noise_csv(path, num_classes=data.num_classes).index
    if len(index) >= len(data.train):
        return data
    pos = np.minimum(np.searchsorted(data.train_indices, index), len(data.train_indices) - 1)
    missing = index[data.train_indices[pos] != index]
    if missing.size:
        raise UserError(f"noise file {path}: index {missing[0]} is not a training image of {data.name} "
                        f"({missing.size} such); it was written for other data")
    return dataclasses.replace(data, train=data.train.take(pos), train_indices=data.train_indices[pos])


def _transition(cfg: FinetuneConfig, data: ImageDataset) -> Tuple[np.ndarray, Optional[noise.NoisyLabels]]:
    """The noise matrix, and the training labels when a noise file gives them (its realised matrix then)."""
    K, clean = data.num_classes, data.train.labels
    if cfg.noise_file is not None:
        f = noise.read_noise_csv(cfg.noise_file, num_classes=K, indices=data.train_indices)
        bad = np.flatnonzero(f.clean != clean)
        if bad.size:
            raise UserError(f"noise file {cfg.noise_file}: clean_label differs from {data.name}'s training label at "
                            f"{bad.size} indices (first: index {f.index[bad[0]]}); it was written for other data")
        train = noise.NoisyLabels.from_labels(clean, f.noisy, np.eye(K))
        return train.realised_T, train
    class_map = noise.load_class_map(cfg.class_map, data.class_names) if cfg.class_map else None
    rate = cfg.noise_rate if cfg.noise_matrix or cfg.noise_rate is not None else 0.0
    return noise.build_noise(cfg.noise_type, K, rate, class_map=class_map, matrix=cfg.noise_matrix,
                             force=cfg.noise_force, seed=cfg.noise_seed), None


def _source_run(cfg: FinetuneConfig) -> Optional[RunFolder]:
    """The finished run whose ``noisy_labels.csv`` is the noise file, if it is one: its validation labels and its
    noise record then travel with the training labels, so the new run pairs with it like a generated one."""
    if cfg.noise_file is None or Path(cfg.noise_file).name != "noisy_labels.csv":
        return None
    run = RunFolder(Path(cfg.noise_file).parent)
    return run if run.is_finished() else None


def _validation(cfg: FinetuneConfig, data: ImageDataset, T: np.ndarray,
                source: Optional[RunFolder]) -> Optional[noise.NoisyLabels]:
    """The noisy validation labels: the source run's own (a noise file from a run), else drawn with T."""
    if cfg.clean_val:
        return None
    K = data.num_classes
    given = None if source is None else source.val_labels(num_samples=len(data.val), num_classes=K)
    if given is None:
        return noise.corrupt(data.val.labels, T, rng=np.random.default_rng([cfg.noise_seed, 1]), mode=cfg.noise_mode,
                             images=data.val.images)
    if not np.array_equal(given.clean, data.val.labels):
        raise UserError(f"{source.path}: its validation labels were written for other data than {data.name}'s")
    return noise.NoisyLabels.from_labels(data.val.labels, given.noisy, np.eye(K))


def _recorded(cfg: FinetuneConfig, source: Optional[RunFolder]) -> Dict[str, Any]:
    """Type, rate, seed and mode of the noise: the config's, a plain noise file's (unknown) or the source run's."""
    if source is not None:
        nz = source.metrics()["noise"]
        return {k: nz.get(k) for k in ("type", "rate", "seed", "mode")}
    if cfg.noise_file:
        return {"type": "file", "rate": None, "seed": cfg.noise_seed, "mode": None}
    return {"type": cfg.noise_type, "rate": None if cfg.noise_matrix else float(cfg.noise_rate or 0.0),
            "seed": cfg.noise_seed, "mode": cfg.noise_mode}


def _real(cfg: FinetuneConfig, data: ImageDataset) -> tuple:
    """Real noise: the data's own given labels (a manifest's ``clean_label`` column scores them), nothing drawn."""
    if cfg.noise_file or cfg.noise_rate or cfg.noise_matrix:
        raise UserError(f"{data.name} carries its own noisy labels (a clean_label column): drop --noise, "
                        f"--noise-matrix and --noise-file, or remove the clean_label column to add synthetic noise")
    K = data.num_classes
    train = noise.NoisyLabels.from_labels(data.train.labels, data.train.given, np.eye(K))
    val = None if cfg.clean_val else noise.NoisyLabels.from_labels(data.val.labels, data.val.given, np.eye(K))
    recorded = {"type": "real", "rate": None, "seed": cfg.noise_seed, "mode": None}
    return train, val, train.realised_T, recorded, None


def corrupt(cfg: FinetuneConfig, data: ImageDataset) -> tuple:
    """(training labels, validation labels or None, the noise summary of metrics.json)."""
    clean = data.train.labels
    if data.train.given is not None:
        train, val, T, recorded, source = _real(cfg, data)
    else:
        train, val, T, recorded, source = _drawn(cfg, data)
    labels = [data.train_indices, clean, train.noisy] + ([val.noisy] if val is not None else [])
    summary = {"source": "real" if data.train.given is not None else "file" if cfg.noise_file else "generated",
               "file": cfg.noise_file, "source_run": None if source is None else source.name, **recorded,
               "realised_rate": train.realised_rate, "n_flipped": int(train.flipped.sum()),
               "expected_rate": noise.expected_rate(T, clean), "clean_val": cfg.clean_val,
               "val_realised_rate": None if val is None else val.realised_rate,
               "T": np.round(T, 10).tolist(), "realised_T": np.round(train.realised_T, 10).tolist(),
               "labels_sha256": hashlib.sha256(b"".join(np.asarray(a, np.int64).tobytes() for a in labels)).hexdigest()}
    return train, val, summary


def _drawn(cfg: FinetuneConfig, data: ImageDataset) -> tuple:
    """Generated noise or a noise file: (train, val, T, the recorded type/rate/seed/mode, the source run)."""
    clean, source = data.train.labels, _source_run(cfg)
    process, train = _transition(cfg, data)
    if train is None:
        train = noise.corrupt(clean, process, rng=np.random.default_rng(cfg.noise_seed), mode=cfg.noise_mode,
                              images=data.train.images)
    val = _validation(cfg, data, process, source)
    T = train.T if getattr(process, "image_dependent", False) else process  # instance: expected T given the images
    return train, val, T, _recorded(cfg, source), source


def oracle_rate(summary: Dict[str, Any]) -> Optional[float]:
    """The injected wrong-label rate (``--noise-estimate oracle``): the configured noise's expected rate, the source
    run's rate for a noise file taken from a run, None for any other noise file."""
    if summary["source"] != "file":
        return summary["expected_rate"]
    return summary["rate"]


def protocol_recipe(cfg: FinetuneConfig):
    """The method's published recipe (:class:`ssl_noise.engine.Recipe`) when ``cfg.protocol`` is paper and the
    method declares one; None: the config's own optimiser and schedule (protocol shared, or no recipe)."""
    return ROBUST[cfg.method].paper if cfg.protocol == "paper" else None


def hashed_config(cfg: FinetuneConfig) -> Dict[str, Any]:
    """:func:`~ssl_noise.config.hashed_dict` as run and cell ids hash it: ``protocol`` only where it changes the
    training (a method without a recipe trains the same under both, so CE's cells stay shared)."""
    hashed = hashed_dict(cfg)
    if getattr(ROBUST.get(cfg.method), "paper", None) is None:
        hashed.pop("protocol", None)
    return hashed


def run_id(cfg: FinetuneConfig, data: ImageDataset, init: Dict[str, Any], summary: Dict[str, Any]) -> str:
    """The run folder's name; its hash covers the config (file paths excepted: the label hash has their content),
    the encoder's sha256, the data's identity and the noisy labels."""
    skip = {"noise_file", "class_map", "noise_matrix", "eval_batch_size"}
    method = ROBUST[cfg.method]
    if not method.needs_noise_rate(method.parse_args(cfg.method_args)):
        skip.add("noise_estimate")  # a method told no rate trains the same whatever the setting
    if cfg.noise_file:
        skip |= {"noise_rate", "noise_type", "noise_mode", "noise_force"}
    identity = {"config": {k: v for k, v in hashed_config(cfg).items() if k not in skip}, "encoder": init["sha256"],
                "labels": summary["labels_sha256"], "data": [data.name, data.md5, len(data.train), len(data.val),
                                                              len(data.test), data.image_size]}
    return runs.run_id(init_method=init["method"], dataset=data.name, noise_record=summary, method=cfg.method,
                       linear_probe=cfg.freeze, seed=cfg.seed, identity=identity)
