"""JoCoR: joint training with co-regularization (Wei, Feng, Chen & An, CVPR 2020, arXiv 2003.02752; code
hongxin001/JoCoR, ``algorithm/loss.py``).

Where Co-teaching keeps two networks apart, JoCoR pulls them together: one joint per-sample loss
``(1 - lambda)(CE1 + CE2) + lambda (KL(p1||p2) + KL(p2||p1))``, one small-loss selection by it shared by both
networks, both updated on its mean. Samples on which the networks disagree get a large joint loss, so agreement
acts as a second clean-sample signal. Co-teaching's pieces (independent inits, forget-rate ramp, records).
Defaults, source and deviations: docs/methods.md#jocor-jocorpy
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn.functional as F

from ssl_noise.errors import UserError
from ssl_noise.robust.base import ROBUST, Batch, RobustMethod, label_prob
from ssl_noise.engine import Recipe
from ssl_noise.robust.coteaching import CoteachingArgs, PairMethod, forget_rate, keep_count, small_loss_pick


@dataclass
class JoCoRArgs(CoteachingArgs):
    co_lambda: float = 0.9  # the README's best for CIFAR-10 at symmetric 20/50 % and asymmetric 40 % (0.65 at 80 %)

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.co_lambda <= 1:
            raise UserError(f"co_lambda must be in [0, 1], got {self.co_lambda}")


def joint_loss(logits1: torch.Tensor, logits2: torch.Tensor, y: torch.Tensor, co_lambda: float) -> torch.Tensor:
    """(B,) ``(1 - lambda)(CE(p1, y) + CE(p2, y)) + lambda (KL(p1||p2) + KL(p2||p1))``, float32."""
    logits1, logits2 = logits1.float(), logits2.float()
    ce = F.cross_entropy(logits1, y, reduction="none") + F.cross_entropy(logits2, y, reduction="none")
    lp1, lp2 = logits1.log_softmax(dim=1), logits2.log_softmax(dim=1)
    kl = ((lp1.exp() * (lp1 - lp2)).sum(dim=1) + (lp2.exp() * (lp2 - lp1)).sum(dim=1))
    return (1 - co_lambda) * ce + co_lambda * kl


@ROBUST.register("jocor")
class JoCoR(PairMethod, RobustMethod):
    """Two classifiers, one joint small-loss selection, both updated on its mean joint loss.

    >>> from ssl_noise.robust import ROBUST
    >>> ROBUST["jocor"].Args().co_lambda
    0.9
    """

    Args = JoCoRArgs
    # One Adam over both networks (jocor.py:64-65): Adam's step is per parameter, so the two per-network Adams here
    # take the same steps. Under SGD the joint loss scales the label-fitting step by (1 - co_lambda).
    paper = Recipe("adam", 1e-3, momentum=0.9, schedule="linear_decay", decay_start=80 / 200, beta1_after=0.1,
                   source="hongxin001/JoCoR@86db359 algorithm/jocor.py:31-38,64-65; main.py:85")

    def train_step(self, batch: Batch, epoch: int) -> Dict[str, torch.Tensor]:
        logits1, logits2 = self.net1(batch.x), self.net2(batch.x)
        loss = joint_loss(logits1, logits2, batch.y, self.args.co_lambda)
        keep = keep_count(len(batch.y), forget_rate(epoch, self.tau_max, self.num_gradual))
        pick = small_loss_pick(loss.detach(), keep)
        self.selection.record(batch.index, pick, epoch)
        logits = logits1.detach() + logits2.detach()
        return {"loss": loss[pick].mean(), "prob": label_prob(logits, batch.y), "pred": logits.argmax(dim=1),
                "selected": pick}

    def on_epoch_end(self, epoch: int) -> Dict[str, float]:
        return {"forget_rate": forget_rate(epoch, self.tau_max, self.num_gradual)}
