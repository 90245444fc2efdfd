"""Barlow Twins (Zbontar et al., ICML 2021, arXiv 2103.03230): make the cross-correlation matrix of two views'
embeddings the identity, so each dimension is invariant to the augmentation and the dimensions are decorrelated.

Head and loss are lightly's (``BarlowTwinsProjectionHead``, ``BarlowTwinsLoss``); this file makes the views and wires
them up. Defaults and sources: docs/pretraining.md, "Barlow Twins".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead
from torch import nn

from ssl_noise.errors import UserError
from ssl_noise.methods.base import METHODS, InputSpec, SSLMethod


@dataclass
class BarlowTwinsArgs:
    """Hyper-parameters of :class:`BarlowTwins` (the recipe's ``method_args``)."""

    hidden_dim: int = 2048       # projector width (paper 8192 on ImageNet; lightly's CIFAR-10 benchmark 2048)
    out_dim: int = 2048          # embedding dimension the cross-correlation is taken over
    lambda_param: float = 5e-3   # weight of the off-diagonal (redundancy) term (paper: 5e-3)
    scale_loss: float = 1.0      # multiplies the loss: under LARS it only shrinks the plain SGD steps of BatchNorm
                                 # and biases, which a loss in the thousands throws about (solo-learn's CIFAR: 0.1)

    def validate(self) -> None:
        if self.hidden_dim < 1 or self.out_dim < 1:
            raise UserError(f"barlowtwins hidden_dim and out_dim must be >= 1, got {self.hidden_dim}, {self.out_dim}")
        if self.lambda_param < 0:
            raise UserError(f"barlowtwins lambda_param must be >= 0, got {self.lambda_param}")
        if self.scale_loss <= 0:
            raise UserError(f"barlowtwins scale_loss must be > 0, got {self.scale_loss}")


@METHODS.register("barlowtwins")
class BarlowTwins(SSLMethod):
    """Barlow Twins (Zbontar et al., 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
    https://arxiv.org/abs/2103.03230).

    ``backbone`` + 3-layer projector map both views to ``z``; the loss standardises each dimension over the batch
    and drives the (D, D) cross-correlation matrix towards the identity. Under DDP the matrices of all processes
    are averaged before the loss (``gather_distributed=True``), so the loss is that of the global batch's mean
    correlation, not of the local one; outside DDP the flag does nothing.

    Args:
        backbone: the encoder (torchvision ResNet with ``fc = Identity``), trained and exported.
        feat_dim: its output width.
        spec: input contract (channels, size, normalisation, augmentation recipe).
        args: mapping validated into :class:`BarlowTwinsArgs`.

    >>> from ssl_noise.backbones import build_backbone
    >>> net, d = build_backbone("resnet18", stem="cifar", in_channels=1)
    >>> method = BarlowTwins(net, d, InputSpec(1, 16, [0.5], [0.5]), {"hidden_dim": 64, "out_dim": 64})
    >>> method(torch.rand(4, 1, 16, 16), torch.Generator().manual_seed(0)).shape
    torch.Size([])
    """

    Args = BarlowTwinsArgs

    def __init__(self, backbone: nn.Module, feat_dim: int, spec: InputSpec, args=None):
        super().__init__(backbone, feat_dim, spec, args)
        a = self.args
        self.projector = BarlowTwinsProjectionHead(feat_dim, a.hidden_dim, a.out_dim)
        self.criterion = BarlowTwinsLoss(lambda_param=a.lambda_param, gather_distributed=True)

    def forward(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # x: (B, C, H, W) in [0, 1]
        b = x.shape[0]
        v = self.two_views(x, g)                                            # v: (2B, C, H, W), views 0 then 1
        z = self.projector(self.backbone(v))                                # z: (2B, D)
        # float32: the loss sums D^2 squared correlations, far beyond what bf16's 8 mantissa bits add up exactly.
        with torch.autocast(z.device.type, enabled=False):
            return self.args.scale_loss * self.criterion(z[:b].float(), z[b:].float())
