"""The training engine both loops share: optimiser, learning-rate schedule, precision, memory format, state files.

Pretraining and fine-tuning differ in what they train, not in how a step is taken; keeping these pieces in one
place means a change of optimiser or precision policy reaches both loops (and the benchmarks) at once.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, ContextManager, Dict, List

import torch

from ssl_noise import io
from ssl_noise.errors import NonFiniteLoss


def check_finite(loss: float, *, epoch: int, step: int, what: str) -> None:
    """Stop a loop at the first non-finite loss, naming the 1-based ``epoch`` and ``step``.

    ``loss`` is the Python float both loops already take for logging (``float(loss.detach())``, one host sync per
    step), so this check adds no synchronisation of its own; going on would train on garbage and register it.
    """
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"{what} diverged: the loss is {loss} at epoch {epoch + 1}, step {step + 1}; "
                            f"lower the learning rate (--lr) and run again (nothing was registered or recorded)")


def build_optimizer(model: torch.nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """SGD, AdamW or LARS (``cfg.optimizer``) with weight decay on weights only (BatchNorm and biases are excluded,
    as in SimCLR). ``cfg`` is a PretrainConfig or FinetuneConfig (lr, momentum, weight_decay, optimizer)."""
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


def set_lr(optimizers: List[torch.optim.Optimizer], lr: float) -> None:
    """The loops own the schedule: every registered optimiser gets the step's learning rate."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr


def autocast(device: str, precision: str) -> ContextManager:
    """bf16 autocast on the device's type when ``precision == "bf16"``, else a no-op context."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def memory_format(channels_last: bool) -> torch.memory_format:
    """``channels_last`` for convolutional speed on CPU (AVX-512 bf16) and GPU, else the contiguous default."""
    return torch.channels_last if channels_last else torch.contiguous_format


def cpu_state(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A detached, contiguous CPU copy of a state dict: what safetensors stores (channels_last weights are
    permuted views)."""
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_state(state: Dict[str, torch.Tensor], path: str | Path) -> None:
    """Write a state dict atomically as safetensors (no pickle anywhere)."""
    import safetensors.torch

    with io.atomic_path(path) as tmp:
        safetensors.torch.save_file(cpu_state(state), str(tmp))


def load_state(path: str | Path) -> Dict[str, torch.Tensor]:
    """A safetensors state dict (CPU tensors)."""
    import safetensors.torch

    return safetensors.torch.load_file(str(path))
