"""SimCLR (Chen et al., ICML 2020, arXiv 2002.05709): two augmented views of each image, pulled together against
every other view in the batch (NT-Xent).

Head and loss are lightly's (``SimCLRProjectionHead``, ``NTXentLoss``); this file makes the views and wires them
up. Defaults and deviations from the paper: docs/methods.md, "SimCLR".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import nn

from ssl_noise.errors import UserError
from ssl_noise.methods.base import METHODS, InputSpec, SSLMethod, distributed


@dataclass
class SimCLRArgs:
    """Hyper-parameters of :class:`SimCLR` (the recipe's ``method_args``)."""

    temperature: float = 0.5  # NT-Xent temperature; the medical reference used 0.07
    hidden_dim: int = 512     # projection head hidden width
    out_dim: int = 128        # projection (embedding) dimension the loss sees

    def validate(self) -> None:
        if self.temperature <= 0:
            raise UserError(f"simclr temperature must be > 0, got {self.temperature}")
        if self.hidden_dim < 1 or self.out_dim < 1:
            raise UserError(f"simclr hidden_dim and out_dim must be >= 1, got {self.hidden_dim}, {self.out_dim}")


@METHODS.register("simclr")
class SimCLR(SSLMethod):
    """SimCLR (Chen et al., 2020, "A Simple Framework for Contrastive Learning of Visual Representations",
    https://arxiv.org/abs/2002.05709).

    Each image gives two views (``augment`` with the spec's recipe); backbone + projection head map them to ``z``;
    NT-Xent treats the other view of the same image as the positive and the other ``2B - 2`` views as negatives
    (gathered from every process under DDP).

    Args:
        backbone: the encoder (torchvision ResNet with ``fc = Identity``), trained and exported.
        feat_dim: its output width.
        spec: input contract (channels, size, normalisation, augmentation recipe).
        args: mapping validated into :class:`SimCLRArgs`.

    >>> from ssl_noise.backbones import build_backbone
    >>> net, d = build_backbone("resnet18", stem="cifar", in_channels=1)
    >>> method = SimCLR(net, d, InputSpec(1, 16, [0.5], [0.5]), {"temperature": 0.07})
    >>> g = torch.Generator().manual_seed(0)
    >>> method(torch.rand(4, 1, 16, 16), g).shape
    torch.Size([])
    """

    Args = SimCLRArgs

    def __init__(self, backbone: nn.Module, feat_dim: int, spec: InputSpec, args=None):
        super().__init__(backbone, feat_dim, spec, args)
        a = self.args
        self.head = SimCLRProjectionHead(feat_dim, a.hidden_dim, a.out_dim)
        self.criterion = NTXentLoss(temperature=a.temperature, gather_distributed=distributed())

    def forward(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # x: (B, C, H, W) in [0, 1]
        b = x.shape[0]
        h = self.backbone(self.two_views(x, g))                # h: (2B, F), views 0 then 1
        z = self.head(h)                                       # z: (2B, D)
        # The loss runs in float32 even under autocast: at temperature 0.07 logits reach ~14, where bf16 keeps
        # only 2-3 significant digits.
        with torch.autocast(z.device.type, enabled=False):
            return self.criterion(z[:b].float(), z[b:].float())  # NT-Xent over the 2B views
