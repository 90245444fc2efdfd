"""Early-Learning Regularization (Liu, Niles-Weed, Razavian & Fernandez-Granda, NeurIPS 2020, arXiv 2007.00151;
code shengliu66/ELR, ``ELR/model/loss.py``).

Early in training a network predicts the true class of most mislabelled samples; ELR keeps, per sample and by
dataset index, a running average ``t_i`` of those predictions and adds ``lambda * mean log(1 - <t_i, p_i>)``, which
pulls each prediction towards its own early target and so away from memorising the given wrong label.
Plain ELR (one network), not ELR+ (two networks, weight averaging, mixup).
Defaults and source: docs/methods.md#elr-elrpy
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ssl_noise.engine import Recipe
from ssl_noise.errors import UserError
from ssl_noise.robust.base import ROBUST, Batch, RobustMethod, label_prob

#: The code clamps the softmax to [1e-4, 1 - 1e-4] before the regulariser.
CLAMP = 1e-4


@dataclass
class ELRArgs:
    beta: float = 0.7    # target momentum: CIFAR-10's value in the paper and the code's config (CIFAR-100: 0.9)
    lam: float = 3.0     # regulariser weight lambda: CIFAR-10's (CIFAR-100: 7)

    def validate(self) -> None:
        if not 0 <= self.beta < 1:
            raise UserError(f"beta must be in [0, 1), got {self.beta}")
        if self.lam < 0:
            raise UserError(f"lam must be non-negative, got {self.lam}")


class Targets:
    """The (N, K) float32 running targets ``t``, zero until a sample's first batch (as in the code)."""

    def __init__(self, n: int, k: int, beta: float, device: str = "cpu"):
        self.t = torch.zeros(n, k, dtype=torch.float32, device=device)
        self.beta = beta

    def update(self, index: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """``t[index] <- beta t[index] + (1 - beta) p / sum(p)`` from the detached (clamped) softmax; returns
        the new rows (B, K)."""
        p = p.detach().float()
        self.t[index] = self.beta * self.t[index] + (1 - self.beta) * p / p.sum(dim=1, keepdim=True)
        return self.t[index]


def elr_loss(logits: torch.Tensor, y: torch.Tensor, targets: Targets, index: torch.Tensor,
             lam: float) -> torch.Tensor:
    """Mean ``CE(p, y) + lam * log(1 - <t_i, p_i>)`` over the batch, after updating the batch's targets."""
    logits = logits.float()
    p = logits.softmax(dim=1).clamp(CLAMP, 1 - CLAMP)
    t = targets.update(index, p)
    reg = torch.log(1 - (t * p).sum(dim=1))
    return F.cross_entropy(logits, y) + lam * reg.mean()


@ROBUST.register("elr")
class ELR(RobustMethod):
    """One classifier with cross-entropy plus the early-learning regulariser on per-sample targets.

    >>> from ssl_noise.robust import ROBUST
    >>> (ROBUST["elr"].Args().beta, ROBUST["elr"].Args().lam)
    (0.7, 3.0)
    """

    Args = ELRArgs
    paper = Recipe("sgd", 0.02, momentum=0.9, weight_decay=1e-3, schedule="cosine_restarts", period=10 / 150,
                   eta_min=0.001, source="shengliu66/ELR@934af53 ELR/config_cifar10.json:27-34,49-58")

    def setup(self) -> None:
        self.model = self.ctx.build_model(0)
        self.ctx.build_optimizer(self.model)
        self.targets = Targets(len(self.ctx.labels), self.ctx.num_classes, self.args.beta, self.ctx.device)

    def train_step(self, batch: Batch, epoch: int) -> Dict[str, torch.Tensor]:
        logits = self.model(batch.x)
        return {"loss": elr_loss(logits, batch.y, self.targets, batch.index, self.args.lam),
                "prob": label_prob(logits, batch.y), "pred": logits.detach().argmax(dim=1)}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def epoch_state(self) -> Dict[str, np.ndarray]:
        return {"targets": self.targets.t.cpu().numpy().copy()}

    def load_epoch_state(self, state: Mapping[str, np.ndarray]) -> None:
        t = torch.as_tensor(np.asarray(state["targets"], dtype=np.float32), device=self.targets.t.device)
        if t.shape != self.targets.t.shape:
            raise ValueError(f"ELR targets of shape {tuple(t.shape)} do not fit this run's "
                             f"{tuple(self.targets.t.shape)}")
        self.targets.t = t.clone()
