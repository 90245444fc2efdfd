"""Metrics of a classifier trained on noisy labels: how well it classifies, and how much of the noise it learnt.

Pure functions over numpy arrays: classification (ACC and AUC exactly as MedMNIST defines them, so numbers compare
with its benchmark table), memorisation of the flipped labels, and detection of them. Undefined values are
``None`` so ``metrics.json`` stays strict JSON; definitions per key: docs/formats.md, "Run folder".
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

#: Scalar metrics of :func:`classification_metrics` (the order of results.csv columns).
SCALARS = ("acc", "auc", "balanced_acc", "macro_f1", "mcc")


def classification_metrics(y: np.ndarray, probs: np.ndarray, *, task: str = "multi-class") -> Dict[str, Any]:
    """ACC and AUC (MedMNIST definitions), balanced accuracy, macro-F1, MCC and per-class accuracy.

    ``medmnist.evaluator``'s ``getACC``/``getAUC`` are called: top-1 accuracy of the argmax, and the *unweighted*
    mean over classes of the one-vs-rest ROC AUC. MedMNIST's AUC fails when a class is missing from ``y``; then the
    mean runs over the classes that have both positives and negatives and ``auc_classes`` says how many did.

    Args:
        y: (N,) integer labels in 0..K-1 (the clean test labels, or whatever is being scored against).
        probs: (N, K) class probabilities (softmax rows); the prediction is their argmax.
        task: MedMNIST task string (``multi-class``, ``binary-class``, ``ordinal-regression``).

    Returns:
        ``{"acc", "auc", "auc_classes", "balanced_acc", "macro_f1", "mcc", "per_class_acc", "n"}``;
        ``per_class_acc[k]`` is the recall of class k (None when class k is absent from ``y``), ``macro_f1``
        averages over all K classes (absent and never-predicted classes count as F1 0, scikit-learn's
        ``zero_division=0``), ``balanced_acc`` over the classes present in ``y``.

    >>> m = classification_metrics(np.array([0, 1, 1]), np.array([[.9, .1], [.2, .8], [.6, .4]]))
    >>> round(m["acc"], 4), m["auc"], m["per_class_acc"]
    (0.6667, 1.0, [1.0, 0.5])
    """
    from sklearn.metrics import balanced_accuracy_score, f1_score, matthews_corrcoef

    getACC = _medmnist_evaluator().getACC
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    K = probs.shape[1]
    if len(y) == 0:
        return {"acc": None, "auc": None, "auc_classes": 0, "balanced_acc": None, "macro_f1": None, "mcc": None,
                "per_class_acc": [None] * K, "n": 0}
    pred = probs.argmax(axis=1)
    auc, auc_classes = _auc(y, probs, task)
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" etc.: the definitions handle it
        warnings.simplefilter("ignore")
        out = {"acc": float(getACC(y, probs, task)) if len(y) > 1 else float(pred[0] == y[0]),
               "auc": auc, "auc_classes": auc_classes,
               "balanced_acc": float(balanced_accuracy_score(y, pred)),
               "macro_f1": float(f1_score(y, pred, labels=np.arange(K), average="macro", zero_division=0)),
               "mcc": float(matthews_corrcoef(y, pred))}
    out["per_class_acc"] = [float(np.mean(pred[y == k] == k)) if np.any(y == k) else None for k in range(K)]
    out["n"] = int(len(y))
    return out


def _medmnist_evaluator():
    """``medmnist.evaluator`` (imported on first use: it pulls in torch), without medmnist's home-folder warning."""
    from ssl_noise.data.catalogue import medmnist_quietly

    with medmnist_quietly():
        from medmnist import evaluator
    return evaluator


def _auc(y: np.ndarray, probs: np.ndarray, task: str) -> tuple:
    """MedMNIST's getAUC when every class is present with positives and negatives; else the mean over those that are."""
    from sklearn.metrics import roc_auc_score

    if not np.isfinite(probs).all():
        return None, 0
    K = probs.shape[1]
    defined = [k for k in range(K) if 0 < np.sum(y == k) < len(y)]
    if len(defined) == K:
        return float(_medmnist_evaluator().getAUC(y, probs, task)), K
    if not defined:
        return None, 0
    return float(np.mean([roc_auc_score(y == k, probs[:, k]) for k in defined])), len(defined)


def mean_metrics(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Element-wise mean of several :func:`classification_metrics` results (the "mean of the last 5 epochs").

    None values are skipped; a key that is None everywhere stays None.

    >>> mean_metrics([{"acc": 0.5, "per_class_acc": [1.0, None]}, {"acc": 1.0, "per_class_acc": [0.0, None]}])
    {'acc': 0.75, 'per_class_acc': [0.5, None]}
    """
    def mean(values: List[Optional[float]]) -> Optional[float]:
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    out: Dict[str, Any] = {}
    for key in rows[0]:
        if key == "per_class_acc":
            out[key] = [mean([r[key][k] for r in rows]) for k in range(len(rows[0][key]))]
        elif key in ("n", "auc_classes"):
            out[key] = rows[-1][key]
        else:
            out[key] = mean([r[key] for r in rows])
    return out


def training_health(losses: Sequence[float], test_probs: np.ndarray, num_classes: int) -> List[str]:
    """What makes a finished run meaningless although every number is finite: ``loss_exploded`` (an epoch's mean
    loss above 100 x max(1, ln K), far above a cross-entropy's start at ln K, or 100 x the first epoch's) and
    ``one_class`` (every test prediction at the selected epoch is the same class). Empty when neither.

    >>> training_health([1.4e8, 3.0e8], np.eye(3)[[0, 0, 0]], 3)
    ['loss_exploded', 'one_class']
    >>> training_health([1.9, 0.7, 0.4], np.eye(3)[[0, 1, 2]], 3)
    []
    """
    found = []
    losses = [float(v) for v in losses if v is not None]
    if losses and (max(losses) > 100 * max(1.0, math.log(num_classes)) or max(losses) > 100 * max(losses[0], 1e-12)):
        found.append("loss_exploded")
    if num_classes > 1 and len(test_probs) > 1 and len(np.unique(np.asarray(test_probs).argmax(axis=1))) == 1:
        found.append("one_class")
    return found


def memorisation(pred: np.ndarray, clean: np.ndarray, noisy: np.ndarray) -> Dict[str, Optional[float]]:
    """Training-split predictions against the given (noisy) and the true (clean) labels.

    Args:
        pred: (N,) predicted classes.
        clean: (N,) clean labels.
        noisy: (N,) labels the network was trained on.

    Returns:
        ``acc_noisy`` and ``acc_clean`` over all samples; over the flipped samples (``noisy != clean``)
        ``memorised`` (predicted = given wrong label) and ``corrected`` (predicted = clean label), None if nothing
        was flipped; ``n_flipped``.

    >>> memorisation(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), np.array([0, 1, 1, 1]))
    {'acc_noisy': 0.75, 'acc_clean': 0.75, 'memorised': 0.5, 'corrected': 0.5, 'n_flipped': 2}
    """
    pred, clean, noisy = (np.asarray(a).reshape(-1) for a in (pred, clean, noisy))
    flipped = noisy != clean
    has = bool(flipped.any())
    return {"acc_noisy": float(np.mean(pred == noisy)) if len(pred) else None,
            "acc_clean": float(np.mean(pred == clean)) if len(pred) else None,
            "memorised": float(np.mean(pred[flipped] == noisy[flipped])) if has else None,
            "corrected": float(np.mean(pred[flipped] == clean[flipped])) if has else None,
            "n_flipped": int(flipped.sum())}


def detection_metrics(is_noisy: np.ndarray, flagged: np.ndarray,
                      scores: Optional[np.ndarray] = None) -> Dict[str, Optional[float]]:
    """How well a detector finds the flipped labels (noisy = positive class).

    Args:
        is_noisy: (N,) bool, the truth (``noisy != clean``).
        flagged: (N,) bool, the detector's decision.
        scores: (N,) optional noisiness scores (higher = more likely noisy) for the AUROC.

    Returns:
        ``precision``, ``recall``, ``f1`` (None when undefined), ``auroc`` and ``ap`` (average precision: the noisy
        samples are the minority class, where AP shows what AUROC hides; both None without scores or when only one
        class is present), ``n_flagged``, ``n_noisy``.

    >>> detection_metrics(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool))["precision"]
    0.5
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    is_noisy, flagged = np.asarray(is_noisy, bool).reshape(-1), np.asarray(flagged, bool).reshape(-1)
    tp = int(np.sum(is_noisy & flagged))
    precision = tp / flagged.sum() if flagged.any() else None
    recall = tp / is_noisy.sum() if is_noisy.any() else None
    f1 = None
    if precision is not None and recall is not None:
        f1 = 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)
    auroc = ap = None
    if scores is not None and 0 < is_noisy.sum() < len(is_noisy):
        auroc = float(roc_auc_score(is_noisy, np.asarray(scores, dtype=np.float64)))
        ap = float(average_precision_score(is_noisy, np.asarray(scores, dtype=np.float64)))
    return {"precision": None if precision is None else float(precision),
            "recall": None if recall is None else float(recall), "f1": None if f1 is None else float(f1),
            "auroc": auroc, "ap": ap, "n_flagged": int(flagged.sum()), "n_noisy": int(is_noisy.sum())}


def kept_metrics(is_noisy: np.ndarray, kept: np.ndarray, clean: np.ndarray, num_classes: int) -> Dict[str, Any]:
    """What a clean set keeps, beyond precision and recall: ``n_kept``, ``kept_purity`` (share of kept samples whose
    label is right), ``clean_kept`` (share of the truly clean samples kept) and ``clean_kept_per_class`` (the same per
    clean class, None for a class without clean samples).

    The per-class share is the number a detector can fail on while its F1 looks fine: on imbalanced data, flagging
    the hard minority class as noise costs little recall or precision overall but empties that class (ALR's claim
    for VoG, issue #5).

    >>> kept_metrics(np.array([1, 0, 0, 0], bool), np.array([0, 1, 0, 1], bool), np.array([0, 0, 1, 1]), 2)
    {'n_kept': 2, 'kept_purity': 1.0, 'clean_kept': 0.6666666666666666, 'clean_kept_per_class': [1.0, 0.5]}
    """
    is_noisy, kept = np.asarray(is_noisy, bool).reshape(-1), np.asarray(kept, bool).reshape(-1)
    clean, truly = np.asarray(clean).reshape(-1), ~is_noisy

    def share(mask: np.ndarray) -> Optional[float]:
        return float(kept[mask].mean()) if mask.any() else None

    return {"n_kept": int(kept.sum()), "kept_purity": float(truly[kept].mean()) if kept.any() else None,
            "clean_kept": share(truly),
            "clean_kept_per_class": [share(truly & (clean == k)) for k in range(num_classes)]}


def kept_mask(kept: np.ndarray, n: int) -> np.ndarray:
    """(n,) bool from a ``kept`` output: training rows (int indices, the convention) or already a bool mask."""
    kept = np.asarray(kept).reshape(-1)
    if kept.dtype == bool:
        if len(kept) != n:
            raise ValueError(f"kept mask has {len(kept)} entries for {n} training samples")
        return kept
    mask = np.zeros(n, dtype=bool)
    mask[kept.astype(np.int64)] = True
    return mask


def detection_report(outputs: Dict[str, np.ndarray], clean: np.ndarray, given: np.ndarray,
                     num_classes: int) -> Dict[str, Any]:
    """How well a selecting method's clean set (``outputs["kept"]``: training rows) separates the flipped labels.

    Flagged = not kept; a method that flags rather than selects (``knn_filter``) gives ``outputs["flagged"]`` instead,
    and "kept" then means not flagged (in its relabel mode the flagged samples are trained on with new labels).
    Returns :func:`detection_metrics` (AUROC from ``noise_score``) plus ``auroc_selection_freq``
    (score 1 - selection frequency) and :func:`kept_metrics` (``n_kept``, ``kept_purity``,
    ``clean_kept``, ``clean_kept_per_class``: the minority-class claim of ALR).
    """
    clean, given = np.asarray(clean).reshape(-1), np.asarray(given).reshape(-1)
    kept = (kept_mask(outputs["kept"], len(given)) if "kept" in outputs
            else ~kept_mask(outputs["flagged"], len(given)))
    is_noisy = given != clean
    score = outputs.get("noise_score")
    report: Dict[str, Any] = detection_metrics(is_noisy, ~kept, None if score is None else np.nan_to_num(score))
    freq = outputs.get("selection_freq")
    report["auroc_selection_freq"] = (None if freq is None else
                                      detection_metrics(is_noisy, ~kept, 1.0 - np.nan_to_num(freq))["auroc"])
    report.update(kept_metrics(is_noisy, kept, clean, num_classes))
    return report
