"""The training engine both loops share: optimiser, learning-rate schedule, precision, memory format, state files.

Pretraining and fine-tuning differ in what they train, not in how a step is taken; keeping these pieces in one
place means a change of optimiser or precision policy reaches both loops (and the benchmarks) at once.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from dataclasses import dataclass
from typing import Any, ContextManager, Dict, List, Optional, Tuple

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


def build_optimizer(model: torch.nn.Module, cfg: Any, recipe: Optional["Recipe"] = None) -> torch.optim.Optimizer:
    """SGD, AdamW or LARS (``cfg.optimizer``) with weight decay on weights only (BatchNorm and biases are excluded,
    as in SimCLR). ``cfg`` is a PretrainConfig or FinetuneConfig (lr, momentum, weight_decay, optimizer); a
    method's ``recipe`` (``protocol: paper``) replaces those four."""
    from lightly.models.utils import get_weight_decay_parameters

    cfg = recipe or cfg
    decay, no_decay = get_weight_decay_parameters([model])
    groups = [{"params": [p for p in decay if p.requires_grad], "weight_decay": cfg.weight_decay},
              {"params": [p for p in no_decay if p.requires_grad], "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=getattr(cfg, "nesterov", False))
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


# ============ resumable training state: safetensors for tensors, JSON for the rest ============

#: Version of the resumable state files (``state.json`` + ``state-e<epoch>.safetensors``); docs/formats.md.
STATE_SCHEMA_VERSION = 1
STATE_JSON = "state.json"


def pack_state(tree: Any) -> tuple[Dict[str, torch.Tensor], Any]:
    """Split a nested state (dicts, lists, tuples, tensors, numpy arrays, scalars) into ``(tensors, skeleton)``:
    every tensor or array goes to ``tensors`` under its path, the skeleton is plain JSON that names it. Written by
    hand because optimiser and RNG states mix tensors with ints, tuples and int dict keys, which neither
    safetensors nor JSON holds alone, and pickle is not an option.

    >>> import numpy as np
    >>> tensors, skeleton = pack_state({"step": 3, "w": torch.ones(2), 0: (np.zeros(1, np.int8), None)})
    >>> sorted(tensors), skeleton["__items__"][0], unpack_state(skeleton, tensors)[0][0].dtype
    (['0.0', 'w'], ['step', 3], dtype('int8'))
    """
    import numpy as np

    tensors: Dict[str, torch.Tensor] = {}
    seen: set = set()

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            if t.numel() and t.data_ptr() in seen:  # safetensors refuses tensors that share memory
                t = t.clone()
            seen.add(t.data_ptr())
            tensors[path] = t
            return {"__tensor__": path}
        if isinstance(obj, np.ndarray):
            tensors[path] = torch.from_numpy(np.array(obj, copy=True, order="C"))
            return {"__ndarray__": path}
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, tuple):
            return {"__tuple__": [walk(v, f"{path}.{i}".lstrip(".")) for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [walk(v, f"{path}.{i}".lstrip(".")) for i, v in enumerate(obj)]
        if isinstance(obj, dict):
            items = [[k, walk(v, f"{path}.{k}".lstrip("."))] for k, v in obj.items()]
            if all(isinstance(k, str) and not k.startswith("__") for k in obj):
                return dict(items)
            return {"__items__": items}  # int keys (optimiser state) survive JSON as keys of pairs
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        raise TypeError(f"cannot store {type(obj).__name__} at {path!r} in a training state")

    return tensors, walk(tree, "")


def unpack_state(skeleton: Any, tensors: Dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`pack_state` (arrays come back as numpy, tensors on CPU)."""
    if isinstance(skeleton, list):
        return [unpack_state(v, tensors) for v in skeleton]
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__ndarray__" in skeleton:
            return tensors[skeleton["__ndarray__"]].numpy()
        if "__tuple__" in skeleton:
            return tuple(unpack_state(v, tensors) for v in skeleton["__tuple__"])
        if "__items__" in skeleton:
            return {k: unpack_state(v, tensors) for k, v in skeleton["__items__"]}
        return {k: unpack_state(v, tensors) for k, v in skeleton.items()}
    return skeleton


def save_training_state(folder: str | Path, tree: Dict[str, Any], *, epoch: int, kind: str) -> Path:
    """Write a resumable state after ``epoch`` epochs: ``state-e<epoch>.safetensors`` first, then ``state.json``
    (the skeleton, naming that file), each atomically, then older tensor files go. A kill at any moment leaves
    a ``state.json`` whose tensor file is complete. Returns the JSON's path."""
    import json
    import safetensors.torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, skeleton = pack_state(tree)
    name = f"state-e{epoch:04d}.safetensors"
    with io.atomic_path(folder / name) as tmp:
        safetensors.torch.save_file(tensors, str(tmp))
    record = {"schema_version": STATE_SCHEMA_VERSION, "kind": kind, "epoch": epoch, "tensors": name,
              "state": skeleton}
    with io.atomic_path(folder / STATE_JSON) as tmp:
        tmp.write_text(json.dumps(record))
    for old in folder.glob("state-e*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return folder / STATE_JSON


def load_training_state(folder: str | Path, *, kind: str) -> Optional[tuple[int, Dict[str, Any]]]:
    """``(epochs done, state)`` written by :func:`save_training_state`, or None when there is none."""
    import json

    import safetensors
    import safetensors.torch

    from ssl_noise.errors import UserError

    path = Path(folder) / STATE_JSON
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        tensors = safetensors.torch.load_file(str(Path(folder) / record["tensors"]))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, safetensors.SafetensorError) as e:
        # a pickle (or anything else) where the safetensors file should be is refused, never unpickled
        raise UserError(f"the resumable state in {folder} cannot be read ({e}); remove the folder to start over")
    if record.get("schema_version") != STATE_SCHEMA_VERSION or record.get("kind") != kind:
        raise UserError(f"{path}: a {record.get('kind')!r} state of schema {record.get('schema_version')!r}, "
                        f"expected {kind!r} {STATE_SCHEMA_VERSION}; remove the folder to start over")
    return int(record["epoch"]), unpack_state(record["state"], tensors)


def rng_state() -> Dict[str, Any]:
    """The process-wide generators: torch CPU (and every CUDA device once CUDA is initialised), numpy's legacy
    global generator and Python's ``random``. The loops seed their own per-epoch generators from (seed, epoch);
    these are saved so that any code drawing from the global ones resumes exactly too."""
    import random

    import numpy as np

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore :func:`rng_state` (CUDA only when the device count matches)."""
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


@dataclass(frozen=True)
class Recipe:
    """A method's published training recipe (its authors' code), applied under ``protocol: paper``: optimiser,
    learning-rate schedule, Adam's beta1 switch, gradient clipping. Schedule points are fractions of the run
    (``decay_start=0.4``: the authors' epoch 80 of 200), so they scale with ``epochs``; ``source`` cites the
    code. docs/methods.md, "Training protocols", lists every method's."""

    optimizer: str                      # sgd | adam
    lr: float
    momentum: float = 0.9               # SGD momentum; Adam beta1 (before ``beta1_after``)
    weight_decay: float = 0.0
    nesterov: bool = False
    schedule: str = "constant"          # constant | step | linear_decay | cosine_restarts
    milestones: Tuple[float, ...] = ()  # step: fractions of the run where lr *= gamma
    gamma: float = 0.1
    decay_start: float = 0.0            # linear_decay: lr falls linearly to 0 from this fraction on
    beta1_after: Optional[float] = None  # linear_decay with adam: beta1 from decay_start on (Co-teaching's code)
    period: float = 1.0                 # cosine_restarts: one cycle's length as a fraction of the run
    eta_min: float = 0.0                # cosine_restarts: the lr each cycle ends at
    grad_clip: Optional[float] = None   # max gradient norm
    source: str = ""

    def lr_at(self, step: int, total: int) -> float:
        """The learning rate at optimiser step ``step`` of ``total``.

        >>> r = Recipe("adam", 1e-3, schedule="linear_decay", decay_start=0.4)
        >>> [round(r.lr_at(s, 100), 6) for s in (0, 40, 70, 99)]
        [0.001, 0.001, 0.0005, 1.7e-05]
        >>> [Recipe("sgd", 0.1, schedule="step", milestones=(0.5,)).lr_at(s, 10) for s in (4, 5)]
        [0.1, 0.010000000000000002]
        """
        t = step / max(total, 1)
        if self.schedule == "step":
            return self.lr * self.gamma ** sum(t >= m for m in self.milestones)
        if self.schedule == "linear_decay":
            return self.lr if t < self.decay_start else self.lr * (1 - t) / (1 - self.decay_start)
        if self.schedule == "cosine_restarts":
            phase = (t % self.period) / self.period
            return self.eta_min + (self.lr - self.eta_min) * (1 + math.cos(math.pi * phase)) / 2
        return self.lr

    def beta1_at(self, step: int, total: int) -> Optional[float]:
        """Adam's beta1 at ``step`` (None: leave it)."""
        if self.beta1_after is None or self.optimizer != "adam":
            return None
        return self.beta1_after if step / max(total, 1) >= self.decay_start else self.momentum

    def describe(self) -> str:
        extra = ", nesterov" if self.nesterov else ""
        return f"{self.optimizer} lr {self.lr:g}, momentum {self.momentum:g}{extra}, wd {self.weight_decay:g}, " \
               f"{self.schedule}"


def scaled_epochs(paper: int, paper_total: int, epochs: int) -> int:
    """A phase start of the authors' schedule (``paper`` of their ``paper_total`` epochs) at this run's length,
    at least 1: Co-teaching's 10-epoch ramp of 200 is 2 epochs of a 40-epoch run.

    >>> scaled_epochs(10, 200, 40), scaled_epochs(20, 200, 200), scaled_epochs(10, 300, 3)
    (2, 20, 1)
    """
    return max(1, int(round(paper * epochs / paper_total)))


def set_beta1(optimizers: List[torch.optim.Optimizer], beta1: float) -> None:
    """Adam's first-moment decay on every Adam optimiser (Co-teaching's code switches it when its lr decays)."""
    for opt in optimizers:
        for group in opt.param_groups:
            if "betas" in group:
                group["betas"] = (beta1, group["betas"][1])
