"""Cross-entropy on the given labels: the standard fine-tuning baseline that every robust method must beat.

It trusts every label, so under noise it first learns the clean majority and later memorises the flipped
labels (Arpit et al. 2017, arXiv 1706.05394); ``history.npy`` and the ``memorised`` metric show exactly that.
See docs/methods.md#ce-cepy
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from ssl_noise.robust.base import ROBUST, Batch, RobustMethod, label_prob


def ce_step(model: torch.nn.Module, batch: Batch) -> Dict[str, torch.Tensor]:
    """Mean cross-entropy of one classifier on the batch, with the loop's ``prob`` and ``pred``."""
    logits = model(batch.x)  # (B, K)
    return {"loss": F.cross_entropy(logits, batch.y), "prob": label_prob(logits, batch.y),
            "pred": logits.detach().argmax(dim=1)}


@ROBUST.register("ce")
class CrossEntropy(RobustMethod):
    """One classifier, mean cross-entropy over the batch.

    >>> from ssl_noise.robust import ROBUST
    >>> ROBUST["ce"].__name__
    'CrossEntropy'
    """

    def setup(self) -> None:
        self.model = self.ctx.build_model(0)
        self.ctx.build_optimizer(self.model)

    def train_step(self, batch: Batch, epoch: int) -> Dict[str, torch.Tensor]:
        return ce_step(self.model, batch)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
