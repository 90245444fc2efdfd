"""Figures and reports from a synthetic results table, the paired statistics, their CLI, and `demo --quick`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssl_noise import plots, report, tables
from ssl_noise.cli import main
from ssl_noise.errors import UserError

SIMCLR = "simclr-resnet18-bloodmnist-e5-s0-1a2b3c4d"
RATES = (0.0, 0.2, 0.4)


def _table(detection: bool = True) -> pd.DataFrame:
    """Two inits x two methods x symmetric (with clean runs) and pairflip (without) x 2 noise seeds x 2 seeds."""
    rng = np.random.default_rng(0)
    rows = []
    for noise_type, rates in (("symmetric", RATES), ("pairflip", RATES[1:])):
        for rate in rates:
            for method, protocol in (("ce", "linear_probe"), ("coteaching", "finetune")):
                for noise_seed in (1, 2):
                    for seed in (0, 1):
                        for encoder, top, slope in (("random-resnet18", 0.70, 0.50), (SIMCLR, 0.90, 0.20)):
                            row = {"run_id": f"r{len(rows)}", "dataset": "bloodmnist", "image_size": 28,
                                   "n_train": 2000, "init": encoder.split("-")[0], "encoder_id": encoder,
                                   "protocol": protocol, "method": method, "noise_type": noise_type,
                                   "noise_rate": rate, "noise_mode": "sampled", "noise_seed": noise_seed, "seed": seed,
                                   "clean_val": False, "epochs": 5, "select_metric": "acc",
                                   "test_acc": top - slope * rate + rng.normal(0, 0.01),
                                   "train_memorised": rate * slope if rate else None}
                            if detection and method == "coteaching" and rate > 0:
                                row.update(detect_precision=0.9 - rate / 2, detect_recall=0.8, detect_auroc=0.85)
                            rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture
def table_path(tmp_path) -> Path:
    path = tmp_path / "results.csv"
    _table().to_csv(path, index=False)
    return path


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_figures_are_written_in_each_format(table_path, tmp_path, suffix, magic) -> None:
    written = plots.plot_results(table_path, tmp_path / f"fig{suffix}")
    assert [p.name for p in written] == [f"fig{suffix}", f"fig_detection{suffix}"]
    for path in written:
        assert path.read_bytes().startswith(magic) and path.stat().st_size > 5000


def test_no_detection_figure_without_detection_columns(tmp_path) -> None:
    written = plots.plot_results(_table(detection=False), tmp_path / "fig.png")
    assert [p.name for p in written] == ["fig.png"]
    assert plots.detection_columns(_table()) == ["detect_precision", "detect_recall", "detect_auroc"]


def test_spread_of_a_one_rate_line_is_drawn_as_error_bars_not_an_invisible_band() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection
    from matplotlib.container import ErrorbarContainer

    fig, ax = plt.subplots()
    plots._spread(ax, np.array([0.2]), np.array([0.87]), np.array([0.014]), "k")
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1 and not any(isinstance(c, PolyCollection) for c in ax.collections)  # no band
    segment = bars[0].lines[2][0].get_segments()[0]
    assert np.allclose(segment[:, 1], [0.87 - 0.014, 0.87 + 0.014])
    plt.close(fig)

    fig, ax = plt.subplots()
    plots._spread(ax, np.array([0.2, 0.4]), np.array([0.87, 0.8]), np.array([0.01, 0.02]), "k")
    assert not ax.containers and any(isinstance(c, PolyCollection) for c in ax.collections)  # a band
    plt.close(fig)


def test_tidy_lends_clean_runs_and_summarises_over_seeds() -> None:
    frame = _table()
    rows, left_out = tables.tidy(frame)
    assert left_out == 0 and set(rows["init_label"]) == {"random", "simclr"}
    assert set(rows["method_label"]) == {"ce (linear probe)", "coteaching"}
    pair_clean = rows[(rows["noise_type"] == "pairflip") & (rows["noise_rate"] == 0)]
    assert len(pair_clean) == 16  # the symmetric clean runs, lent to the pairflip panels
    stats = tables.summarise(rows)
    one = stats[(stats["noise_type"] == "symmetric") & (stats["method_label"] == "coteaching")
                & (stats["init_label"] == "simclr") & (stats["noise_rate"] == 0.4)].iloc[0]
    raw = frame[(frame["noise_type"] == "symmetric") & (frame["method"] == "coteaching")
                & (frame["encoder_id"] == SIMCLR) & (frame["noise_rate"] == 0.4)]["test_acc"]
    assert one["n"] == 4 and one["mean"] == pytest.approx(raw.mean()) and one["std"] == pytest.approx(raw.std())
    # a file-noise run has no rate: left out and counted
    extra = frame.iloc[[0]].assign(run_id="file-run", noise_type="file", noise_rate=None)
    assert tables.tidy(pd.concat([frame, extra]))[1] == 1
    assert tables.init_labels([SIMCLR, SIMCLR[:-1] + "e", "random-resnet18"])["random-resnet18"] == "random"
    assert tables.init_labels([SIMCLR, SIMCLR[:-1] + "e"])[SIMCLR] == SIMCLR  # two simclr encoders: full ids


def test_paired_gains_match_a_hand_computation() -> None:
    from scipy import stats

    frame = _table()
    gains = report.paired_gains(frame)
    row = gains[(gains["noise_type"] == "symmetric") & (gains["method_label"] == "ce (linear probe)")
                & (gains["noise_rate"] == 0.2)].iloc[0]
    part = frame[(frame["noise_type"] == "symmetric") & (frame["method"] == "ce") & (frame["noise_rate"] == 0.2)]
    ssl = part[part["encoder_id"] == SIMCLR].set_index(["noise_seed", "seed"])["test_acc"].sort_index()
    rnd = part[part["encoder_id"] == "random-resnet18"].set_index(["noise_seed", "seed"])["test_acc"].sort_index()
    diff = ssl - rnd
    assert row["init_label"] == "simclr" and row["n"] == 4 and row["wins"] == 4
    assert row["mean_diff"] == pytest.approx(diff.mean()) and row["std_diff"] == pytest.approx(diff.std())
    assert row["p_value"] == pytest.approx(stats.ttest_rel(ssl, rnd).pvalue)
    assert set(gains["init_label"]) == {"simclr"} and len(gains) == 2 * 3 + 2 * 3  # clean runs lent to pairflip
    assert report.paired_gains(frame[frame["encoder_id"] == SIMCLR]).empty  # no baseline, no gains


def test_variants_of_one_method_are_reported_apart_and_paired_with_their_own_baseline(tmp_path) -> None:
    """Two options of one method (the k-NN filter that drops, the one that relabels) are two methods: pooling
    them would average the relabel runs into the drop runs' baseline."""
    frame = _table()
    frame = frame[(frame["method"] == "coteaching") & (frame["noise_type"] == "symmetric")]
    relabel = frame.assign(method_args='{"mode":"relabel"}', run_id=frame["run_id"] + "-relabel",
                           test_acc=frame["test_acc"] - np.where(frame["encoder_id"] == SIMCLR, 0.0, 0.3))
    both = pd.concat([frame.assign(method_args=""), relabel], ignore_index=True)
    path = tmp_path / "results.csv"
    both.to_csv(path, index=False)  # through a CSV: the default's empty field comes back as NaN
    rows, _ = tables.tidy(pd.read_csv(path))
    assert set(rows["method_label"]) == {"coteaching", "coteaching (mode=relabel)"}
    gains = report.paired_gains(pd.read_csv(path)).set_index(["method_label", "noise_rate"])
    alone = report.paired_gains(frame).set_index(["method_label", "noise_rate"])
    assert gains.loc[("coteaching", 0.2), "mean_diff"] == pytest.approx(alone.loc[("coteaching", 0.2), "mean_diff"])
    assert gains.loc[("coteaching (mode=relabel)", 0.2), "mean_diff"] == pytest.approx(
        alone.loc[("coteaching", 0.2), "mean_diff"] + 0.3)
    assert gains.loc[("coteaching (mode=relabel)", 0.2), "n"] == 4  # pairs, not pooled runs
    assert tables.method_label("ce", "", "linear_probe") == "ce (linear probe)"
    assert tables.method_label("vog", '{"mix_ratio":0.5}', "linear_probe") == "vog (mix_ratio=0.5, linear probe)"
    with pytest.raises(UserError, match="method_args 'mode=relabel' of a knn_filter run is not JSON"):
        tables.method_label("knn_filter", "mode=relabel", "finetune")


def test_sign_test_and_small_n() -> None:
    assert report.sign_test(np.array([1.0, 2, 3, 4, 5])) == pytest.approx(0.0625)
    assert report.sign_test(np.array([1.0, -1.0])) == pytest.approx(1.0)
    assert report.sign_test(np.array([0.0, 0.0])) is None
    assert report.paired_test(np.array([0.3]))[0] is None
    assert report.paired_test(np.array([0.07, 0.07])) == (None, "identical differences")  # duplicate runs: no test


@pytest.mark.parametrize("suffix", [".md", ".html"])
def test_report_tables_gains_and_figures(table_path, tmp_path, suffix) -> None:
    out = tmp_path / "out" / f"report{suffix}"
    written = report.write_report(table_path, out)
    assert written[0] == out and all(p.exists() for p in written)
    text = out.read_text()
    for needle in ("Gain over random", "rate 0.4", "n=4", "wins 4/4", "paired t-test", "report_robustness.png",
                   "memorised", "pairflip noise · coteaching"):
        assert needle in text, needle
    if suffix == ".html":
        assert text.startswith("<!DOCTYPE html>") and "<table" in text and '<img src="report_robustness.png"' in text
    else:
        assert "| init | rate 0 | rate 0.2 | rate 0.4 |" in text
        assert "![report_robustness](report_robustness.png)" in text
    assert "Gain over ce" not in text  # ce is linear-probe only, Co-teaching full fine-tuning: nothing to pair


def test_method_gains_pair_each_method_with_ce_of_the_same_init_and_protocol(tmp_path) -> None:
    """What a method adds on top of an init: method - ce over pairs that share the init, protocol and seeds."""
    from scipy import stats

    frame = _table()
    ce = frame[frame["method"] == "ce"]  # linear probe
    gain = np.where(ce["encoder_id"] == SIMCLR, 0.05, -0.02) + np.arange(len(ce)) % 3 * 0.01
    robust = ce.assign(method="vog", run_id=ce["run_id"] + "-vog", test_acc=ce["test_acc"] + gain)
    tuned_ce = ce.assign(method_args='{"lr":0.1}', run_id=ce["run_id"] + "-lr", test_acc=0.0)  # not the baseline
    both = pd.concat([frame, robust, tuned_ce], ignore_index=True)
    gains = report.method_gains(both)
    assert set(gains["method_label"]) == {"vog (linear probe)", "ce (lr=0.1, linear probe)"}  # not full-FT coteaching
    row = gains[(gains["method_label"] == "vog (linear probe)") & (gains["init_label"] == "simclr")
                & (gains["noise_type"] == "symmetric") & (gains["noise_rate"] == 0.4)].iloc[0]
    def cell(f):
        f = f[(f["encoder_id"] == SIMCLR) & (f["noise_type"] == "symmetric") & (f["noise_rate"] == 0.4)]
        return f.set_index(["noise_seed", "seed"])["test_acc"].sort_index()

    base, mine = cell(ce), cell(robust)
    assert row["n"] == 4 and row["wins"] == 4 and row["mean_diff"] == pytest.approx((mine - base).mean())
    assert row["p_value"] == pytest.approx(stats.ttest_rel(mine, base).pvalue)
    random_row = gains[(gains["method_label"] == "vog (linear probe)") & (gains["init_label"] == "random")]
    assert (random_row["wins"] == 0).all() and (random_row["mean_diff"] < 0).all()
    assert report.method_gains(frame).empty
    out = tmp_path / "report.md"
    both.to_csv(tmp_path / "results.csv", index=False)
    report.write_report(tmp_path / "results.csv", out)
    text = out.read_text()
    assert "## Gain over ce with the same init" in text and "### symmetric noise · simclr init: method − ce" in text
    assert "| method | rate 0 | rate 0.2 | rate 0.4 |" in text


def _cli(capsys, *args: str) -> tuple:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_cli_plot_and_report_and_their_errors(table_path, tmp_path, capsys) -> None:
    code, out, err = _cli(capsys, "plot", str(table_path), "--out", str(tmp_path / "a.svg"), "--metric", "test_acc")
    assert code == 0, err
    assert out.split() == [str(tmp_path / "a.svg"), str(tmp_path / "a_detection.svg")]
    code, out, err = _cli(capsys, "report", str(table_path), "--out", str(tmp_path / "r.md"))
    assert code == 0 and out.split()[0] == str(tmp_path / "r.md"), err
    bad = [("plot", str(table_path), "--out", str(tmp_path / "a.jpg")),
           ("plot", str(tmp_path / "none.csv"), "--out", str(tmp_path / "a.png")),
           ("plot", str(table_path), "--out", str(tmp_path / "a.png"), "--metric", "test_nothing"),
           ("report", str(table_path), "--out", str(tmp_path / "r.txt"))]
    for args in bad:
        code, out, err = _cli(capsys, *args)
        assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, (args, err)


def test_tables_given_in_pieces_report_as_the_whole(tmp_path, capsys) -> None:
    """A study run where no runs folder is shared: its pieces, overlapping in one run, read as one table."""
    whole = _table()
    half = len(whole) // 2
    whole.iloc[: half + 1].to_csv(tmp_path / "a.csv", index=False)
    whole.iloc[half:].to_csv(tmp_path / "b.csv", index=False)
    merged = tables.load_results([tmp_path / "a.csv", tmp_path / "b.csv"])
    pd.testing.assert_frame_equal(merged, tables.load_results(whole))
    code, out, err = _cli(capsys, "report", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"),
                          "--out", str(tmp_path / "pieces" / "report.md"))
    assert code == 0, err
    report.write_report(whole, tmp_path / "whole" / "report.md")
    pieces, one = ((tmp_path / name / "report.md").read_text() for name in ("pieces", "whole"))
    assert f"`{tmp_path / 'a.csv'}`, `{tmp_path / 'b.csv'}` — {len(whole)} run(s)" in pieces
    assert [line for line in pieces.splitlines() if not line.startswith("Source:")] == \
        [line for line in one.splitlines() if not line.startswith("Source:")]
    pd.DataFrame({"run_id": ["x"]}).to_csv(tmp_path / "c.csv", index=False)
    code, out, err = _cli(capsys, "report", str(tmp_path / "a.csv"), str(tmp_path / "c.csv"),
                          "--out", str(tmp_path / "bad.md"))
    assert code == 2 and "c.csv lacks column(s)" in err and not (tmp_path / "bad.md").exists()


def test_pooled_reruns_of_one_command_report_as_one_init(tmp_path, capsys) -> None:
    """Noise seed 2 used a re-run of SimCLR's command (same id but for the hash): pooled, the pairs are whole again."""
    rerun = SIMCLR[:-8] + "9f9f9f9f"
    whole = _table()
    split = whole.assign(encoder_id=np.where((whole["encoder_id"] == SIMCLR) & (whole["noise_seed"] == 2), rerun,
                                             whole["encoder_id"]))
    apart = report.paired_gains(split)
    assert set(apart["init_label"]) == {SIMCLR, rerun} and apart["n"].max() == 2
    pooled_frame, groups = tables.pool_reruns(split)
    assert groups == {SIMCLR[:-9]: sorted([SIMCLR, rerun])}
    pd.testing.assert_frame_equal(report.paired_gains(pooled_frame), report.paired_gains(whole))
    from ssl_noise.registry import make_id

    meta = {"method": "simclr", "backbone": "resnet18", "dataset": "bloodmnist", "epochs": 5, "seed": 0}
    assert tables.ENTRY_HASH.sub("", make_id(meta, "ab" * 32)) == SIMCLR[:-9]  # the registry's id format
    other_recipe = SIMCLR.replace("-e5-", "-e10-")  # another epoch count is another command: never pooled
    assert tables.pool_reruns(split.assign(encoder_id=split["encoder_id"].replace(rerun, other_recipe)))[1] == {}

    split.to_csv(tmp_path / "split.csv", index=False)
    code, out, err = _cli(capsys, "report", str(tmp_path / "split.csv"), "--pool-encoders",
                          "--out", str(tmp_path / "pooled" / "report.md"))
    assert code == 0, err
    report.write_report(whole, tmp_path / "whole" / "report.md")
    pooled, one = ((tmp_path / name / "report.md").read_text() for name in ("pooled", "whole"))
    assert "**Pooled re-runs**" in pooled and "`1a2b3c4d`, `9f9f9f9f`" in pooled and "wins 4/4" in pooled
    def body(text: str) -> list:
        return [line for line in text.splitlines() if line and not line.startswith(("Source:", "**Pooled"))]

    assert body(pooled) == body(one)  # the same tables as if one encoder had served both noise seeds
    code, out, err = _cli(capsys, "plot", str(tmp_path / "split.csv"), "--pool-encoders",
                          "--out", str(tmp_path / "pooled.png"))
    assert code == 0 and out.split() == [str(tmp_path / "pooled.png"), str(tmp_path / "pooled_detection.png")], err


def test_demo_quick_runs_the_whole_path_and_reruns_reuse_everything(tmp_path, capsys) -> None:
    out_dir = tmp_path / "demo"
    code, out, err = _cli(capsys, "demo", "--quick", "--quiet", "--out", str(out_dir))
    assert code == 0, err
    for name in ("robustness.png", "report.md", "runs/sweeps/demo.csv"):
        assert (out_dir / name).exists() and str(out_dir / name) in out, name
    assert "| symmetric noise | random init | simclr" in out and "gain (each pair) |" in out  # the README's form
    assert " points (" in out and "simclr" in out
    frame = pd.read_csv(out_dir / "runs" / "sweeps" / "demo.csv")
    assert len(frame) == 4 and set(frame["init"].str.split("-").str[0]) == {"random", "simclr"}
    code, out, err = _cli(capsys, "demo", "--quick", "--quiet", "--out", str(out_dir))
    assert code == 0 and "reusing the SimCLR encoder" in err and "trained in" not in err


def test_a_killed_demo_resumes_its_pretraining(tmp_path, capsys, monkeypatch) -> None:
    """An interrupted demo continues SimCLR from its last finished epoch instead of starting over."""
    from ssl_noise import demo
    from ssl_noise.config import PretrainConfig, load_recipe, resolve
    from ssl_noise.pretrain import pretrain

    monkeypatch.setattr(demo, "QUICK_PRETRAIN", {**demo.QUICK_PRETRAIN, "epochs": 2})
    out_dir = tmp_path / "demo"
    cfg = resolve(PretrainConfig, {**load_recipe(demo.sweep.find_file(demo.PRETRAIN_RECIPE)), **demo.QUICK_PRETRAIN})
    pretrain(cfg, data_root=None, checkpoints=out_dir / "checkpoints", runs=out_dir / "runs", stop_after=1,
             show_progress=False)   # what a demo killed after its first epoch leaves
    code, out, err = _cli(capsys, "demo", "--quick", "--quiet", "--out", str(out_dir))
    assert code == 0, err
    assert "resumed after epoch 1 of an interrupted demo" in err


def test_detection_is_read_from_the_run_folders_next_to_the_table(tmp_path) -> None:
    """Selecting methods write detection into metrics.json, not results.csv: the figure finds it there."""
    import json

    runs = tmp_path / "runs"
    frame = _table(detection=False)
    (runs / "sweeps").mkdir(parents=True)
    frame.to_csv(runs / "sweeps" / "t.csv", index=False)
    for row in frame[(frame["method"] == "coteaching") & (frame["noise_rate"] > 0)].itertuples():
        (runs / row.run_id).mkdir()
        (runs / row.run_id / "metrics.json").write_text(json.dumps(
            {"detection": {"precision": 0.8, "recall": 0.6, "f1": 0.7, "auroc": None, "n_flagged": 50}}))
    loaded = tables.load_results(runs / "sweeps" / "t.csv")
    assert plots.detection_columns(loaded) == ["detect_precision", "detect_recall", "detect_f1"]
    assert loaded["detect_recall"].notna().sum() == 32
    written = plots.plot_results(runs / "sweeps" / "t.csv", tmp_path / "f.png")
    assert [p.name for p in written] == ["f.png", "f_detection.png"]


def _rounds(acc: list, acquisition: str = "entropy", oracle: str = "simulated") -> pd.DataFrame:
    """A refinement session's rounds.csv: round 0 plus one row per round of 70 labels."""
    n = len(acc)
    return pd.DataFrame({"round": range(n), "budget": [70 * r for r in range(n)], "acquired": [0] + [70] * (n - 1),
                         "test_acc": acc, "test_macro_f1": [a - 0.05 for a in acc],
                         "acquisition": acquisition, "oracle": oracle})


def _refine_run(tmp_path) -> Path:
    """An LNL run folder with two entropy sessions (seeds 0, 1) and one random session."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("method: vog\nnoise_rate: 0.2\n")
    for name, acc, acquisition in (("entropy-b70-s0", [0.80, 0.82, 0.86], "entropy"),
                                   ("entropy-b70-s1", [0.80, 0.84, 0.88], "entropy"),
                                   ("random-b70-s0", [0.80, 0.81, 0.83], "random")):
        (run / "refine" / name).mkdir(parents=True)
        _rounds(acc, acquisition).to_csv(run / "refine" / name / "rounds.csv", index=False)
    return run


def test_budget_curves_pool_seeds_of_one_acquisition_and_name_lines_by_the_run(tmp_path) -> None:
    run = _refine_run(tmp_path)
    curves = plots.budget_curves([run]).set_index(["label", "budget"])
    assert sorted(curves.index.get_level_values(0).unique()) == ["vog · entropy-b70", "vog · random-b70"]
    entropy = curves.loc["vog · entropy-b70"]
    assert entropy["n"].tolist() == [2, 2, 2] and entropy.index.tolist() == [0, 70, 140]
    assert np.allclose(entropy["mean"], [0.80, 0.83, 0.87])
    assert np.allclose(entropy["std"], [0.0, np.std([0.82, 0.84], ddof=1), np.std([0.86, 0.88], ddof=1)])
    random = curves.loc["vog · random-b70"]
    assert random["n"].tolist() == [1, 1, 1] and (random["std"] == 0).all()
    # a session folder, a copy of its table outside the run (named by its file), explicit labels, another metric
    copy = tmp_path / "vog_random_rounds.csv"
    copy.write_bytes((run / "refine" / "random-b70-s0" / "rounds.csv").read_bytes())
    assert set(plots.budget_curves([run / "refine" / "random-b70-s0", copy])["label"]) == {"vog · random-b70",
                                                                                          "vog_random"}
    f1 = plots.budget_curves([copy], labels=["VoG, random"], metric="test_macro_f1")
    assert f1["label"].unique().tolist() == ["VoG, random"] and np.allclose(f1["mean"], [0.75, 0.76, 0.78])
    assert plots.parse_references(["CE=0.880", "Co-teaching = 0.87"]) == [("CE", 0.88), ("Co-teaching", 0.87)]


def test_cli_refine_plot_draws_the_committed_study_and_refuses_bad_input(tmp_path, capsys) -> None:
    study = Path(__file__).resolve().parents[1] / "studies/pneumonia_imbalanced_e30/refine"
    tables = [str(study / f"{name}_rounds.csv") for name in ("vog_entropy", "vog_random", "coteaching_entropy")]
    out = tmp_path / "budget.png"
    code, stdout, err = _cli(capsys, "refine", "plot", *tables, "--out", str(out), "--reference", "CE=0.880")
    assert code == 0, err
    assert stdout.split() == [str(out)] and out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 5000
    run = _refine_run(tmp_path)
    results = tmp_path / "results.csv"
    _table().to_csv(results, index=False)
    bad = [(str(run), "--label", "only one"),                       # 3 tables, 1 label
           (str(run), "--reference", "CE:0.88"), (str(run), "--reference", "CE=high"), (str(run), "--reference", "=1"),
           (str(run), "--metric", "test_nothing"),
           (str(results),),                                          # a results table, not a rounds table
           (str(tmp_path / "missing"),)]
    for args in bad:
        target = tmp_path / "bad.png"
        code, stdout, err = _cli(capsys, "refine", "plot", *args, "--out", str(target))
        assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, (args, err)
        assert not target.exists()
