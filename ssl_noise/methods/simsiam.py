"""SimSiam (Chen & He, CVPR 2021, arXiv 2011.10566): BYOL without the momentum network; a stop-gradient on the
target branch is what prevents collapse.

Heads and loss are lightly's (``SimSiamProjectionHead``, ``SimSiamPredictionHead``, ``NegativeCosineSimilarity``);
this file makes the views and wires them up. Defaults and sources: docs/pretraining.md, "SimSiam".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead
from torch import nn

from ssl_noise.errors import UserError
from ssl_noise.methods.base import METHODS, InputSpec, SSLMethod


@dataclass
class SimSiamArgs:
    """Hyper-parameters of :class:`SimSiam` (the recipe's ``method_args``)."""

    hidden_dim: int = 2048      # projector hidden width (paper: 2048)
    out_dim: int = 2048         # projection dimension (paper: 2048)
    pred_hidden_dim: int = 512  # predictor bottleneck (paper: 512, a quarter of out_dim)

    def validate(self) -> None:
        if min(self.hidden_dim, self.out_dim, self.pred_hidden_dim) < 1:
            raise UserError("simsiam hidden_dim, out_dim and pred_hidden_dim must be >= 1")


@METHODS.register("simsiam")
class SimSiam(SSLMethod):
    """SimSiam (Chen & He, 2021, "Exploring Simple Siamese Representation Learning",
    https://arxiv.org/abs/2011.10566).

    ``backbone`` + 3-layer ``projector`` (BN on every layer, the paper's ImageNet head) give ``z``; the
    ``predictor`` maps ``z`` to ``p``. Loss: ``-(cos(p0, sg(z1)) + cos(p1, sg(z0))) / 2``, in [-1, 1]. No momentum
    encoder and nothing gathered across processes: under DDP only BatchNorm sees the local batch (``sync_bn``
    in the recipe makes it global).

    Args:
        backbone: the encoder (torchvision ResNet with ``fc = Identity``), trained and exported.
        feat_dim: its output width.
        spec: input contract (channels, size, normalisation, augmentation recipe).
        args: mapping validated into :class:`SimSiamArgs`.

    >>> from ssl_noise.backbones import build_backbone
    >>> net, d = build_backbone("resnet18", stem="cifar", in_channels=1)
    >>> method = SimSiam(net, d, InputSpec(1, 16, [0.5], [0.5]), {"hidden_dim": 64, "out_dim": 64})
    >>> method(torch.rand(4, 1, 16, 16), torch.Generator().manual_seed(0)).shape
    torch.Size([])
    """

    Args = SimSiamArgs

    def __init__(self, backbone: nn.Module, feat_dim: int, spec: InputSpec, args=None):
        super().__init__(backbone, feat_dim, spec, args)
        a = self.args
        self.projector = SimSiamProjectionHead(feat_dim, a.hidden_dim, a.out_dim)
        self.predictor = SimSiamPredictionHead(a.out_dim, a.pred_hidden_dim, a.out_dim)
        self.criterion = NegativeCosineSimilarity()

    def forward(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # x: (B, C, H, W) in [0, 1]
        b = x.shape[0]
        v = self.two_views(x, g)                                            # v: (2B, C, H, W), views 0 then 1
        z = self.projector(self.backbone(v))                                # z: (2B, D)
        p = self.predictor(z)                                               # p: (2B, D)
        z = z.detach()                                                      # the stop-gradient
        with torch.autocast(p.device.type, enabled=False):
            p, z = p.float(), z.float()
            return 0.5 * (self.criterion(p[:b], z[b:]) + self.criterion(p[b:], z[:b]))
