"""The self-supervised pretraining loop: images in, a registry entry out.

``pretrain(cfg, ...)`` is a plain PyTorch loop shared by every method in ``ssl_noise.methods``. The method owns its
views, heads and loss; the loop owns the rest:

* data: the training split held in memory as uint8 (N, H, W, C); batches are index lookups, augmentation runs
  batched on the training device (``ssl_noise.augment``), so nothing is decoded per step;
* speed: bf16 autocast and ``channels_last`` on CPU and CUDA (about 2x fp32 for a ResNet-18 step on this CPU);
* optimisation: SGD / Adam / LARS, linear warm-up then cosine decay per step, no weight decay on BN and bias;
* monitoring: a faiss k-NN classifier on the validation split every ``knn_every`` epochs and at the end,
  one JSON line per epoch in ``train_log.jsonl``, a tqdm bar with loss, samples/s and ETA;
* resume: the full training state is saved after every epoch in a work folder outside the registry
  (``<runs>/pretrain/<config hash>/``). All randomness of an epoch (sample order, augmentations) is re-seeded
  from (seed, epoch, rank), so a resumed run repeats exactly what an uninterrupted run would have done;
* scale-out: under ``torchrun`` each process trains on its shard (``DistributedSampler``), DDP averages
  gradients, contrastive losses gather negatives from all processes, and rank 0 writes the entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from ssl_noise import io
from ssl_noise.augment import AugmentConfig, to_float
from ssl_noise.config import PretrainConfig, to_dict
from ssl_noise.data import spec_label
from ssl_noise.errors import UserError
from ssl_noise.methods import METHODS, InputSpec, SSLMethod

STATE_FILE = "last_state.pt"


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
    from ssl_noise.backbones import BACKBONES
    from ssl_noise.config import from_recipe

    method = flags.get("method") or PretrainConfig.method
    METHODS.get_or_fail(method)
    cfg, recipe_file = from_recipe(PretrainConfig, "pretrain", method, flags, recipe=recipe, overrides=overrides)
    BACKBONES.get_or_fail(cfg.backbone)
    return cfg, recipe_file

def work_dir(runs_root: Path, cfg: PretrainConfig) -> Path:
    """Where the resumable state of this exact config lives (a hash of the resolved config)."""
    digest = hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:12]
    return Path(runs_root) / "pretrain" / f"{cfg.method}-{spec_label(cfg.dataset)}-s{cfg.seed}-{digest}"


# ============ optimiser and schedule ============

def build_optimizer(model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """SGD, Adam or LARS with weight decay on weights only (BatchNorm and biases are excluded, as in SimCLR)."""
    from lightly.models.utils import get_weight_decay_parameters

    decay, no_decay = get_weight_decay_parameters([model])
    groups = [{"params": [p for p in decay if p.requires_grad], "weight_decay": cfg.weight_decay},
              {"params": [p for p in no_decay if p.requires_grad], "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    from lightly.utils.lars import LARS

    return LARS(groups, lr=cfg.lr, momentum=cfg.momentum)


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warm-up to ``peak`` then cosine decay to 0, evaluated per optimiser step."""
    from lightly.utils.scheduler import cosine_warmup_schedule

    return cosine_warmup_schedule(step, max(total_steps, 1), peak, 0.0, min(warmup_steps, total_steps), 0.0)


# ============ monitor ============

def knn_monitor(encoder: torch.nn.Module, data, spec: InputSpec, cfg: PretrainConfig, device: str) -> float:
    """k-NN accuracy of the current encoder: train split as the bank, validation split as queries."""
    from ssl_noise.knn import extract_features, knn_accuracy

    bf16 = cfg.precision == "bf16"
    bank = extract_features(encoder, data.train.images, mean=spec.mean, std=spec.std, device=device, bf16=bf16)
    query = extract_features(encoder, data.val.images, mean=spec.mean, std=spec.std, device=device, bf16=bf16)
    return knn_accuracy(bank, data.train.labels, query, data.val.labels, len(data.class_names),
                        k=cfg.knn_k, t=cfg.knn_t)


def channel_stats(images: np.ndarray) -> tuple[list, list]:
    """Per-channel mean and std of uint8 images (N, H, W, C) in [0, 1] units — the recorded normalisation."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return [round(float(v), 4) for v in x.mean(0)], [round(float(v), 4) for v in x.std(0).clip(1e-3)]


# ============ the loop ============

def train_one_epoch(model, loader, optimizer, method: SSLMethod, g: torch.Generator, *, epoch: int,
                    steps_per_epoch: int, total_steps: int, warmup_steps: int, cfg: PretrainConfig,
                    device: str, world: int, show: bool) -> Dict[str, float]:
    """One pass over the shard; returns mean loss, last lr and throughput (samples/s over all processes)."""
    from tqdm import tqdm

    model.train()
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    losses: List[float] = []
    lr = cfg.lr
    start = time.perf_counter()
    bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show,
               leave=False, dynamic_ncols=True)
    for i, (batch,) in enumerate(bar):
        step = epoch * steps_per_epoch + i
        lr = lr_at(step, total_steps, warmup_steps, cfg.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x = to_float(batch.to(device, non_blocking=True)).contiguous(memory_format=fmt)
        with torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(x, g)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.on_step_end((step + 1) / total_steps)
        losses.append(float(loss.detach()))
        rate = (i + 1) * len(batch) * world / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.3g}", samples_s=f"{rate:.0f}")
    elapsed = time.perf_counter() - start
    return {"loss": float(np.mean(losses)) if losses else float("nan"), "lr": lr,
            "samples_per_s": len(losses) * cfg.batch_size * world / max(elapsed, 1e-9), "epoch_time_s": elapsed}


def pretrain(cfg: PretrainConfig, *, data_root: Optional[str], checkpoints: Path, runs: Path, device: str = "cpu",
             resume: bool = False, stop_after: Optional[int] = None, command: Optional[List[str]] = None,
             show_progress: bool = True) -> Optional[str]:
    """Train ``cfg.method`` and write the encoder to the registry; returns the new entry id (None on rank > 0).

    Args:
        cfg: the resolved configuration.
        data_root: ``--data-root`` (dataset search path).
        checkpoints: registry root.
        runs: root of the resumable work folder.
        device: ``cpu`` or ``cuda`` (under torchrun each process takes its ``LOCAL_RANK`` GPU).
        resume: continue from the last epoch state of this exact config; an error if there is none.
        stop_after: stop after this many epochs (simulates an interruption in tests); returns None.
        command: argv recorded in the entry's metadata.
        show_progress: show the tqdm bar (rank 0 only).
    """
    from ssl_noise import registry
    from ssl_noise.backbones import build_backbone, default_stem
    from ssl_noise.data import load_dataset

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
    stem = cfg.stem or default_stem(spec.image_size)

    # ---- model, optimiser, state ----
    torch.manual_seed(cfg.seed)  # identical initial weights on every process (DDP also broadcasts rank 0's)
    backbone, feat_dim = build_backbone(cfg.backbone, stem=stem, in_channels=spec.channels)
    method = method_cls(backbone, feat_dim, spec, cfg.method_args)
    method = method.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    model: torch.nn.Module = method
    if world > 1:
        if cfg.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            method = model
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[torch.cuda.current_device()]
                                                          if device.startswith("cuda") else None)
    optimizer = build_optimizer(method, cfg)

    work = work_dir(runs, cfg)
    state_path = work / STATE_FILE
    log_path = work / "train_log.jsonl"
    start_epoch = 0
    if resume:
        if not state_path.exists():
            raise UserError(f"nothing to resume for this configuration (no {state_path}); "
                            f"resume needs the same method, dataset, seed and settings as the interrupted run")
        state = torch.load(state_path, map_location=device, weights_only=True)
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
    elif rank == 0:
        work.mkdir(parents=True, exist_ok=True)
        log_path.unlink(missing_ok=True)
    if rank == 0:
        io.write_yaml(work / "config.yaml", to_dict(cfg))

    # ---- data pipeline: uint8 tensors in memory, one index lookup per batch ----
    dataset = TensorDataset(torch.from_numpy(images))
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.num_workers, pin_memory=device.startswith("cuda"),
                        persistent_workers=cfg.num_workers > 0)
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    g = torch.Generator(device=device)

    knn_acc: Optional[float] = None
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        g.manual_seed(io.derive_seed(cfg.seed, epoch, rank))
        stats = train_one_epoch(model, loader, optimizer, method, g, epoch=epoch, steps_per_epoch=steps_per_epoch,
                                total_steps=total_steps, warmup_steps=warmup_steps, cfg=cfg, device=device,
                                world=world, show=show_progress and rank == 0)
        last = epoch + 1 == cfg.epochs
        knn_acc = None
        if rank == 0 and (last or (epoch + 1) % cfg.knn_every == 0):
            knn_acc = knn_monitor(method.backbone, data, spec, cfg, device)
        if rank == 0:
            record = {"epoch": epoch + 1, **stats, "knn_acc": knn_acc}
            io.append_jsonl(log_path, record)
            print(json.dumps(record), file=sys.stderr)
            with io.atomic_path(state_path) as tmp:
                torch.save({"model": method.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1},
                           tmp)
        if stop_after is not None and epoch + 1 >= stop_after and not last:
            return None

    if rank != 0:
        return None
    # ---- the registry entry ----
    meta: Dict[str, Any] = {
        "method": cfg.method, "method_config": {**dict(cfg.method_args), **_resolved_args(method)},
        "backbone": cfg.backbone, "stem": stem, "feat_dim": feat_dim, "dataset": data.name,
        "image_size": spec.image_size, "channels": spec.channels,
        "normalisation": {"mean": list(mean), "std": list(std)}, "augment": dict(vars(spec.augment)),
        "epochs": cfg.epochs, "batch_size": cfg.batch_size, "world_size": world,
        "optimizer": {"name": cfg.optimizer, "lr": cfg.lr, "momentum": cfg.momentum,
                      "weight_decay": cfg.weight_decay, "warmup_epochs": cfg.warmup_epochs},
        "precision": cfg.precision, "seed": cfg.seed, "subset": cfg.subset,
        "num_train_samples": int(len(images)), "metrics": {"knn_acc": knn_acc, "knn_k": cfg.knn_k, "knn_t": cfg.knn_t},
        "command": command or sys.argv,
    }
    backbone_cpu = cpu_copy(method.backbone)
    entry = registry.save_entry(checkpoints, backbone_cpu, meta, config=to_dict(cfg), train_log_path=log_path,
                                extra_files=method.extra_files())
    state_path.unlink(missing_ok=True)  # finished: the registry entry is the artefact now
    return entry


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

