"""Noise-rate estimators on synthetic blobs with a known share of misplaced samples (impurity), their intervals,
and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from ssl_noise import estimate
from ssl_noise.errors import UserError
from ssl_noise.estimate.knn_agreement import solve_diagonal


def blobs(K: int, n: int, *, impurity: float, rate: float, seed: int, pairflip: bool = False):
    """K Gaussian blobs; a share ``impurity`` of samples sits in another class's blob (its clean label kept: the
    features' own impurity), then a share ``rate`` of labels is flipped (symmetric or to the next class)."""
    rng = np.random.default_rng(seed)
    clean = np.repeat(np.arange(K), n)
    where = clean.copy()
    moved = rng.random(len(clean)) < impurity
    where[moved] = (clean[moved] + rng.integers(1, K, int(moved.sum()))) % K
    x = np.eye(K)[where] * 3 + rng.normal(size=(len(clean), K))
    flip = rng.random(len(clean)) < rate
    noisy = np.where(flip, (clean + (1 if pairflip else rng.integers(1, K, len(clean)))) % K, clean)
    return x, clean, noisy


def mean_error(name: str, impurity: float, **kw) -> float:
    errors = []
    for rate in (0.2, 0.4):
        for seed in range(3):
            x, clean, noisy = blobs(4, 500, impurity=impurity, rate=rate, seed=seed, **kw)
            errors.append(estimate.estimate(x, noisy, 4, estimator=name, seed=seed).rate - np.mean(noisy != clean))
    return float(np.mean(errors))


@pytest.mark.parametrize("name", ["knn_agreement", "knn_anchors", "confident_joint"])
def test_on_separated_blobs_every_estimator_is_within_its_documented_bias(name) -> None:
    """docs/methods.md: on pure features every estimator is within 0.03 on average (6 cells)."""
    assert abs(mean_error(name, 0.0)) < 0.03


def test_impurity_reads_as_noise_least_for_the_default() -> None:
    """10 % misplaced samples: documented mean overshoot ≈ +0.04 (knn_agreement), +0.07 (anchors, confident joint)."""
    errors = {name: mean_error(name, 0.1) for name in ("knn_agreement", "knn_anchors", "confident_joint")}
    assert 0.0 < errors["knn_agreement"] < 0.07
    assert errors["knn_agreement"] < errors["knn_anchors"] and errors["knn_agreement"] < errors["confident_joint"]


def test_pairflip_noise_is_estimated_and_its_direction_found() -> None:
    """2,000 samples, 50 anchors a class: single cells scatter by about ±0.05, the interval covers them."""
    errors, covered = [], 0
    for seed in range(6):
        x, clean, noisy = blobs(4, 500, impurity=0.0, rate=0.3, seed=seed, pairflip=True)
        found = estimate.estimate(x, noisy, 4, seed=0)
        realised = np.mean(noisy != clean)
        errors.append(found.rate - realised)
        covered += found.lo <= realised <= found.hi
        off = found.T - np.diag(np.diag(found.T))
        assert list(off.argmax(axis=1)) == [1, 2, 3, 0]   # each class's wrong labels go to the next one
        assert np.allclose(found.T.sum(axis=1), 1.0)
    assert abs(np.mean(errors)) < 0.03 and max(np.abs(errors)) < 0.07 and covered == 6


def test_interval_is_reproducible_for_a_seed_and_covers_the_rate() -> None:
    x, clean, noisy = blobs(4, 500, impurity=0.0, rate=0.3, seed=1)
    a, b = (estimate.estimate(x, noisy, 4, seed=7) for _ in range(2))
    assert (a.rate, a.lo, a.hi) == (b.rate, b.lo, b.hi)
    c = estimate.estimate(x, noisy, 4, seed=8)
    assert c.rate == a.rate and (c.lo, c.hi) != (a.lo, a.hi)   # only the bootstrap depends on the seed
    assert a.lo < np.mean(noisy != clean) < a.hi and a.hi - a.lo < 0.3
    assert a.record() == {"noise_rate_estimate": round(a.rate, 6), "noise_rate_estimate_lo": round(a.lo, 6),
                          "noise_rate_estimate_hi": round(a.hi, 6), "noise_estimator": "knn_agreement"}


def test_auto_is_the_default_estimator_and_names_are_checked() -> None:
    x, _, noisy = blobs(3, 100, impurity=0.0, rate=0.2, seed=0)
    assert estimate.estimate(x, noisy, 3).estimator == estimate.DEFAULT == "knn_agreement"
    with pytest.raises(UserError, match="unknown noise-rate estimator 'hoc'; choose from: confident_joint"):
        estimate.estimate(x, noisy, 3, estimator="hoc")


@pytest.mark.parametrize("features, labels, match", [
    (np.full((40, 3), np.nan), np.zeros(40, int), "NaN or inf"),
    (np.zeros((40, 3)), np.zeros(39, int), "one row per label"),
    (np.zeros((4, 3)), np.zeros(4, int), "at least 6 labels"),
    (np.zeros((40, 3)), np.full(40, 5), r"in 0\.\.2"),
])
def test_bad_inputs_are_refused(features, labels, match) -> None:
    with pytest.raises(UserError, match=match):
        estimate.estimate(features, labels, 3)


def test_solve_diagonal_inverts_the_agreement() -> None:
    for K, tau in ((2, 0.8), (8, 0.4), (8, 0.95)):
        shape = np.full(K, 1 / (K - 1))
        shape[0] = 0
        agreement = tau ** 2 + (1 - tau) ** 2 * np.sum(shape ** 2)
        assert solve_diagonal(agreement, shape) == pytest.approx(tau)
    assert solve_diagonal(1.0, np.array([0.0, 1.0])) == 1.0


def test_small_training_sets_are_warned_about() -> None:
    from ssl_noise.estimate.base import EstimateWarning

    x, _, noisy = blobs(4, 100, impurity=0.0, rate=0.2, seed=0)   # 100 a class, below the 500 measured
    with pytest.warns(EstimateWarning, match="below 500 a class the noise-rate estimate overshoots"):
        estimate.estimate(x, noisy, 4)
