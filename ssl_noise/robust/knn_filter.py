"""k-NN filter (this project's; in the spirit of deep k-NN, Bahri, Jiang & Gupta, ICML 2020, arXiv 2004.12289).

Before any training, the ``knn`` detector of :mod:`ssl_noise.detect` runs on the frozen embedding of the run's own
init; flagged samples are dropped or relabelled by their neighbours' vote, then plain cross-entropy trains.
Flags, modes, outputs: docs/methods.md#k-nn-filter-knn_filterpy
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ssl_noise.errors import UserError
from ssl_noise.knn import knn_scores, top_fraction
from ssl_noise.robust.base import ROBUST, Batch, RobustMethod
from ssl_noise.robust.ce import ce_step


@dataclass
class KNNFilterArgs:
    k: int = 20                             # neighbours (excluding the sample itself)
    t: float = 0.1                          # vote temperature: weight exp(cosine / t)
    mode: str = "drop"                      # drop | relabel (to the neighbours' weighted vote)
    noise_estimate: Optional[float] = None  # share flagged; None: ctx.noise_rate (--noise-estimate, auto by default)
    threshold: Optional[float] = None       # flag score > threshold instead of a share

    def validate(self) -> None:
        if self.mode not in ("drop", "relabel"):
            raise UserError(f"unknown knn_filter mode {self.mode!r}; choose from: drop, relabel")
        if self.k < 1 or self.t <= 0:
            raise UserError(f"knn_filter needs k >= 1 and t > 0, got k={self.k}, t={self.t}")
        if self.noise_estimate is not None and not 0 <= self.noise_estimate < 1:
            raise UserError(f"noise estimate must be in [0, 1), got {self.noise_estimate}")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise UserError(f"threshold must be in [0, 1], got {self.threshold}")


@ROBUST.register("knn_filter")
class KNNFilter(RobustMethod):
    """Flag by k-NN disagreement in the init's embedding, drop or relabel, then cross-entropy.

    >>> from ssl_noise.robust import ROBUST
    >>> ROBUST["knn_filter"].Args().k
    20
    """

    Args = KNNFilterArgs

    def setup(self) -> None:
        a, ctx = self.args, self.ctx
        model = ctx.build_model(0).eval()  # the init's encoder, untouched by training

        def embed(x: torch.Tensor) -> torch.Tensor:
            with ctx.autocast():
                return F.normalize(model.encode(x).float(), dim=1)  # (B, D) L2-normalised

        features = ctx.predict_train(embed)
        self.scores, votes = knn_scores(features, ctx.labels, ctx.num_classes, k=a.k, t=a.t)
        if a.threshold is not None:
            flagged = self.scores > a.threshold
        else:
            rate = ctx.noise_rate if a.noise_estimate is None else a.noise_estimate
            if rate is None:
                raise UserError("knn_filter on labels from a noise file needs method_args.noise_estimate or "
                                "method_args.threshold")
            if not 0 <= rate < 1:
                raise UserError(f"noise estimate must be in [0, 1), got {rate:g}; set method_args.noise_estimate")
            flagged = top_fraction(self.scores, rate)
        self.flagged = flagged
        self.labels = ctx.labels.copy()
        if a.mode == "relabel":
            self.labels[flagged] = votes[flagged].argmax(axis=1)
        self.model = ctx.build_model(0)
        ctx.build_optimizer(self.model)

    @classmethod
    def needs_noise_rate(cls, args) -> bool:
        return args.threshold is None

    def training_set(self) -> Tuple[np.ndarray, np.ndarray]:
        keep = ~self.flagged if self.args.mode == "drop" else np.ones(len(self.labels), dtype=bool)
        return keep, self.labels

    def train_step(self, batch: Batch, epoch: int) -> Dict[str, torch.Tensor]:
        return ce_step(self.model, batch)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def outputs(self) -> Dict[str, np.ndarray]:
        return {"noise_score": self.scores.astype(np.float32), "flagged": np.flatnonzero(self.flagged),
                "knn_labels": self.labels}
