"""What every self-supervised method provides, and nothing more: the :class:`SSLMethod` contract and ``METHODS``.

A method owns the encoder and its heads, makes its views and returns a loss; the loop (``ssl_noise.pretrain``) owns
everything else. That split keeps each method file readable on its own and lets one loop serve all methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Mapping, Sequence, Type

import torch
from torch import nn

from ssl_noise.augment import AugmentConfig, augment
from ssl_noise._registry import Registry
from ssl_noise.config import NoArgs, resolve

# Resolution of the momentum schedules (``cosine_momentum``): fine enough that neighbouring steps differ.
_SCHEDULE_STEPS = 100_000

#: The registry every method file adds itself to with ``@METHODS.register("<name>")``.
METHODS: Registry = Registry("method")


@dataclass(frozen=True)
class InputSpec:
    """The input contract of the encoder being trained (also written to the registry's ``meta.json``)."""

    channels: int
    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def cosine_momentum(progress: float, start: float, end: float = 1.0) -> float:
    """EMA momentum after a fraction ``progress`` of training: lightly's ``cosine_schedule`` from ``start`` to ``end``.

    Methods with a momentum (teacher) encoder call it from ``on_step_end``, so the update happens once per optimiser
    step. ``cosine_schedule`` counts integer steps and the loop reports a fraction, so it is evaluated on a fine grid.
    """
    from lightly.utils.scheduler import cosine_schedule

    step = round(min(max(progress, 0.0), 1.0) * _SCHEDULE_STEPS)
    return cosine_schedule(step, _SCHEDULE_STEPS + 1, start, end)


def distributed() -> bool:
    """True inside a torchrun/DDP job: contrastive losses then gather negatives from every process."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class SSLMethod(nn.Module):
    """Base class: holds the backbone, the input spec and the parsed method arguments.

    Contract with the training loop:

    * ``forward(x, g)`` is the training step: ``x`` is a float batch (B, C, H, W) in [0, 1] on the training device
      (un-normalised, un-augmented), ``g`` the ``torch.Generator`` every random choice must use (so a run is
      reproducible and resumable). It returns the loss; it is ``forward`` so that DDP's gradient hooks work.
    * ``before_step(epoch)`` runs between backward and the optimiser step (DINO cancels its last layer's gradients
      in the first epoch here).
    * ``on_step_end(progress)`` runs after each optimiser step (MoCo's momentum update lives here).
    * ``extra_files()`` returns JSON-able objects stored with the registry entry (jigsaw's permutation set).
    * ``check_input(spec, args)`` rejects impossible set-ups before any work (jigsaw on images too small to tile).

    ``self.backbone`` is a torchvision ResNet with ``fc`` removed; it is what the registry saves.
    """

    Args: ClassVar[Type] = NoArgs

    def __init__(self, backbone: nn.Module, feat_dim: int, spec: InputSpec, args: Mapping[str, Any] | None = None):
        super().__init__()
        self.backbone = backbone
        self.feat_dim = feat_dim
        self.spec = spec
        self.args = resolve(self.Args, args)

    @classmethod
    def check_input(cls, spec: InputSpec, args: Mapping[str, Any] | None = None) -> None:
        """Raise ``UserError`` when this method cannot train on inputs described by ``spec``."""

    def forward(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def smallest_input(self) -> int:
        """Side in px of the smallest image the backbone is fed in training (jigsaw's tiles, DINO's local views):
        where it differs from the image size, weights unused in training are used at evaluation."""
        return self.spec.image_size

    def before_step(self, epoch: int) -> None:
        """Hook after ``backward`` and before the optimiser step; ``epoch`` counts from 0."""

    def on_step_end(self, progress: float) -> None:
        """Hook after each optimiser step; ``progress`` in [0, 1] is the fraction of all steps done."""

    def extra_files(self) -> Dict[str, Any]:
        """JSON-able objects saved next to the weights (file name -> content)."""
        return {}

    def two_views(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Two augmented, normalised views of ``x`` stacked as (2B, C, H, W): view 0 of every image, then view 1.
        One batch through the backbone keeps BatchNorm statistics over both views, as the papers' code does."""
        return torch.cat([self.normalize(augment(x, self.spec.augment, g)),
                          self.normalize(augment(x, self.spec.augment, g))])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the dataset normalisation recorded in the spec (after augmentation); the result is
        ``channels_last`` because that is the layout the backbone's bf16 convolutions are fastest in."""
        m = torch.as_tensor(self.spec.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.as_tensor(self.spec.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return ((x - m) / s).contiguous(memory_format=torch.channels_last)
