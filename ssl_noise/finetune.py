"""Fine-tuning under controlled label noise: an initialisation and a noise model in, a complete run folder out.

``finetune(cfg, ...)`` is the unit every sweep and robust method is built from:

1. :func:`prepare` checks everything that depends on user input before anything is written (method, init,
   encoder/dataset compatibility, noise parameters or noise file) and corrupts the labels: the training labels
   always (``ssl_noise.noise``, generator ``default_rng(noise_seed)``, so the labels equal ``ssl-noise noise
   --seed <noise_seed>``'s file), the validation labels too unless ``clean_val`` (same matrix, generator
   ``default_rng([noise_seed, 1])``; with a noise file, its realised matrix), the test labels never.
2. :func:`fit` trains with a :data:`~ssl_noise.robust.ROBUST` method (plain loop: bf16 autocast, channels_last,
   batched augmentation from an explicit generator re-seeded from (seed, epoch)), records ``history[i, e]`` = the
   softmax probability of sample i's training label in its epoch-e training forward pass (train mode,
   augmented, before that step's update: HSA-NRL's recording, at no extra cost), evaluates validation *and* test
   after every epoch (cheap at 28 px; the test numbers are only reported, never used for a decision), and keeps
   the state of the epoch with the best validation ``select_metric`` in memory. A linear probe without
   augmentation (``freeze`` and not ``augmentation``) encodes each split once and trains the head on the stored
   features (:func:`encoded_splits`): same model, same numbers up to bf16 rounding, an epoch in well under a
   second instead of a ResNet pass over the data.
3. The run folder ``runs/<run_id>/`` is built under a temporary name and renamed at the end (nothing on
   failure); one row is appended to ``runs/results.csv`` under a file lock.

Run folder: ``config.yaml`` (the resolved config; usable as ``--recipe``), ``noisy_labels.csv`` (index,
clean_label, noisy_label; original indices under ``--subset``), ``noisy_val_labels.csv`` (unless clean_val),
``history.npy`` (float32 (N, epochs), rows = training samples in split order, NaN where a method left a sample
out), ``selected.npy`` (bool (N, epochs), only for methods that select samples), ``train_log.jsonl``,
``metrics.json`` (deterministic: same seeds give identical bytes on CPU), ``test_probs.npy`` (selected epoch),
``run.json`` (provenance, timing), and each array of ``method.outputs()`` as ``<name>.npy``.

The run id is ``<init>-<dataset>-<noise>-<method>-s<seed>-<hash10>``; the hash covers the resolved config, the
encoder's sha256, the data identity and the sha256 of the noisy labels, so an identical re-run finds the finished
folder and returns it without training.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io as _io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from ssl_noise import io, noise
from ssl_noise.io import derive_seed
from ssl_noise.config import FINETUNE_AUGMENT, FinetuneConfig, method_args_text, to_dict
from ssl_noise.data import ImageDataset, catalogue, load_dataset
from ssl_noise.errors import UserError
from ssl_noise.metrics import SCALARS, classification_metrics, mean_metrics, memorisation
from ssl_noise.robust import ROBUST, Batch, Classifier, FinetuneContext

SCHEMA_VERSION = 1
BUILTIN_INITS = ("random", "imagenet")
RESULT_COLUMNS = (
    ["run_id", "dataset", "image_size", "n_train", "init", "encoder_id", "encoder_sha256", "backbone", "stem",
     "protocol", "method", "method_args", "noise_source", "noise_type", "noise_rate", "noise_realised_rate",
     "noise_seed", "noise_mode", "clean_val", "val_realised_rate", "seed", "epochs", "select_metric", "selected_epoch"]
    + [f"test_{m}{s}" for s in ("", "_last", "_last5") for m in SCALARS]
    + ["val_acc", "val_macro_f1", "train_acc_noisy", "train_acc_clean", "train_memorised", "train_memorised_last",
       "wall_time_s", "created_at"])



# ============ preparation: every user-input check, before anything is written ============

def resolve_config(flags: Dict[str, Any], *, recipe: Optional[str] = None, overrides=()) -> tuple:
    """The fine-tuning config of ``flags`` over the recipe (``linear_probe`` with ``freeze``, else ``default``);
    returns ``(config, recipe file or None)``. An unknown method fails before any file is read."""
    from ssl_noise.config import from_recipe

    if flags.get("method"):
        ROBUST.get_or_fail(flags["method"])
    name = "linear_probe" if flags.get("freeze") else "default"
    return from_recipe(FinetuneConfig, "finetune", name, flags, recipe=recipe, overrides=overrides)

@dataclass
class Prepared:
    cfg: FinetuneConfig
    data: ImageDataset
    encoder: torch.nn.Module
    feat_dim: int
    init: Dict[str, Any]            # kind, id, sha256, method, backbone, stem, image_size, channels, normalisation
    train_noise: noise.NoisyLabels
    val_noise: Optional[noise.NoisyLabels]
    noise: Dict[str, Any]           # summary recorded in metrics.json
    run_id: str


def prepare(cfg: FinetuneConfig, *, data_root: Optional[str], checkpoints: Path) -> Prepared:
    """Resolve the init, load the data, corrupt the labels and compute the run id; raises UserError on bad input."""
    from ssl_noise import registry

    ROBUST.get_or_fail(cfg.method).parse_args(cfg.method_args)
    if cfg.noise_file is None:
        noise.NOISE_TYPES.get_or_fail(cfg.noise_type)
    elif cfg.noise_rate is not None:
        raise UserError("--noise-file gives the noisy labels itself; drop --noise (the rate)")
    size = cfg.image_size or 28
    if cfg.init not in BUILTIN_INITS:  # fail fast (empty registry, unknown ref) before loading any data
        flag = cfg.dataset.lower() if cfg.dataset.lower() in catalogue() else None  # a MedMNIST flag is its name
        entry_id = registry.resolve(checkpoints, cfg.init, dataset=flag)
        size = cfg.image_size or registry.read_meta(checkpoints, entry_id)["image_size"]
    data = load_dataset(cfg.dataset, data_root=data_root, size=size, subset=cfg.subset, seed=cfg.noise_seed)
    if data.multilabel:
        raise UserError(f"{data.name} is multi-label ({data.task}); fine-tuning needs one class per image")
    encoder, feat_dim, init = _load_init(cfg, data, checkpoints)
    train_noise, val_noise, record = _corrupt(cfg, data)
    return Prepared(cfg, data, encoder, feat_dim, init, train_noise, val_noise, record,
                    _run_id(cfg, data, init, record))


def _load_init(cfg: FinetuneConfig, data: ImageDataset, checkpoints: Path) -> Tuple[torch.nn.Module, int, dict]:
    import safetensors.torch

    from ssl_noise import backbones, registry
    from ssl_noise.pretrain import channel_stats

    stem = cfg.stem or backbones.default_stem(data.image_size)
    torch.manual_seed(cfg.seed)  # random init, and imagenet's re-initialised cifar conv1
    if cfg.init == "random":
        encoder, feat_dim = backbones.build_backbone(cfg.backbone, stem=stem, in_channels=data.channels)
        # Statistics of (at most ~4096, evenly strided) training images: a random encoder has no recorded contract.
        mean, std = channel_stats(data.train.images[::max(1, len(data.train) // 4096)])
        meta = {"id": f"random-{cfg.backbone}", "method": "random"}
    elif cfg.init == "imagenet":
        encoder, feat_dim = backbones.load_imagenet_backbone(cfg.backbone, stem=stem, in_channels=data.channels)
        c = data.channels  # grey: conv1 was summed over RGB, so one averaged statistic per channel
        mean = list(backbones.IMAGENET_MEAN) if c == 3 else [float(np.mean(backbones.IMAGENET_MEAN))] * c
        std = list(backbones.IMAGENET_STD) if c == 3 else [float(np.mean(backbones.IMAGENET_STD))] * c
        meta = {"id": f"imagenet-{cfg.backbone}", "method": "imagenet"}
    else:
        entry_id = registry.resolve(checkpoints, cfg.init, dataset=data.name, channels=data.channels)
        encoder, meta = registry.load_encoder(checkpoints, entry_id)
        feat_dim, stem = int(meta["feat_dim"]), meta["stem"]
        if int(meta["channels"]) != data.channels:
            raise UserError(f"encoder {entry_id} takes {meta['channels']}-channel images but {data.name} has "
                            f"{data.channels}; pretrain on this dataset or pick another encoder")
        if int(meta["image_size"]) != data.image_size:
            raise UserError(f"encoder {entry_id} takes {meta['image_size']} px images but {data.name} is "
                            f"{data.image_size} px; use --image-size {meta['image_size']} or another encoder")
        if cfg.stem is not None and cfg.stem != stem:
            raise UserError(f"encoder {entry_id} has the {stem} stem; drop --stem {cfg.stem}")
        mean, std = meta["normalisation"]["mean"], meta["normalisation"]["std"]
    sha = meta.get("sha256") or hashlib.sha256(safetensors.torch.save(registry.encoder_state_dict(encoder))).hexdigest()
    kind = cfg.init if cfg.init in BUILTIN_INITS else "registry"
    return encoder, feat_dim, {"kind": kind, "id": meta["id"], "sha256": sha, "method": meta["method"],
                               "backbone": meta.get("backbone", cfg.backbone), "stem": stem,
                               "pretrain_dataset": meta.get("dataset"), "image_size": data.image_size,
                               "channels": data.channels, "normalisation": {"mean": list(mean), "std": list(std)}}


def _corrupt(cfg: FinetuneConfig, data: ImageDataset) -> tuple:
    K, clean = data.num_classes, data.train.labels
    if cfg.noise_file is not None:
        f = noise.read_noise_csv(cfg.noise_file, num_classes=K, indices=data.train_indices)
        bad = np.flatnonzero(f.clean != clean)
        if bad.size:
            raise UserError(f"noise file {cfg.noise_file}: clean_label differs from {data.name}'s training label at "
                            f"{bad.size} indices (first: index {f.index[bad[0]]}); it was written for other data")
        train = noise.NoisyLabels.from_labels(clean, f.noisy, np.eye(K))
        T = train.realised_T  # the validation labels get the noise the file realises
    else:
        class_map = noise.load_class_map(cfg.class_map, data.class_names) if cfg.class_map else None
        rate = cfg.noise_rate if cfg.noise_matrix or cfg.noise_rate is not None else 0.0
        T = noise.transition_matrix(cfg.noise_type, K, rate, class_map=class_map, matrix=cfg.noise_matrix,
                                    force=cfg.noise_force)
        train = noise.corrupt(clean, T, rng=np.random.default_rng(cfg.noise_seed), mode=cfg.noise_mode)
    val = None if cfg.clean_val else noise.corrupt(data.val.labels, T, rng=np.random.default_rng([cfg.noise_seed, 1]),
                                                    mode=cfg.noise_mode)
    labels = [data.train_indices, clean, train.noisy] + ([val.noisy] if val is not None else [])
    record = {"source": "file" if cfg.noise_file else "generated", "file": cfg.noise_file,
              "type": "file" if cfg.noise_file else cfg.noise_type,
              "rate": None if cfg.noise_file or cfg.noise_matrix else float(cfg.noise_rate or 0.0),
              "seed": cfg.noise_seed, "mode": None if cfg.noise_file else cfg.noise_mode,
              "realised_rate": train.realised_rate, "n_flipped": int(train.flipped.sum()),
              "expected_rate": noise.expected_rate(T, clean), "clean_val": cfg.clean_val,
              "val_realised_rate": None if val is None else val.realised_rate,
              "T": np.round(T, 10).tolist(), "realised_T": np.round(train.realised_T, 10).tolist(),
              "labels_sha256": hashlib.sha256(b"".join(np.asarray(a, np.int64).tobytes() for a in labels)).hexdigest()}
    return train, val, record


def _run_id(cfg: FinetuneConfig, data: ImageDataset, init: dict, record: dict) -> str:
    skip = {"noise_file", "class_map", "noise_matrix", "eval_batch_size"}  # paths: the label hash has the content
    if cfg.noise_file:
        skip |= {"noise_rate", "noise_type", "noise_mode", "noise_force"}
    identity = {"config": {k: v for k, v in to_dict(cfg).items() if k not in skip}, "encoder": init["sha256"],
                "labels": record["labels_sha256"], "data": [data.name, data.md5, len(data.train), len(data.val),
                                                             len(data.test), data.image_size]}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
    short = {"symmetric": "sym", "uniform": "uni", "pairflip": "pair", "asymmetric": "asym", "file": "file"}
    rate = "" if record["rate"] is None else f"{record['rate']:g}"
    kind = "clean" if record["rate"] == 0.0 else short[record["type"]] + rate
    return "-".join([init["method"], data.name, f"{kind}n{cfg.noise_seed}", cfg.method + ("_lp" if cfg.freeze else ""),
                     f"s{cfg.seed}", digest])


# ============ the loop ============

def _chunks(rows: torch.Tensor, batch_size: int) -> List[torch.Tensor]:
    """Batches of ``rows``; a last batch of one sample joins the previous one (BatchNorm needs two samples)."""
    chunks = list(rows.split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


def train_one_epoch(method, ctx: FinetuneContext, batches, history: np.ndarray, selected: np.ndarray,
                    clean: torch.Tensor, epoch: int, lr_of_step, bar) -> Dict[str, float]:
    """One pass: method step, loop-owned backward/step/lr, history filled from the step's own probabilities."""
    method.train()
    loss_sum = n = hit_given = hit_clean = n_flip = hit_flip = n_sel = 0.0
    start = time.perf_counter()
    for i, batch in enumerate(batches):
        lr = lr_of_step(epoch * ctx.steps_per_epoch + i)
        for opt in ctx.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        with ctx.autocast():
            out = method.train_step(batch, epoch)
        for opt in ctx.optimizers:
            opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        for opt in ctx.optimizers:
            opt.step()
        idx = batch.index.cpu()
        history[idx.numpy(), epoch] = out["prob"].float().cpu().numpy()
        b = len(idx)
        loss_sum, n = loss_sum + float(out["loss"].detach()) * b, n + b
        if "selected" in out:
            selected[idx.numpy(), epoch] = out["selected"].cpu().numpy()
            n_sel += float(out["selected"].sum())
        if "pred" in out:
            pred, flip = out["pred"].cpu(), batch.y.cpu() != clean[idx]
            hit_given += float((pred == batch.y.cpu()).sum())
            hit_clean += float((pred == clean[idx]).sum())
            n_flip, hit_flip = n_flip + float(flip.sum()), hit_flip + float((pred == batch.y.cpu())[flip].sum())
        bar.update(1)
        bar.set_postfix(loss=f"{float(out['loss'].detach()):.3f}", lr=f"{lr:.3g}")
    elapsed = time.perf_counter() - start
    return {"loss": loss_sum / max(n, 1), "lr": lr, "train_acc_given": hit_given / max(n, 1),
            "train_acc_clean": hit_clean / max(n, 1), "train_memorised": hit_flip / n_flip if n_flip else None,
            "selected_frac": n_sel / max(n, 1) if selected.any() else None, "epoch_time_s": elapsed,
            "samples_per_s": n / max(elapsed, 1e-9)}


@dataclass
class FitResult:
    method: Any
    history: np.ndarray                 # (N, epochs) float32
    selected: Optional[np.ndarray]      # (N, epochs) bool, None when the method does not select
    log: List[Dict[str, Any]]
    val: List[Dict[str, Any]]           # per-epoch classification_metrics on the validation labels
    test: List[Dict[str, Any]]          # per-epoch classification_metrics on the clean test labels
    best_epoch: int                     # 0-based
    test_probs: np.ndarray              # (N_test, K) at best_epoch
    train: Dict[str, Dict[str, Any]]    # {"best", "last"}: metrics.memorisation on the training split
    outputs: Dict[str, np.ndarray]


class Inputs:
    """uint8 (N, H, W, C) images -> normalised float model inputs on the device: shuffled, augmented training
    batches (order and augmentation re-seeded from (seed, epoch), so every epoch is reproducible on its own) and
    plain evaluation passes; float (N, feat_dim) features from :func:`encoded_splits` pass through unchanged.
    Batches are index lookups into in-memory tensors (one gather per batch, no per-sample
    ``__getitem__``/collate as a DataLoader over a TensorDataset would do)."""

    def __init__(self, cfg: FinetuneConfig, normalisation: Dict[str, List[float]], device: str):
        from ssl_noise.augment import AugmentConfig

        self.cfg, self.norm, self.device = cfg, normalisation, device
        self.aug = AugmentConfig.from_mapping({**FINETUNE_AUGMENT, **cfg.augment})
        self.fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format

    def to_input(self, u8: torch.Tensor, g: Optional[torch.Generator] = None) -> torch.Tensor:
        from ssl_noise.augment import augment, normalize, to_float

        if u8.is_floating_point():  # (B, feat_dim) features of a frozen encoder (encoded_splits): inputs already
            return u8.to(self.device, non_blocking=True)
        x = to_float(u8.to(self.device, non_blocking=True))  # (B, C, H, W) in [0, 1]
        x = augment(x, self.aug, g) if g is not None else x
        return normalize(x, self.norm["mean"], self.norm["std"]).contiguous(memory_format=self.fmt)

    def batches(self, images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, *, augment: bool = False,
                shuffle: bool = False, epoch: int = 0) -> Iterator[Batch]:
        cfg = self.cfg
        if shuffle:
            order = torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, 0))
            rows = rows[torch.randperm(len(rows), generator=order)]
        g = torch.Generator(device=self.device).manual_seed(derive_seed(cfg.seed, epoch, 1)) if augment else None
        for idx in _chunks(rows, cfg.batch_size):
            yield Batch(self.to_input(images[idx], g), labels[idx].to(self.device), idx.to(self.device))

    @torch.no_grad()
    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor], u8: np.ndarray) -> np.ndarray:
        """``fn`` over the plain (non-augmented) images in eval batches, outputs stacked as float32 numpy."""
        step = self.cfg.eval_batch_size
        return torch.cat([fn(self.to_input(torch.from_numpy(u8[s:s + step]))).float().cpu()
                          for s in range(0, len(u8), step)]).numpy()


def predict_probs(method, inputs: Inputs, images: np.ndarray, autocast) -> np.ndarray:
    """(N, K) softmax probabilities of ``method.predict`` in eval mode."""
    method.eval()
    with autocast():
        return torch.from_numpy(inputs.apply(method.predict, images)).softmax(dim=1).numpy()


def evaluate(method, inputs: Inputs, images: np.ndarray, labels: np.ndarray, *, task: str,
             autocast) -> Tuple[Dict[str, Any], np.ndarray]:
    """Metrics (:func:`ssl_noise.metrics.classification_metrics`) and (N, K) probabilities on one split."""
    probs = predict_probs(method, inputs, images, autocast)
    return classification_metrics(labels, probs, task=task), probs


def encoded_splits(prep: Prepared, inputs: Inputs, device: str, autocast) -> Tuple[np.ndarray, ...]:
    """The model inputs of the train, validation and test splits: the uint8 images themselves, or, for a linear
    probe without augmentation, their (N, feat_dim) float32 features under the frozen encoder (eval mode, the
    run's precision), computed once here instead of in every epoch's forward passes."""
    data, cfg = prep.data, prep.cfg
    splits = (data.train.images, data.val.images, data.test.images)
    if not (cfg.freeze and not cfg.augmentation):
        return splits
    key = json.dumps([prep.init["sha256"], data.name, data.md5, data.image_size, len(data.val), len(data.test),
                      cfg.precision, cfg.channels_last, device])
    rows = np.asarray(data.train_indices, dtype=np.int64)
    if key in _ENCODED and len(rows):  # the same encoder and data: reuse, when every training row was encoded then
        indices, x_train, x_val, x_test = _ENCODED[key]
        position = np.full(max(int(indices.max()), int(rows.max())) + 1, -1, dtype=np.int64)
        position[indices] = np.arange(len(indices))
        if np.all(position[rows] >= 0):
            return x_train[position[rows]], x_val, x_test
    encoder = copy.deepcopy(prep.encoder).to(device, memory_format=inputs.fmt).eval()
    with autocast():
        encoded = tuple(inputs.apply(encoder, images) for images in splits)
    _ENCODED.clear()
    _ENCODED[key] = (rows, *encoded)
    return encoded


# The last encoded_splits result, (train_indices, train, val, test): a linear-probe sweep runs the cells of one
# init one after another in a process (noise rates and seeds change the labels, not the images), and HSA-NRL's
# stages train on subsets of the same split, so they all reuse one encoding.
_ENCODED: Dict[str, Tuple[np.ndarray, ...]] = {}


def fit(prep: Prepared, *, device: str = "cpu", log_path: Optional[Path] = None,
        show_progress: bool = True, make_method: Optional[Callable[[FinetuneContext], Any]] = None) -> FitResult:
    """Train ``prep.cfg.method`` on the prepared (noisy) labels and evaluate every epoch; see the module docstring.

    ``make_method(ctx)`` replaces the ROBUST lookup (``ssl_noise.refine`` continues a saved classifier this way).
    """
    from tqdm import tqdm

    from ssl_noise.pretrain import build_optimizer, lr_at

    cfg, data = prep.cfg, prep.data
    inputs = Inputs(cfg, prep.init["normalisation"], device)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32

    def autocast():
        return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)

    x_train, x_val, x_test = encoded_splits(prep, inputs, device, autocast)
    train_inputs, N = torch.from_numpy(x_train), len(data.train)
    train_set = {"rows": torch.arange(N), "labels": torch.from_numpy(prep.train_noise.noisy)}

    def build_model(k: int) -> Classifier:
        torch.manual_seed(derive_seed(cfg.seed, k, 2))  # head init
        model = Classifier(copy.deepcopy(prep.encoder), prep.feat_dim, data.num_classes, freeze=cfg.freeze)
        return model.to(device, memory_format=inputs.fmt)

    def register_optimizer(module: torch.nn.Module) -> torch.optim.Optimizer:
        ctx.optimizers.append(build_optimizer(module, cfg))
        return ctx.optimizers[-1]

    def run_stage(rows: np.ndarray, labels: np.ndarray, *, name: str, predict: Optional[np.ndarray] = None):
        stage_log = None if log_path is None else log_path.with_name(f"train_log_{name}.jsonl")
        result, probs = fit_subset(prep, rows, labels, name=name, predict=predict, device=device, log_path=stage_log,
                                   show_progress=show_progress)
        return result.history, probs  # nothing else: a method sees no metrics of the stage (test split included)

    ctx = FinetuneContext(
        num_classes=data.num_classes, labels=prep.train_noise.noisy.copy(), epochs=cfg.epochs,
        steps_per_epoch=len(_chunks(torch.arange(N), cfg.batch_size)), device=device, seed=cfg.seed,
        build_model=build_model, build_optimizer=register_optimizer,
        batches=lambda **kw: inputs.batches(train_inputs, train_set["labels"], train_set["rows"], **kw),
        predict_train=lambda fn: inputs.apply(fn, x_train), autocast=autocast,
        noise_rate=None if prep.noise["source"] == "file" else prep.noise["expected_rate"], run_stage=run_stage)
    method = make_method(ctx) if make_method is not None else ROBUST[cfg.method](ctx, cfg.method_args)
    method.setup()
    chosen, labels = method.training_set()
    if not np.any(chosen):
        raise ValueError(f"method {cfg.method!r} kept no training samples")
    train_set.update(rows=torch.from_numpy(np.flatnonzero(chosen)), labels=torch.as_tensor(labels, dtype=torch.int64))
    ctx.steps_per_epoch = len(_chunks(train_set["rows"], cfg.batch_size))
    total = ctx.steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * ctx.steps_per_epoch))
    val_labels = data.val.labels if prep.val_noise is None else prep.val_noise.noisy

    history = np.full((N, cfg.epochs), np.nan, dtype=np.float32)
    selected = np.zeros((N, cfg.epochs), dtype=bool)
    clean, given = data.train.labels, prep.train_noise.noisy
    log, val, test = [], [], []
    best, best_score, best_state, test_probs = 0, None, None, None
    bar = tqdm(total=total, desc=f"finetune {prep.run_id}", disable=not show_progress, dynamic_ncols=True)
    for epoch in range(cfg.epochs):
        stats = train_one_epoch(method, ctx, ctx.batches(augment=cfg.augmentation, shuffle=True, epoch=epoch),
                                history, selected, torch.from_numpy(clean), epoch,
                                lambda step: lr_at(step, total, warmup, cfg.lr), bar)
        stats.update(method.on_epoch_end(epoch))
        val.append(evaluate(method, inputs, x_val, val_labels, task=data.task, autocast=ctx.autocast)[0])
        test_m, probs = evaluate(method, inputs, x_test, data.test.labels, task=data.task, autocast=ctx.autocast)
        test.append(test_m)
        score = val[-1][cfg.select_metric]  # ties keep the earlier epoch
        if best_state is None or (score is not None and (best_score is None or score > best_score)):
            best, best_score, test_probs = epoch, score, probs
            best_state = {k: v.detach().clone() for k, v in method.state_dict().items()}
        record = {"epoch": epoch + 1, **stats, **{f"val_{m}": val[-1][m] for m in ("acc", "macro_f1")},
                  **{f"test_{m}": test[-1][m] for m in ("acc", "macro_f1")}, "best_epoch": best + 1}
        log.append(record)
        if log_path is not None:
            io.append_jsonl(log_path, record)
        bar.set_postfix(val_acc=f"{val[-1]['acc']:.3f}", test_acc=f"{test[-1]['acc']:.3f}")
    bar.close()

    def train_split() -> Dict[str, Any]:  # eval-mode predictions on the training images vs noisy/clean labels
        pred = predict_probs(method, inputs, x_train, ctx.autocast).argmax(axis=1)
        return memorisation(pred, clean, given)

    train, outputs = {"last": train_split()}, method.outputs()
    method.load_state_dict(best_state)
    train["best"] = train_split()
    return FitResult(method, history, selected if selected.any() else None, log, val, test, best, test_probs,
                     train, outputs)


def fit_subset(prep: Prepared, rows: np.ndarray, labels: np.ndarray, *, name: str = "stage",
               predict: Optional[np.ndarray] = None, device: str = "cpu", log_path: Optional[Path] = None,
               show_progress: bool = True) -> Tuple[FitResult, Optional[np.ndarray]]:
    """Plain cross-entropy with the same config and init on training ``rows`` (int indices) with ``labels``: a stage
    of a multi-stage method (HSA-NRL's history, anchor and correction runs), trained by this same loop.

    The given (noisy) labels stand in for the clean ones in the stage's own statistics, so nothing derived from the
    clean labels comes back. Returns the stage's :class:`FitResult` (history rows follow ``rows``) and, when
    ``predict`` (training rows) is given, the selected-epoch model's (len(predict), K) softmax on those un-augmented
    images (else None).
    """
    import dataclasses

    from ssl_noise.data.dataset import Split

    rows, data, given = np.asarray(rows, dtype=np.int64), prep.data, prep.train_noise.noisy
    sub = dataclasses.replace(
        prep, cfg=dataclasses.replace(prep.cfg, method="ce", method_args={}), run_id=f"{prep.run_id}/{name}",
        data=dataclasses.replace(data, train=Split(data.train.images[rows], given[rows]),
                                 train_indices=data.train_indices[rows]),
        train_noise=noise.NoisyLabels.from_labels(given[rows], np.asarray(labels, np.int64), np.eye(data.num_classes)))
    result = fit(sub, device=device, log_path=log_path, show_progress=show_progress)
    if predict is None:
        return result, None
    inputs = Inputs(prep.cfg, prep.init["normalisation"], device)
    images = data.train.images[np.asarray(predict, dtype=np.int64)]
    return result, predict_probs(result.method, inputs, images, result.method.ctx.autocast)


# ============ the run folder and the results table ============

def summarise(prep: Prepared, result: FitResult) -> Dict[str, Any]:
    """``metrics.json``: deterministic (no times), epochs 1-based."""
    b, last5 = result.best_epoch, result.test[-5:]
    return {"schema_version": SCHEMA_VERSION, "run_id": prep.run_id, "select_metric": prep.cfg.select_metric,
            "selected_epoch": b + 1, "epochs": prep.cfg.epochs, "class_names": prep.data.class_names,
            "test": {"best": result.test[b], "last": result.test[-1], "last5_mean": mean_metrics(last5),
                     "last5_epochs": list(range(prep.cfg.epochs - len(last5) + 1, prep.cfg.epochs + 1))},
            "val": {"best": result.val[b], "last": result.val[-1],
                    "labels": "clean" if prep.cfg.clean_val else "noisy"},
            "train": result.train, "noise": prep.noise,
            "init": {k: v for k, v in prep.init.items() if k != "normalisation"}}


def result_row(prep: Prepared, metrics: Dict[str, Any], wall: float, created: str) -> Dict[str, Any]:
    cfg, init, nz, t = prep.cfg, prep.init, prep.noise, metrics["test"]
    row = {"run_id": prep.run_id, "dataset": prep.data.name, "image_size": prep.data.image_size,
           "n_train": len(prep.data.train), "init": cfg.init, "encoder_id": init["id"],
           "encoder_sha256": init["sha256"], "backbone": init["backbone"], "stem": init["stem"],
           "protocol": "linear_probe" if cfg.freeze else "finetune", "method": cfg.method,
           "method_args": method_args_text(cfg.method_args),
           "noise_source": nz["source"], "noise_type": nz["type"], "noise_rate": nz["rate"],
           "noise_realised_rate": nz["realised_rate"], "noise_seed": nz["seed"], "noise_mode": nz["mode"],
           "clean_val": cfg.clean_val, "val_realised_rate": nz["val_realised_rate"], "seed": cfg.seed,
           "epochs": cfg.epochs, "select_metric": cfg.select_metric, "selected_epoch": metrics["selected_epoch"],
           "val_acc": metrics["val"]["best"]["acc"], "val_macro_f1": metrics["val"]["best"]["macro_f1"],
           "train_acc_noisy": metrics["train"]["best"]["acc_noisy"],
           "train_acc_clean": metrics["train"]["best"]["acc_clean"],
           "train_memorised": metrics["train"]["best"]["memorised"],
           "train_memorised_last": metrics["train"]["last"]["memorised"], "wall_time_s": round(wall, 2),
           "created_at": created}
    for suffix, key in (("", "best"), ("_last", "last"), ("_last5", "last5_mean")):
        row.update({f"test_{m}{suffix}": t[key][m] for m in SCALARS})
    return row


def append_result(runs: Path, row: Dict[str, Any]) -> Path:
    """Append ``row`` to ``runs/results.csv`` under an exclusive lock (concurrent sweeps never interleave).

    A file whose header differs (written by another ssl-noise version) is rewritten with the union of columns.
    """
    import fcntl

    import pandas as pd

    path = Path(runs) / "results.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = _io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(["" if row.get(c) is None else row.get(c) for c in RESULT_COLUMNS])
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        header = f.readline().rstrip("\n")
        if header and header != ",".join(RESULT_COLUMNS):
            frame = pd.concat([pd.read_csv(path), pd.DataFrame([row])], ignore_index=True)
            with io.atomic_path(path) as tmp:
                frame.to_csv(tmp, index=False)
            return path
        f.write(("" if header else ",".join(RESULT_COLUMNS) + "\n") + buf.getvalue())
    return path


def finetune(cfg: FinetuneConfig, *, data_root: Optional[str], checkpoints: Path, runs: Path, device: str = "cpu",
             command: Optional[List[str]] = None, show_progress: bool = True) -> Tuple[Path, bool]:
    """Prepare, train, write ``runs/<run_id>/`` and the results row; returns ``(folder, trained)``.

    ``trained`` is False when a finished run with the same id already existed (nothing was done).

    Raises:
        UserError: bad input (see :func:`prepare`); nothing is written then.
    """
    from datetime import datetime, timezone

    from ssl_noise.provenance import git_state, versions

    start = time.perf_counter()
    prep = prepare(cfg, data_root=data_root, checkpoints=checkpoints)
    folder = Path(runs) / prep.run_id
    if (folder / "metrics.json").exists():
        return folder, False
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    data = prep.data
    with io.atomic_dir(folder) as tmp:
        io.write_yaml(tmp / "config.yaml", to_dict(cfg))
        noise.write_noise_csv(tmp / "noisy_labels.csv", data.train.labels, prep.train_noise.noisy,
                              indices=data.train_indices)
        if prep.val_noise is not None:
            noise.write_noise_csv(tmp / "noisy_val_labels.csv", data.val.labels, prep.val_noise.noisy)
        result = fit(prep, device=device, log_path=tmp / "train_log.jsonl", show_progress=show_progress)
        np.save(tmp / "history.npy", result.history)
        np.save(tmp / "test_probs.npy", result.test_probs.astype(np.float32))
        if result.selected is not None:
            np.save(tmp / "selected.npy", result.selected)
        for name, array in result.outputs.items():
            if not name.isidentifier() or name in ("history", "selected", "test_probs"):
                raise ValueError(f"method output name {name!r} must be a plain name other than history/selected")
            np.save(tmp / f"{name}.npy", np.asarray(array))
        if "kept" in result.outputs:  # a selecting method: `ssl-noise refine` continues its selected-epoch state
            import safetensors.torch

            safetensors.torch.save_file({k: v.detach().cpu().contiguous() for k, v in
                                         result.method.state_dict().items()}, str(tmp / "model.safetensors"))
        metrics = summarise(prep, result)
        if "kept" in result.outputs or "flagged" in result.outputs:  # detection of the flipped labels
            # (precision/recall/F1/AUROC, clean kept per class)
            from ssl_noise.refine import detection_report

            metrics["detection"] = detection_report(result.outputs, data.train.labels, prep.train_noise.noisy,
                                                    data.num_classes)
        io.write_json(tmp / "metrics.json", metrics)
        row = result_row(prep, metrics, time.perf_counter() - start, created)
        provenance = {"schema_version": SCHEMA_VERSION, "run_id": prep.run_id, "created_at": created,
                      "wall_time_s": row["wall_time_s"], "device": device, "command": command or sys.argv,
                      "versions": versions(), "git": git_state(), "init": prep.init,
                      "augment": {**FINETUNE_AUGMENT, **cfg.augment} if cfg.augmentation else None,
                      "data": {"source": data.source, "md5": data.md5, "task": data.task, "n_train": len(data.train),
                               "n_val": len(data.val), "n_test": len(data.test)}, "result": row}
        io.write_json(tmp / "run.json", provenance)
    append_result(runs, row)
    return folder, True
