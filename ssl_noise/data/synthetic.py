"""A small, seeded, learnable image set for tests and smoke runs.

Tests need data that is instant to make, identical on every machine, and easy enough that a few epochs visibly
beat chance. Each class has its own tint and stripe orientation; random stripe phase, brightness jitter and pixel
noise make the classes overlap a little but stay separable.
"""

from __future__ import annotations

import numpy as np

from ssl_noise.data.dataset import ImageDataset, Split
from ssl_noise.errors import UserError


def make_synthetic(n_train: int = 384, n_val: int = 64, n_test: int = 128, num_classes: int = 4,
                   channels: int = 3, size: int = 28, seed: int = 0) -> ImageDataset:
    """Build the synthetic set.

    Args:
        n_train: Train images (classes balanced up to one image).
        n_val: Validation images.
        n_test: Test images.
        num_classes: Number of classes (2 or more).
        channels: 1 (gray) or 3 (RGB).
        size: Side of the square images in pixels.
        seed: Everything (class looks, images, labels) follows from it.

    Returns:
        An :class:`ImageDataset` named ``synthetic``.
    """
    _check(n_train, n_val, n_test, num_classes, channels, size)
    rng = np.random.default_rng(seed)
    tints = rng.uniform(0.25, 0.75, size=(num_classes, channels))
    angles = np.pi * np.arange(num_classes) / num_classes
    train, val, test = (_draw(n, tints, angles, size, rng) for n in (n_train, n_val, n_test))
    return ImageDataset(name="synthetic", class_names=[f"class_{k}" for k in range(num_classes)],
                        channels=channels, image_size=size, train=train, val=val, test=test,
                        task="multi-class", licence="generated")


def _check(n_train: int, n_val: int, n_test: int, num_classes: int, channels: int, size: int) -> None:
    if num_classes < 2:
        raise UserError(f"synthetic: num_classes must be at least 2, got {num_classes}")
    if n_train < num_classes or n_val < 0 or n_test < 0:
        raise UserError(f"synthetic: need n_train >= num_classes and n_val, n_test >= 0 "
                        f"(got {n_train}, {n_val}, {n_test})")
    if channels not in (1, 3):
        raise UserError(f"synthetic: channels must be 1 or 3, got {channels}")
    if size < 8:
        raise UserError(f"synthetic: size must be at least 8 pixels, got {size}")


def _draw(n: int, tints: np.ndarray, angles: np.ndarray, size: int, rng: np.random.Generator) -> Split:
    """``n`` images with balanced, shuffled labels: tint + oriented stripes + noise."""
    labels = rng.permutation(np.arange(n) % len(tints)).astype(np.int64)
    grid = np.linspace(-1.0, 1.0, size)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    theta = angles[labels][:, None, None]
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    stripes = np.sin(3 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    brightness = rng.uniform(-0.08, 0.08, size=(n, 1, 1, 1))
    noise = rng.normal(0.0, 0.08, size=(n, size, size, tints.shape[1]))
    images = tints[labels][:, None, None, :] + 0.2 * stripes[..., None] + brightness + noise
    return Split(np.clip(images * 255, 0, 255).astype(np.uint8), labels)
