"""Active label refinement: every acquisition function, the simulated oracle's no-leak rule, rounds on disk, the
expert export/import round trip, detection metrics, and every bad input (exit 2, nothing changed)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ssl_noise import metrics, refine
from ssl_noise.acquisition import ACQUISITION
from ssl_noise.cli import main
from ssl_noise.config import FinetuneConfig, resolve
from ssl_noise.finetune import finetune

SPEC = "synthetic:n_train=32,n_val=16,n_test=32"
TINY = dict(dataset=SPEC, image_size=16, batch_size=16, precision="fp32", epochs=2, noise_rate=0.4,
            method="coteaching", method_args={"num_gradual": 1}, noise_estimate="oracle")
FAST = {"budget": 3, "epochs": 1}


@pytest.fixture(scope="module")
def lnl_run(tmp_path_factory) -> Path:
    """A finished Co-teaching run: 18 of 32 samples kept, 14 in the pool."""
    root = tmp_path_factory.mktemp("lnl")
    folder, _ = finetune(resolve(FinetuneConfig, TINY), data_root=None, checkpoints=root / "ck", runs=root / "runs",
                         show_progress=False)
    return folder


@pytest.fixture
def run(lnl_run, tmp_path) -> Path:
    """A private copy of the LNL run (refinement writes into the run folder)."""
    return Path(shutil.copytree(lnl_run, tmp_path / lnl_run.name))


def _fake_view(seed: int = 0) -> SimpleNamespace:
    """8 pool samples, 3 classes; rows 5 (flat), 6 (two-way tie) and 2 (BALD disagreement) are the interesting
    ones; features: pool rows 0-5 sit at the labelled cluster, rows 6 and 7 far away (7 the farthest)."""
    probs = np.full((8, 3), 0.02)
    probs[np.arange(8), np.arange(8) % 3] = 0.96
    probs[5] = [0.4, 0.3, 0.3]             # highest entropy, lowest confidence
    probs[6] = [0.5, 0.5, 0.0]             # smallest margin (but lower entropy than row 5)
    mc = np.repeat(probs[None], 4, axis=0)
    mc[:, 2] = [[0.98, 0.01, 0.01], [0.01, 0.98, 0.01]] * 2   # confident but disagreeing passes: high BALD
    feats = np.zeros((8, 4), np.float32)
    feats[:, 0] = 1.0
    feats[6] = [0.0, 1.0, 0.0, 0.0]
    feats[7] = [-1.0, 0.0, 0.0, 0.0]
    labelled = np.array([[1.0, 0.0, 0.0, 0.0], [0.99, 0.141, 0.0, 0.0]], np.float32)
    return SimpleNamespace(size=8, probs=lambda: probs, mc_probs=lambda: mc, features=lambda: feats,
                           labelled_features=lambda: labelled)


EXPECTED_FIRST = {"entropy": [5, 6], "least_confidence": [5, 6], "margin": [6, 5], "bald": [2],
                  "coreset": [7, 6]}


@pytest.mark.parametrize("name", ACQUISITION.names())
def test_every_acquisition_function_on_synthetic_data(name) -> None:
    picks, scores = ACQUISITION[name](_fake_view(), 3, np.random.default_rng(0))
    assert picks.dtype == np.int64 and len(picks) == 3 and len(set(picks.tolist())) == 3
    assert scores.shape == (8,) and ((0 <= picks) & (picks < 8)).all()
    if name == "random":
        again, _ = ACQUISITION[name](_fake_view(), 3, np.random.default_rng(0))
        other, _ = ACQUISITION[name](_fake_view(), 8, np.random.default_rng(1))
        assert np.array_equal(picks, again) and sorted(other.tolist()) == list(range(8))
    else:
        assert name in EXPECTED_FIRST, f"add the expected picks of {name} to EXPECTED_FIRST"
        first = EXPECTED_FIRST[name]
        assert picks[:len(first)].tolist() == first
    if name == "bald":
        assert scores[5] == pytest.approx(0.0, abs=1e-9)  # uncertain in every pass: no disagreement


def test_detection_report_counts_clean_kept_per_class() -> None:
    clean = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    given = np.array([0, 0, 1, 1, 1, 2, 0, 2])           # rows 2 and 6 flipped
    kept = np.array([1, 0, 0, 1, 1, 1, 1, 0], bool)
    assert np.array_equal(metrics.kept_mask(np.flatnonzero(kept), 8), kept)
    outputs = {"kept": np.flatnonzero(kept), "noise_score": 1.0 - kept, "selection_freq": kept * 1.0}
    report = metrics.detection_report(outputs, clean, given, 4)
    assert report["n_noisy"] == 2 and report["n_flagged"] == 3 and report["precision"] == pytest.approx(1 / 3)
    assert report["recall"] == 0.5 and report["clean_kept_per_class"] == [0.5, 1.0, 0.5, None]
    assert report["kept_purity"] == 0.8 and report["clean_kept"] == pytest.approx(4 / 6)


def test_simulated_oracle_labels_acquired_samples_only(run, monkeypatch) -> None:
    asked = []
    call = refine.SimulatedOracle.__call__

    def spy(self, rows):
        asked.extend(np.asarray(rows).tolist())
        return call(self, rows)

    monkeypatch.setattr(refine.SimulatedOracle, "__call__", spy)
    folder = refine.refine_run(run, rounds=2, given={"acquisition": "entropy", **FAST}, show_progress=False)
    assert folder == run / "refine" / "entropy-b3-s0"
    noisy = pd.read_csv(run / "noisy_labels.csv")
    kept = metrics.kept_mask(np.load(run / "kept.npy"), 32)
    labels = pd.read_csv(folder / "labels_r2.csv")
    acquired = pd.concat([pd.read_csv(folder / f"acquired_r{r}.csv") for r in (1, 2)])
    assert sorted(asked) == sorted(acquired["index"]) and len(set(asked)) == 6  # only acquired rows were asked
    oracle = labels["source"] == "oracle"
    assert set(labels["index"][oracle]) == set(acquired["index"]) and not kept[oracle].any()
    assert (labels["label"][oracle] == noisy["clean_label"][oracle]).all()
    # Everything else keeps its given label, the kept samples whose label is wrong included (ALR's leak).
    assert (labels["label"][~oracle] == noisy["noisy_label"][~oracle]).all()
    kept_flipped = kept & (noisy["clean_label"] != noisy["noisy_label"]).to_numpy()
    assert kept_flipped.any() and (labels["label"][kept_flipped] != noisy["clean_label"][kept_flipped]).all()
    rounds = pd.read_csv(folder / "rounds.csv")
    assert rounds["round"].tolist() == [0, 1, 2] and rounds["budget"].tolist() == [0, 3, 6]
    assert rounds["n_train"].tolist() == [18, 21, 24] and rounds["test_acc"].between(0, 1).all()
    # Asking for more rounds continues the session; asking again for as many does nothing.
    refine.refine_run(run, rounds=3, given={"acquisition": "entropy", **FAST}, show_progress=False)
    assert pd.read_csv(folder / "rounds.csv")["round"].tolist() == [0, 1, 2, 3] and len(asked) == 9
    refine.refine_run(run, rounds=3, given={"acquisition": "entropy", **FAST}, show_progress=False)
    assert len(asked) == 9


def _cli(capsys, *args: str) -> tuple:
    with pytest.raises(SystemExit) as exit_info:
        main(["refine", *args])
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_import_round_trip(run, tmp_path, capsys) -> None:
    code, out, err = _cli(capsys, "export", str(run), "--out", str(tmp_path / "review"), "--budget", "4",
                          "--epochs", "1")
    assert code == 0, err
    sheet = pd.read_csv(tmp_path / "review" / "to_review.csv", keep_default_na=False)
    assert list(sheet.columns) == ["index", "current_label", "current_name", "predicted_label", "predicted_name",
                                   "p_current", "p_predicted", "score", "label"]
    assert len(sheet) == 4 and not set(sheet["index"]) & set(np.load(run / "kept.npy"))  # from the pool
    page = (tmp_path / "review" / "review.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4 and "http" not in page
    assert all(f"index {i}</b>" in page for i in sheet["index"]) and "class_" in page
    # Exporting again before the answers arrive gives the same samples.
    code, _, err = _cli(capsys, "export", str(run), "--out", str(tmp_path / "again"))
    assert code == 0, err
    assert (tmp_path / "again" / "to_review.csv").read_bytes() == (tmp_path / "review" / "to_review.csv").read_bytes()
    # The expert answers with class names and indices, in another order; extra columns are ignored.
    answers = sheet.iloc[::-1].copy()
    answers["label"] = ["class_1", "2", "0", "class_3"]
    answers.to_csv(tmp_path / "answers.csv", index=False)
    code, out, err = _cli(capsys, "import", str(run), str(tmp_path / "answers.csv"))
    assert code == 0, err
    assert "merging 4 answer(s), then round 1 of session expert-entropy-b4-s0: fine-tuning" in err  # it says it trains
    session = Path(out.strip().splitlines()[-1])
    assert session == run / "refine" / "expert-entropy-b4-s0" and "round 1:" in err
    labels = pd.read_csv(session / "labels_r1.csv").set_index("index")
    expected = dict(zip(answers["index"], [1, 2, 0, 3]))
    assert {i: labels.loc[i, "label"] for i in expected} == expected
    assert (labels.loc[list(expected), "source"] == "oracle").all() and (labels["source"] == "oracle").sum() == 4
    assert pd.read_csv(session / "rounds.csv")["budget"].tolist() == [0, 4]
    # The next export continues from there: new samples, none of the refined ones.
    code, _, err = _cli(capsys, "export", str(run), "--out", str(tmp_path / "next"), "--budget", "4")
    assert code == 0, err
    again = pd.read_csv(tmp_path / "next" / "to_review.csv")
    assert not set(again["index"]) & set(expected)


def test_bad_inputs_exit_2_and_change_nothing(run, tmp_path, capsys) -> None:
    def fails(needle: str, *args: str) -> None:
        before = _snapshot(run)
        code, out, err = _cli(capsys, *args)
        assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, (args, err)
        assert needle in err, (needle, err)
        assert out == "" and _snapshot(run) == before, args

    fails("unknown acquisition function 'nosuch'", "run", str(run), "--acquisition", "nosuch")
    fails("budget must be non-negative", "run", str(run), "--budget", "-1")
    fails("an expert needs samples", "export", str(run), "--out", str(tmp_path / "zero"), "--budget", "0")
    fails("no refine session", "import", str(run), str(tmp_path / "answers.csv"))
    fails("not a finished run folder", "run", str(tmp_path / "nowhere"))
    assert not (run / "refine").exists()
    code, _, err = _cli(capsys, "export", str(run), "--out", str(tmp_path / "review"), "--budget", "3")
    assert code == 0, err
    sheet = pd.read_csv(tmp_path / "review" / "to_review.csv")
    under_review, other = sheet["index"].tolist(), sorted(set(range(32)) - set(sheet["index"]))[0]

    def answers(name: str, rows) -> str:
        path = tmp_path / f"{name}.csv"
        path.write_text("index,label\n" + "".join(f"{i},{label}\n" for i, label in rows))
        return str(path)

    good = [(i, 0) for i in under_review]
    fails("index 99 is not a training sample", "import", str(run), answers("unknown", good + [(99, 0)]))
    fails(f"index {other} is not among the samples under review", "import", str(run),
          answers("other", good + [(other, 0)]))
    fails("label '7'", "import", str(run), answers("class", good[:-1] + [(under_review[-1], 7)]))
    fails("label 'nosuch'", "import", str(run), answers("name", good[:-1] + [(under_review[-1], "nosuch")]))
    fails("answers none of the 3", "import", str(run), answers("blank", [(i, "") for i in under_review]))
    fails("answers none of the 3", "import", str(run), answers("unsure", [(i, "unsure") for i in under_review]))
    fails("answered twice", "import", str(run), answers("twice", good + good[:1]))
    (tmp_path / "cols.csv").write_text("idx,lbl\n1,2\n")
    fails("lacks column(s) index, label", "import", str(run), str(tmp_path / "cols.csv"))
    fails("started with budget=3", "export", str(run), "--out", str(tmp_path / "r2"), "--budget", "5",
          "--name", "expert-entropy-b3-s0")
    (run / "kept.npy").unlink()
    fails("refinement needs a run of a selecting method", "run", str(run))


def test_the_zero_budget_control_trains_the_same_rounds_and_refinement_is_credited_over_it(run, tmp_path) -> None:
    """--budget 0 relabels nothing but fine-tunes as many rounds; refine plot measures the sessions against it."""
    from ssl_noise.plots import budget_curves, gains_over_control

    control = refine.refine_run(run, rounds=2, given={"budget": 0, "epochs": 1}, show_progress=False)
    rounds = pd.read_csv(control / "rounds.csv")
    assert control.name == "control-b0-s0" and list(rounds["round"]) == [0, 1, 2]
    assert list(rounds["budget"]) == [0, 0, 0] and rounds["selected_epoch"].iloc[1:].notna().all()
    assert not list(control.glob("acquired_r*.csv"))
    session = refine.refine_run(run, rounds=2, given={**FAST, "acquisition": "random"}, show_progress=False)
    curves = budget_curves([control, session])
    aligned = curves[curves["control"]].sort_values("budget")
    assert list(aligned["budget"]) == [0, 3, 6]  # round r of the control sits at round r's budget of the session
    gains = gains_over_control(curves)
    mine = pd.read_csv(session / "rounds.csv")
    expected = mine["test_acc"].to_numpy() - rounds["test_acc"].to_numpy()
    np.testing.assert_allclose(gains.sort_values("budget")["gain"], expected)


def test_a_pool_smaller_than_budget_times_rounds_ends_with_a_short_round(run, capsys) -> None:
    """README's `refine run --rounds 8 --budget 70` on a short run: the last round relabels what is left, the
    session stops there and says so (the pool holds 14)."""
    code, _, err = _cli(capsys, "run", str(run), "--budget", "5", "--rounds", "4", "--epochs", "1")
    assert code == 0, err
    assert "warning: budget 5 x 4 round(s) = 20 relabels" in err and "3 round(s) run, the last relabelling 4" in err
    rounds = pd.read_csv(run / "refine" / "entropy-b5-s0" / "rounds.csv")
    assert rounds["acquired"].tolist() == [0, 5, 5, 4] and rounds["n_pool"].tolist()[-1] == 0
