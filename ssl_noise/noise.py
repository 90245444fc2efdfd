"""Synthetic label noise: transition matrices, label corruption and the noise file.

Why this module exists: "40 % symmetric noise" means different things in different repositories, and a noisy-label
result is only comparable when the noise is. Here every kind of noise is a row-stochastic transition matrix

    ``T[i, j] = P(noisy = j | clean = i)``   (K x K, rows sum to 1)

built by one registered builder, applied by :func:`corrupt` with an explicit ``numpy.random.Generator`` (never the
global RNG, so the noise seed is honoured and recorded), and returned together with the *realised* statistics.

The definitions pitfall: ``symmetric`` here **excludes the true class** (``T_ii = 1 - rate``,
``T_ij = rate / (K - 1)``), as in Co-teaching, HSA-NRL and LNMBench, so ``rate`` is the expected fraction of wrong
labels. DivideMix and ELR call "symmetric" a redraw over *all* K classes, which flips only ``rate * (K - 1) / K``
of the labels ("50 % symmetric noise ends up as 45 %", DivideMix issue #29); that definition is available as
``uniform``. ``pairflip`` sends class i to i + 1 mod K; ``asymmetric`` takes a class map or a full matrix file.
Matrices under which some wrong class is at least as likely as the clean one are refused unless forced, because
the clean labels can then no longer be told apart from the noise by any learner.

The noise file (``index,clean_label,noisy_label``) is what a run stores and what a user can hand back in.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from ssl_noise._registry import Registry
from ssl_noise.errors import SslNoiseWarning, UserError
from ssl_noise.io import atomic_path, read_csv_strict

PathLike = Union[str, os.PathLike]
ClassMap = Mapping[int, Union[int, Sequence[int]]]
NOISE_CSV_COLUMNS = ("index", "clean_label", "noisy_label")
ROW_SUM_TOL = 1e-6

#: Builders ``(K, rate, *, force=False, **options) -> (K, K) matrix``, keyed by ``--type``.
NOISE_TYPES: Registry[Callable[..., np.ndarray]] = Registry("noise type")


#: Short names of the noise types in run, cell and detection ids (``file``: labels read from a noise file).
SHORT_NAMES = {"symmetric": "sym", "uniform": "uni", "pairflip": "pair", "asymmetric": "asym", "file": "file"}


def short_label(noise_type: str, rate: Optional[float]) -> str:
    """``clean``, ``sym0.4``, ``pair0.3``, ``asym`` (a matrix: no rate), ``file``: the noise part of every id."""
    if rate is None:
        return SHORT_NAMES.get(noise_type, noise_type)
    return "clean" if rate == 0.0 else f"{SHORT_NAMES.get(noise_type, noise_type)}{rate:g}"


class NoiseWarning(SslNoiseWarning):
    """Issued (with ``force=True``) when a matrix lets a wrong class match or outnumber the clean one."""


class MajorityNoiseError(UserError):
    """Raised (without ``force``) when a matrix lets a wrong class match or outnumber the clean one."""


# ----------------------------------------------------------------------------------------------- validation


def _check_K(K: int) -> int:
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 2:
        raise UserError(f"label noise needs at least 2 classes, got K={K!r}")
    return int(K)


def _check_rate(rate: Optional[float], noise_type: str) -> float:
    if rate is None:
        raise UserError(f"{noise_type} noise needs a rate (--rate) in [0, 1)")
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating)) or not 0 <= rate < 1:
        raise UserError(f"noise rate must be in [0, 1), got {rate!r}")
    return float(rate)


def check_majority(T: np.ndarray, *, force: bool = False, name: str = "this noise") -> None:
    """Refuse (or, with ``force``, warn about) a matrix where a wrong class is as likely as the clean class.

    When ``T[i, j] >= T[i, i]`` for some ``j != i`` the noisy labels of class i are at best a coin toss between
    i and j (pairflip at rate 0.5, symmetric at rate >= (K - 1) / K): no method can recover the clean class.

    Args:
        T: (K, K) row-stochastic matrix, ``T[i, j] = P(noisy = j | clean = i)``.
        force: warn with :class:`NoiseWarning` and return instead of raising.
        name: how to name the matrix in the message.

    Raises:
        MajorityNoiseError: some row's largest off-diagonal entry is >= its diagonal and ``force`` is False.

    >>> check_majority(pairflip(3, 0.4))
    >>> check_majority(np.array([[0.5, 0.5], [0.0, 1.0]]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ssl_noise.noise.MajorityNoiseError: this noise: ...
    """
    off = T - np.diag(np.diag(T))
    j_max = off.argmax(axis=1)
    bad = np.flatnonzero(off[np.arange(len(T)), j_max] >= np.diag(T) - 1e-12)
    if bad.size == 0:
        return
    i = int(bad[0])
    j = int(j_max[i])
    message = (f"{name}: clean class {i} would be labelled {j} at least as often as {i} "
               f"(T[{i},{i}]={T[i, i]:.4g} <= T[{i},{j}]={T[i, j]:.4g}), so the clean class is no longer the "
               f"majority label")
    if not force:
        raise MajorityNoiseError(f"{message}; pass --force (force=True) to corrupt anyway")
    warnings.warn(message, NoiseWarning, stacklevel=2)


def validate_matrix(T: np.ndarray, K: Optional[int] = None) -> np.ndarray:
    """Check a transition matrix and return it as float64 with rows renormalised to sum exactly to 1.

    Rules, in order: 2-D and square, K x K (when K is given), finite, non-negative, every row sums to 1 within
    1e-6. A matrix whose *columns* sum to 1 (cleanlab's ``P(label | true_label)`` orientation) gets a hint.

    Args:
        T: candidate (K, K) matrix, ``T[i, j] = P(noisy = j | clean = i)``.
        K: expected number of classes, or None to accept any square size >= 2.

    Returns:
        (K, K) float64 copy whose rows sum to 1.

    Raises:
        UserError: naming the first rule that failed.

    >>> validate_matrix([[0.9, 0.1], [0.2, 0.8]]).sum(axis=1)
    array([1., 1.])
    """
    T = np.asarray(T, dtype=np.float64)
    if T.ndim != 2 or T.shape[0] != T.shape[1]:
        raise UserError(f"noise matrix must be square (K x K), got shape {T.shape}")
    if K is not None and T.shape[0] != K:
        raise UserError(f"noise matrix is {T.shape[0]}x{T.shape[1]} but the dataset has {K} classes")
    _check_K(T.shape[0])
    if not np.isfinite(T).all():
        raise UserError("noise matrix has NaN or infinite entries")
    if (T < 0).any():
        i, j = np.argwhere(T < 0)[0]
        raise UserError(f"noise matrix must be non-negative, but T[{i},{j}] = {T[i, j]:.4g}")
    sums = T.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1) > ROW_SUM_TOL)
    if bad.size:
        hint = ""
        if np.allclose(T.sum(axis=0), 1, atol=ROW_SUM_TOL, rtol=0):
            hint = "; its columns sum to 1 instead: transpose it"
        raise UserError(f"noise matrix rows must sum to 1 within {ROW_SUM_TOL:g} (T[i, j] = P(noisy = j | "
                        f"clean = i)), but row {bad[0]} sums to {sums[bad[0]]:.6g}{hint}")
    return T / sums[:, None]


# ------------------------------------------------------------------------------------------------- builders


@NOISE_TYPES.register("symmetric")
def symmetric(K: int, rate: float, *, force: bool = False) -> np.ndarray:
    """Flip with probability ``rate`` to one of the *other* K - 1 classes, uniformly (true class excluded).

    ``T_ii = 1 - rate``, ``T_ij = rate / (K - 1)``; ``rate`` is the expected wrong-label fraction. This is the
    Co-teaching / HSA-NRL definition, not DivideMix's (see :func:`uniform`).

    Args:
        K: number of classes (>= 2).
        rate: flip probability in [0, 1); >= (K - 1) / K needs ``force``.
        force: accept a rate at which a wrong class becomes as likely as the clean one.

    Returns:
        (K, K) float64 matrix, ``T[i, j] = P(noisy = j | clean = i)``.

    >>> symmetric(3, 0.4)
    array([[0.6, 0.2, 0.2],
           [0.2, 0.6, 0.2],
           [0.2, 0.2, 0.6]])
    """
    K, rate = _check_K(K), _check_rate(rate, "symmetric")
    T = np.full((K, K), rate / (K - 1))
    np.fill_diagonal(T, 1 - rate)
    check_majority(T, force=force, name=f"symmetric noise at rate {rate:g}")
    return T


@NOISE_TYPES.register("uniform")
def uniform(K: int, rate: float, *, force: bool = False) -> np.ndarray:
    """Redraw with probability ``rate`` over *all* K classes (DivideMix / ELR "symmetric").

    ``T_ii = 1 - rate + rate / K``, ``T_ij = rate / K``. A redraw can land on the true class, so the expected
    wrong-label rate is only ``rate * (K - 1) / K`` (0.35 for rate 0.4 and K = 8). The clean class always stays
    the most likely label, so ``force`` is never needed; it is accepted for a uniform signature.

    Args:
        K: number of classes (>= 2).
        rate: redraw probability in [0, 1).
        force: unused (kept so every builder has the same signature).

    Returns:
        (K, K) float64 matrix, ``T[i, j] = P(noisy = j | clean = i)``.

    >>> uniform(2, 0.4)
    array([[0.8, 0.2],
           [0.2, 0.8]])
    """
    K, rate = _check_K(K), _check_rate(rate, "uniform")
    T = np.full((K, K), rate / K)
    np.fill_diagonal(T, 1 - rate + rate / K)
    check_majority(T, force=force, name=f"uniform noise at rate {rate:g}")
    return T


@NOISE_TYPES.register("pairflip")
def pairflip(K: int, rate: float, *, force: bool = False) -> np.ndarray:
    """Flip class i to class (i + 1) mod K with probability ``rate`` (Co-teaching / HSA-NRL pair flip).

    Args:
        K: number of classes (>= 2).
        rate: flip probability in [0, 1); >= 0.5 needs ``force``.
        force: accept a rate at which the next class becomes as likely as the clean one.

    Returns:
        (K, K) float64 matrix, ``T[i, j] = P(noisy = j | clean = i)``.

    >>> pairflip(3, 0.25)
    array([[0.75, 0.25, 0.  ],
           [0.  , 0.75, 0.25],
           [0.25, 0.  , 0.75]])
    """
    K, rate = _check_K(K), _check_rate(rate, "pairflip")
    T = np.eye(K) * (1 - rate)
    T[np.arange(K), (np.arange(K) + 1) % K] += rate
    check_majority(T, force=force, name=f"pairflip noise at rate {rate:g}")
    return T


@NOISE_TYPES.register("asymmetric")
def asymmetric(K: int, rate: Optional[float] = None, *, class_map: Optional[ClassMap] = None,
               matrix: Union[np.ndarray, PathLike, None] = None, force: bool = False) -> np.ndarray:
    """Class-dependent noise from a class map (at ``rate``) or from a full matrix (array or file).

    With ``class_map = {clean: noisy}`` each mapped class keeps its label with probability 1 - rate and otherwise
    takes the mapped class (or one of a list of candidate classes, uniformly, as in Khanal et al.); unmapped
    classes stay clean, so the overall wrong-label rate is ``rate`` times the share of mapped samples. With
    ``matrix`` (a (K, K) array or a .npy / .csv / .txt file) the matrix is T itself and ``rate`` must be None.

    Args:
        K: number of classes (>= 2).
        rate: flip probability for the mapped classes, in [0, 1); None with ``matrix``.
        class_map: clean class -> noisy class (or list of candidate noisy classes).
        matrix: (K, K) array or path of a file holding one; rows must sum to 1.
        force: accept a matrix where a wrong class is as likely as the clean one.

    Returns:
        (K, K) float64 matrix, ``T[i, j] = P(noisy = j | clean = i)``.

    >>> asymmetric(3, 0.3, class_map={0: 2, 1: [0, 2]})
    array([[0.7 , 0.  , 0.3 ],
           [0.15, 0.7 , 0.15],
           [0.  , 0.  , 1.  ]])
    """
    K = _check_K(K)
    if (class_map is None) == (matrix is None):
        raise UserError("asymmetric noise needs exactly one of a class map (--class-map) or a matrix (--matrix)")
    if matrix is not None:
        if rate is not None:
            raise UserError("a noise matrix fixes every flip probability itself; do not also give a rate (--rate)")
        T = validate_matrix(load_matrix(matrix) if isinstance(matrix, (str, os.PathLike)) else matrix, K)
        check_majority(T, force=force, name="the asymmetric noise matrix")
        return T
    rate = _check_rate(rate, "asymmetric")
    T = np.eye(K)
    for clean, targets in _check_class_map(class_map, K).items():
        T[clean, clean] = 1 - rate
        T[clean, targets] += rate / len(targets)
    check_majority(T, force=force, name=f"asymmetric noise at rate {rate:g}")
    return T


def _check_class_map(class_map: ClassMap, K: int) -> Dict[int, list]:
    """Normalise ``{clean: noisy or [noisy, ...]}`` to ``{int: [int, ...]}``, checking the range and self-maps."""
    if not isinstance(class_map, Mapping) or not class_map:
        raise UserError(f"class map must be a non-empty mapping {{clean: noisy}}, got {class_map!r}")
    out = {}
    for clean, targets in class_map.items():
        targets = list(targets) if isinstance(targets, (list, tuple)) else [targets]
        for c in [clean, *targets]:
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < K:
                raise UserError(f"class map entry {clean!r}: {c!r} is not a class index in 0..{K - 1}")
        if clean in targets or len(set(targets)) != len(targets) or not targets:
            raise UserError(f"class map entry {clean!r} -> {targets!r} must name distinct classes other than "
                            f"{clean!r}")
        out[int(clean)] = [int(t) for t in targets]
    return out


def transition_matrix(noise_type: str, K: int, rate: Optional[float], *, class_map: Optional[ClassMap] = None,
                      matrix: Union[np.ndarray, PathLike, None] = None, force: bool = False) -> np.ndarray:
    """Build the (K, K) matrix of a registered noise type; the one entry point used by the CLI and fine-tuning.

    Args:
        noise_type: a key of :data:`NOISE_TYPES` (symmetric, uniform, pairflip, asymmetric).
        K: number of classes.
        rate: noise rate in [0, 1) (None only for ``asymmetric`` with ``matrix``).
        class_map: only for ``asymmetric``.
        matrix: only for ``asymmetric``.
        force: accept a matrix where a wrong class is as likely as the clean one (warns instead of raising).

    Returns:
        (K, K) float64 matrix, ``T[i, j] = P(noisy = j | clean = i)``, rows summing to 1.

    Raises:
        UserError: unknown type (listing the choices), bad rate, bad map or matrix; MajorityNoiseError without force.

    >>> transition_matrix("pairflip", 2, 0.2)
    array([[0.8, 0.2],
           [0.2, 0.8]])
    """
    builder = NOISE_TYPES.get_or_fail(noise_type)
    if noise_type == "asymmetric":
        return builder(K, rate, class_map=class_map, matrix=matrix, force=force)
    if class_map is not None or matrix is not None:
        raise UserError(f"a class map or matrix only applies to asymmetric noise, not {noise_type}")
    return builder(K, rate, force=force)


# ------------------------------------------------------------------------------------------------ file input


def load_matrix(path: PathLike) -> np.ndarray:
    """Read a (K, K) matrix from .npy, .csv (comma-separated) or .txt (whitespace-separated); not validated.

    >>> load_matrix("T.csv")                                            # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"noise matrix file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix in (".csv", ".txt"):
            return np.loadtxt(path, delimiter="," if suffix == ".csv" else None, ndmin=2, comments="#")
    except ValueError as e:
        raise UserError(f"cannot read noise matrix {path}: {e}") from None
    raise UserError(f"noise matrix file {path} must end in .npy, .csv or .txt")


def load_class_map(path: PathLike, class_names: Optional[Sequence[str]] = None) -> Dict[int, list]:
    """Read ``{clean: noisy}`` (or ``{clean: [noisy, ...]}``) from YAML or JSON; classes by index or by name.

    Names are matched case-insensitively against ``class_names``; integers and digit strings are indices.
    The result is not range-checked here (the builder does that against K).

    >>> load_class_map("map.yaml", ["normal", "benign", "malignant"])  # doctest: +SKIP
    {1: [2]}
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"class map file {path} does not exist")
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(path.read_text())
        else:
            import yaml

            raw = yaml.safe_load(path.read_text())
    except Exception as e:  # yaml and json raise many types for malformed input
        raise UserError(f"cannot parse class map {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"class map {path} must be a non-empty mapping {{clean: noisy}}")
    lookup = {name.lower(): i for i, name in enumerate(class_names or [])}

    def index(c: object) -> int:
        if isinstance(c, int) and not isinstance(c, bool):
            return c
        if isinstance(c, str) and c.strip().lstrip("-").isdigit():
            return int(c)
        if isinstance(c, str) and c.strip().lower() in lookup:
            return lookup[c.strip().lower()]
        names = f" or one of: {', '.join(class_names)}" if class_names else ""
        raise UserError(f"class map {path}: unknown class {c!r}; use a class index{names}")

    return {index(k): [index(t) for t in (v if isinstance(v, list) else [v])] for k, v in raw.items()}


# ------------------------------------------------------------------------------------------------ corruption


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


def corrupt(labels: np.ndarray, T: np.ndarray, *, rng: np.random.Generator, mode: str = "sampled") -> NoisyLabels:
    """Corrupt clean labels with transition matrix T.

    ``sampled`` draws every noisy label independently from its row ``T[clean]`` (the realised rate scatters around
    the expected one by about ``sqrt(r (1 - r) / N)``). ``exact`` fixes the counts: a clean class with n_i samples
    sends ``round(n_i * T[i, j])`` of them to class j (largest-remainder rounding, so they sum to n_i), chosen by a
    random permutation of that class (like cleanlab's ``generate_noisy_labels``, but seeded).

    Loop reference for ``sampled`` (:func:`_corrupt_sampled_loop`; the tests check the outputs are identical)::

        u = rng.random(N)                                     # every uniform drawn first
        for n in range(N):
            noisy[n] = first j with u[n] < sum(T[labels[n], :j + 1])

    Args:
        labels: (N,) clean integer labels in 0..K-1 ((N, 1) is accepted).
        T: (K, K) matrix, ``T[i, j] = P(noisy = j | clean = i)``, rows summing to 1.
        rng: the only source of randomness.
        mode: ``"sampled"`` or ``"exact"``.

    Returns:
        :class:`NoisyLabels` with the (N,) noisy labels, the flipped mask and the realised statistics.

    Raises:
        UserError: bad labels, bad matrix or unknown mode.

    >>> out = corrupt(np.repeat(np.arange(4), 250), symmetric(4, 0.2), rng=np.random.default_rng(0), mode="exact")
    >>> out.realised_rate, int(out.flipped.sum())
    (0.2, 200)
    """
    if mode not in ("sampled", "exact"):
        raise UserError(f"unknown noise mode {mode!r}; choose from: exact, sampled")
    labels, T = _prepare(labels, T, rng)
    if mode == "sampled":
        noisy = _sample_vectorised(labels, T, rng.random(len(labels)))
    else:
        noisy = _sample_exact(labels, T, rng)
    return NoisyLabels.from_labels(labels, noisy, T)


# ---------------------------------------------------------------------------------------------- noise files


@dataclass(frozen=True)
class NoiseFile:
    """Rows of a noise file: (N,) int64 ``index``, ``clean`` and ``noisy``, ordered by index (or as requested)."""

    index: np.ndarray
    clean: np.ndarray
    noisy: np.ndarray


def write_noise_csv(path: PathLike, clean: np.ndarray, noisy: np.ndarray, *,
                    indices: Optional[np.ndarray] = None) -> None:
    """Atomically write ``index,clean_label,noisy_label``, one row per training sample.

    Args:
        path: output file (replaced if it exists).
        clean: (N,) clean labels.
        noisy: (N,) noisy labels.
        indices: (N,) position of each sample in the training split as loaded; with a subset, the original
            indices. Defaults to ``0..N-1``.

    >>> write_noise_csv("noisy.csv", np.array([0, 1]), np.array([1, 1]))  # doctest: +SKIP
    """
    clean, noisy = np.asarray(clean).reshape(-1), np.asarray(noisy).reshape(-1)
    index = np.arange(len(clean)) if indices is None else np.asarray(indices).reshape(-1)
    if not all(np.issubdtype(a.dtype, np.integer) for a in (clean, noisy, index)):
        raise UserError("noise file columns (indices, clean and noisy labels) must be integer arrays")
    if not len(clean) == len(noisy) == len(index):
        raise UserError(f"noise file columns differ in length: {len(index)} indices, {len(clean)} clean, "
                        f"{len(noisy)} noisy labels")
    if len(np.unique(index)) != len(index):
        raise UserError("noise file indices must be unique")
    rows = zip(index.astype(np.int64).tolist(), clean.astype(np.int64).tolist(), noisy.astype(np.int64).tolist())
    text = ",".join(NOISE_CSV_COLUMNS) + "\n" + "".join(f"{i},{c},{n}\n" for i, c, n in rows)
    with atomic_path(path) as tmp:
        tmp.write_text(text, newline="\n")


def _int_column(frame, column: str, path: Path) -> np.ndarray:
    values = frame[column].fillna("").str.strip()
    bad = ~values.str.fullmatch(r"[+-]?\d+")
    if bad.any():
        row = int(np.argmax(bad.to_numpy()))
        raise UserError(f"noise file {path}: {column} on data row {row + 1} is {values.iloc[row]!r}, not an integer")
    return values.astype(np.int64).to_numpy()


def _check_index(index: np.ndarray, path: Path, num_samples: Optional[int],
                 expected: Optional[np.ndarray]) -> np.ndarray:
    """Validate the index column; return the row order (sorted by index, or following ``expected``)."""
    if index.min() < 0:
        raise UserError(f"noise file {path}: index {index.min()} is negative")
    values, counts = np.unique(index, return_counts=True)
    if (counts > 1).any():
        raise UserError(f"noise file {path}: index {values[counts > 1][0]} appears {counts.max()} times")
    if num_samples is not None and expected is None:
        expected = np.arange(num_samples)
    if expected is None:
        return np.argsort(index, kind="stable")
    expected = np.asarray(expected).reshape(-1)
    extra, missing = np.setdiff1d(index, expected), np.setdiff1d(expected, index)
    if extra.size:
        raise UserError(f"noise file {path}: index {extra[0]} is not a training sample here "
                        f"({len(expected)} samples expected)")
    if missing.size:
        raise UserError(f"noise file {path}: {missing.size} of {len(expected)} training samples are missing "
                        f"(first: index {missing[0]})")
    return np.argsort(index)[np.searchsorted(values, expected)]


def read_noise_csv(path: PathLike, *, num_samples: Optional[int] = None, num_classes: Optional[int] = None,
                   indices: Optional[np.ndarray] = None) -> NoiseFile:
    """Read and validate a noise file written by :func:`write_noise_csv` (or by hand).

    Checks: the three columns exist (others are ignored), every value is an integer, indices are non-negative and
    unique, labels lie in 0..num_classes-1 (when given), and the indices are exactly ``0..num_samples-1`` (when
    given) or exactly ``indices`` (a subset's original indices, when given).

    Args:
        path: the CSV file.
        num_samples: training-split size the file must cover completely.
        num_classes: number of classes K.
        indices: (N,) the exact training indices expected; the result then follows their order.

    Returns:
        :class:`NoiseFile` ordered by index, or in the order of ``indices``.

    Raises:
        UserError: naming the first problem found.

    >>> read_noise_csv("noisy.csv", num_samples=11959, num_classes=8).noisy[:3]   # doctest: +SKIP
    array([7, 3, 6])
    """
    path = Path(path)
    frame = read_csv_strict(path, what="noise file", columns=NOISE_CSV_COLUMNS)
    if frame.empty:
        raise UserError(f"noise file {path} has no rows")
    index, clean, noisy = (_int_column(frame, c, path) for c in NOISE_CSV_COLUMNS)
    for name, column in (("clean_label", clean), ("noisy_label", noisy)):
        bad = np.flatnonzero((column < 0) | (column >= (num_classes if num_classes is not None else np.inf)))
        if bad.size:
            limit = f"0..{num_classes - 1}" if num_classes is not None else "0 or more"
            raise UserError(f"noise file {path}: {name} {column[bad[0]]} at index {index[bad[0]]} is out of range "
                            f"(classes are {limit})")
    order = _check_index(index, path, num_samples, indices)
    return NoiseFile(index[order], clean[order], noisy[order])


def noise_file(out: Union[str, os.PathLike], dataset: str, noise_type: str = "symmetric", rate: Optional[float] = None,
               *, seed: int = 0, mode: str = "sampled", class_map: Optional[str] = None, matrix: Optional[str] = None,
               force: bool = False, size: int = 28, subset: Optional[int] = None,
               data_root: Optional[str] = None) -> tuple:
    """Corrupt ``dataset``'s training labels and write them to ``out`` (``ssl-noise noise``).

    Returns ``(dataset, T, NoisyLabels)`` for the caller's summary. The type is checked before any data is loaded; the
    file records original indices under ``subset``, so other commands map it back onto the full split.
    """
    from ssl_noise.data import load_dataset

    NOISE_TYPES.get_or_fail(noise_type)  # fail on a typo before loading any data
    ds = load_dataset(dataset, data_root=data_root, size=size, subset=subset, seed=seed)
    if getattr(ds, "multilabel", False):
        raise UserError(f"{dataset} is multi-label; label noise needs one class per image")
    mapping = load_class_map(class_map, ds.class_names) if class_map else None
    T = transition_matrix(noise_type, len(ds.class_names), rate, class_map=mapping, matrix=matrix, force=force)
    result = corrupt(ds.train.labels, T, rng=np.random.default_rng(seed), mode=mode)
    write_noise_csv(out, ds.train.labels, result.noisy, indices=ds.train_indices)
    return ds, T, result
