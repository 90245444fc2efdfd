"""What the k-NN estimators share: one faiss search, per-class anchors ranked by their neighbours' labels, and a
bootstrap over the anchors.

An anchor of class c is a sample whose neighbourhood votes for c most strongly: its clean label is c if the
features keep classes apart there (the anchor-point assumption of Liu and Tao, TPAMI 2016, and Patrini et al.,
CVPR 2017, with a k-NN posterior instead of a trained classifier's). The sample's own label and nearest neighbour
are left out of its rank (``skip``), so what is then read from them is not what selected it.
"""

from __future__ import annotations

from typing import Callable, List

import numpy as np

from ssl_noise import knn
from ssl_noise.estimate.base import rate_from_T


def neighbours(features: np.ndarray, k: int) -> np.ndarray:
    """(N, k) indices of each row's nearest rows by inner product (L2-normalised features: cosine), self left out."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit = features / np.maximum(norms, 1e-12)
    return knn.search(unit, unit, min(k, len(features) - 1), exclude_self=True)[1]


def class_anchors(idx: np.ndarray, labels: np.ndarray, num_classes: int, *, skip: int, rank_k: int,
                  share: float, min_anchors: int = 50) -> List[np.ndarray]:
    """For each class c, the ``share`` of all samples (at least ``min_anchors``) with the largest share of
    neighbours ``skip+1 .. rank_k`` labelled c (ties: lower index first)."""
    votes = labels[idx[:, skip:rank_k]]
    n = min(len(labels), max(min_anchors, int(round(share * len(labels)))))
    return [np.argsort(-(votes == c).mean(axis=1), kind="stable")[:n] for c in range(num_classes)]


def rate_and_bootstrap(anchors: List[np.ndarray], row: Callable[[int, np.ndarray], np.ndarray], labels: np.ndarray,
                       *, seed: int, boot: int):
    """T̂ (row c = ``row(c, anchors of c)``), its rate, and ``boot`` rates with each class's anchors resampled."""
    K = len(anchors)
    T = np.stack([row(c, anchors[c]) for c in range(K)])
    rng = np.random.default_rng(seed)
    boots = np.empty(boot)
    for b in range(boot):
        resampled = np.stack([row(c, a[rng.integers(0, len(a), len(a))]) for c, a in enumerate(anchors)])
        boots[b] = rate_from_T(resampled, labels)
    return rate_from_T(T, labels), T, boots


def off_diagonal_shape(own: np.ndarray, c: int, num_classes: int) -> np.ndarray:
    """Where class c's wrong labels go, read from its anchors' own labels (uniform when none of them is wrong)."""
    w = np.bincount(own, minlength=num_classes).astype(np.float64)
    w[c] = 0.0
    if w.sum() == 0:
        w = np.ones(num_classes)
        w[c] = 0.0
    return w / w.sum()
