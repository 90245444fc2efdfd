"""BYOL (Grill et al., NeurIPS 2020, arXiv 2006.07733): an online network predicts a momentum (target) network's
projection of another view of the same image; no negatives.

Heads, loss and the EMA helpers are lightly's (``BYOLProjectionHead``, ``BYOLPredictionHead``,
``NegativeCosineSimilarity``, ``update_momentum``, ``deactivate_requires_grad``); this file makes the views and wires
them up. Defaults and sources: docs/pretraining.md, "BYOL".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import nn

from ssl_noise.errors import UserError
from ssl_noise.methods.base import METHODS, InputSpec, SSLMethod, cosine_momentum


@dataclass
class BYOLArgs:
    """Hyper-parameters of :class:`BYOL` (the recipe's ``method_args``)."""

    hidden_dim: int = 1024    # projector and predictor hidden width (lightly's CIFAR-10 benchmark; paper 4096)
    out_dim: int = 256        # projection dimension (paper and lightly: 256)
    momentum: float = 0.99    # target momentum at the start, cosine to 1 (paper 0.996 for 1000 ImageNet epochs;
                              # lightly's CIFAR-10 benchmark 0.99, better for short schedules)

    def validate(self) -> None:
        if self.hidden_dim < 1 or self.out_dim < 1:
            raise UserError(f"byol hidden_dim and out_dim must be >= 1, got {self.hidden_dim}, {self.out_dim}")
        if not 0.0 <= self.momentum <= 1.0:
            raise UserError(f"byol momentum must be in [0, 1], got {self.momentum}")


@METHODS.register("byol")
class BYOL(SSLMethod):
    """BYOL (Grill et al., 2020, "Bootstrap Your Own Latent", https://arxiv.org/abs/2006.07733).

    Online network = ``backbone`` + ``projector`` + ``predictor``; target network = momentum copies of backbone and
    projector, updated after every optimiser step with a momentum that rises from ``momentum`` to 1 on a cosine
    (the paper's schedule). The loss is the symmetrised negative cosine similarity between each view's prediction
    and the other view's target projection: ``-cos`` in [-1, 1], which is the paper's ``2 - 2 cos`` halved and
    shifted (same optimum, half the gradient).

    Args:
        backbone: the online encoder (torchvision ResNet with ``fc = Identity``), trained and exported.
        feat_dim: its output width.
        spec: input contract (channels, size, normalisation, augmentation recipe).
        args: mapping validated into :class:`BYOLArgs`.

    >>> from ssl_noise.backbones import build_backbone
    >>> net, d = build_backbone("resnet18", stem="cifar", in_channels=1)
    >>> method = BYOL(net, d, InputSpec(1, 16, [0.5], [0.5]), {"hidden_dim": 64, "out_dim": 32})
    >>> loss = method(torch.rand(4, 1, 16, 16), torch.Generator().manual_seed(0))
    >>> method.on_step_end(0.5)  # momentum update of the target network
    """

    Args = BYOLArgs

    def __init__(self, backbone: nn.Module, feat_dim: int, spec: InputSpec, args=None):
        super().__init__(backbone, feat_dim, spec, args)
        a = self.args
        self.projector = BYOLProjectionHead(feat_dim, a.hidden_dim, a.out_dim)
        self.predictor = BYOLPredictionHead(a.out_dim, a.hidden_dim, a.out_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projector_momentum = copy.deepcopy(self.projector)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projector_momentum)
        self.criterion = NegativeCosineSimilarity()

    def forward(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # x: (B, C, H, W) in [0, 1]
        b = x.shape[0]
        v = self.two_views(x, g)                                            # v: (2B, C, H, W), views 0 then 1
        p = self.predictor(self.projector(self.backbone(v)))                # p: (2B, D) online predictions
        with torch.no_grad():
            z = self.projector_momentum(self.backbone_momentum(v))          # z: (2B, D) targets, no gradient
        with torch.autocast(p.device.type, enabled=False):
            p, z = p.float(), z.float()
            return 0.5 * (self.criterion(p[:b], z[b:]) + self.criterion(p[b:], z[:b]))

    def on_step_end(self, progress: float) -> None:
        """EMA update of the target network (once per optimiser step)."""
        m = cosine_momentum(progress, self.args.momentum)
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projector, self.projector_momentum, m)
