"""Acquisition functions for active label refinement: which rejected samples an oracle should relabel next.

One function per strategy in :data:`ACQUISITION` (entropy, least confidence, margin, BALD, core-set, random), so
``ssl-noise refine --acquisition`` can name any of them; definitions and sources: docs/methods.md, "Active label
refinement".
"""

from __future__ import annotations

from typing import Any, Callable, Tuple

import numpy as np

from ssl_noise._registry import Registry

Acquired = Tuple[np.ndarray, np.ndarray]  # (B,) int64 pool positions, (P,) float64 scores

#: name -> fn(view, budget, rng) -> (picks, scores): B distinct pool positions, highest priority first, and a (P,)
#: score per pool sample (higher = acquired earlier; ties go to the earlier position). Register with
#: ``@ACQUISITION.register("name")``. The view (:class:`ssl_noise.refine.PoolView`, or any object with these) is
#: lazy, so a function pays only for what it reads: ``probs()`` (P, K) eval-mode softmax on un-augmented pool
#: images; ``mc_probs()`` (T, P, K) softmax of T stochastic passes; ``features()`` / ``labelled_features()``
#: (P, D) / (L, D) L2-normalised features of the pool and of the samples trained on; ``size`` (P).
ACQUISITION: Registry[Callable[[Any, int, np.random.Generator], Acquired]] = Registry("acquisition function")


def top(scores: np.ndarray, budget: int) -> Acquired:
    """The ``budget`` highest scores (stable: ties keep the earlier position).

    >>> top(np.array([0.1, 0.9, 0.9, 0.5]), 2)[0]
    array([1, 2])
    """
    scores = np.asarray(scores, dtype=np.float64)
    return np.argsort(-scores, kind="stable")[:budget].astype(np.int64), scores


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=-1)


@ACQUISITION.register("entropy")
def entropy(view, budget: int, rng: np.random.Generator) -> Acquired:
    """Highest predictive entropy."""
    return top(_entropy(view.probs()), budget)


@ACQUISITION.register("least_confidence")
def least_confidence(view, budget: int, rng: np.random.Generator) -> Acquired:
    """Lowest top-1 probability (score 1 - max p)."""
    return top(1.0 - view.probs().max(axis=1), budget)


@ACQUISITION.register("margin")
def margin(view, budget: int, rng: np.random.Generator) -> Acquired:
    """Smallest gap between the two most probable classes (score = -gap)."""
    p = np.sort(view.probs(), axis=1)
    return top(-(p[:, -1] - p[:, -2]), budget)


@ACQUISITION.register("bald")
def bald(view, budget: int, rng: np.random.Generator) -> Acquired:
    """Mutual information between prediction and model: H(mean_t p_t) - mean_t H(p_t)."""
    p = view.mc_probs()                                                     # (T, P, K)
    return top(_entropy(p.mean(axis=0)) - _entropy(p).mean(axis=0), budget)


@ACQUISITION.register("coreset")
def coreset(view, budget: int, rng: np.random.Generator) -> Acquired:
    """Greedy k-centre: repeatedly the pool sample farthest from its nearest centre (labelled set + picks so far).

    faiss finds each pool sample's nearest labelled sample (exact inner product on L2-normalised features, so the
    squared distance is 2 - 2 cos); each pick then lowers the distances by one (P, D) x (D,) product. The score of
    a pick is its distance at the time it was picked; unpicked samples score their final distance.
    """
    from ssl_noise.knn import search  # faiss, loaded only by the acquisition that needs neighbours

    pool, labelled = view.features(), view.labelled_features()                # (P, D), (L, D)
    if len(labelled):
        sims, _ = search(labelled, pool, 1)
        dist = np.maximum(2.0 - 2.0 * sims[:, 0].astype(np.float64), 0.0)    # (P,) squared distance
    else:
        dist = np.full(len(pool), np.inf)
    picks, scores = [], np.zeros(len(pool))
    for _ in range(budget):
        i = int(np.argmax(dist))
        picks.append(i)
        scores[i] = dist[i] if np.isfinite(dist[i]) else 4.0
        dist = np.minimum(dist, np.maximum(2.0 - 2.0 * (pool @ pool[i]).astype(np.float64), 0.0))
        dist[picks] = -np.inf
    rest = np.ones(len(pool), bool)
    rest[picks] = False
    scores[rest] = dist[rest]
    return np.asarray(picks, dtype=np.int64), scores


@ACQUISITION.register("random")
def random(view, budget: int, rng: np.random.Generator) -> Acquired:
    """Uniformly random (the baseline every strategy must beat); the scores are the random keys."""
    keys = rng.random(view.size)
    return top(keys, budget)
