"""Transition matrices: the registered noise builders, their checks, and matrix / class-map files.

Every kind of noise is one row-stochastic matrix ``T[i, j] = P(noisy = j | clean = i)`` built here, so "40 %
symmetric noise" means one thing; the definitions (``symmetric`` excludes the true class, ``uniform`` does not)
are in docs/formats.md, "Noise file".
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from ssl_noise._registry import Registry
from ssl_noise.errors import SslNoiseWarning, UserError

PathLike = Union[str, os.PathLike]
ClassMap = Mapping[int, Union[int, Sequence[int]]]
ROW_SUM_TOL = 1e-6

#: Builders ``(K, rate, *, force=False, **options) -> (K, K) matrix``, keyed by ``--type``.
NOISE_TYPES: Registry[Callable[..., np.ndarray]] = Registry("noise type")


#: Short names of the noise types in run, cell and detection ids (``file``: labels read from a noise file).
SHORT_NAMES = {"symmetric": "sym", "uniform": "uni", "pairflip": "pair", "asymmetric": "asym", "file": "file",
               "instance": "inst", "real": "real"}


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
    ssl_noise.noise.matrices.MajorityNoiseError: this noise: ...
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


#: A symmetric rate this close to (K - 1) / K warns: the labels are then nearly a coin toss between classes.
NEAR_LIMIT = 0.1


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
    limit = (K - 1) / K
    if 0 < limit - rate <= NEAR_LIMIT:
        warnings.warn(f"symmetric noise at rate {rate:g} on {K} classes is within {NEAR_LIMIT:g} of {limit:g}, where "
                      f"the clean class stops being the majority label: the labels carry little signal (a 2-class "
                      f"set at 0.4 trained to 0.500 accuracy from random init), so inits and methods are hard to "
                      f"tell apart; a lower rate gives a run that means something", NoiseWarning, stacklevel=2)
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

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "T.csv"
    >>> _ = path.write_text("# T[i, j] = P(noisy = j | clean = i)\\n0.9,0.1\\n0.3,0.7\\n")
    >>> load_matrix(path)
    array([[0.9, 0.1],
           [0.3, 0.7]])
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

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "map.yaml"
    >>> _ = path.write_text("Benign: malignant\\n0: [1, 2]\\n")
    >>> load_class_map(path, ["normal", "benign", "malignant"])
    {1: [2], 0: [1, 2]}
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
