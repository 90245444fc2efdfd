"""Label corruption: draw noisy labels from a transition matrix with an explicit generator.

``corrupt`` never touches the global RNG, so the noise seed is honoured and recorded, and it returns the realised
statistics with the labels (a noisy-label result is only comparable when its noise is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ssl_noise.errors import UserError
from ssl_noise.noise.matrices import validate_matrix


@dataclass(frozen=True)
class NoisyLabels:
    """The result of :func:`corrupt`: noisy labels plus what the noise actually did.

    Attributes:
        noisy: (N,) int64 noisy labels.
        flipped: (N,) bool, ``noisy != clean`` (a label redrawn onto its own class is not flipped).
        T: (K, K) nominal matrix, ``T[i, j] = P(noisy = j | clean = i)``.
        realised_rate: fraction of flipped labels, ``flipped.mean()``.
        realised_T: (K, K) empirical matrix, ``#(clean = i, noisy = j) / #(clean = i)``; for a class absent from
            the labels the row is the nominal ``T[i]`` (there is no evidence to estimate it from).
    """

    noisy: np.ndarray
    flipped: np.ndarray
    T: np.ndarray
    realised_rate: float
    realised_T: np.ndarray

    @classmethod
    def from_labels(cls, clean: np.ndarray, noisy: np.ndarray, T: Optional[np.ndarray] = None) -> "NoisyLabels":
        """Summarise a given (clean, noisy) pair, e.g. one read from a noise file; T defaults to the identity.

        >>> NoisyLabels.from_labels(np.array([0, 1, 1]), np.array([0, 0, 1]), np.eye(2)).realised_rate
        0.3333333333333333
        """
        clean, noisy = np.asarray(clean, dtype=np.int64), np.asarray(noisy, dtype=np.int64)
        K = len(T) if T is not None else int(max(clean.max(initial=1), noisy.max(initial=1))) + 1
        T = np.eye(K) if T is None else T
        counts = np.bincount(clean * K + noisy, minlength=K * K).reshape(K, K).astype(np.float64)
        n = counts.sum(axis=1, keepdims=True)
        realised_T = np.where(n > 0, counts / np.maximum(n, 1), T)
        flipped = noisy != clean
        return cls(noisy, flipped, T, float(flipped.mean()) if len(flipped) else 0.0, realised_T)


def expected_rate(T: np.ndarray, labels: np.ndarray) -> float:
    """Expected wrong-label fraction when ``labels`` are corrupted with T: ``mean_n (1 - T[y_n, y_n])``.

    >>> from ssl_noise.noise import uniform
    >>> expected_rate(uniform(8, 0.4), np.arange(8))
    0.35
    """
    return float(np.mean(1 - np.diag(T)[_check_labels(labels, len(T))]))


def _check_labels(labels: np.ndarray, K: int) -> np.ndarray:
    """(N,) or (N, 1) integer labels in 0..K-1 -> (N,) int64."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:  # MedMNIST stores labels as (N, 1)
        labels = labels[:, 0]
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise UserError(f"labels must be a 1-D integer array, got shape {labels.shape} and dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= K):
        raise UserError(f"labels must lie in 0..{K - 1} for a {K}x{K} noise matrix, found {labels.min()}.."
                        f"{labels.max()}")
    return labels.astype(np.int64)


def _prepare(labels: np.ndarray, T: np.ndarray, rng: np.random.Generator) -> tuple:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng)}")
    T = validate_matrix(T)
    return _check_labels(labels, len(T)), T


def _sample_vectorised(labels: np.ndarray, T: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling, one class at a time: the first j with ``u < cumsum(T[y])[j]``."""
    cum = np.cumsum(T, axis=1)
    last_positive = T.shape[1] - 1 - np.argmax(T[:, ::-1] > 0, axis=1)  # guards u >= row total (rounding)
    noisy = np.empty_like(labels)
    for i in range(len(T)):  # a loop over classes, never over samples
        idx = np.flatnonzero(labels == i)
        noisy[idx] = np.minimum(np.searchsorted(cum[i], u[idx], side="right"), last_positive[i])
    return noisy


def _corrupt_sampled_loop(labels: np.ndarray, T: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
    """Slow reference for ``mode="sampled"``: one uniform per sample (all drawn first), walk the row's CDF.

    Consumes ``rng`` exactly like :func:`corrupt`, so both give identical labels for the same generator state.
    """
    labels, T = _prepare(labels, T, rng)
    u = rng.random(len(labels))
    noisy = np.empty_like(labels)
    for n, y in enumerate(labels):
        acc, choice = 0.0, None
        for j in range(T.shape[1]):
            acc += T[y, j]
            if u[n] < acc:
                choice = j
                break
        if choice is None:  # u landed past the row total through rounding: take the last possible class
            choice = max(j for j in range(T.shape[1]) if T[y, j] > 0)
        noisy[n] = choice
    return noisy


def _largest_remainder(n: int, p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integer counts summing to n, closest to ``n * p``: floors, then +1 for the largest fractional parts.

    Ties (e.g. 7.5 and 7.5) are broken at random rather than by class index, which would bias the realised rate.
    """
    raw = n * p
    counts = np.floor(raw).astype(np.int64)
    frac = np.where(p > 0, raw - counts, -1.0)  # a zero-probability class never gets a leftover sample
    order = np.lexsort((rng.random(len(p)), -frac))  # by fraction, descending; random among equal fractions
    counts[order[: n - counts.sum()]] += 1
    return counts


def _sample_exact(labels: np.ndarray, T: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fixed counts per class pair, assigned to a random permutation of each clean class's samples."""
    noisy = labels.copy()
    for i in range(len(T)):
        idx = np.flatnonzero(labels == i)
        if idx.size:
            counts = _largest_remainder(idx.size, T[i], rng)
            noisy[rng.permutation(idx)] = np.repeat(np.arange(len(T)), counts)
    return noisy


def corrupt(labels: np.ndarray, T, *, rng: np.random.Generator, mode: str = "sampled",
            images: Optional[np.ndarray] = None) -> NoisyLabels:
    """Corrupt clean labels with transition matrix T (or an image-dependent process: see below).

    ``sampled`` draws every noisy label independently from its row ``T[clean]`` (the realised rate scatters around
    the expected one by about ``sqrt(r (1 - r) / N)``). ``exact`` fixes the counts: a clean class with n_i samples
    sends ``round(n_i * T[i, j])`` of them to class j (largest-remainder rounding, so they sum to n_i), chosen by a
    random permutation of that class (like cleanlab's ``generate_noisy_labels``, but seeded).

    Loop reference for ``sampled`` (:func:`_corrupt_sampled_loop`; the tests check the outputs are identical)::

        u = rng.random(N)                                     # every uniform drawn first
        for n in range(N):
            noisy[n] = first j with u[n] < sum(T[labels[n], :j + 1])

    A process with ``image_dependent = True`` (:class:`ssl_noise.noise.instance.InstanceNoise`) is no matrix: it
    draws the labels itself from ``images`` with ``rng``.

    Args:
        labels: (N,) clean integer labels in 0..K-1 ((N, 1) is accepted).
        T: (K, K) matrix, ``T[i, j] = P(noisy = j | clean = i)``, rows summing to 1; or an image-dependent process.
        rng: the only source of randomness.
        mode: ``"sampled"`` or ``"exact"``.
        images: (N, H, W, C) uint8, for an image-dependent process only.

    Returns:
        :class:`NoisyLabels` with the (N,) noisy labels, the flipped mask and the realised statistics.

    Raises:
        UserError: bad labels, bad matrix or unknown mode.

    >>> from ssl_noise.noise import symmetric
    >>> out = corrupt(np.repeat(np.arange(4), 250), symmetric(4, 0.2), rng=np.random.default_rng(0), mode="exact")
    >>> out.realised_rate, int(out.flipped.sum())
    (0.2, 200)
    """
    if mode not in ("sampled", "exact"):
        raise UserError(f"unknown noise mode {mode!r}; choose from: exact, sampled")
    if getattr(T, "image_dependent", False):
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng)}")
        return T.corrupt(labels, images=images, rng=rng, mode=mode)
    labels, T = _prepare(labels, T, rng)
    if mode == "sampled":
        noisy = _sample_vectorised(labels, T, rng.random(len(labels)))
    else:
        noisy = _sample_exact(labels, T, rng)
    return NoisyLabels.from_labels(labels, noisy, T)
