"""Noise-rate estimators: from the noisy labels and an encoder's features (or a run's losses), how many labels
are wrong, and between which classes.

Methods that drop or flag a share of the data (Co-teaching's forget rate, HSA-NRL's ε̂, the k-NN filter, the
detectors' cut) need that share; a user does not know it. Each estimator is one file behind :data:`ESTIMATORS`
and returns an :class:`Estimate`: the rate, the transition matrix T̂ and an interval. ``auto`` is the one the
study (studies/noise_estimates) measured best: :data:`DEFAULT`. Papers and measured biases: docs/methods.md.
"""

from ssl_noise.estimate.base import DEFAULT, ESTIMATORS, Estimate, Setting, estimate, pixel_features, resolve
from ssl_noise.estimate.confident_joint import confident_joint_rate, features_rate, out_of_fold_probs
from ssl_noise.estimate.mixture import mixture_rate
from ssl_noise.estimate import knn_agreement, knn_anchors  # noqa: F401  (register the k-NN estimators)

__all__ = ["DEFAULT", "ESTIMATORS", "Estimate", "Setting", "confident_joint_rate", "estimate", "features_rate",
           "mixture_rate", "out_of_fold_probs", "pixel_features", "resolve"]
