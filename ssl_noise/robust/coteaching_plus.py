"""Co-teaching+ (Yu, Han, Yao, Niu, Tsang & Sugiyama, ICML 2019, arXiv 1901.04215; code xingruiyu/coteaching_plus).

Co-teaching's two networks converge to each other over training and then filter the same errors; Co-teaching+
keeps them apart by training only where they *disagree*: after ``init_epoch`` epochs of plain Co-teaching, each
batch is first cut to the samples whose predicted classes differ, each network keeps its small-loss share of those
and its peer is updated on them. Shares Co-teaching's pieces (two independent inits, forget-rate ramp, records).
Defaults, source and deviations: docs/methods.md#co-teaching-coteaching_pluspy
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from ssl_noise.engine import Recipe, scaled_epochs
from ssl_noise.errors import UserError
from ssl_noise.robust.base import ROBUST, Batch, RobustMethod, label_prob
from ssl_noise.robust.coteaching import (CoteachingArgs, PairMethod, cross_update, forget_rate, keep_count,
                                         setup_pair, short_ramp, small_loss_pick)

#: The disagreement phase's loss: the authors' cross-entropy of the softmax outputs (loss.py:38-39, 64-68: a
#: double softmax, bounded like MAE), or cross-entropy of the logits (the shared protocol's before this option).
LOSSES = ("softmax_ce", "ce")


@dataclass
class CoteachingPlusArgs(CoteachingArgs):
    init_epoch: Optional[int] = None  # epochs of plain Co-teaching first; None: the code's 20 of 200 scaled to the
    #                                   run (protocol paper), num_gradual (shared)
    loss: Optional[str] = None        # disagreement loss (LOSSES); None: softmax_ce (paper), ce (shared)

    def validate(self) -> None:
        super().validate()
        if self.init_epoch is not None and self.init_epoch < 0:
            raise UserError(f"init_epoch must be non-negative, got {self.init_epoch}")
        if self.loss is not None and self.loss not in LOSSES:
            raise UserError(f"unknown loss {self.loss!r}; choose from: {', '.join(LOSSES)}")


def disagreement_update(logits1: torch.Tensor, logits2: torch.Tensor, y: torch.Tensor,
                        tau: float, loss: str = "ce") -> tuple:
    """Co-teaching+'s step on one batch: ``(loss, disagree, pick1, pick2)``.

    ``disagree`` (B,) bool: argmax of the two networks differ. Within it, each network keeps its
    ``keep_count(|D|, tau)`` smallest losses (``pick1``/``pick2``, (B,) bool); network 1 learns from 2's pick
    and vice versa (mean CE over the pick each). No disagreement: nothing is learned (loss 0)."""
    disagree = logits1.detach().argmax(dim=1) != logits2.detach().argmax(dim=1)
    soft = loss == "softmax_ce"   # the authors' code ranks and trains on CE of the softmax outputs
    l1 = F.cross_entropy(logits1.float().softmax(dim=1) if soft else logits1.float(), y, reduction="none")
    l2 = F.cross_entropy(logits2.float().softmax(dim=1) if soft else logits2.float(), y, reduction="none")
    pick1, pick2 = torch.zeros_like(disagree), torch.zeros_like(disagree)
    rows = torch.nonzero(disagree).squeeze(1)
    if len(rows) == 0:
        return (l1.sum() + l2.sum()) * 0.0, disagree, pick1, pick2
    keep = keep_count(len(rows), tau)
    pick1[rows[small_loss_pick(l1.detach()[rows], keep)]] = True
    pick2[rows[small_loss_pick(l2.detach()[rows], keep)]] = True
    return (l1[pick2].sum() + l2[pick1].sum()) / keep, disagree, pick1, pick2


@ROBUST.register("coteaching_plus")
class CoTeachingPlus(PairMethod, RobustMethod):
    """Co-teaching, then small-loss cross update within the two networks' disagreement set.

    >>> from ssl_noise.robust import ROBUST
    >>> ROBUST["coteaching_plus"].Args().init_epoch is None
    True
    """

    Args = CoteachingPlusArgs
    paper = Recipe("adam", 1e-3, momentum=0.9, schedule="linear_decay", decay_start=80 / 200, beta1_after=0.1,
                   source="xingruiyu/coteaching_plus@a68ed61 main.py:35,166-177,335,350")

    def setup(self) -> None:
        setup_pair(self)
        paper = self.ctx.protocol == "paper"
        if self.args.init_epoch is not None:
            self.init_epoch = self.args.init_epoch
        else:  # main.py:73: 20 of the code's 200 CIFAR-10 epochs
            self.init_epoch = scaled_epochs(20, 200, self.ctx.epochs) if paper else self.num_gradual
        self.loss = self.args.loss or ("softmax_ce" if paper else "ce")
        self.disagree_sum = self.seen_sum = 0

    def inactive_reason(self) -> Optional[str]:
        if self.init_epoch >= self.ctx.epochs:
            return (f"the disagreement phase starts at epoch {self.init_epoch + 1} of {self.ctx.epochs}: the run is "
                    f"plain Co-teaching")
        return short_ramp(self)

    def pick(self, k: int, loss: torch.Tensor, batch: Batch, keep: int, epoch: int) -> torch.Tensor:
        return small_loss_pick(loss, keep)

    def train_step(self, batch: Batch, epoch: int) -> Dict[str, torch.Tensor]:
        if epoch < self.init_epoch:
            return cross_update(self, batch, epoch)
        logits1, logits2 = self.net1(batch.x), self.net2(batch.x)
        tau = forget_rate(epoch, self.tau_max, self.num_gradual)
        loss, disagree, pick1, _ = disagreement_update(logits1, logits2, batch.y, tau, self.loss)
        self.selection.record(batch.index, pick1, epoch)
        self.disagree_sum += int(disagree.sum())
        self.seen_sum += len(batch.y)
        logits = logits1.detach() + logits2.detach()
        return {"loss": loss, "prob": label_prob(logits, batch.y), "pred": logits.argmax(dim=1), "selected": pick1}

    def on_epoch_end(self, epoch: int) -> Dict[str, float]:
        stats = {"forget_rate": forget_rate(epoch, self.tau_max, self.num_gradual),
                 "disagree_frac": self.disagree_sum / self.seen_sum if self.seen_sum else None}
        self.disagree_sum = self.seen_sum = 0
        return stats
