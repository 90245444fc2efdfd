"""RotNet (Gidaris et al., ICLR 2018, arXiv 1803.07728): predict by how many quarter turns an image was rotated.

Rotations are exact ``torch.rot90`` and the spec's augmentation runs first with vertical flips and quarter turns
off (a vertical flip is a 180° turn plus a horizontal flip). Defaults, deviations and the caveat for images with no
"up": docs/methods.md, "Rotation".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ssl_noise.augment import augment
from ssl_noise.errors import UserError
from ssl_noise.methods.base import METHODS, InputSpec, SSLMethod

MODES = ("all", "sampled")


@dataclass
class RotationArgs:
    """Hyper-parameters of :class:`Rotation` (the recipe's ``method_args``)."""

    mode: str = "all"     # "all": 4 rotations of every image (4B forward); "sampled": one random rotation each
    hidden_dim: int = 0   # 0: linear head on the features; > 0: Linear -> BN -> ReLU -> Linear

    def validate(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"rotation mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.hidden_dim < 0:
            raise UserError(f"rotation hidden_dim must be >= 0, got {self.hidden_dim}")


def rotate_batch(x: torch.Tensor, mode: str, g: torch.Generator | None = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotate a batch by quarter turns and return the rotation labels.

    Args:
        x: images (B, C, H, W) with H == W.
        mode: ``"all"``: output (4B, ...) holding every image at k = 0, 1, 2, 3 (k-major: rows ``k*B .. k*B+B-1``
            are ``rot90(x, k)``); ``"sampled"``: output (B, ...) with one rotation per image drawn from ``g``.
        g: generator for ``"sampled"``, on ``x``'s device.

    Returns:
        ``(rotated, k)``: ``rotated[i] == torch.rot90(source[i], k[i], dims=(-2, -1))`` where ``source`` is ``x``
        repeated 4 times (``"all"``) or ``x`` itself (``"sampled"``); ``k`` is int64.

    >>> x = torch.arange(4.0).view(1, 1, 2, 2)
    >>> r, k = rotate_batch(x, "all")
    >>> k.tolist(), r[1, 0].tolist()
    ([0, 1, 2, 3], [[1.0, 3.0], [0.0, 2.0]])
    """
    b = x.shape[0]
    stacked = torch.stack([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])  # (4, B, C, H, W)
    if mode == "all":
        k = torch.arange(4, device=x.device).repeat_interleave(b)                 # k: (4B,)
        return stacked.flatten(0, 1), k
    if mode == "sampled":
        k = torch.randint(0, 4, (b,), generator=g, device=x.device)              # k: (B,)
        return stacked[k, torch.arange(b, device=x.device)], k
    raise UserError(f"rotation mode must be one of {', '.join(MODES)}, got {mode!r}")


@METHODS.register("rotation")
class Rotation(SSLMethod):
    """Rotation prediction (Gidaris et al., 2018, "Unsupervised Representation Learning by Predicting Image
    Rotations", https://arxiv.org/abs/1803.07728).

    Args:
        backbone: the encoder (torchvision ResNet with ``fc = Identity``), trained and exported.
        feat_dim: its output width.
        spec: input contract (channels, size, normalisation, augmentation recipe).
        args: mapping validated into :class:`RotationArgs`.

    >>> from ssl_noise.backbones import build_backbone
    >>> net, d = build_backbone("resnet18", stem="cifar", in_channels=1)
    >>> method = Rotation(net, d, InputSpec(1, 16, [0.5], [0.5]), {"mode": "sampled"})
    >>> method(torch.rand(4, 1, 16, 16), torch.Generator().manual_seed(0)).shape
    torch.Size([])
    """

    Args = RotationArgs

    def __init__(self, backbone: nn.Module, feat_dim: int, spec: InputSpec, args=None):
        super().__init__(backbone, feat_dim, spec, args)
        h = self.args.hidden_dim
        if h == 0:
            self.head: nn.Module = nn.Linear(feat_dim, 4)
        else:
            self.head = nn.Sequential(nn.Linear(feat_dim, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Linear(h, 4))
        # Augmentation that keeps "up" where it was: no vertical flips, no quarter turns.
        self.augment_cfg = dataclasses.replace(spec.augment, vf_prob=0.0, rr_prob=0.0)

    def forward(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # x: (B, C, H, W) in [0, 1]
        v = self.normalize(augment(x, self.augment_cfg, g))  # v: (B, C, H, W)
        v, k = rotate_batch(v, self.args.mode, g)            # v: (4B or B, C, H, W), k: rotation index
        logits = self.head(self.backbone(v))                 # logits: (4B or B, 4)
        return F.cross_entropy(logits, k)
