"""k-NN label agreement at anchors (the default, ``auto``).

Class c's anchors are the 2 % of samples whose neighbours 2-20 vote most for c. If an anchor and its 3 nearest
neighbours share a clean class i, their given labels agree with probability Σ_j T[i, j]²; the measured agreement A_c
is solved for T̂_cc from τ² + (1 − τ)² Σ_j w_j² = A_c, with w the off-diagonal shape of the anchors' own labels (the
larger root). Unlike reading the anchors' own labels, an anchor that sits in a region of another class i gives
Σ_j T[i, j]² too, which equals Σ_j T[c, j]² under symmetric noise: region-level impurity of the features cancels,
only sample-level impurity (an anchor whose neighbours differ from it in clean class) remains. Second-order label
consensus of nearest neighbours is HOC's statistic (Zhu, Song and Liu, ICML 2021); HOC fits T to it under the
assumption that the neighbours share a clean label everywhere, which overshot by +0.08 to +0.16 here.

Neighbours 2-3 are among those that ranked the anchor: that lifts A_c a little (it was chosen because they carry
label c), which offsets part of the remaining impurity. Measured biases: studies/noise_estimates.
"""

from __future__ import annotations

import numpy as np

from ssl_noise.estimate._anchors import class_anchors, neighbours, off_diagonal_shape, rate_and_bootstrap
from ssl_noise.estimate.base import register

RANK_K = 20
SHARE = 0.02
AGREE_M = 3


def solve_diagonal(agreement: float, shape: np.ndarray) -> float:
    """The τ in [0, 1] with τ² + (1 − τ)² Σ w² = agreement (the larger root; 1 when agreement is 1).

    >>> w = np.array([0.0, 0.5, 0.5])                 # 3 classes, symmetric: T_cc = 0.6 gives 0.36 + 0.16 / 2
    >>> round(solve_diagonal(0.44, w), 3)
    0.6
    """
    s2 = float(np.sum(shape ** 2))
    a, b, c = 1.0 + s2, -2.0 * s2, s2 - min(float(agreement), 1.0)
    return float(np.clip((-b + np.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a), 0.0, 1.0))


@register("knn_agreement", systematic=0.035,
          paper="Zhu, Song and Liu, ICML 2021 (HOC: nearest-neighbour label consensus); anchors as Patrini et al.")
def knn_agreement(features: np.ndarray, labels: np.ndarray, num_classes: int, *, seed: int = 0, boot: int = 200):
    idx = neighbours(features, RANK_K)
    anchors = class_anchors(idx, labels, num_classes, skip=1, rank_k=RANK_K, share=SHARE)
    first = labels[idx[:, :AGREE_M]]

    def row(c: int, rows: np.ndarray) -> np.ndarray:
        own = labels[rows]
        shape = off_diagonal_shape(own, c, num_classes)
        tau = solve_diagonal(float(np.mean(own[:, None] == first[rows])), shape)
        out = shape * (1.0 - tau)
        out[c] = tau
        return out

    return rate_and_bootstrap(anchors, row, labels, seed=seed, boot=boot)
