"""Instance-dependent label noise: the generator of Xia et al. (NeurIPS 2020, arXiv 2006.07836; code
xiaoboxia/Part-dependent-label-noise, ``tools.get_instance_noisy_label``), the field's usual "IDN".

Real annotators err on the ambiguous images, and towards the class an image resembles; class-conditional matrices
cannot express that. Here each sample i gets its own flip rate ``q_i`` ~ N(rate, 0.1²) truncated to [0, 1], and
its wrong labels follow ``softmax(x_i · W[y_i])`` over the other classes, with W a (K, d, K) standard-normal
tensor: the flip direction is a function of the image. Which inputs, which generator, and how it differs from the
authors' code: docs/formats.md and docs/methods.md, "Instance-dependent noise".
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np

from ssl_noise._registry import Registry
from ssl_noise.errors import UserError
from ssl_noise.noise.corruption import NoisyLabels, _check_labels
from ssl_noise.noise.matrices import (NOISE_TYPES, ClassMap, MajorityNoiseError, NoiseWarning, PathLike, _check_K,
                                      _check_rate, transition_matrix)

#: Builders ``(K, rate, *, force=False, seed=0) -> process`` of noise that depends on the images, keyed by ``--type``;
#: apart from :data:`NOISE_TYPES` (matrices), whose contract (a K x K matrix) they do not meet.
IMAGE_NOISE_TYPES: Registry[Callable[..., "InstanceNoise"]] = Registry("image-dependent noise type")

#: The std of the per-sample flip rates (the code's ``norm_std`` default).
NORM_STD = 0.1
#: Rows of images per matrix product (keeps a 224 px split's float copy small).
CHUNK = 2048
#: Second element of W's seed sequence ``[seed, WEIGHT_STREAM]``, a stream of its own.
WEIGHT_STREAM = 2006


@dataclass(frozen=True)
class InstanceNoise:
    """The noise process: K classes, the mean flip ``rate`` and the seed of W. It is image-dependent, so it draws
    labels itself (:meth:`corrupt`) instead of being a matrix; :func:`ssl_noise.noise.corrupt` dispatches here.

    W is drawn from ``default_rng([seed, WEIGHT_STREAM])`` when first needed for d inputs, so the training and the
    validation split (drawn with different generators) share one W: one noise process, two draws."""

    K: int
    rate: float
    seed: int = 0
    norm_std: float = NORM_STD
    image_dependent = True  # the protocol ``noise.corrupt`` checks

    def weights(self, d: int) -> np.ndarray:
        """(K, d, K) float32 standard-normal W for images of d values."""
        rng = np.random.default_rng([int(self.seed), WEIGHT_STREAM])
        return rng.standard_normal((self.K, d, self.K), dtype=np.float32)

    def flip_rates(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n,) q_i ~ N(rate, norm_std²) truncated to [0, 1] (scipy's truncnorm on ``rng``); zeros at rate 0."""
        if self.rate == 0:
            return np.zeros(n)
        from scipy.stats import truncnorm

        lo, hi = (0 - self.rate) / self.norm_std, (1 - self.rate) / self.norm_std
        return truncnorm.rvs(lo, hi, loc=self.rate, scale=self.norm_std, size=n, random_state=rng)

    def probabilities(self, images: np.ndarray, labels: np.ndarray, q: np.ndarray) -> np.ndarray:
        """(N, K) p(noisy label | image, clean label): ``q_i softmax(a)`` off the clean class, ``1 - q_i`` on it, with
        ``a = x_i · W[y_i]``, x_i the image's values scaled to [0, 1] and flattened."""
        images = np.asarray(images)
        n = len(images)
        x = images.reshape(n, -1)
        W = self.weights(x.shape[1])
        p = np.empty((n, self.K), dtype=np.float64)
        for c in range(self.K):
            rows = np.flatnonzero(labels == c)
            for s in range(0, len(rows), CHUNK):
                part = rows[s:s + CHUNK]
                a = (x[part].astype(np.float32) / 255.0) @ W[c]       # (b, K)
                a = a.astype(np.float64)
                a[:, c] = -np.inf
                a = np.exp(a - a.max(axis=1, keepdims=True))
                p[part] = q[part, None] * a / a.sum(axis=1, keepdims=True)
                p[part, c] += 1 - q[part]
        return p

    def corrupt(self, labels: np.ndarray, *, images: Optional[np.ndarray], rng: np.random.Generator,
                mode: str = "sampled") -> NoisyLabels:
        """Noisy labels for ``images`` (N, H, W, C) uint8 with clean ``labels``; uses ``rng`` for the flip rates,
        then one uniform per sample (inverse CDF, as :func:`ssl_noise.noise.corrupt`'s sampled mode).

        ``NoisyLabels.T`` is the expected matrix given these images (class-wise mean of the per-sample
        distributions), so ``expected_rate(T, labels)`` is the mean flip rate; ``realised_T`` is counted."""
        if mode != "sampled":
            raise UserError("instance-dependent noise draws each label from its own image's distribution; "
                            "--noise-mode exact does not apply (use sampled)")
        if images is None or len(images) != len(labels):
            raise UserError("instance-dependent noise needs the images of the labels it corrupts")
        labels = _check_labels(labels, self.K)
        p = self.probabilities(images, labels, self.flip_rates(len(labels), rng))
        u = rng.random(len(labels))
        noisy = np.minimum((np.cumsum(p, axis=1) <= u[:, None]).sum(axis=1), self.K - 1)
        noisy = np.where(p[np.arange(len(labels)), noisy] > 0, noisy, labels)  # rounding past the last class
        counts = np.zeros((self.K, self.K))
        np.add.at(counts, labels, p)
        n = counts.sum(axis=1, keepdims=True)
        T = np.where(n > 0, counts / np.maximum(n, 1e-12), np.eye(self.K))
        return NoisyLabels.from_labels(labels, noisy.astype(np.int64), T)


@IMAGE_NOISE_TYPES.register("instance")
def instance(K: int, rate: float, *, force: bool = False, seed: int = 0) -> InstanceNoise:
    """Xia et al.'s instance-dependent noise at mean flip ``rate`` (its W seeded from ``seed``).

    From rate 0.5 on, about half the samples have ``q_i >= 0.5``, and an image's flips go almost all to one class
    (the softmax over x · W is nearly one-hot for thousands of inputs): that class then matches the clean one, so
    such rates need ``force`` as pairflip does.

    >>> instance(4, 0.3).rate
    0.3
    """
    K, rate = _check_K(K), _check_rate(rate, "instance")
    if rate >= 0.5:
        message = (f"instance noise at rate {rate:g}: a sample's flips go almost all to one class, so at a flip rate "
                   f">= 0.5 that class is as likely as the clean one")
        if not force:
            raise MajorityNoiseError(f"{message}; pass --force (force=True) to corrupt anyway")
        warnings.warn(message, NoiseWarning, stacklevel=2)
    return InstanceNoise(K, rate, int(seed))


def check_noise_type(name: str) -> None:
    """UserError listing every type (matrices, then image-dependent) unless ``name`` is one."""
    if name not in NOISE_TYPES and name not in IMAGE_NOISE_TYPES:
        choices = ", ".join(NOISE_TYPES.names() + IMAGE_NOISE_TYPES.names())
        raise UserError(f"unknown noise type {name!r}; choose from: {choices}")


def build_noise(noise_type: str, K: int, rate: Optional[float], *, class_map: Optional[ClassMap] = None,
                matrix: Union[np.ndarray, PathLike, None] = None, force: bool = False,
                seed: int = 0) -> Union[np.ndarray, InstanceNoise]:
    """The noise of ``--type``: a (K, K) matrix (:func:`~ssl_noise.noise.transition_matrix`) or an image-dependent
    process (its weights seeded from ``seed``); :func:`~ssl_noise.noise.corrupt` applies either.

    >>> build_noise("instance", 3, 0.2, seed=1)
    InstanceNoise(K=3, rate=0.2, seed=1, norm_std=0.1)
    """
    check_noise_type(noise_type)
    if noise_type in IMAGE_NOISE_TYPES:
        if class_map is not None or matrix is not None:
            raise UserError(f"a class map or matrix only applies to asymmetric noise, not {noise_type}")
        return IMAGE_NOISE_TYPES[noise_type](K, rate, force=force, seed=seed)
    return transition_matrix(noise_type, K, rate, class_map=class_map, matrix=matrix, force=force)
