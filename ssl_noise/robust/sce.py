"""Symmetric Cross Entropy (Wang, Ma, Chen, Luo, Yi & Bailey, ICCV 2019, arXiv 1908.06112).

``alpha * CE + beta * RCE``: CE fits the clean majority fast, the reverse CE ``-sum_k p_k log q_k`` (q the one-hot
label, log 0 replaced by A) is bounded and noise-tolerant, and counters CE's over-fitting of hard classes.
A = log(1e-4) as in the authors' code (the one-hot is clamped at 1e-4), not the paper's -4: the code produced the
paper's tables. Defaults and source: docs/methods.md#sce-scepy
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn.functional as F

from ssl_noise.engine import Recipe
from ssl_noise.errors import UserError
from ssl_noise.robust.base import ROBUST, Batch, RobustMethod, label_prob

#: The authors' clamps: the one-hot label at 1e-4 (A = log 1e-4) and the prediction at 1e-7.
LABEL_CLAMP, PRED_CLAMP = 1e-4, 1e-7


@dataclass
class SCEArgs:
    alpha: float = 0.1  # CIFAR-10's setting (paper Sec. 5.1 and the code); CIFAR-100: 6.0
    beta: float = 1.0   # CIFAR-10's setting; CIFAR-100: 0.1

    def validate(self) -> None:
        if self.alpha < 0 or self.beta < 0 or self.alpha + self.beta == 0:
            raise UserError(f"alpha and beta must be non-negative and not both 0, got {self.alpha}, {self.beta}")


def rce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) reverse cross-entropy ``-sum_k p_k log clamp(onehot_k, 1e-4)`` = ``-A * sum_{k != y} p_k``."""
    p = logits.float().softmax(dim=1).clamp(PRED_CLAMP, 1.0)
    wrong = p.sum(dim=1) - p.gather(1, y[:, None])[:, 0]
    return -math.log(LABEL_CLAMP) * wrong


def sce_loss(logits: torch.Tensor, y: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """(B,) ``alpha * CE + beta * RCE``."""
    return alpha * F.cross_entropy(logits.float(), y, reduction="none") + beta * rce_loss(logits, y)


@ROBUST.register("sce")
class SCE(RobustMethod):
    """One classifier trained with alpha * CE + beta * reverse CE.

    >>> from ssl_noise.robust import ROBUST
    >>> (ROBUST["sce"].Args().alpha, ROBUST["sce"].Args().beta)
    (0.1, 1.0)
    """

    Args = SCEArgs
    paper = Recipe("sgd", 0.01, momentum=0.9, weight_decay=1e-2, nesterov=True, schedule="step",
                   milestones=(40 / 120, 80 / 120), grad_clip=5.0,
                   source="HanxunH/SCELoss-Reproduce@c81fb33 train.py:52-63,155,234-239; README.md:26")

    def setup(self) -> None:
        self.model = self.ctx.build_model(0)
        self.ctx.build_optimizer(self.model)

    def train_step(self, batch: Batch, epoch: int) -> Dict[str, torch.Tensor]:
        logits = self.model(batch.x)
        loss = sce_loss(logits, batch.y, self.args.alpha, self.args.beta).mean()
        return {"loss": loss, "prob": label_prob(logits, batch.y), "pred": logits.detach().argmax(dim=1)}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
