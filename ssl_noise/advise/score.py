"""Scoring the pilot on a test set that can be trusted: clean labels, an expert's answers, or T̂-corrected estimates.

On real data the test labels are as noisy as the training labels, and ranking settings by accuracy on them rewards
fitting the noise. Three sources, best first: the data's clean labels (a manifest's ``clean_label`` column), an
expert's answers for a stratified sample of test images (advise writes the review page), else the noisy labels
corrected with the estimated transition matrix, reported as estimates.
Method: docs/methods.md#advise-ssl_noiseadvise-ssl-noise-advise
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from ssl_noise.advise.plan import COST
from ssl_noise.errors import UserError

Z90 = 1.645       # two-sided 90 % normal quantile: the intervals advise reports
BOOT = 2000       # bootstrap resamples of the test images


@dataclass(frozen=True)
class TestLabels:
    """What the pilot is scored against: test positions ``rows`` with their ``labels`` (clean or answered), or, for
    ``kind == "corrected"``, the noisy ``given`` labels of every test image and the transition matrix ``T``."""

    kind: str                          # clean | answers | corrected
    rows: np.ndarray
    labels: Optional[np.ndarray]
    given: np.ndarray
    T: Optional[np.ndarray] = None
    note: str = ""
    sample: Optional[np.ndarray] = None  # corrected: the stratified test sample an expert should relabel
    __test__ = False                     # not a pytest test class, whatever its name

    @property
    def is_estimate(self) -> bool:
        return self.kind == "corrected"


def sample_size(half_width: float, *, accuracy: float = 0.5, population: Optional[int] = None,
                z: float = Z90) -> int:
    """Test images to relabel for an accuracy interval of ± ``half_width``: n = z² p (1 − p) / h² (p = 0.5 is the
    worst case), with the finite-population correction when the test split has only ``population`` images.

    >>> sample_size(0.05), sample_size(0.05, accuracy=0.8), sample_size(0.05, population=300)
    (271, 174, 143)
    """
    if not 0 < half_width < 0.5:
        raise UserError(f"the interval's half-width must be in (0, 0.5); got {half_width}")
    n = z * z * accuracy * (1 - accuracy) / half_width ** 2
    if population:
        n = n / (1 + (n - 1) / population)
    return int(math.ceil(n))


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` positions drawn class by class in proportion to ``labels`` (at least one of each class), sorted."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    picked = []
    for k in np.unique(labels):
        where = np.flatnonzero(labels == k)
        take = max(1, int(round(n * len(where) / len(labels))))
        picked.append(rng.choice(where, size=min(take, len(where)), replace=False))
    return np.sort(np.concatenate(picked))


def corrected_accuracy(pred: np.ndarray, given: np.ndarray, T: np.ndarray) -> float:
    """Clean accuracy estimated from noisy test labels: with M[p, j] = P(ŷ = p, ỹ = j) and class-conditional noise
    independent of the prediction given the true class, M = A T where A[p, i] = P(ŷ = p, y = i); so A = M T⁻¹
    (negatives clipped, renormalised) and the accuracy is trace(A).

    >>> T = np.array([[0.8, 0.2], [0.2, 0.8]])
    >>> clean = np.repeat([0, 1], 500); given = clean.copy(); given[::5] = 1 - given[::5]  # 20 % flipped
    >>> float(np.mean(clean == given)), round(corrected_accuracy(clean, given, T), 3)       # a perfect classifier
    (0.8, 1.0)
    """
    K = len(T)
    M = np.bincount(np.asarray(pred) * K + np.asarray(given), minlength=K * K).reshape(K, K) / len(pred)
    A = np.clip(np.linalg.solve(np.asarray(T, np.float64).T, M.T).T, 0.0, None)
    total = A.sum()
    return float(np.trace(A) / total) if total > 0 else 0.0


def check_invertible(T: np.ndarray) -> None:
    """T̂ must be well conditioned for the correction (a row near another: the classes cannot be told apart)."""
    if np.linalg.cond(T) > 1e3:
        raise UserError("the estimated transition matrix is near singular (two classes' noisy labels look alike): "
                        "accuracies cannot be corrected with it; relabel a test sample instead (--test-answers)")


def _resamples(n: int, boot: int, seed: int) -> np.ndarray:
    """(boot, n) bootstrap positions of the test images; the same for every candidate (paired)."""
    return np.random.default_rng(seed).integers(0, n, size=(boot, n))


def _mean_accuracy(seeds: Sequence[np.ndarray], test: TestLabels, idx: np.ndarray) -> np.ndarray:
    """The mean over seeds of each resample's accuracy."""
    return np.mean([_accuracy(np.asarray(p), test, idx) for p in seeds], axis=0)


def paired(a: Sequence[np.ndarray], b: Sequence[np.ndarray], test: TestLabels, *, seed: int = 0,
           boot: int = BOOT) -> Dict[str, float]:
    """Accuracy of ``a`` − ``b`` (each one prediction array per seed, the seeds paired), its 90 % bootstrap
    interval and two-sided bootstrap p."""
    idx = _resamples(len(test.rows), boot, seed)
    full = np.arange(len(test.rows))[None, :]
    d = _mean_accuracy(a, test, idx) - _mean_accuracy(b, test, idx)
    lo, hi = np.quantile(d, [0.05, 0.95])
    point = float(_mean_accuracy(a, test, full)[0] - _mean_accuracy(b, test, full)[0])
    return {"diff": point, "lo": float(lo), "hi": float(hi),
            "p": float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))))}


def _accuracy(pred: np.ndarray, test: TestLabels, idx: np.ndarray) -> np.ndarray:
    """Accuracy on each resample (rows of ``idx``, positions into ``test.rows``)."""
    if test.kind == "corrected":
        return np.array([corrected_accuracy(pred[test.rows[i]], test.given[test.rows[i]], test.T) for i in idx])
    return np.mean(pred[test.rows][idx] == test.labels[idx], axis=1)


@dataclass
class Scored:
    """Each candidate's accuracy (mean over its seeds) with a 90 % bootstrap interval over the test images, and its
    paired difference to the best candidate (same resamples, same seeds)."""

    names: List[str]
    acc: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    best: int
    diff: np.ndarray           # candidate − best
    diff_lo: np.ndarray
    diff_hi: np.ndarray
    p: np.ndarray              # bootstrap two-sided p of "difference = 0"
    seeds: np.ndarray          # seeds scored per candidate
    per_seed: Dict[str, List[float]]

    def tied_with_best(self) -> List[int]:
        """Candidates whose difference to the best has an interval reaching 0: the pilot cannot separate them."""
        return [i for i in range(len(self.names)) if self.diff_hi[i] >= 0.0]


def score(preds: Dict[str, Sequence[np.ndarray]], test: TestLabels, *, seed: int = 0, boot: int = BOOT) -> Scored:
    """Bootstrap ``preds`` (candidate -> one test-prediction array per seed) over the test images of ``test``.

    >>> y = np.repeat([0, 1], 100); good = y.copy(); good[:10] = 1; bad = y.copy(); bad[:40] = 1
    >>> test = TestLabels("clean", np.arange(200), y, y)
    >>> s = score({"good": [good, good], "bad": [bad, bad]}, test, boot=500)
    >>> s.names[s.best], [round(float(a), 2) for a in s.acc], bool(s.diff_hi[1] < 0)
    ('good', [0.95, 0.8], True)
    """
    names = list(preds)
    if not names:
        raise UserError("no finished pilot runs to score")
    idx = _resamples(len(test.rows), boot, seed)
    full = np.arange(len(test.rows))[None, :]
    per_seed = {name: [float(_accuracy(np.asarray(p), test, full)[0]) for p in preds[name]] for name in names}
    point = np.array([np.mean(per_seed[name]) for name in names])
    resampled = np.array([_mean_accuracy(preds[name], test, idx) for name in names])
    best = int(np.argmax(point))
    diffs = resampled - resampled[best]
    lo, hi = np.quantile(resampled, [0.05, 0.95], axis=1)
    d_lo, d_hi = np.quantile(diffs, [0.05, 0.95], axis=1)
    p = np.minimum(1.0, 2 * np.minimum(np.mean(diffs <= 0, axis=1), np.mean(diffs >= 0, axis=1)))
    p[best] = 1.0
    return Scored(names, point, lo, hi, best, point - point[best], d_lo, d_hi, p,
                  np.array([len(preds[k]) for k in names]), per_seed)


def recommend(scored: Scored) -> tuple:
    """(the candidate with the highest mean, separable): separable when every other candidate's difference interval
    lies below 0. When it is not, the page says so and names the cheapest of those it cannot separate as well."""
    return scored.names[scored.best], len(scored.tied_with_best()) == 1


def cheapest(scored: Scored) -> str:
    """The cheapest candidate the pilot cannot separate from the best (CE before a method; then the higher mean)."""
    def cost(i: int) -> tuple:
        return COST[scored.names[i].split(" + ")[1]], -scored.acc[i]

    return scored.names[min(scored.tied_with_best(), key=cost)]
