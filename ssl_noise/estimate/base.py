"""The estimator contract (:class:`Estimate`), the registry, ``auto`` and ``--noise-estimate`` resolution."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np

from ssl_noise._registry import Registry
from ssl_noise.config import check_noise_estimate
from ssl_noise.errors import UserError

Setting = Union[str, float]  # auto | oracle | a rate: see ssl_noise.config.check_noise_estimate

#: ``fn(features, labels, num_classes, *, seed, boot) -> (rate, T̂, bootstrap rates)``; ``fn.systematic`` is the
#: estimator's measured systematic error (RMS of estimate − realised over the study's cells), added to the
#: bootstrap spread in the interval because resampling cannot see a bias.
ESTIMATORS: Registry[Callable] = Registry("noise-rate estimator")
#: What ``auto`` runs: the best estimator of studies/noise_estimates (mean |error| and worst case over its cells).
DEFAULT = "knn_agreement"
Z90 = 1.645  # two-sided 90 % normal quantile
#: Below this many labels a class the measured bias is several times the systematic term: warn.
SMALL_PER_CLASS = 500


class EstimateWarning(UserWarning):
    """An estimate outside the regime its bias was measured in."""


def register(name: str, *, systematic: float, paper: str) -> Callable:
    """Add an estimator under ``name`` with its measured systematic error and the paper it follows."""
    def add(fn: Callable) -> Callable:
        fn.systematic, fn.paper = float(systematic), paper
        return ESTIMATORS.register(name)(fn)
    return add


@dataclass(frozen=True)
class Estimate:
    """A noise-rate estimate: ``rate`` (the share of wrong labels), ``T`` (K, K) with ``T[i, j]`` the estimated
    P(noisy = j | clean = i), and a 90 % interval ``[lo, hi]`` (bootstrap spread plus the estimator's measured
    systematic error)."""

    rate: float
    T: np.ndarray
    lo: float
    hi: float
    estimator: str
    seconds: float

    def record(self) -> Dict[str, object]:
        """The fields metrics.json and results.csv carry."""
        return {"noise_rate_estimate": round(self.rate, 6), "noise_rate_estimate_lo": round(self.lo, 6),
                "noise_rate_estimate_hi": round(self.hi, 6), "noise_estimator": self.estimator}

    def describe(self) -> str:
        return f"{self.rate:.3f} (90 % interval {self.lo:.3f}-{self.hi:.3f}; {self.estimator}, {self.seconds:.1f} s)"


def _check_inputs(features: np.ndarray, labels: np.ndarray, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if features.ndim != 2 or len(features) != len(labels):
        raise UserError(f"features must be (N, D) with one row per label; got {features.shape} for {len(labels)} "
                        "labels")
    if len(labels) < 2 * num_classes or labels.min(initial=0) < 0 or labels.max(initial=0) >= num_classes:
        raise UserError(f"a noise-rate estimate needs at least {2 * num_classes} labels in 0..{num_classes - 1}; "
                        f"got {len(labels)} in {labels.min(initial=0)}..{labels.max(initial=0)}")
    if not np.isfinite(features).all():
        raise UserError("the features contain NaN or inf (a diverged encoder?): no noise rate can be estimated")
    return features, labels


def estimate(features: np.ndarray, labels: np.ndarray, num_classes: int, *, estimator: str = "auto",
             seed: int = 0, boot: int = 200) -> Estimate:
    """Estimate the noise rate of ``labels`` from ``features`` (N, D) with ``estimator`` (``auto``: :data:`DEFAULT`).

    >>> rng = np.random.default_rng(0)
    >>> clean = np.repeat(np.arange(4), 300)
    >>> x = np.eye(4)[clean] * 4 + rng.normal(size=(1200, 4))          # four separated blobs
    >>> noisy = np.where(rng.random(1200) < 0.3, (clean + rng.integers(1, 4, 1200)) % 4, clean)
    >>> found = estimate(x, noisy, 4, seed=0)
    >>> round(float(np.mean(noisy != clean)), 2), round(found.rate, 2), found.lo < 0.3 < found.hi
    (0.3, 0.31, True)
    """
    name = DEFAULT if estimator == "auto" else estimator
    fn = ESTIMATORS.get_or_fail(name)
    features, labels = _check_inputs(features, labels, num_classes)
    if len(labels) < SMALL_PER_CLASS * num_classes:
        warnings.warn(f"{len(labels)} labels for {num_classes} classes: below {SMALL_PER_CLASS} a class the noise-rate "
                      f"estimate overshoots (by +0.08 to +0.16 on 1,000-2,000 BloodMNIST images, "
                      f"studies/noise_estimates) and its interval is too narrow; read it as an upper bound",
                      EstimateWarning, stacklevel=2)
    start = time.perf_counter()
    rate, T, boots = fn(features, labels, num_classes, seed=seed, boot=boot)
    spread = float(np.std(boots)) if len(boots) > 1 else 0.0
    half = Z90 * math.hypot(spread, fn.systematic)
    rate = float(np.clip(rate, 0.0, 0.99))
    return Estimate(rate, T, float(max(0.0, rate - half)), float(min(0.99, rate + half)), name,
                    time.perf_counter() - start)


def rate_from_T(T: np.ndarray, labels: np.ndarray) -> float:
    """1 − Σ_c p̃_c T̂_cc with p̃ the given labels' class shares: the expected share of wrong labels (exact when
    the diagonal of T is constant, as under symmetric noise; otherwise p̃ stands in for the clean priors, whose
    inversion through T̂ amplifies T̂'s errors)."""
    shares = np.bincount(labels, minlength=len(T)) / len(labels)
    return float(1.0 - np.sum(shares * np.diag(T)))


def resolve(setting: Setting, *, oracle: Optional[float], auto: Callable[[], float]) -> Tuple[float, str]:
    """``(rate, source)`` for a method or detector: ``auto()`` (called only when needed), the injected ``oracle``
    rate, or a given rate. Source is ``auto`` | ``oracle`` | ``given``."""
    setting = check_noise_estimate(setting)
    if setting == "auto":
        return float(auto()), "auto"
    if setting == "oracle":
        if oracle is None:
            raise UserError("--noise-estimate oracle: the labels come from a noise file, whose injected rate is "
                            "unknown; use auto or give a rate")
        return float(oracle), "oracle"
    return float(setting), "given"


def pixel_features(images: np.ndarray, *, dims: int = 128, side: int = 32, seed: int = 0) -> np.ndarray:
    """(N, dims) unit-length principal components of the raw pixels (images above ``side`` px area-averaged down
    to it first, in chunks, so native-size own data fits in memory): the features ``auto`` estimates from. On
    them the k-NN estimators landed closer than on a random ResNet's or a short SimCLR's embedding
    (studies/noise_estimates), they cost one PCA instead of a forward pass, and every init of a paired
    comparison is told the same rate.

    >>> pixel_features(np.random.default_rng(0).integers(0, 255, (50, 64, 64, 3), dtype=np.uint8), dims=8).shape
    (50, 8)
    """
    import torch
    from sklearn.decomposition import PCA

    images = np.asarray(images)
    chunks = []
    for start in range(0, len(images), 4096):
        x = torch.from_numpy(images[start:start + 4096]).permute(0, 3, 1, 2).float() / 255.0
        if max(x.shape[2:]) > side:
            x = torch.nn.functional.adaptive_avg_pool2d(x, (min(side, x.shape[2]), min(side, x.shape[3])))
        chunks.append(x.reshape(len(x), -1).numpy())
    flat = np.concatenate(chunks)
    dims = min(dims, flat.shape[1], len(flat))
    f = PCA(dims, svd_solver="randomized", random_state=seed).fit_transform(flat - flat.mean(axis=0))
    return (f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)).astype(np.float32)
