"""The self-supervised pretraining loop: images in, a registry entry out.

``pretrain(cfg, ...)`` is a plain PyTorch loop shared by every method in ``ssl_noise.methods``: the method owns its
views, heads and loss; the loop owns data, precision, optimiser and schedule, the k-NN monitor, per-epoch resumable
state, DDP and the registry write.
What the loop does and why: docs/methods.md#self-supervised-pretraining-ssl_noisemethods
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from ssl_noise import io, progress, registry
from ssl_noise.augment import AugmentConfig, to_float
from ssl_noise.backbones import BACKBONES, build_backbone, default_stem, padding_only_convs
from ssl_noise.config import PretrainConfig, from_recipe, to_dict
from ssl_noise.data import channel_stats, load_dataset, spec_label
from ssl_noise.engine import (STATE_JSON, autocast, build_optimizer, check_finite, load_training_state, lr_at,
                              memory_format, rng_state, save_training_state, set_lr, set_rng_state)
from ssl_noise.errors import NonFiniteLoss, UserError
from ssl_noise.knn import extract_features, knn_accuracy
from ssl_noise.methods import METHODS, InputSpec, SSLMethod
from ssl_noise.tracking import Tracker

#: ``kind`` of the pretraining loop's resumable state (``state.json`` + ``state-e<epoch>.safetensors``).
STATE_KIND = "pretrain"
LOG_FILE = "train_log.jsonl"


# ============ process group and seeds ============

def _init_distributed(device: str) -> tuple[int, int, str]:
    """(rank, world_size, device) — joins the torchrun process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if not torch.distributed.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    rank = torch.distributed.get_rank()
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return rank, world, device


def resolve_config(flags: Dict[str, Any], *, recipe: Optional[str] = None, overrides=()) -> tuple:
    """The pretraining config of ``flags`` over the method's recipe; returns ``(config, recipe file or None)``.

    Checks the method before looking for its recipe and the backbone before any data is loaded, so a typo
    fails at once with the list of choices.
    """

    method = flags.get("method") or PretrainConfig.method
    METHODS.get_or_fail(method)
    cfg, recipe_file = from_recipe(PretrainConfig, "pretrain", method, flags, recipe=recipe, overrides=overrides)
    BACKBONES.get_or_fail(cfg.backbone)
    return cfg, recipe_file


def work_dir(runs_root: Path, cfg: PretrainConfig) -> Path:
    """Where the resumable state of this exact config lives (a hash of the resolved config)."""
    digest = io.short_hash(to_dict(cfg), 12)
    return Path(runs_root) / "pretrain" / f"{cfg.method}-{spec_label(cfg.dataset)}-s{cfg.seed}-{digest}"


# ============ monitor ============

def knn_monitor(encoder: torch.nn.Module, data, spec: InputSpec, cfg: PretrainConfig, device: str) -> float:
    """k-NN accuracy of the current encoder: train split as the bank, validation split as queries."""
    bf16 = cfg.precision == "bf16"
    bank = extract_features(encoder, data.train.images, mean=spec.mean, std=spec.std, device=device, bf16=bf16,
                            strict=True)
    query = extract_features(encoder, data.val.images, mean=spec.mean, std=spec.std, device=device, bf16=bf16,
                             strict=True)
    return knn_accuracy(bank, data.train.labels, query, data.val.labels, len(data.class_names),
                        k=cfg.knn_k, t=cfg.knn_t)


# ============ the loop ============

def train_one_epoch(model, loader, optimizer, method: SSLMethod, g: torch.Generator, *, epoch: int,
                    steps_per_epoch: int, total_steps: int, warmup_steps: int, cfg: PretrainConfig,
                    device: str, world: int, show: bool) -> Dict[str, float]:
    """One pass over the shard; returns mean loss, last lr and throughput (samples/s over all processes)."""
    model.train()
    fmt = memory_format(cfg.channels_last)
    losses: List[float] = []
    lr = cfg.lr
    start = time.perf_counter()
    bar = progress.bar(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", enabled=show,
                       leave=False)
    for i, (batch,) in enumerate(bar):
        step = epoch * steps_per_epoch + i
        lr = lr_at(step, total_steps, warmup_steps, cfg.lr)
        set_lr([optimizer], lr)
        x = to_float(batch.to(device, non_blocking=True)).contiguous(memory_format=fmt)
        with autocast(device, cfg.precision):
            loss = model(x, g)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        method.before_step(epoch)
        optimizer.step()
        method.on_step_end((step + 1) / total_steps)
        losses.append(float(loss.detach()))
        check_finite(losses[-1], epoch=epoch, step=i, what="pretraining")
        rate = (i + 1) * len(batch) * world / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.3g}", samples_s=f"{rate:.0f}")
    elapsed = time.perf_counter() - start
    return {"loss": float(np.mean(losses)) if losses else float("nan"), "lr": lr,
            "samples_per_s": len(losses) * cfg.batch_size * world / max(elapsed, 1e-9), "epoch_time_s": elapsed}


def pretrain(cfg: PretrainConfig, *, data_root: Optional[str], checkpoints: Path, runs: Path, device: str = "cpu",
             resume: bool = False, stop_after: Optional[int] = None, command: Optional[List[str]] = None,
             show_progress: bool = True, log: Sequence[str] = ()) -> Optional[str]:
    """Train ``cfg.method`` and write the encoder to the registry; returns the new entry id (None on rank > 0).

    ``runs`` holds the resumable work folder; ``resume`` continues the last epoch state of this exact config (an
    error if there is none); ``stop_after`` stops after that many epochs (an interruption, for tests) and returns
    None; ``command`` is the argv recorded in the entry; the progress bar shows on rank 0 only; ``log`` names
    trackers (:mod:`ssl_noise.tracking`) that mirror every epoch's line into the work folder (rank 0).
    """

    rank, world, device = _init_distributed(device)
    method_cls = METHODS.get_or_fail(cfg.method)
    data = load_dataset(cfg.dataset, data_root=data_root, size=cfg.image_size, subset=cfg.subset, seed=cfg.seed)
    images = data.train.images
    if cfg.batch_size * world > len(images):
        raise UserError(f"batch size {cfg.batch_size} x {world} process(es) is larger than the "
                        f"{len(images)} training images; lower --batch-size or --subset")
    mean, std = channel_stats(images)
    spec = InputSpec(channels=images.shape[-1], image_size=images.shape[1], mean=mean, std=std,
                     augment=AugmentConfig.from_mapping(cfg.augment))
    method_cls.check_input(spec, cfg.method_args)
    method, model, stem, feat_dim = _build(cfg, method_cls, spec, device, world)
    _check_bf16_maps(cfg, method, device)
    optimizer = build_optimizer(method, cfg)
    work = work_dir(runs, cfg)
    start_epoch = _start(work, method, optimizer, cfg, device, resume=resume, rank=rank)

    # data pipeline: uint8 tensors in memory, one index lookup per batch
    dataset = TensorDataset(torch.from_numpy(images))
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.num_workers, pin_memory=device.startswith("cuda"),
                        persistent_workers=cfg.num_workers > 0)
    steps_per_epoch = len(loader)
    g = torch.Generator(device=device)
    knn_acc: Optional[float] = None
    tracker = Tracker(log if rank == 0 else (), work)
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        g.manual_seed(io.derive_seed(cfg.seed, epoch, rank))
        stats = train_one_epoch(model, loader, optimizer, method, g, epoch=epoch, steps_per_epoch=steps_per_epoch,
                                total_steps=steps_per_epoch * cfg.epochs,
                                warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)), cfg=cfg,
                                device=device, world=world, show=show_progress and rank == 0)
        last = epoch + 1 == cfg.epochs
        knn_acc = None
        if rank == 0 and (last or (epoch + 1) % cfg.knn_every == 0):
            knn_acc = knn_monitor(method.backbone, data, spec, cfg, device)
        if rank == 0:
            record = {"epoch": epoch + 1, "epochs": cfg.epochs, **stats, "knn_acc": knn_acc}
            _end_epoch(work, record, method, optimizer, show=show_progress)
            tracker.epoch(record)
        if stop_after is not None and epoch + 1 >= stop_after and not last:
            tracker.close()
            return None
    tracker.final({"knn_acc": knn_acc}, cfg.epochs)
    tracker.close()
    if rank != 0:
        return None
    meta = _entry_meta(cfg, method, data, spec, stem=stem, feat_dim=feat_dim, world=world, knn_acc=knn_acc,
                       command=command)
    return _register(checkpoints, work, method, meta, cfg)


def _build(cfg: PretrainConfig, method_cls, spec: InputSpec, device: str, world: int):
    """(method, the module to call (DDP-wrapped under torchrun), stem, feat_dim), seeded by ``cfg.seed``."""
    stem = cfg.stem or default_stem(spec.image_size)
    torch.manual_seed(cfg.seed)  # identical initial weights on every process (DDP also broadcasts rank 0's)
    backbone, feat_dim = build_backbone(cfg.backbone, stem=stem, in_channels=spec.channels)
    method = method_cls(backbone, feat_dim, spec, cfg.method_args).to(device,
                                                                       memory_format=memory_format(cfg.channels_last))
    model: torch.nn.Module = method
    if world > 1:
        if cfg.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            method = model
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[torch.cuda.current_device()]
                                                          if device.startswith("cuda") else None)
    return method, model, stem, feat_dim


def _check_bf16_maps(cfg: PretrainConfig, method, device: str) -> None:
    """Refuse bf16 on CPU when inputs smaller than the image (jigsaw's tiles, DINO's local views) reach 1x1 maps at
    a strided conv: the kernel's garbage gradients land in weights that whole images use later (two jigsaw runs
    with the ImageNet stem had NaN features by epoch 5)."""
    size = method.smallest_input()
    if device != "cpu" or cfg.precision != "bf16" or size >= method.spec.image_size:
        return
    convs = padding_only_convs(method.backbone, size, method.spec.channels)
    if convs:
        raise UserError(f"{cfg.method}'s {size} px inputs reach 1x1 maps at {', '.join(convs)}, where bf16 on CPU "
                        f"corrupts the gradient of taps that see only padding; add --set precision=fp32")


def resumable_hint(pretrain_runs: Path, method: str) -> str:
    """The interrupted pretraining runs under ``pretrain_runs`` (``<runs>/pretrain``), newest first, each with the
    command that resumes it as typed: its own ``config.yaml`` is the recipe, so no original flag must be recalled."""
    found = sorted((p for p in Path(pretrain_runs).glob("*/") if (p / STATE_JSON).is_file()),
                   key=lambda p: (p / STATE_JSON).stat().st_mtime, reverse=True)
    mine = [p for p in found if p.name.startswith(f"{method}-")] or found
    if not mine:
        return f"no interrupted pretraining run in {pretrain_runs}"
    return "interrupted runs, newest first: " + "; ".join(
        f"ssl-noise pretrain --recipe {p / 'config.yaml'} --resume" for p in mine[:3])


def _start(work: Path, method, optimizer, cfg: PretrainConfig, device: str, *, resume: bool, rank: int) -> int:
    """The first epoch to train: 0, or the resumed state's epoch (model and optimiser restored)."""
    start_epoch = 0
    if resume:
        loaded = load_training_state(work, kind=STATE_KIND)
        if loaded is None:
            raise UserError(f"nothing to resume for this configuration (no {work / STATE_JSON}); "
                            + resumable_hint(work.parent, cfg.method))
        start_epoch, state = loaded
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
    elif rank == 0:
        work.mkdir(parents=True, exist_ok=True)
        (work / LOG_FILE).unlink(missing_ok=True)
    if rank == 0:
        io.write_yaml(work / "config.yaml", to_dict(cfg))
    return start_epoch


def _end_epoch(work: Path, record: Dict[str, Any], method, optimizer, *, show: bool = True) -> None:
    """Log the epoch (JSON line + one line on stderr) and save the resumable state atomically (rank 0): the
    model (method heads, momentum encoders, queues), optimiser and global RNGs as safetensors + JSON."""
    io.append_jsonl(work / LOG_FILE, record)
    if show and not progress.is_quiet():
        print(progress.epoch_line(record), file=sys.stderr)
    save_training_state(work, {"model": method.state_dict(), "optimizer": optimizer.state_dict(),
                               "rng": rng_state()}, epoch=record["epoch"], kind=STATE_KIND)


def _entry_meta(cfg: PretrainConfig, method, data, spec: InputSpec, *, stem: str, feat_dim: int, world: int,
                knn_acc: Optional[float], command: Optional[List[str]]) -> Dict[str, Any]:
    """The registry entry's ``meta.json`` fields that the loop knows (the registry adds ids, hashes, versions)."""
    return {
        "method": cfg.method, "method_config": {**dict(cfg.method_args), **_resolved_args(method)},
        "backbone": cfg.backbone, "stem": stem, "feat_dim": feat_dim, "dataset": data.name,
        "image_size": spec.image_size, "channels": spec.channels,
        "normalisation": {"mean": list(spec.mean), "std": list(spec.std)}, "augment": dict(vars(spec.augment)),
        "epochs": cfg.epochs, "batch_size": cfg.batch_size, "world_size": world,
        "optimizer": {"name": cfg.optimizer, "lr": cfg.lr, "momentum": cfg.momentum,
                      "weight_decay": cfg.weight_decay, "warmup_epochs": cfg.warmup_epochs},
        "precision": cfg.precision, "seed": cfg.seed, "subset": cfg.subset,
        "num_train_samples": int(len(data.train)),
        "metrics": {"knn_acc": knn_acc, "knn_k": cfg.knn_k, "knn_t": cfg.knn_t},
        "command": command or sys.argv,
    }


def _register(checkpoints: Path, work: Path, method, meta: Dict[str, Any], cfg: PretrainConfig) -> str:
    """Save the backbone as a registry entry, then drop the resumable state (the entry is the artefact now; a
    diverged encoder that the registry refuses leaves no state either: resuming it would diverge again)."""
    try:
        entry = registry.save_entry(checkpoints, cpu_copy(method.backbone), meta, config=to_dict(cfg),
                                    train_log_path=work / LOG_FILE, extra_files=method.extra_files())
    except NonFiniteLoss:
        _drop_state(work)
        raise
    _drop_state(work)
    return entry


def _drop_state(work: Path) -> None:
    for state_file in [work / STATE_JSON, *work.glob("state-e*.safetensors")]:
        state_file.unlink(missing_ok=True)


def _resolved_args(method: SSLMethod) -> Dict[str, Any]:
    """The method's hyper-parameters after defaults were applied (recorded in meta.json)."""
    from dataclasses import asdict, is_dataclass

    return asdict(method.args) if is_dataclass(method.args) else {}


def cpu_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A CPU, contiguous-format copy of ``module`` for saving (channels_last weights are permuted views)."""
    import copy

    clone = copy.deepcopy(module).cpu().to(memory_format=torch.contiguous_format)
    for p in clone.parameters():
        p.data = p.data.contiguous()
    return clone

