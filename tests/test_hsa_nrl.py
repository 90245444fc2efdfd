"""HSA-NRL stage by stage (split, anchors, EHN, correction, rounds), NSHE (drops, weights, EMA), and the whole
pipeline as ``finetune --method hsa_nrl`` on a tiny synthetic set."""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ssl_noise.cli import main
from ssl_noise.config import FinetuneConfig, resolve
from ssl_noise.finetune import finetune
from ssl_noise.robust import Batch, Classifier, FinetuneContext
from ssl_noise.robust.hsa_nrl import (ABSENT, EASY, HARD, NOISY, correct_labels, easy_score, ehn_noisy_prob,
                                      inject_anchor_noise, label_correction, split_easy_dirty, train_ehn)
from ssl_noise.robust.nshe import NSHE, NSHEWarning, drop_mask, nshe_weights, weighted_ce

SPEC = "synthetic:n_train=32,n_val=16,n_test=32"
TINY = dict(dataset=SPEC, image_size=16, epochs=2, batch_size=16, precision="fp32")


# ---------------------------------------------------------------- stages 2-5 as pure functions

def test_split_easy_dirty_skips_early_epochs_and_takes_the_lowest_share() -> None:
    rng = np.random.default_rng(0)
    history = rng.uniform(0.7, 0.9, size=(20, 5))
    history[[3, 8, 11, 15, 16, 19], 2:] = 0.1   # low after the skipped epochs: dirty
    history[[0, 1], :2] = 0.0                    # low only in the skipped epochs: easy
    easy, dirty = split_easy_dirty(history, 0.2, skip=2)  # 1.5 x 0.2 x 20 = 6 dirty
    assert dirty.tolist() == [3, 8, 11, 15, 16, 19] and len(easy) == 14
    assert np.array_equal(np.sort(np.concatenate([easy, dirty])), np.arange(20))
    np.testing.assert_allclose(easy_score(history, 2), history[:, 2:].mean(axis=1))
    np.testing.assert_allclose(easy_score(history, 99), history[:, -1])  # capped at epochs - 1
    assert len(split_easy_dirty(history, 0.5, skip=2, factor=1.5)[1]) == 15


def test_anchor_injection_flips_exactly_the_rate_of_the_easy_set_only() -> None:
    labels = np.repeat(np.arange(4), 25)
    easy = np.flatnonzero(np.arange(100) % 5 != 0)            # 20 per class
    anchor, flips = inject_anchor_noise(labels, easy, 0.25, np.random.default_rng(3), num_classes=4)
    assert anchor.shape == flips.shape == (80,)
    assert flips.sum() == 20 and np.all(np.bincount(labels[easy][flips], minlength=4) == 5)
    assert np.all(anchor[flips] != labels[easy][flips]) and np.array_equal(anchor[~flips], labels[easy][~flips])
    again, _ = inject_anchor_noise(labels, easy, 0.25, np.random.default_rng(3), num_classes=4)
    assert np.array_equal(anchor, again)


def _toy_histories(n: int, seed: int, epochs: int = 12):
    rng = np.random.default_rng(seed)
    flips = rng.random(n) < 0.4
    base = np.where(flips, 0.15, 0.75)[:, None] + np.linspace(0, 0.1, epochs)[None]
    return np.clip(base + rng.normal(0, 0.1, (n, epochs)), 0, 1).astype(np.float32), flips


def test_ehn_learns_a_separable_toy_history() -> None:
    x, flips = _toy_histories(300, 0)
    net = train_ehn(x, flips, hidden=200, steps=500, lr=0.02, seed=0)
    test_x, test_flips = _toy_histories(200, 1)
    p = ehn_noisy_prob(net, test_x)
    assert p.shape == (200,) and ((p > 0.5) == test_flips).mean() > 0.97
    assert np.array_equal(ehn_noisy_prob(train_ehn(x, flips, steps=20, seed=4), x),
                          ehn_noisy_prob(train_ehn(x, flips, steps=20, seed=4), x))  # seeded
    with pytest.raises(ValueError, match="12-epoch"):
        ehn_noisy_prob(net, test_x[:, :10])


def test_correction_drops_where_detector_and_correction_disagree() -> None:
    given = np.array([0, 0, 1, 1])
    noisy = np.array([False, False, True, True])
    pred = np.array([0, 2, 3, 1])
    labels, dropped = correct_labels(given, noisy, pred)
    # hard & kept label: keep; hard & relabelled: drop; noisy & relabelled: keep (new label); noisy & same: drop
    assert dropped.tolist() == [False, True, False, True] and labels[[0, 2]].tolist() == [0, 3]


def _fake_world(n=100, seed=0):
    """Truth, given labels and a fake stage trainer: clean samples are confident (0.9), hard clean ones middling
    (0.6), wrong labels unlearnt (0.1); the correction model predicts the truth except where planted."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % 4
    given = truth.copy()
    noisy_rows, hard_rows = np.arange(0, 20), np.arange(20, 30)
    given[noisy_rows] = (truth[noisy_rows] + 1) % 4
    calls = []

    def run_stage(rows, labels, *, name, predict=None):
        calls.append((name, np.asarray(rows).copy(), None if predict is None else np.asarray(predict).copy()))
        p = np.where(labels == truth[rows], np.where(np.isin(rows, hard_rows), 0.6, 0.9), 0.1)
        history = np.clip(p[:, None] + rng.normal(0, 0.02, (len(rows), 6)), 0, 1)
        if predict is None:
            return history, None
        pred = truth[predict].copy()
        pred[predict == 25] = (truth[25] + 2) % 4   # a hard sample the correction gets wrong -> dropped
        pred[predict == 5] = given[5]               # a noisy sample it does not correct -> dropped
        return history, np.eye(4)[pred]

    return truth, given, run_stage, calls


def test_label_correction_runs_the_stages_on_the_right_rows() -> None:
    truth, given, run_stage, calls = _fake_world()
    out = label_correction(given, 4, run_stage, noise_estimate=0.2, rounds=2, skip=1, steps=300, seed=0)
    assert [c[0] for c in calls] == ["r1_history", "r1_anchor", "r1_correction"]  # round 2: nothing left to find
    split = out.stages["split"][0]
    assert set(np.flatnonzero(split != EASY)) == set(range(30))           # 1.5 x 0.2 x 100 lowest = noisy + hard
    assert np.array_equal(np.flatnonzero(split == NOISY), np.arange(20))  # EHN tells unlearnt from middling
    assert np.array_equal(np.flatnonzero(split == HARD), np.arange(20, 30))
    assert np.array_equal(calls[1][1], np.flatnonzero(split == EASY))     # anchors = the easy set
    assert np.array_equal(calls[2][1], np.arange(20, 100)) and np.array_equal(calls[2][2], np.arange(30))
    assert np.flatnonzero(~out.keep).tolist() == [5, 25]
    assert np.array_equal(out.labels[out.keep], truth[out.keep])
    anchors = out.stages["anchor_labels"][0]
    assert np.all(anchors[split != EASY] == -1) and 8 <= np.sum(anchors[split == EASY] != given[split == EASY]) <= 16
    assert np.isnan(out.stages["ehn_scores"][0][30:]).all() and out.stages["round_history"].shape == (1, 100, 6)
    assert out.estimates == [0.2]


def test_later_rounds_use_the_kept_samples_and_a_re_estimated_rate() -> None:
    truth, given, run_stage, calls = _fake_world()
    out = label_correction(given, 4, run_stage, noise_estimate=0.3, rounds=2, skip=1, steps=300, seed=0)
    assert [c[0] for c in calls] == ["r1_history", "r1_anchor", "r1_correction",
                                     "r2_history", "r2_anchor", "r2_correction"]
    kept_after_1 = np.setdiff1d(np.arange(100), [5, 25])
    assert np.array_equal(calls[3][1], kept_after_1)
    assert out.stages["split"].shape == (2, 100) and np.all(out.stages["split"][1][[5, 25]] == ABSENT)
    assert len(out.estimates) == 2 and 0 < out.estimates[1] < 0.3


# ---------------------------------------------------------------- NSHE

def test_nshe_drop_counts_and_per_sample_weights() -> None:
    prob = np.array([0.9, 0.1, np.nan, 0.5, 0.2, 0.8, 0.3, 0.7, 0.6, 0.4])
    rows = np.arange(10)
    for rate, count in [(0.0, 0), (0.05, 0), (0.1, 1), (0.25, 2), (0.5, 5)]:
        assert drop_mask(prob, rows, rate).sum() == count
    assert np.flatnonzero(drop_mask(prob, rows, 0.3)).tolist() == [1, 4, 6]  # lowest p; NaN is never dropped
    assert np.flatnonzero(drop_mask(prob, np.array([0, 5, 7, 8]), 0.5)).tolist() == [7, 8]  # within rows only
    kept = np.array([0, 1, 3, 5])
    w = nshe_weights(prob, kept, 2.0)
    np.testing.assert_allclose(w[kept], prob[kept] ** 2 / np.mean(prob[kept] ** 2), rtol=1e-6)
    assert w[kept].mean() == pytest.approx(1.0) and np.all(np.delete(w, kept) == 0)
    np.testing.assert_allclose(nshe_weights(prob, kept, 0.0)[kept], 1.0)


def test_weighted_ce_is_a_per_sample_weighted_sum_over_kept_samples() -> None:
    logits, y = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1])
    w, keep = torch.tensor([2.0, 0.5, 1.0, 3.0, 1.0]), torch.tensor([True, True, False, True, False])
    ce = [nn.functional.cross_entropy(logits[i:i + 1], y[i:i + 1]).item() for i in range(5)]
    expected = (2.0 * ce[0] + 0.5 * ce[1] + 3.0 * ce[3]) / 3
    assert weighted_ce(logits, y, w, keep).item() == pytest.approx(expected, rel=1e-5)
    assert weighted_ce(logits, y, torch.ones(5), torch.ones(5, dtype=torch.bool)).item() == \
        pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)


def _nshe_by_hand(args, epochs: int = 3):
    """NSHE with a hand-built context (linear encoder, 8 samples of 2x2x3 pixels, one step an epoch)."""
    def build_model(k):
        torch.manual_seed(k)
        return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), 4, 3)

    ctx = FinetuneContext(num_classes=3, labels=np.array([0, 1, 2, 0, 1, 2, 0, 1]), epochs=epochs, steps_per_epoch=1,
                          device="cpu", seed=0, build_model=build_model, build_optimizer=None, batches=None,
                          predict_train=None, autocast=contextlib.nullcontext)
    ctx.build_optimizer = lambda m: ctx.optimizers.append(torch.optim.SGD(m.parameters(), lr=0.5)) or ctx.optimizers[-1]
    method = NSHE(ctx, args)
    method.setup()
    return method, ctx


def test_nshe_warns_when_the_evaluated_ema_copy_cannot_leave_its_init() -> None:
    # 3 steps: 0.9 ** 3 = 73 % of the init left in the network that is evaluated
    with pytest.warns(NSHEWarning, match=r"73% of its initial weights.*ema_momentum=0\.4066"):
        _nshe_by_hand({"ema_momentum": 0.9})
    with pytest.warns(NSHEWarning, match=r"after 1 steps .*ema_momentum=0\.0672"):
        _nshe_by_hand({"ema_momentum": 0.5}, epochs=1)  # the suggestion stays a momentum for the shortest run
    with warnings.catch_warnings():
        warnings.simplefilter("error", NSHEWarning)
        _nshe_by_hand({"ema_momentum": 0.4})                           # 6 % left: fine
        _nshe_by_hand({"ema_momentum": 0.9, "eval_model": "student"})  # the EMA only ranks the drops


def test_nshe_ema_follows_each_step_and_weights_use_dataset_indices() -> None:
    with pytest.warns(NSHEWarning):
        method, ctx = _nshe_by_hand({"ema_momentum": 0.9, "warm_up": 1, "forget_rate": 0.25})
    x = torch.randn(8, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    y = torch.from_numpy(ctx.labels)
    assert all(torch.equal(a, b) for a, b in zip(method.model.parameters(), method.ema.parameters()))
    assert not any(p.requires_grad for p in method.ema.parameters())

    def step(rows):
        idx = torch.tensor(rows)
        out = method.train_step(Batch(x[idx], y[idx], idx), 0)
        ctx.optimizers[0].zero_grad()
        out["loss"].backward()
        ctx.optimizers[0].step()
        return out

    method.train()
    step([5, 2, 7])
    assert np.flatnonzero(np.isfinite(method.record[0])).tolist() == [2, 5, 7]  # dataset indices, not positions
    ema_before = [p.detach().clone() for p in method.ema.parameters()]
    student = [p.detach().clone() for p in method.model.parameters()]
    step([0, 1, 3, 4, 6])  # first applies the EMA for the previous optimiser step
    for e, s, now in zip(ema_before, student, method.ema.parameters()):
        torch.testing.assert_close(now, 0.9 * e + 0.1 * s)
    stats = method.on_epoch_end(0)  # 25 % of the 8 seen samples dropped by the EMA's ranking; weighting on
    assert stats["nshe_dropped"] == 2 and method.dropped.sum() == 2 and method.weighting
    kept = np.flatnonzero(~method.dropped)
    assert method.weights[kept].mean() == pytest.approx(1.0) and np.all(method.weights[method.dropped] == 0)
    np.testing.assert_array_equal(np.argsort(method.weights[kept]), np.argsort(method.record[0][kept]))
    dropped_by_ema = np.argsort(method.record[1], kind="stable")[:2]
    assert set(np.flatnonzero(method.dropped)) == set(dropped_by_ema)
    idx = torch.arange(8)
    out = method.train_step(Batch(x, y, idx), 1)
    assert out["selected"].tolist() == (~method.dropped).tolist()
    expected = weighted_ce(method.model(x), y, torch.from_numpy(method.weights), torch.from_numpy(~method.dropped))
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


# ---------------------------------------------------------------- the pipeline end to end

def test_finetune_hsa_nrl_writes_every_stage_and_stage_1_is_the_ce_run(tmp_path, capsys) -> None:
    common = dict(TINY, noise_rate=0.4, noise_mode="exact", noise_estimate="oracle")
    ce_run, _ = finetune(resolve(FinetuneConfig, common), data_root=None, checkpoints=tmp_path / "ck",
                         runs=tmp_path / "runs", show_progress=False)
    cfg = resolve(FinetuneConfig, common, {"method": "hsa_nrl", "method_args": {"ehn_steps": 50, "skip_epochs": 1}})
    folder, _ = finetune(cfg, data_root=None, checkpoints=tmp_path / "ck", runs=tmp_path / "runs",
                         show_progress=False)
    for name in ("round_history", "easy_score", "split", "anchor_labels", "anchor_history", "ehn_scores",
                 "correction_pred", "corrected_labels", "dropped", "noise_estimates", "nshe_record"):
        assert (folder / f"{name}.npy").exists(), name
    for stage in ("history", "anchor", "correction"):
        assert len((folder / f"train_log_r1_{stage}.jsonl").read_text().splitlines()) == 2
    np.testing.assert_array_equal(np.load(folder / "round_history.npy")[0], np.load(ce_run / "history.npy"))
    split, dropped = np.load(folder / "split.npy")[0], np.load(folder / "dropped.npy")
    assert np.sum(split != EASY) == round(1.5 * 0.4 * 32) and np.all(split[dropped] != EASY)
    history = np.load(folder / "history.npy")  # the NSHE phase trains on the kept samples only
    assert np.isnan(history[dropped]).all() and np.isfinite(np.delete(history, dropped, axis=0)).all()
    assert np.load(folder / "noise_estimates.npy").tolist() == [0.4]
    # The EHN verdicts and the correction, scored by `ssl-noise detect`.
    with pytest.raises(SystemExit) as exit_info:
        main(["--runs", str(tmp_path / "runs"), "detect", "--detector", "ehn", "--run", str(folder)])
    out = capsys.readouterr()
    assert exit_info.value.code == 0, out.err
    metrics = json.loads((Path(out.out.strip().splitlines()[-1]) / "metrics.json").read_text())
    assert metrics["detection"]["n_flagged"] == int(np.sum(split == NOISY))
    assert metrics["correction"]["n_dropped"] == len(dropped) and "label correction" in out.out


def _finetune_cli(capsys, tmp_path, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoints", str(tmp_path / "ck"), "--runs", str(tmp_path / "runs"), "finetune", "--dataset", SPEC,
              "--image-size", "16", "--epochs", "1", "--batch-size", "16", "--set", "precision=fp32", "--quiet",
              *args])
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


@pytest.mark.parametrize("args, needle", [
    (["--noise", "0.4", "--set", "method_args.noise_estimate=0.7"], "outside (0, 0.5]"),
    (["--noise", "0.4", "--set", "method_args.noise_estimate=0"], "outside (0, 0.5]"),
    (["--noise", "0.6", "--noise-estimate", "oracle"], "noise estimate 0.6 is outside"),
    (["--noise", "0.4", "--set", "method_args.rounds=0"], "rounds"),
    (["--noise", "0.4", "--set", "method_args.forget_rate=1.0"], "forget_rate"),
    (["--noise", "0.4", "--set", "method_args.nosuch=1"], "nosuch"),
])
def test_bad_hsa_nrl_inputs_exit_2_and_write_no_run(tmp_path, capsys, args, needle) -> None:
    code, out, err = _finetune_cli(capsys, tmp_path, "--method", "hsa_nrl", *args)
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1 and needle in err, err
    assert out == "" and not list((tmp_path / "runs").glob("*/metrics.json"))
    assert not (tmp_path / "runs" / "results.csv").exists()


def test_cli_shows_the_ema_warning_as_one_line_and_still_runs(tmp_path, capsys) -> None:
    code, out, err = _finetune_cli(capsys, tmp_path, "--method", "nshe", "--noise", "0.4")
    warned = [line for line in err.splitlines() if line.startswith("warning: nshe: after 2 steps")]
    assert code == 0 and len(warned) == 1 and "NSHEWarning" not in err and "Traceback" not in err, err
    assert len(list((tmp_path / "runs").glob("*/metrics.json"))) == 1


def test_noise_file_with_the_oracle_estimate_exits_2(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["noise", "--dataset", SPEC, "--image-size", "16", "--rate", "0.3", "--out", str(tmp_path / "n.csv")])
    capsys.readouterr()
    code, _, err = _finetune_cli(capsys, tmp_path, "--method", "hsa_nrl", "--noise-file", str(tmp_path / "n.csv"),
                                 "--noise-estimate", "oracle")
    assert code == 2 and "injected rate is unknown" in err
