"""Metrics against scikit-learn and medmnist's own evaluator on fixed inputs, plus hand-computed values."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from medmnist.evaluator import getACC, getAUC
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, f1_score, matthews_corrcoef, precision_score,
                             recall_score, roc_auc_score)

from ssl_noise.metrics import classification_metrics, detection_metrics, mean_metrics, memorisation

# 10 samples, 3 classes; class 2 is never predicted, so macro-F1 has a zero term.
Y = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 0])
P = np.array([[.7, .2, .1], [.5, .4, .1], [.2, .6, .2], [.1, .8, .1], [.3, .6, .1],
              [.6, .3, .1], [.2, .5, .3], [.3, .4, .3], [.5, .2, .3], [.8, .1, .1]])


def test_multiclass_matches_sklearn_and_medmnist() -> None:
    m = classification_metrics(Y, P)
    pred = P.argmax(1)
    assert m["acc"] == pytest.approx(accuracy_score(Y, pred)) == pytest.approx(getACC(Y, P, "multi-class"))
    assert m["acc"] == pytest.approx(0.6)  # 3 of 4 class-0, 3 of 4 class-1, 0 of 2 class-2
    assert m["auc"] == pytest.approx(getAUC(Y, P, "multi-class"))
    assert m["auc"] == pytest.approx(roc_auc_score(Y, P, multi_class="ovr", average="macro"))
    assert m["auc_classes"] == 3
    assert m["balanced_acc"] == pytest.approx(balanced_accuracy_score(Y, pred)) == pytest.approx((.75 + .75 + 0) / 3)
    assert m["macro_f1"] == pytest.approx(f1_score(Y, pred, average="macro", labels=[0, 1, 2], zero_division=0))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(Y, pred))
    assert m["per_class_acc"] == pytest.approx(list(recall_score(Y, pred, average=None)))
    assert m["n"] == 10


def test_binary_task_uses_medmnist_definitions() -> None:
    y = np.array([0, 1, 1, 0, 1])
    p1 = np.array([.2, .7, .4, .6, .9])
    probs = np.stack([1 - p1, p1], 1)
    m = classification_metrics(y, probs, task="binary-class")
    assert m["acc"] == pytest.approx(getACC(y, probs, "binary-class")) == pytest.approx(0.6)
    assert m["auc"] == pytest.approx(getAUC(y, probs, "binary-class")) == pytest.approx(roc_auc_score(y, p1))


def test_absent_class_auc_averages_defined_classes_and_edge_cases() -> None:
    y = np.array([0, 0, 1, 1])
    probs = np.array([[.8, .1, .1], [.4, .5, .1], [.3, .6, .1], [.2, .7, .1]])
    m = classification_metrics(y, probs)
    expected = np.mean([roc_auc_score(y == 0, probs[:, 0]), roc_auc_score(y == 1, probs[:, 1])])
    assert m["auc"] == pytest.approx(expected) and m["auc_classes"] == 2
    assert m["per_class_acc"][2] is None
    assert classification_metrics(y, np.full((4, 3), np.nan))["auc"] is None  # a diverged net: no AUC, no crash
    assert classification_metrics(np.zeros(0, int), np.zeros((0, 3)))["acc"] is None


def test_mean_memorisation_and_detection() -> None:
    a, b = classification_metrics(Y, P), classification_metrics(Y[::-1], P)
    mean = mean_metrics([a, b])
    assert mean["acc"] == pytest.approx((a["acc"] + b["acc"]) / 2)
    assert mean["per_class_acc"][0] == pytest.approx((a["per_class_acc"][0] + b["per_class_acc"][0]) / 2)

    clean, noisy, pred = np.array([0, 1, 2, 0, 1]), np.array([0, 2, 2, 1, 1]), np.array([0, 2, 2, 0, 0])
    mem = memorisation(pred, clean, noisy)
    assert mem == {"acc_noisy": 0.6, "acc_clean": 0.6, "memorised": 0.5, "corrected": 0.5, "n_flipped": 2}
    assert memorisation(pred, clean, clean)["memorised"] is None

    truth = np.array([1, 1, 0, 0, 1, 0], bool)
    flagged = np.array([1, 0, 1, 0, 1, 0], bool)
    scores = np.array([.9, .3, .6, .1, .8, .2])
    d = detection_metrics(truth, flagged, scores)
    assert d["precision"] == pytest.approx(precision_score(truth, flagged))
    assert d["recall"] == pytest.approx(recall_score(truth, flagged))
    assert d["f1"] == pytest.approx(f1_score(truth, flagged))
    assert d["auroc"] == pytest.approx(roc_auc_score(truth, scores))
    assert detection_metrics(truth, np.zeros(6, bool))["precision"] is None


def test_metrics_and_catalogue_stay_quiet_when_medmnist_cannot_make_its_home_folder(tmp_path) -> None:
    """medmnist warns at import when ~/.medmnist cannot be created (read-only home, two workers racing); we never
    use that folder, so neither path that imports medmnist may let the warning through."""
    home = tmp_path / "home"
    home.write_text("a file where medmnist wants a folder")  # makedirs(~/.medmnist) fails, as on a read-only home
    code = ("import numpy as np\n"
            "from ssl_noise.data.catalogue import get_entry\n"
            "from ssl_noise.metrics import classification_metrics\n"
            "assert get_entry('bloodmnist').n_channels == 3\n"
            "print(classification_metrics(np.array([0, 1]), np.array([[.9, .1], [.2, .8]]))['auc'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "HOME": str(home)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1.0"
    assert "default root" not in out.stderr, out.stderr
