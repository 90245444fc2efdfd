"""NSHE (noise suppressing, hard enhancing): the training phase of HSA-NRL (Zhu et al., IEEE TMI 2021, arXiv
2112.03694; code bupt-ai-cz/HSA-NRL ``NSHE.py`` and ``loss.py``), usable on its own or after HSA-NRL's correction.

A student and its EMA copy record each sample's p(label); the samples the EMA copy is least sure of are left out
and, after a warm-up, each sample's loss is weighted by its own recorded probability.
Details, defaults and deviations (the per-sample weighting): docs/methods.md#nshe-nshepy
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from lightly.models.utils import deactivate_requires_grad, update_momentum

from ssl_noise.errors import SslNoiseWarning, UserError
from ssl_noise.robust.base import ROBUST, Batch, RobustMethod, label_prob


@dataclass
class NSHEArgs:
    forget_rate: float = 0.01    # φ: share of samples dropped per epoch (paper: 0.01 on the almost-clean Chaoyang set;
    #                              raise it with the residual noise)
    warm_up: int = 10            # epochs of plain mean cross-entropy before the per-sample weighting starts
    ema_momentum: float = 0.999  # the EMA copy follows the student: ema = m * ema + (1 - m) * student, every step
    weight_power: float = 2.0    # w ∝ p ** weight_power (0: no weighting)
    eval_model: str = "ema"      # network used for validation/test: ema (the paper's reported number) | student

    def validate(self) -> None:
        if not 0 <= self.forget_rate < 1:
            raise UserError(f"forget_rate must be in [0, 1), got {self.forget_rate}")
        if self.warm_up < 0 or self.weight_power < 0:
            raise UserError(f"warm_up and weight_power must be non-negative, got {self.warm_up}, {self.weight_power}")
        if not 0 <= self.ema_momentum < 1:
            raise UserError(f"ema_momentum must be in [0, 1), got {self.ema_momentum}")
        if self.eval_model not in ("ema", "student"):
            raise UserError(f"unknown eval_model {self.eval_model!r}; choose from: ema, student")


def drop_mask(prob: np.ndarray, rows: np.ndarray, forget_rate: float) -> np.ndarray:
    """(N,) bool: among ``rows``, the ⌊forget_rate·len(rows)⌋ with the lowest recorded probability (ties: lower index
    first); a sample never recorded (NaN) counts as certain and is not dropped.

    >>> drop_mask(np.array([0.9, 0.1, 0.5, 0.2]), np.arange(4), 0.5)
    array([False,  True, False,  True])
    """
    out = np.zeros(len(prob), dtype=bool)
    rows = np.asarray(rows, dtype=np.int64)
    n = int(np.floor(forget_rate * len(rows) + 1e-9))
    if n:
        p = np.nan_to_num(np.asarray(prob, dtype=np.float64)[rows], nan=1.0)
        out[rows[np.argsort(p, kind="stable")[:n]]] = True
    return out


def nshe_weights(prob: np.ndarray, rows: np.ndarray, power: float = 2.0) -> np.ndarray:
    """(N,) float32 per-sample weights: ``p ** power`` over ``rows``, normalised to mean 1 there; 0 elsewhere.

    >>> nshe_weights(np.array([1.0, 0.5, 0.3]), np.array([0, 1]))
    array([1.6, 0.4, 0. ], dtype=float32)
    """
    w = np.zeros(len(prob), dtype=np.float64)
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size:
        raw = np.clip(np.nan_to_num(np.asarray(prob, dtype=np.float64)[rows], nan=1.0), 0.0, 1.0) ** power
        w[rows] = raw / max(raw.mean(), 1e-12)
    return w.astype(np.float32)


def weighted_ce(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``sum_i keep_i w_i CE_i / max(sum_i keep_i, 1)``: per-sample weighted cross-entropy over the kept samples."""
    ce = F.cross_entropy(logits.float(), y, reduction="none")  # (B,)
    keep = keep.to(ce.dtype)
    return (ce * weights.to(ce.dtype) * keep).sum() / keep.sum().clamp(min=1.0)


def nshe_too_short(args: NSHEArgs, epochs: int) -> Optional[str]:
    """Why NSHE's per-sample weighting never starts in ``epochs`` epochs (its warm-up is as long), or None."""
    if args.weight_power > 0 and args.warm_up >= epochs:
        return f"the per-sample weighting starts after a {args.warm_up}-epoch warm-up, but the run has {epochs} epochs"
    return None


class NSHEWarning(SslNoiseWarning):
    """A setting that runs but cannot do what NSHE intends (see :meth:`NSHE._check_ema_horizon`)."""


@ROBUST.register("nshe")
class NSHE(RobustMethod):
    """Student + EMA copy with cross sample dropping and per-sample re-weighting (docs/methods.md#nshe-nshepy).

    >>> from ssl_noise.robust import ROBUST
    >>> ROBUST["nshe"].Args().ema_momentum
    0.999
    """

    Args = NSHEArgs

    def setup(self) -> None:
        self.model = self.ctx.build_model(0)
        self.ema = copy.deepcopy(self.model)  # same initialisation; a registered submodule (best-epoch snapshots)
        deactivate_requires_grad(self.ema)
        self.ctx.build_optimizer(self.model)
        n = len(self.ctx.labels)
        self.record = np.full((2, n), np.nan, dtype=np.float32)  # last p(label): [student, ema], by dataset index
        self.dropped = np.zeros(n, dtype=bool)                   # by the EMA's ranking, from the student's update
        self.weights = np.ones(n, dtype=np.float32)
        self.weighting = self.args.warm_up == 0
        self._stepped = False
        self._check_ema_horizon()

    def inactive_reason(self) -> Optional[str]:
        return nshe_too_short(self.args, self.ctx.epochs)

    def _check_ema_horizon(self) -> None:
        """Warn when the EMA copy, the network evaluated, cannot leave its initialisation within the run.

        After S steps the EMA still holds m**S of its initial weights: 7 % for 0.999 over the recipe's 30 BloodMNIST
        epochs (2,670 steps), but 70 % over a 4-epoch pilot, whose EMA copy is then mostly the untrained init. The
        suggestion exp(-2.7 / S) (about 1 - 2.7 / S for long runs) leaves the same 7 %, i.e. the momentum scaled to
        the run's length.
        """
        steps = self.ctx.epochs * self.ctx.steps_per_epoch
        left = self.args.ema_momentum ** steps
        if self.args.eval_model == "ema" and left > 0.1:
            warnings.warn(f"nshe: after {steps} steps the EMA copy (momentum {self.args.ema_momentum:g}) still holds "
                          f"{left:.0%} of its initial weights, and it is the network evaluated; for a run this short "
                          f"set method_args.ema_momentum={math.exp(-2.7 / steps):.4f} (or eval_model=student)",
                          NSHEWarning, stacklevel=2)

    def _follow(self) -> None:
        """EMA update after the loop's optimiser step (the loop steps after train_step returns)."""
        if self._stepped:
            update_momentum(self.model, self.ema, self.args.ema_momentum)
            self._stepped = False

    def train_step(self, batch: Batch, epoch: int) -> Dict[str, torch.Tensor]:
        self._follow()
        logits = self.model(batch.x)  # (B, K)
        with torch.no_grad():
            ema_logits = self.ema(batch.x)  # train mode: the EMA copy's BN statistics follow the data
        idx = batch.index.cpu().numpy()
        prob = label_prob(logits, batch.y)
        self.record[0, idx] = prob.cpu().numpy()
        self.record[1, idx] = label_prob(ema_logits, batch.y).cpu().numpy()
        keep = torch.from_numpy(~self.dropped[idx]).to(logits.device)
        w = torch.from_numpy(self.weights[idx] if self.weighting else np.ones(len(idx), np.float32))
        self._stepped = True
        return {"loss": weighted_ce(logits, batch.y, w.to(logits.device), keep), "prob": prob,
                "pred": logits.detach().argmax(dim=1), "selected": keep}

    def on_epoch_end(self, epoch: int) -> Dict[str, float]:
        self._follow()
        seen = np.flatnonzero(np.isfinite(self.record[0]))  # the samples trained on (training_set's kept rows)
        self.dropped = drop_mask(self.record[1], seen, self.args.forget_rate)
        self.weighting = epoch + 1 >= self.args.warm_up
        stats = {"nshe_dropped": int(self.dropped.sum())}
        if self.weighting and self.args.weight_power > 0:
            kept = seen[~self.dropped[seen]]
            self.weights = nshe_weights(self.record[0], kept, self.args.weight_power)
            stats.update(nshe_weight_min=float(self.weights[kept].min()),
                         nshe_weight_max=float(self.weights[kept].max()))
        else:
            self.weights = np.ones_like(self.weights)
        return stats

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.ema(x) if self.args.eval_model == "ema" else self.model(x)

    def outputs(self) -> Dict[str, np.ndarray]:
        return {"nshe_record": self.record.copy(), "nshe_weights": self.weights.copy()}

    def epoch_state(self) -> Dict[str, np.ndarray]:
        """The recorded probabilities, the drop mask, the weights and whether weighting has started (the EMA copy
        is a submodule, in ``state_dict``)."""
        return {"record": self.record, "dropped": self.dropped, "weights": self.weights,
                "weighting": np.asarray(self.weighting), "stepped": np.asarray(self._stepped)}

    def load_epoch_state(self, state: Mapping[str, np.ndarray]) -> None:
        self.record, self.dropped = np.array(state["record"]), np.array(state["dropped"])
        self.weights = np.array(state["weights"])
        self.weighting, self._stepped = bool(state["weighting"]), bool(state["stepped"])
