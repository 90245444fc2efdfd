"""Training-free detectors (knn against a brute-force reference, cleanlab, loss), `ssl-noise detect` outputs and bad
inputs, the side-by-side table of `ssl-noise detections`, and the knn_filter fine-tuning method."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssl_noise.cli import main
from ssl_noise.config import FinetuneConfig, resolve
from ssl_noise.detect import DETECTORS, correction_metrics
from ssl_noise.estimate import out_of_fold_probs
from ssl_noise.knn import knn_scores, top_fraction
from ssl_noise.errors import UserError
from ssl_noise.finetune import finetune, fit, prepare

SPEC = "synthetic:n_train=32,n_val=16,n_test=32"
TINY = dict(dataset=SPEC, image_size=16, epochs=2, batch_size=16, precision="fp32")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_force_knn(features, labels, k, t):
    sims = features.astype(np.float64) @ features.T.astype(np.float64)
    scores = np.empty(len(labels))
    for i in range(len(labels)):
        others = np.array([j for j in range(len(labels)) if j != i])
        nearest = others[np.argsort(-sims[i, others], kind="stable")[:k]]
        w = np.exp(sims[i, nearest] / t)
        scores[i] = w[labels[nearest] != labels[i]].sum() / w.sum()
    return scores


@pytest.mark.parametrize("k, t", [(1, 0.1), (7, 0.1), (15, 0.5)])
def test_knn_scores_match_a_brute_force_reference(k, t) -> None:
    rng = np.random.default_rng(k)
    features, labels = _unit(rng.normal(size=(60, 8))), rng.integers(0, 3, 60)
    scores, votes = knn_scores(features, labels, 3, k=k, t=t)
    np.testing.assert_allclose(scores, _brute_force_knn(features, labels, k, t), atol=1e-5)
    assert votes.shape == (60, 3) and np.allclose(votes.sum(axis=1), 1)
    with pytest.raises(UserError, match="only 59 samples"):
        knn_scores(features, labels, 3, k=60)


def test_top_fraction_flags_the_highest_scores() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.3])
    assert top_fraction(scores, 0.4).tolist() == [False, True, False, True, False]
    assert top_fraction(scores, 0.0).sum() == 0 and top_fraction(scores, 0.2).tolist() == [0, 1, 0, 0, 0]


def _blobs(n_per=60, flip=0.15, seed=0):
    rng = np.random.default_rng(seed)
    clean = np.repeat(np.arange(3), n_per)
    centres = np.array([[4, 0, 0, 0], [0, 4, 0, 0], [0, 0, 4, 0]], float)
    x = centres[clean] + rng.normal(size=(len(clean), 4))
    given = clean.copy()
    flips = rng.random(len(clean)) < flip
    given[flips] = (clean[flips] + rng.integers(1, 3, flips.sum())) % 3
    return x, clean, given


def test_out_of_fold_probs_and_cleanlab_find_the_flips_on_blobs() -> None:
    from ssl_noise.detect import DetectOptions, Source

    x, clean, given = _blobs()
    probs = out_of_fold_probs(x, given, 4, folds=3)  # class 3 never occurs: a zero column
    assert probs.shape == (180, 4) and np.allclose(probs.sum(axis=1), 1) and np.all(probs[:, 3] == 0)
    source = Source("blobs", given, clean, np.arange(180), 3, None, {}, features=x)
    result = DETECTORS["cleanlab"](source, DetectOptions(folds=3))
    from ssl_noise.metrics import detection_metrics

    m = detection_metrics(given != clean, result.flagged, result.scores)
    assert m["auroc"] > 0.95 and m["precision"] > 0.8 and m["recall"] > 0.7, m
    with pytest.raises(UserError, match="--folds"):
        out_of_fold_probs(x[:5], given[:5], 3, folds=6)


def test_correction_metrics() -> None:
    given, clean = np.array([0, 1, 1, 2, 2]), np.array([0, 0, 1, 1, 2])
    labels, keep = np.array([0, 0, 1, 2, 2]), np.array([True, True, True, False, True])
    m = correction_metrics(given, clean, labels, keep)
    assert m["n_relabelled"] == 1 and m["relabel_acc"] == 1.0 and m["n_dropped"] == 1 and m["dropped_noisy"] == 1.0
    assert m["given_noise_rate"] == 0.4 and m["kept_noise_rate"] == 0.0 and m["noisy_fixed"] == 0.5


# ---------------------------------------------------------------- the command


def _detect(capsys, tmp_path: Path, *args: str) -> tuple:
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoints", str(tmp_path / "ck"), "--runs", str(tmp_path / "runs"), "--device", "cpu", "detect",
              *args])
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


FEATURES = ["--dataset", SPEC, "--noise", "0.4", "--noise-mode", "exact"]


@pytest.mark.parametrize("detector", ["knn", "cleanlab"])
def test_detect_writes_scores_and_metrics(make_entry, tmp_path, capsys, detector) -> None:
    entry = make_entry(tmp_path / "ck")
    code, out, err = _detect(capsys, tmp_path, "--detector", detector, "--init", "simclr", "--k", "5", *FEATURES)
    assert code == 0, err
    folder = Path(out.strip().splitlines()[-1])
    assert folder.parent == tmp_path / "runs" / "detect" and folder.name.startswith(f"{detector}-simclr-synthetic-")
    assert "precision" in out and "auroc" in out and "wall time" in out
    scores = pd.read_csv(folder / "scores.csv")
    assert list(scores.columns) == ["index", "given_label", "suggested_label", "clean_label", "score", "rank",
                                    "flagged"] + (["borderline"] if detector == "knn" else []) and len(scores) == 32
    assert (scores["given_label"] != scores["clean_label"]).sum() == 12  # exact: 3 of 8 per class
    assert scores["rank"].tolist() == list(range(1, 33)) and scores["score"].is_monotonic_decreasing
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(scores["given_label"]) <= set(metrics["class_names"])  # class names, not numbers
    scores[["given_label", "clean_label"]] = scores[["given_label", "clean_label"]].map(metrics["class_names"].index)
    assert metrics["source"]["init"] == entry and set(metrics["detection"]) >= {"precision", "recall", "f1", "auroc"}
    kept, clean = scores["flagged"] == 0, scores["clean_label"]
    truly = scores["given_label"] == clean
    assert metrics["detection"]["clean_kept_per_class"] == [
        (kept & truly & (clean == k)).sum() / (truly & (clean == k)).sum() for k in range(4)]
    assert metrics["detection"]["kept_purity"] == truly[kept].mean()
    assert "clean kept per class" in out
    assert metrics["noise_rate_source"] == "auto" and 0 <= metrics["noise_rate_estimate"] < 1
    assert metrics["realised_rate"] == 12 / 32 and "ap" in metrics["detection"]
    if detector == "knn":  # the top ε̂ share by score (auto: estimated), the scores are knn_scores of the features
        assert scores["flagged"].sum() == round(metrics["noise_rate_estimate"] * 32)
        assert metrics["options"] == {"k": 5, "t": 0.1}
        assert scores["score"][scores["flagged"] == 1].min() >= scores["score"][scores["flagged"] == 0].max()
        lo, hi = metrics["info"]["noise_rate_estimate_lo"], metrics["info"]["noise_rate_estimate_hi"]
        band = scores["rank"].between(round(lo * 32) + 1, round(hi * 32))      # ranks past the lower end's cut
        assert (scores["borderline"] == band.astype(int)).all() and band.sum() > 0   # ... up to the upper end's
        assert metrics["detection"]["n_borderline"] == band.sum() and f"borderline {band.sum()}:" in out
    run = json.loads((folder / "run.json").read_text())
    assert {"features_s", "detector_s"} == set(run["timing"])
    code, out, err = _detect(capsys, tmp_path, "--detector", detector, "--init", "simclr", "--k", "5", *FEATURES)
    assert code == 0 and "already finished" in err and out.strip().splitlines()[-1] == str(folder)


def test_loss_detector_scores_a_ce_runs_history(tmp_path, capsys) -> None:
    run, _ = finetune(resolve(FinetuneConfig, TINY, {"noise_rate": 0.25}), data_root=None,
                      checkpoints=tmp_path / "ck", runs=tmp_path / "runs", show_progress=False)
    code, out, err = _detect(capsys, tmp_path, "--detector", "loss", "--run", str(run), "--skip", "1")
    assert code == 0, err
    folder = Path(out.strip().splitlines()[-1])
    scores = pd.read_csv(folder / "scores.csv").sort_values("index")
    np.testing.assert_allclose(scores["score"], 1 - np.load(run / "history.npy")[:, 1:].mean(axis=1), atol=1e-5)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["noise_rate_source"] == "auto"  # the mixture on the losses
    assert scores["flagged"].sum() == round(metrics["noise_rate_estimate"] * 32)
    code, out, err = _detect(capsys, tmp_path, "--detector", "loss", "--run", str(run), "--skip", "1",
                             "--noise-estimate", "oracle")
    oracle = json.loads((Path(out.strip().splitlines()[-1]) / "metrics.json").read_text())
    assert oracle["noise_rate_source"] == "oracle" and oracle["detection"]["n_flagged"] == 8  # the injected 0.25
    assert "run_wall_time_s" in json.loads((folder / "run.json").read_text())["timing"]


def test_bad_detect_inputs_exit_2_and_write_nothing(make_entry, tmp_path, capsys) -> None:
    make_entry(tmp_path / "ck")
    grey = make_entry(tmp_path / "ck", channels=1, seed=1)
    ce_run, _ = finetune(resolve(FinetuneConfig, TINY, {"noise_rate": 0.25, "epochs": 1}), data_root=None,
                         checkpoints=tmp_path / "ck", runs=tmp_path / "ce", show_progress=False)
    noise_file = str(ce_run / "noisy_labels.csv")
    plain_file = str(tmp_path / "plain.csv")  # a noise file that is not a run's: its injected rate is unknown
    shutil.copyfile(noise_file, plain_file)
    cases = {
        "estimate too high": (["--init", "simclr", *FEATURES, "--noise-estimate", "1.5"], "[0, 1)"),
        "estimate negative": (["--init", "simclr", *FEATURES, "--noise-estimate", "-0.1"], "[0, 1)"),
        "encoder channels": (["--init", grey, *FEATURES], "1-channel"),
        "k larger than data": (["--init", "simclr", *FEATURES, "--k", "40"], "only 31 samples"),
        "knn without init": ([*FEATURES], "--init"),
        "loss without run": (["--detector", "loss", "--init", "simclr"], "--run"),
        "ehn on a ce run": (["--detector", "ehn", "--run", str(ce_run)], "not an hsa_nrl run"),
        "not a run": (["--detector", "loss", "--run", str(tmp_path)], "not a finished"),
        "unknown detector": (["--detector", "nosuch"], "unknown detector"),
        "noise file, oracle": (["--init", "simclr", "--dataset", SPEC, "--noise-file", plain_file,
                                "--noise-estimate", "oracle"], "injected rate is unknown"),
        "estimate not a rate": (["--init", "simclr", *FEATURES, "--noise-estimate", "guess"], "auto, oracle or a rate"),
    }
    for name, (args, needle) in cases.items():
        code, out, err = _detect(capsys, tmp_path, *args)
        assert code == 2, (name, err)
        assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and needle in err, (name, err)
        assert out == "" and not (tmp_path / "runs" / "detect").exists(), name



@pytest.mark.slow
def test_detections_puts_detectors_and_selecting_runs_side_by_side(make_entry, tmp_path, capsys) -> None:
    entry = make_entry(tmp_path / "ck")
    runs, base = tmp_path / "runs", dict(TINY, noise_rate=0.25)
    ce, _ = finetune(resolve(FinetuneConfig, base), data_root=None, checkpoints=tmp_path / "ck", runs=runs,
                     show_progress=False)
    cot, _ = finetune(resolve(FinetuneConfig, base, {"method": "coteaching"}), data_root=None,
                      checkpoints=tmp_path / "ck", runs=runs, show_progress=False)
    found = {}
    for name, args in {"loss": ["--run", str(ce), "--skip", "1"],
                       "knn": ["--init", "simclr", "--k", "5", "--dataset", SPEC, "--noise", "0.25"]}.items():
        code, out, err = _detect(capsys, tmp_path, "--detector", name, *args)
        assert code == 0, err
        found[name] = Path(out.strip().splitlines()[-1])
    found["coteaching"] = cot

    table = tmp_path / "tables" / "detection.csv"
    with pytest.raises(SystemExit) as exit_info:
        main(["detections", str(runs), "--out", str(table)])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and out.strip().splitlines()[-1] == str(table)
    frame = pd.read_csv(table).set_index("folder")
    assert sorted(frame.index) == sorted(f.name for f in found.values())   # the ce run selects nothing: no row
    assert frame["labels_sha256"].nunique() == 1 and set(frame["dataset"]) == {"synthetic"}  # one set of labels
    assert frame.loc[cot.name, "kind"] == "run" and frame.loc[found["knn"].name, "kind"] == "detect"
    run_init = json.loads((ce / "metrics.json").read_text())["init"]["id"]   # the encoder each row's scores used
    assert frame["init"].to_dict() == {found["knn"].name: entry, found["loss"].name: run_init, cot.name: run_init}
    for name, folder in found.items():
        row, expected = frame.loc[folder.name], json.loads((folder / "metrics.json").read_text())["detection"]
        assert row["detector"] == name and name in out
        keys = ["precision", "recall", "f1", "auroc", "n_flagged", "n_kept", "kept_purity", "clean_kept"]
        np.testing.assert_allclose(np.array(row[keys], float), np.array([expected[k] for k in keys], float),
                                   rtol=1e-5)
        np.testing.assert_allclose(row[[f"clean_kept_class_{k}" for k in range(4)]].astype(float),
                                   expected["clean_kept_per_class"], rtol=1e-5)

    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("{not json")
    for args, needle in (([str(tmp_path / "empty"), str(ce)], "no detections"),   # a ce run alone has none
                         ([str(tmp_path / "broken")], "cannot read"),
                         ([str(tmp_path / "nosuch")], "does not exist")):
        with pytest.raises(SystemExit) as exit_info:
            main(["detections", *args, "--out", str(tmp_path / "none.csv")])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and needle in err, err
        assert err.startswith("error:") and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "none.csv").exists()

# ---------------------------------------------------------------- knn_filter

def test_knn_filter_drops_or_relabels_the_flagged_samples(tmp_path) -> None:
    base = dict(TINY, epochs=1, noise_rate=0.4, noise_mode="exact", noise_estimate="oracle")  # cut at the injected 0.4
    prep = prepare(resolve(FinetuneConfig, base, {"method": "knn_filter", "method_args": {"k": 5}}), data_root=None,
                   checkpoints=tmp_path / "ck")
    dropped = fit(prep, show_progress=False)
    flagged = dropped.outputs["flagged"]
    assert len(flagged) == round(0.4 * 32)
    assert np.isnan(dropped.history[flagged]).all() and np.isfinite(np.delete(dropped.history, flagged, 0)).all()
    # The flags are the knn detector's on the init's features (same k, same labels).
    scores = dropped.outputs["noise_score"]
    assert np.array_equal(np.sort(flagged), np.flatnonzero(top_fraction(scores, 0.4)))
    # The run folder gets the detection block of the selecting methods: the flags against the known flips.
    folder, _ = finetune(prep.cfg, data_root=None, checkpoints=tmp_path / "ck", runs=tmp_path / "runs",
                         show_progress=False)
    detection = json.loads((folder / "metrics.json").read_text())["detection"]
    is_noisy = prep.train_noise.noisy != prep.data.train.labels
    flag_mask = np.isin(np.arange(32), flagged)
    assert detection["n_flagged"] == len(flagged) and detection["n_noisy"] == is_noisy.sum()
    assert detection["precision"] == pytest.approx((is_noisy & flag_mask).sum() / len(flagged))
    assert detection["n_kept"] == 32 - len(flagged) and not (folder / "model.safetensors").exists()
    prep = prepare(resolve(FinetuneConfig, base, {"method": "knn_filter", "method_args": {"k": 5, "mode": "relabel"}}),
                   data_root=None, checkpoints=tmp_path / "ck")
    relabelled = fit(prep, show_progress=False)
    labels, given = relabelled.outputs["knn_labels"], prep.train_noise.noisy
    assert np.isfinite(relabelled.history).all()
    assert np.array_equal(np.delete(labels, flagged), np.delete(given, flagged))
    # Nothing flagged: exactly the ce run.
    none = fit(prepare(resolve(FinetuneConfig, base, {"method": "knn_filter", "method_args": {"noise_estimate": 0.0}}),
                       data_root=None, checkpoints=tmp_path / "ck"), show_progress=False)
    ce = fit(prepare(resolve(FinetuneConfig, base), data_root=None, checkpoints=tmp_path / "ck"), show_progress=False)
    np.testing.assert_array_equal(none.history, ce.history)


def test_knn_filter_bad_inputs(tmp_path) -> None:
    for args, needle in [({"mode": "nosuch"}, "mode"), ({"noise_estimate": 1.0}, "[0, 1)"), ({"k": 0}, "k >= 1")]:
        with pytest.raises(UserError, match=needle.replace("[", r"\[").replace(")", r"\)")):
            prepare(resolve(FinetuneConfig, TINY, {"method": "knn_filter", "method_args": args}), data_root=None,
                    checkpoints=tmp_path / "ck")
    prep = prepare(resolve(FinetuneConfig, TINY, {"method": "knn_filter", "method_args": {"k": 40}, "noise_rate": 0.2}),
                   data_root=None, checkpoints=tmp_path / "ck")
    with pytest.raises(UserError, match="only 31 samples"):
        fit(prep, show_progress=False)
