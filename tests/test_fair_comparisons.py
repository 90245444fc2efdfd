"""Fair comparisons: independent two-network starts, estimated noise rates, paired noise files, methods whose
schedule is too short, and the encoder's own fields in every record."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ssl_noise import estimate, report
from ssl_noise.config import FinetuneConfig, resolve
from ssl_noise.errors import UserError
from ssl_noise.finetune import finetune, fit, prepare
from ssl_noise.robust.base import MethodWarning

SPEC = "synthetic:n_train=32,n_val=16,n_test=32"
TINY = dict(dataset=SPEC, image_size=16, epochs=2, batch_size=16, precision="fp32")


def _cfg(**overrides) -> FinetuneConfig:
    return resolve(FinetuneConfig, TINY, overrides)


def _encoders_equal(method) -> bool:
    """Parameters equal up to what a learning rate of 1e-12 moves (the runs below take one such step)."""
    a, b = dict(method.net1.encoder.named_parameters()), dict(method.net2.encoder.named_parameters())
    return all(torch.allclose(a[k], b[k], atol=1e-9) for k in a)


def test_two_networks_start_from_independent_encoders_under_random_init(tmp_path, make_entry) -> None:
    """Han et al. initialise Co-teaching's networks independently; a registry entry is one start for both."""
    cfg = _cfg(method="coteaching", noise_rate=0.4, epochs=1, noise_estimate="oracle", lr=1e-12, momentum=0.0,
               weight_decay=0.0, protocol="shared")   # the config's lr (~0) applies: the weights stay at step 0
    prep = prepare(cfg, data_root=None, checkpoints=tmp_path / "ck")
    method = fit(prep, show_progress=False).method   # lr ~ 0: the weights are still their step-0 values
    assert not _encoders_equal(method)
    first = {k: v for k, v in method.net1.encoder.state_dict().items() if "running" not in k and "num_batches" not in k}
    start = prep.encoder.state_dict()
    assert all(torch.allclose(v, start[k], atol=1e-6) for k, v in first.items())  # network 1: the run's encoder
    again = fit(prepare(cfg, data_root=None, checkpoints=tmp_path / "ck"), show_progress=False).method
    assert all(torch.equal(v, again.net2.encoder.state_dict()[k])                  # seeded: reproducible
               for k, v in method.net2.encoder.state_dict().items())
    make_entry(tmp_path / "ck")
    shared = fit(prepare(resolve(FinetuneConfig, TINY, {"init": "simclr", "method": "coteaching", "epochs": 1,
                                                        "noise_rate": 0.4, "noise_estimate": "oracle", "lr": 1e-12,
                                                        "momentum": 0.0, "weight_decay": 0.0, "protocol": "shared"}),
                         data_root=None, checkpoints=tmp_path / "ck"), show_progress=False).method
    assert _encoders_equal(shared)


def test_auto_noise_estimate_lands_near_the_realised_rate_on_separable_data() -> None:
    """Confident learning on features where the classes separate: within 0.05 of the realised symmetric rate."""
    rng = np.random.default_rng(0)
    n, k = 2000, 4
    clean = rng.integers(0, k, n)
    features = np.eye(k)[clean] * 3.0 + rng.normal(0, 0.5, (n, k))
    for rate in (0.0, 0.2, 0.4):
        flip = rng.random(n) < rate
        noisy = np.where(flip, (clean + rng.integers(1, k, n)) % k, clean)
        realised = float(np.mean(noisy != clean))
        assert abs(estimate.features_rate(features, noisy, k) - realised) < 0.05, rate
    losses = np.concatenate([rng.gamma(2.0, 0.1, 700), rng.gamma(20.0, 0.1, 300)])
    assert abs(estimate.mixture_rate(losses) - 0.3) < 0.03
    with pytest.raises(UserError, match="injected rate is unknown"):
        estimate.resolve("oracle", oracle=None, auto=lambda: 0.1)
    assert estimate.resolve(0.25, oracle=0.4, auto=lambda: 0.1) == (0.25, "given")


def test_runs_record_the_rate_methods_were_told_and_whether_they_were_active(tmp_path) -> None:
    cfg = _cfg(method="coteaching", noise_rate=0.4, protocol="shared")  # paper scales the ramp: active by design
    with pytest.warns(MethodWarning, match="forget rate reaches its maximum after 1 epoch"):
        folder, _ = finetune(cfg, data_root=None, checkpoints=tmp_path / "ck", runs=tmp_path / "runs",
                             show_progress=False)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["noise_rate_source"] == "auto" and 0 <= metrics["noise_rate_estimate"] < 1
    assert metrics["noise_estimator"] == estimate.DEFAULT
    assert metrics["noise_rate_estimate_lo"] <= metrics["noise_rate_estimate"] <= metrics["noise_rate_estimate_hi"]
    assert metrics["method_active"] is False and "10" in metrics["method_inactive_reason"]
    assert metrics["test"]["last5_mean"] is None and metrics["test"]["last5_epochs"] == []  # 2 epochs: no mean
    row = pd.read_csv(tmp_path / "runs" / "results.csv").iloc[-1]
    assert row["noise_rate_source"] == "auto" and not row["method_active"] and pd.isna(row["test_acc_last5"])
    assert row["noise_rate_estimate_lo"] == pytest.approx(metrics["noise_rate_estimate_lo"])
    assert pd.isna(row["encoder_method"]) and pd.isna(row["encoder_seed"])  # random init: no pretraining
    ce, _ = finetune(_cfg(noise_rate=0.4), data_root=None, checkpoints=tmp_path / "ck", runs=tmp_path / "runs",
                     show_progress=False)
    ce_metrics = json.loads((ce / "metrics.json").read_text())
    assert ce_metrics["method_active"] is True and ce_metrics["noise_rate_source"] is None  # ce is told no rate
    assert ce_metrics["noise_rate_estimate_lo"] is None and ce_metrics["noise_estimator"] is None


def test_registry_inits_record_their_pretraining_method_and_seed(tmp_path, make_entry) -> None:
    make_entry(tmp_path / "ck")
    folder, _ = finetune(_cfg(init="simclr", epochs=1), data_root=None, checkpoints=tmp_path / "ck",
                         runs=tmp_path / "runs", show_progress=False)
    row = pd.read_csv(tmp_path / "runs" / "results.csv").iloc[-1]
    init = json.loads((folder / "metrics.json").read_text())["init"]
    assert row["encoder_method"] == init["method"] == "simclr" and row["encoder_seed"] == init["seed"] == 0


def test_a_run_fed_another_runs_noise_file_pairs_with_it(tmp_path, make_entry) -> None:
    """Training and validation labels travel together and the source's noise record is kept, so report pairs
    the two inits on identical labels."""
    source, _ = finetune(_cfg(noise_rate=0.4, noise_seed=1), data_root=None, checkpoints=tmp_path / "ck",
                         runs=tmp_path / "runs", show_progress=False)
    make_entry(tmp_path / "ck")
    reuse, _ = finetune(_cfg(init="simclr", noise_file=str(source / "noisy_labels.csv")), data_root=None,
                        checkpoints=tmp_path / "ck", runs=tmp_path / "runs", show_progress=False)
    assert (reuse / "noisy_val_labels.csv").read_text() == (source / "noisy_val_labels.csv").read_text()
    noise = json.loads((reuse / "metrics.json").read_text())["noise"]
    assert (noise["type"], noise["rate"], noise["seed"], noise["source_run"]) == ("symmetric", 0.4, 1, source.name)
    frame = pd.read_csv(tmp_path / "runs" / "results.csv")
    gains = report.paired_gains(frame)
    assert len(gains) == 1 and gains.iloc[0]["n"] == 1 and gains.iloc[0]["noise_rate"] == 0.4
