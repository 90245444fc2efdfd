"""Co-teaching and VoG: the closed-form gradient, the forget-rate schedule, per-batch selection sizes, the cross
update, the float16 rolling window, eval-mode vectors, and the detection records of a tiny run."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_noise.cli import main
from ssl_noise.config import FinetuneConfig, resolve
from ssl_noise.errors import UserError
from ssl_noise.finetune import finetune
from ssl_noise.robust import ROBUST, Batch, Classifier, FinetuneContext
from ssl_noise.robust.coteaching import forget_rate, keep_count, small_loss_pick
from ssl_noise.robust.vog import GradientWindow, gradient_rows, mixed_pick

SPEC = "synthetic:n_train=32,n_val=16,n_test=32"
TINY = dict(dataset=SPEC, image_size=16, batch_size=16, precision="fp32")


def _ctx(n: int = 12, epochs: int = 6, noise_rate=0.4, seed: int = 0) -> tuple:
    """A FinetuneContext over one batch of random 2x2 images and a tiny encoder with BatchNorm."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, 2, 2, generator=g), torch.randint(0, 3, (n,), generator=g)

    def build_model(k: int) -> Classifier:
        torch.manual_seed(k)
        return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU()), 8, 3)

    def build_optimizer(module):
        ctx.optimizers.append(torch.optim.SGD(module.parameters(), lr=0.1))
        return ctx.optimizers[-1]

    ctx = FinetuneContext(num_classes=3, labels=y.numpy(), epochs=epochs, steps_per_epoch=1, device="cpu", seed=0,
                          build_model=build_model, build_optimizer=build_optimizer,
                          batches=lambda **kw: iter([Batch(x, y, torch.arange(n))]),
                          predict_train=lambda fn: fn(x).detach().numpy(), autocast=contextlib.nullcontext,
                          noise_rate=noise_rate)
    return ctx, Batch(x, y, torch.arange(n))


def test_closed_form_gradient_matches_autograd() -> None:
    """(p_y - 1) * [h, 1] is the gradient of sample i's own CE w.r.t. the head's weight row and bias of label y_i."""
    ctx, batch = _ctx(n=7)
    model = ctx.build_model(0).eval()
    logits, h = model(batch.x, return_features=True)
    closed = gradient_rows(logits, h, batch.y)
    assert closed.shape == (7, 9)
    for i in range(7):
        model.zero_grad()
        F.cross_entropy(model(batch.x[i:i + 1]), batch.y[i:i + 1]).backward()
        y = int(batch.y[i])
        expected = torch.cat([model.head.weight.grad[y], model.head.bias.grad[y:y + 1]])
        torch.testing.assert_close(closed[i], expected, rtol=1e-5, atol=1e-6)


def test_forget_rate_ramps_to_the_estimate_and_num_gradual_scales_with_epochs() -> None:
    assert [forget_rate(e, 0.4, 10) for e in (0, 5, 10, 29)] == [0.0, 0.2, 0.4, 0.4]
    assert keep_count(16, 0.4) == 9 and keep_count(128, 0.0) == 128 and keep_count(2, 0.9) == 1
    for epochs, expected in ((30, 10), (60, 10), (6, 2), (1, 1)):
        ctx, _ = _ctx(epochs=epochs)
        method = ROBUST["coteaching"](ctx, {})
        method.setup()
        assert method.num_gradual == expected and method.tau_max == 0.4  # the injected rate by default
    ctx, _ = _ctx(noise_rate=0.4)
    method = ROBUST["coteaching"](ctx, {"noise_estimate": 0.25, "num_gradual": 3})
    method.setup()
    assert (method.tau_max, method.num_gradual) == (0.25, 3)
    ctx, _ = _ctx(noise_rate=None)  # labels from a noise file: the rate is unknown
    with pytest.raises(UserError, match="noise_estimate"):
        ROBUST["coteaching"](ctx, {}).setup()


@pytest.mark.parametrize("name", ["coteaching", "vog"])
def test_each_network_keeps_R_per_batch_and_updates_its_peer(name) -> None:
    ctx, batch = _ctx(n=12, epochs=4)
    method = ROBUST[name](ctx, {"num_gradual": 2})
    method.setup()
    picks = []
    original = method.pick
    method.pick = lambda *a: picks.append(original(*a)) or picks[-1]
    for epoch, tau in ((0, 0.0), (1, 0.2), (3, 0.4)):
        picks.clear()
        out = method.train_step(batch, epoch)
        R = keep_count(12, tau)
        assert [int(p.sum()) for p in picks] == [R, R] and int(out["selected"].sum()) == R
        assert torch.equal(out["selected"], picks[0])  # selected = network 1's pick
    # Cross update: network 1's gradient is that of its own CE over network 2's pick, divided by R.
    for net in method.nets:
        net.zero_grad()
    out["loss"].backward()
    got = method.net1.head.weight.grad.clone()
    method.net1.zero_grad()
    loss1 = F.cross_entropy(method.net1(batch.x), batch.y, reduction="none")
    (loss1[picks[1]].sum() / keep_count(12, 0.4)).backward()
    torch.testing.assert_close(got, method.net1.head.weight.grad)


def test_mixed_pick_takes_small_loss_then_lowest_vog_among_the_rest() -> None:
    loss = torch.arange(10, dtype=torch.float32)            # sample i has loss i
    vog = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 9.0, 0.5, 8.0, 0.1, 7.0])
    mask = mixed_pick(loss, vog, keep=5, mix_ratio=0.4)     # 3 by loss (0, 1, 2) + 2 lowest VoG of 3..9 -> 3, 4
    assert mask.nonzero().squeeze(1).tolist() == [0, 1, 2, 3, 4]
    vog[3:5] = 5.0                                           # now the lowest VoG outside the loss pick: 8 and 6
    assert mixed_pick(loss, vog, keep=5, mix_ratio=0.4).nonzero().squeeze(1).tolist() == [0, 1, 2, 6, 8]
    for keep in range(1, 11):
        for ratio in (0.0, 0.2, 0.5, 1.0):
            assert int(mixed_pick(loss, vog, keep, ratio).sum()) == keep  # always exactly R
    assert torch.equal(mixed_pick(loss, vog, 6, 0.0), small_loss_pick(loss, 6))


def test_gradient_window_holds_the_last_W_epochs_in_float16() -> None:
    window = GradientWindow(3, n=4, dim=2, device="cpu")
    values = {e: torch.full((4, 2), float(e)) * torch.arange(1, 5)[:, None] for e in range(5)}
    for epoch in range(5):
        window.record(epoch, torch.tensor([0, 1]), values[epoch][:2])
        window.record(epoch, torch.tensor([2, 3]), values[epoch][2:])
    assert window.data.dtype == torch.float16 and window.data.shape == (3, 4, 2) and window.epochs == [2, 3, 4]
    expected = np.stack([values[e].numpy() for e in (2, 3, 4)]).std(axis=0).mean(axis=1)  # population std
    np.testing.assert_allclose(window.vog().numpy(), expected, rtol=1e-3)


def test_vog_vectors_come_from_eval_mode_on_plain_inputs_and_leave_batchnorm_alone() -> None:
    ctx, batch = _ctx(n=12, epochs=4)
    method = ROBUST["vog"](ctx, {"num_gradual": 1, "warmup": 1})
    method.setup()
    method.train_step(batch, 0)
    bn = {k: v.clone() for k, v in method.net1.state_dict().items() if "running" in k}
    stats = method.on_epoch_end(0)
    assert all(torch.equal(method.net1.state_dict()[k], v) for k, v in bn.items())  # the extra pass: no BN update
    assert method.net1.training and stats["forget_rate"] == 0.0
    method.net1.eval()
    logits, h = method.net1(batch.x, return_features=True)
    torch.testing.assert_close(method.windows[0].data[0].float(), gradient_rows(logits, h, batch.y), atol=2e-3,
                               rtol=1e-2)
    method.train()
    assert method.scores is None and not method.vog_active(1)  # one epoch in the window: no std yet
    method.train_step(batch, 1)
    method.on_epoch_end(1)
    assert method.scores is not None and method.scores[0].shape == (12,) and method.vog_active(2)


def test_method_args_are_checked() -> None:
    for name, args, needle in (("vog", {"mix_ratio": 1.5}, "mix_ratio"), ("vog", {"vog_window": 1}, "vog_window"),
                               ("vog", {"vog_inputs": "both"}, "vog_inputs"),
                               ("coteaching", {"noise_estimate": 1.0}, "noise_estimate"),
                               ("coteaching", {"mix_ratio": 0.2}, "unknown config key"),
                               ("coteaching", {"num_gradual": 0}, "num_gradual")):
        with pytest.raises(UserError, match=needle):
            ROBUST[name].parse_args(args)


@pytest.mark.parametrize("name", ["coteaching", "vog"])
def test_tiny_run_writes_detection_records(tmp_path, name) -> None:
    args = {"num_gradual": 1, **({"warmup": 1} if name == "vog" else {})}
    cfg = resolve(FinetuneConfig, TINY, {"method": name, "noise_rate": 0.4, "epochs": 3, "method_args": args,
                                         "noise_estimate": "oracle"})  # the injected rate: counts known below
    folder, _ = finetune(cfg, data_root=None, checkpoints=tmp_path / "ck", runs=tmp_path / "runs", show_progress=False)
    selected = np.load(folder / "selected.npy")
    # Epoch 0 keeps everything; then each batch of 16 keeps floor(0.6 * 16) = 9.
    assert selected.shape == (32, 3) and selected[:, 0].all() and list(selected[:, 1:].sum(0)) == [18, 18]
    kept, freq = np.load(folder / "kept.npy"), np.load(folder / "selection_freq.npy")
    assert np.array_equal(kept, np.flatnonzero(selected[:, -1])) and np.allclose(freq, selected.mean(1))
    assert np.load(folder / "noise_score.npy").shape == (32,) and (folder / "model.safetensors").exists()
    detection = json.loads((folder / "metrics.json").read_text())["detection"]
    assert {"precision", "recall", "f1", "auroc", "clean_kept_per_class", "kept_purity"} <= set(detection)
    assert detection["n_kept"] == 18 and len(detection["clean_kept_per_class"]) == 4
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert [r["forget_rate"] for r in log] == [0.0, 0.4, 0.4]
    if name == "vog":
        assert [r["vog_active"] for r in log] == [0.0, 0.0, 1.0]
        assert np.isfinite(np.load(folder / "vog.npy")).all()


def test_noise_file_with_the_oracle_estimate_exits_2_and_writes_nothing(tmp_path, capsys) -> None:
    """A noise file's injected rate is unknown: --noise-estimate oracle cannot be honoured (auto, the default, can)."""
    from ssl_noise.data import load_dataset

    noisy = tmp_path / "noisy.csv"
    clean = load_dataset(SPEC, size=16).train.labels
    noisy.write_text("index,clean_label,noisy_label\n" + "".join(f"{i},{c},{(c + i % 2) % 4}\n"
                                                                  for i, c in enumerate(clean)))
    with pytest.raises(SystemExit) as exit_info:
        main(["--runs", str(tmp_path / "runs"), "finetune", "--method", "vog", "--noise-file", str(noisy),
              "--dataset", SPEC, "--image-size", "16", "--epochs", "1", "--batch-size", "16", "--quiet",
              "--noise-estimate", "oracle"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "injected rate is unknown" in err and len(err.strip().splitlines()) == 1
    assert not any((tmp_path / "runs").glob("*-vog-*"))
