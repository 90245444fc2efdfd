"""VICReg (Bardes, Ponce & LeCun, ICLR 2022, arXiv 2105.04906): variance, invariance and covariance terms on two
views' embeddings; no negatives, no momentum encoder, no predictor.

Head and loss are lightly's (``VICRegProjectionHead``, ``VICRegLoss``); this file makes the views and wires them up.
Defaults and sources: docs/pretraining.md, "VICReg".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.loss import VICRegLoss
from lightly.models.modules.heads import VICRegProjectionHead  # not re-exported by lightly.models.modules in 1.6
from torch import nn

from ssl_noise.errors import UserError
from ssl_noise.methods.base import METHODS, InputSpec, SSLMethod


@dataclass
class VICRegArgs:
    """Hyper-parameters of :class:`VICReg` (the recipe's ``method_args``)."""

    hidden_dim: int = 2048        # expander width (paper 8192 on ImageNet; solo-learn's CIFAR recipe 2048)
    out_dim: int = 2048           # embedding dimension
    num_layers: int = 3           # expander depth (paper: 3)
    lambda_param: float = 25.0    # invariance weight (paper: 25)
    mu_param: float = 25.0        # variance weight (paper: 25)
    nu_param: float = 1.0         # covariance weight (paper: 1)

    def validate(self) -> None:
        if self.hidden_dim < 1 or self.out_dim < 1:
            raise UserError(f"vicreg hidden_dim and out_dim must be >= 1, got {self.hidden_dim}, {self.out_dim}")
        if self.num_layers < 2:
            raise UserError(f"vicreg num_layers must be >= 2, got {self.num_layers}")
        if min(self.lambda_param, self.mu_param, self.nu_param) < 0:
            raise UserError("vicreg lambda_param, mu_param and nu_param must be >= 0")


@METHODS.register("vicreg")
class VICReg(SSLMethod):
    """VICReg (Bardes et al., 2022, "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
    Learning", https://arxiv.org/abs/2105.04906).

    ``backbone`` + expander map both views to ``z``. Loss = ``lambda`` x mean squared distance between the views
    + ``mu`` x hinge on each dimension's standard deviation (kept >= 1) + ``nu`` x squared off-diagonal
    covariances. Under DDP the variance and covariance terms see the embeddings of every process
    (``gather_distributed=True``, as in the authors' code); the invariance term is per sample and stays local.

    Args:
        backbone: the encoder (torchvision ResNet with ``fc = Identity``), trained and exported.
        feat_dim: its output width.
        spec: input contract (channels, size, normalisation, augmentation recipe).
        args: mapping validated into :class:`VICRegArgs`.

    >>> from ssl_noise.backbones import build_backbone
    >>> net, d = build_backbone("resnet18", stem="cifar", in_channels=1)
    >>> method = VICReg(net, d, InputSpec(1, 16, [0.5], [0.5]), {"hidden_dim": 64, "out_dim": 64})
    >>> method(torch.rand(4, 1, 16, 16), torch.Generator().manual_seed(0)).shape
    torch.Size([])
    """

    Args = VICRegArgs

    def __init__(self, backbone: nn.Module, feat_dim: int, spec: InputSpec, args=None):
        super().__init__(backbone, feat_dim, spec, args)
        a = self.args
        self.projector = VICRegProjectionHead(feat_dim, a.hidden_dim, a.out_dim, num_layers=a.num_layers)
        self.criterion = VICRegLoss(lambda_param=a.lambda_param, mu_param=a.mu_param, nu_param=a.nu_param,
                                    gather_distributed=True)

    def forward(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # x: (B, C, H, W) in [0, 1]
        b = x.shape[0]
        v = self.two_views(x, g)                                            # v: (2B, C, H, W), views 0 then 1
        z = self.projector(self.backbone(v))                                # z: (2B, D)
        # float32: variances and D^2 covariances are sums bf16 cannot hold to the precision the hinge needs.
        with torch.autocast(z.device.type, enabled=False):
            return self.criterion(z[:b].float(), z[b:].float())
