"""Noise-rate estimates from what a real user has: the noisy labels and an encoder's features or a run's losses.

Methods that drop or flag a share of the data (Co-teaching's forget rate, HSA-NRL's ε̂, the k-NN filter, the
detectors' cut) need that share. Telling them the injected rate flatters them; these estimators do not look at
the clean labels. Which one is used where, and how far each lands from the realised rate: docs/methods.md.
"""

from __future__ import annotations

import warnings
from typing import Optional, Tuple, Union

import numpy as np

from ssl_noise.config import check_noise_estimate
from ssl_noise import progress
from ssl_noise.errors import UserError

Setting = Union[str, float]  # auto | oracle | a rate: see ssl_noise.config.check_noise_estimate


def out_of_fold_probs(features: np.ndarray, labels: np.ndarray, num_classes: int, *, folds: int = 5,
                      seed: int = 0) -> np.ndarray:
    """(N, K) out-of-fold probabilities of a standardised multinomial logistic regression (stratified K-fold)."""
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels, dtype=np.int64)
    if not 2 <= folds <= len(labels):
        raise UserError(f"--folds must be between 2 and the {len(labels)} samples, got {folds}")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=1.0))
    out = np.zeros((len(labels), num_classes))
    with warnings.catch_warnings():  # "least populated class has only n members": cleanlab handles small classes
        warnings.simplefilter("ignore", UserWarning)
        splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels))
        for fit_rows, held_out in progress.bar(splits, desc="cross-validation folds", unit="fold", leave=False):
            fold = clone(model).fit(features[fit_rows], labels[fit_rows])  # cross_val_predict's loop, with a bar
            out[np.ix_(held_out, fold.classes_)] = fold.predict_proba(features[held_out])
    return out


def confident_joint_rate(labels: np.ndarray, probs: np.ndarray) -> float:
    """1 − trace of cleanlab's calibrated confident joint P(given, true) (Northcutt et al., JAIR 2021): the share
    of labels whose class differs from the class the out-of-fold model is confident about.

    >>> labels = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    >>> probs = np.eye(2)[[0, 0, 0, 1, 1, 1, 1, 0]] * 0.8 + 0.1   # the last two labels look wrong
    >>> round(confident_joint_rate(labels, probs), 3)
    0.25
    """
    from cleanlab.count import estimate_joint

    joint = estimate_joint(np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64))
    return float(np.clip(1.0 - np.trace(joint), 0.0, 0.99))


def features_rate(features: np.ndarray, labels: np.ndarray, num_classes: int, *, folds: int = 5,
                  seed: int = 0) -> float:
    """The confident-joint estimate from out-of-fold probabilities of a linear model on frozen features."""
    return confident_joint_rate(labels, out_of_fold_probs(features, labels, num_classes, folds=folds, seed=seed))


def mixture_rate(losses: np.ndarray, seed: int = 0) -> float:
    """The weight of the high-loss component of a two-component Gaussian mixture on per-sample losses (the split
    DivideMix makes): the share of samples a small-loss method should treat as noisy.

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


def resolve(setting: Setting, *, oracle: Optional[float], auto) -> Tuple[float, str]:
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
