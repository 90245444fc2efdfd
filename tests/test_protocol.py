"""Training protocols (issue #52): under ``paper`` a method trains with its authors' recipe (optimiser, schedule,
phase starts scaled to the run), under ``shared`` with the config's; runs, results and reports say which."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ssl_noise import engine, tables
from ssl_noise.config import FinetuneConfig, resolve
from ssl_noise.finetune import finetune, fit, prepare
from ssl_noise.robust import ROBUST
from ssl_noise.robust.coteaching_plus import disagreement_update

SPEC = "synthetic:n_train=128,n_val=16,n_test=32"
TINY = dict(dataset=SPEC, image_size=8, batch_size=32, precision="fp32", augmentation=False)


def _fit(**overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 4-epoch schedules on 128 images: every method says it is too short
        cfg = resolve(FinetuneConfig, TINY, overrides)
        return fit(prepare(cfg, data_root=None, checkpoints="unused-registry"), show_progress=False)


def test_paper_jocor_keeps_fitting_labels_where_the_shared_sgd_recipe_at_lambda_0_9_stalls() -> None:
    """Under SGD the joint loss scales the label-fitting step by (1 - 0.9); the authors' Adam cancels the factor."""
    runs = {p: _fit(method="jocor", protocol=p, epochs=4, noise_rate=0.2, noise_estimate="oracle",
                    method_args={"co_lambda": 0.9}) for p in ("paper", "shared")}
    paper = [r["train_acc_clean"] for r in runs["paper"].log]
    shared = [r["train_acc_clean"] for r in runs["shared"].log]
    assert paper[-1] > 0.4 and paper[-1] > paper[0]          # rises (0.37 -> 0.50 when measured)
    assert max(shared[1:]) <= 0.3                             # one class of four (0.25) from epoch 2 on
    assert isinstance(runs["paper"].method.ctx.optimizers[0], torch.optim.AdamW)
    assert isinstance(runs["shared"].method.ctx.optimizers[0], torch.optim.SGD)


def test_the_co_teaching_recipe_decays_the_lr_and_switches_beta1_at_its_share_of_the_run() -> None:
    recipe = ROBUST["coteaching"].paper
    assert (recipe.optimizer, recipe.lr, recipe.decay_start, recipe.beta1_after) == ("adam", 1e-3, 0.4, 0.1)
    total = 100
    assert recipe.lr_at(39, total) == 1e-3 and recipe.lr_at(70, total) == pytest.approx(5e-4)
    assert (recipe.beta1_at(39, total), recipe.beta1_at(40, total)) == (0.9, 0.1)
    run = _fit(method="coteaching", protocol="paper", epochs=3, noise_rate=0.2, noise_estimate="oracle")
    for opt in run.method.ctx.optimizers:   # after the last step (past 40 % of the run): beta1 0.1, lr near 0
        assert opt.param_groups[0]["betas"][0] == 0.1 and opt.param_groups[0]["lr"] < 2e-4
    assert run.method.num_gradual == 1 and run.inactive_reason is None  # 10 of 200 epochs, scaled: active


def test_phase_starts_scale_with_the_schedule_under_paper_and_keep_their_shared_defaults() -> None:
    assert engine.scaled_epochs(10, 200, 40) == 2 and engine.scaled_epochs(20, 200, 40) == 4
    assert engine.scaled_epochs(10, 300, 40) == 1
    ctx_kw = dict(num_classes=3, labels=np.zeros(8, np.int64), epochs=40, steps_per_epoch=1, device="cpu", seed=0,
                  build_model=lambda k: torch.nn.Linear(1, 1), build_optimizer=lambda m: None, batches=None,
                  predict_train=None, autocast=None, noise_rate=0.3)
    from ssl_noise.robust.base import FinetuneContext

    for protocol, expected in (("paper", (2, 4, "softmax_ce", 1)), ("shared", (10, 10, "ce", 10))):
        ctx = FinetuneContext(**ctx_kw, protocol=protocol)
        plus = ROBUST["coteaching_plus"](ctx, {})
        plus.setup()
        mix = ROBUST["dividemix"](ctx, {})
        mix.setup()
        assert (plus.num_gradual, plus.init_epoch, plus.loss, mix.warmup) == expected, protocol


def test_co_teaching_plus_ranks_and_trains_on_the_authors_softmax_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    a, b, y = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g), torch.randint(0, 3, (8,), generator=g)
    loss, disagree, pick1, pick2 = disagreement_update(a, b, y, 0.25, "softmax_ce")
    l1 = F.cross_entropy(a.softmax(1), y, reduction="none")   # the double softmax of the authors' loss.py
    rows = disagree.nonzero().squeeze(1)
    keep = int(pick1.sum())
    assert set(rows[torch.argsort(l1[rows], stable=True)[:keep]].tolist()) == set(pick1.nonzero().squeeze(1).tolist())
    assert float(loss) <= np.log(3) * 2  # bounded: a softmax's CE never exceeds log K + 1 per sample
    with pytest.raises(Exception, match="unknown loss 'mae'"):
        ROBUST["coteaching_plus"].parse_args({"loss": "mae"})


def test_runs_results_and_reports_carry_the_protocol(tmp_path) -> None:
    rows = []
    for protocol in ("paper", "shared"):
        cfg = resolve(FinetuneConfig, {**TINY, "epochs": 1, "method": "sce", "noise_rate": 0.2, "protocol": protocol})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            folder, _ = finetune(cfg, data_root=None, checkpoints=tmp_path / "ck", runs=tmp_path, show_progress=False)
        training = json.loads((folder / "metrics.json").read_text())["training"]
        assert training["protocol"] == protocol and training["starts"] is None   # one network
        assert training["augmentation"] is False                                  # TINY trains without it
        rows.append(folder.name)
    assert rows[0] != rows[1]                                  # different training, different run ids
    assert "HanxunH/SCELoss-Reproduce" in json.loads((tmp_path / rows[0] / "metrics.json").read_text())[
        "training"]["source"]
    table = pd.read_csv(tmp_path / "results.csv")
    assert list(table["method_protocol"]) == ["paper", "shared"]
    assert table["optimizer"].iloc[0].startswith("sgd lr 0.01, momentum 0.9, nesterov, wd 0.01, step")
    assert table["optimizer"].iloc[1].startswith("sgd lr 0.05")
    labels = tables.tidy(table)[0]["method_label"].tolist()
    assert labels == ["sce [paper recipe]", "sce"]             # never pooled in one curve or report row
    assert table["augmentation"].nunique() == 1 and "[augmented]" not in " ".join(labels)  # one kind: no label
    mixed = table.assign(augmentation=[True, False], method_protocol="shared")
    assert tables.tidy(mixed)[0]["method_label"].tolist() == ["sce [augmented]", "sce"]
    unknown = table.assign(augmentation=[True, None], method_protocol="shared")   # an older row: not known
    assert tables.tidy(unknown)[0]["method_label"].tolist() == ["sce", "sce"]
    ce = resolve(FinetuneConfig, {**TINY, "epochs": 1, "noise_rate": 0.2})
    from ssl_noise.finetune.prepare import hashed_config

    assert "protocol" not in hashed_config(ce) and "protocol" in hashed_config(dataclasses.replace(ce, method="sce"))
