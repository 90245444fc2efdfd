"""Generalized Cross Entropy (Zhang & Sabuncu, NeurIPS 2018, arXiv 1805.07836).

``L_q = (1 - p_y^q) / q`` interpolates between CE (q -> 0: the gradient weights every sample by 1/p_y, so hard,
often mislabelled samples dominate) and MAE (q = 1: noise-tolerant but slow to fit); q = 0.7 keeps most of CE's
learning speed while bounding a wrong label's pull. One network, no selection, no noise rate.
Defaults and source: docs/methods.md#gce-gcepy
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch

from ssl_noise.engine import Recipe
from ssl_noise.errors import UserError
from ssl_noise.robust.base import ROBUST, Batch, RobustMethod, label_prob


@dataclass
class GCEArgs:
    q: float = 0.7  # the paper's value for CIFAR-10/100 and Fashion-MNIST (Sec. 4)

    def validate(self) -> None:
        if not 0 < self.q <= 1:
            raise UserError(f"q must be in (0, 1], got {self.q}")


def gce_loss(logits: torch.Tensor, y: torch.Tensor, q: float) -> torch.Tensor:
    """(B,) ``(1 - p_y^q) / q`` of logits (B, K), in float32."""
    p_y = logits.float().softmax(dim=1).gather(1, y[:, None])[:, 0]
    return (1.0 - p_y.clamp_min(1e-12) ** q) / q


@ROBUST.register("gce")
class GCE(RobustMethod):
    """One classifier trained with the (untruncated) L_q loss.

    >>> from ssl_noise.robust import ROBUST
    >>> ROBUST["gce"].Args().q
    0.7
    """

    Args = GCEArgs
    # No official code: the widely used reimplementation, which says it follows the paper (README.md:9).
    paper = Recipe("sgd", 0.01, momentum=0.9, weight_decay=1e-4, schedule="step", milestones=(40 / 120, 80 / 120),
                   source="AlanChou/Truncated-Loss@fef5908 main.py:30-33,42-43,148-150; README.md:19")

    def setup(self) -> None:
        self.model = self.ctx.build_model(0)
        self.ctx.build_optimizer(self.model)

    def train_step(self, batch: Batch, epoch: int) -> Dict[str, torch.Tensor]:
        logits = self.model(batch.x)
        return {"loss": gce_loss(logits, batch.y, self.args.q).mean(), "prob": label_prob(logits, batch.y),
                "pred": logits.detach().argmax(dim=1)}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
