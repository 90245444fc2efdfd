"""k-nearest-neighbour evaluation and neighbourhoods in an encoder's feature space, on faiss.

Used by the pretraining monitor, ``ssl-noise knn`` (k-NN and linear probe of a registry entry) and the
training-free noisy-label detector. Features are L2-normalised, so faiss's exact ``IndexFlatIP`` searches by cosine
similarity in chunks, never materialising an N x N matrix.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ssl_noise import progress
from ssl_noise.augment import normalize, to_float
from ssl_noise.errors import NonFiniteLoss, SslNoiseWarning, UserError


@torch.no_grad()
def extract_features(encoder: nn.Module, images: np.ndarray, *, mean: Sequence[float], std: Sequence[float],
                     device: str = "cpu", batch_size: int = 512, bf16: bool = True,
                     strict: bool = False) -> np.ndarray:
    """Embed uint8 images (N, H, W, C) with ``encoder`` in eval mode; returns L2-normalised float32 (N, D).

    The encoder's train/eval mode is restored afterwards, so the monitor can run in the middle of training.
    Non-finite features (diverged weights) are zeroed with a warning, or with ``strict`` raise
    :class:`~ssl_noise.errors.NonFiniteLoss` (the pretraining monitor: such an encoder must not be registered).
    """
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        starts = range(0, len(images), batch_size)
        for start in progress.bar(starts, desc="extracting features", unit="batch", leave=False,
                                  enabled=len(starts) > 4):
            x = to_float(torch.from_numpy(images[start:start + batch_size]).to(device))
            x = normalize(x, mean, std).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                f = encoder(x)
            out.append(torch.nn.functional.normalize(f.float(), dim=1).cpu())
    finally:
        encoder.train(was_training)
    feats = torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
    bad = ~np.isfinite(feats).all(axis=1)
    if bad.any() and strict:
        raise NonFiniteLoss(f"the encoder gives non-finite features for {int(bad.sum())} of {len(feats)} images: "
                            f"its weights diverged; lower the learning rate (--lr) and run again (nothing was "
                            f"registered)")
    if bad.any():  # a diverged encoder: say so instead of letting NaN votes turn into a silent accuracy
        warnings.warn(f"encoder produced non-finite features for {int(bad.sum())} of {len(feats)} images; "
                      "they are set to zero for the k-NN search", SslNoiseWarning)
        feats[bad] = 0.0
    return feats


def search(bank: np.ndarray, queries: np.ndarray, k: int, *,
           exclude_self: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar bank rows for each query: (similarities, indices), each (Nq, k), most similar first.

    With ``exclude_self`` the queries are the bank itself and each row's own index is dropped from its list.
    """
    import faiss

    bank = np.ascontiguousarray(bank, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    available = len(bank) - (1 if exclude_self else 0)
    if k < 1 or k > available:
        raise UserError(f"k={k} neighbours asked for but only {available} samples are available")
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(bank)
    sims, idx = index.search(queries, k + 1 if exclude_self else k)
    if not exclude_self:
        return sims, idx
    keep = idx != np.arange(len(queries))[:, None]
    keep[keep.all(axis=1), -1] = False  # self not found among ties: drop the last so every row keeps k
    return sims[keep].reshape(len(queries), k), idx[keep].reshape(len(queries), k)


def check_knn_settings(k: int, t: float, n_bank: Optional[int] = None) -> None:
    """Refuse a k or temperature that cannot give a meaningful vote, from the bank's size alone (before any feature
    is extracted): ``t <= 0`` gives NaN weights or an inverted vote, ``k`` beyond the bank is not a k-NN.
    Without ``n_bank`` only what needs no data is checked."""
    if not (isinstance(t, (int, float)) and t > 0 and np.isfinite(t)):
        raise UserError(f"the vote temperature t must be a positive number, got {t}")
    if k < 1:
        raise UserError(f"k must be at least 1, got {k}")
    if n_bank is not None and k > n_bank:
        raise UserError(f"k={k} is more than the {n_bank} training samples; choose k <= {n_bank}")


def vote(sims: np.ndarray, neighbour_labels: np.ndarray, num_classes: int, t: float = 0.1) -> np.ndarray:
    """Weighted class scores (Nq, num_classes) from neighbour similarities and labels, each (Nq, k).

    The weighted k-NN of Wu et al. 2018 (arXiv 1805.01978), as in lightly and solo-learn: each neighbour votes for
    its label with weight ``exp(similarity / t)``; rows are normalised to sum to 1.
    """
    if not t > 0:
        raise UserError(f"the vote temperature t must be positive, got {t}")
    weights = np.exp(np.nan_to_num(sims.astype(np.float64), nan=-1.0, neginf=-1.0) / t)
    scores = np.zeros((len(sims), num_classes))
    rows = np.repeat(np.arange(len(sims)), sims.shape[1])
    np.add.at(scores, (rows, neighbour_labels.reshape(-1)), weights.reshape(-1))
    return scores / scores.sum(axis=1, keepdims=True)


def knn_classify(train_feats: np.ndarray, train_labels: np.ndarray, query_feats: np.ndarray, num_classes: int,
                 *, k: int = 200, t: float = 0.1) -> np.ndarray:
    """Class scores for each query by weighted k-NN over the training features (k is capped at the bank size)."""
    sims, idx = search(train_feats, query_feats, min(k, len(train_feats)))
    return vote(sims, np.asarray(train_labels)[idx], num_classes, t)


def knn_accuracy(train_feats, train_labels, query_feats, query_labels, num_classes, *, k=200, t=0.1) -> float:
    """Top-1 accuracy of :func:`knn_classify` against ``query_labels``."""
    scores = knn_classify(train_feats, train_labels, query_feats, num_classes, k=k, t=t)
    return float((scores.argmax(1) == np.asarray(query_labels)).mean())


def linear_probe_accuracy(train_feats, train_labels, query_feats, query_labels, *, seed: int = 0) -> float:
    """Accuracy of a multinomial logistic regression on frozen features (scikit-learn, L-BFGS)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=1000, C=1.0, random_state=seed)
    clf.fit(train_feats, train_labels)
    return float((clf.predict(query_feats) == np.asarray(query_labels)).mean())


def knn_scores(features: np.ndarray, labels: np.ndarray, num_classes: int, *, k: int = 20,
               t: float = 0.1) -> Tuple[np.ndarray, np.ndarray]:
    """(N,) noise scores = weighted share of disagreeing neighbours, and (N, K) neighbour votes.

    ``features`` (N, D) L2-normalised. Raises UserError when k > N − 1. Loop reference (the tests compare)::

        for i in range(N):
            j = the k rows != i with the largest features[i] @ features[j];  w = exp(sim / t)
            score[i] = sum(w[labels[j] != labels[i]]) / sum(w)
    """
    labels = np.asarray(labels, dtype=np.int64)
    sims, idx = search(features, features, k, exclude_self=True)  # (N, k) each
    votes = vote(sims, labels[idx], num_classes, t)
    return 1.0 - votes[np.arange(len(labels)), labels], votes


def top_fraction(scores: np.ndarray, fraction: float) -> np.ndarray:
    """(N,) bool: the round(fraction·N) highest scores (ties: lower index first)."""
    scores = np.asarray(scores, dtype=np.float64)
    flagged = np.zeros(len(scores), dtype=bool)
    flagged[np.argsort(-scores, kind="stable")[:int(round(fraction * len(scores)))]] = True
    return flagged
