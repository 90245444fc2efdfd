"""The high-loss share of a two-component Gaussian mixture on per-sample losses (the split DivideMix makes, Li et
al., ICLR 2020): an estimate from a trained run rather than from features."""

from __future__ import annotations

import numpy as np


def mixture_rate(losses: np.ndarray, seed: int = 0) -> float:
    """The weight of the high-loss component of a two-component Gaussian mixture on per-sample losses: the share
    of samples a small-loss method should treat as noisy.

    >>> rng = np.random.default_rng(0)
    >>> losses = np.concatenate([rng.normal(0.2, 0.05, 700), rng.normal(2.0, 0.3, 300)])
    >>> round(mixture_rate(losses), 2)
    0.3
    """
    from sklearn.mixture import GaussianMixture

    x = np.nan_to_num(np.asarray(losses, dtype=np.float64).reshape(-1, 1))
    gmm = GaussianMixture(2, max_iter=100, tol=1e-3, reg_covar=5e-4, random_state=seed).fit(x)
    high = int(np.argmax(gmm.means_[:, 0]))
    return float(np.clip(gmm.predict_proba(x)[:, high].mean(), 0.0, 0.99))
