"""The noisy-label baselines (GCE, SCE, ELR, Co-teaching+, JoCoR, DivideMix) against their formulas on batches small
enough to check by hand; the instance-dependent noise generator; real noise from a manifest's clean_label column.
(Every method also trains a step end to end in tests/test_finetune.py's ROBUST-parametrised test.)"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_noise.robust import ROBUST, Batch, Classifier, FinetuneContext
from ssl_noise.robust.coteaching_plus import disagreement_update
from ssl_noise.robust.dividemix import clean_posterior, lambda_u_for, mixmatch_loss, sharpen
from ssl_noise.robust.elr import Targets, elr_loss
from ssl_noise.robust.gce import gce_loss
from ssl_noise.robust.jocor import joint_loss
from ssl_noise.robust.sce import rce_loss, sce_loss


def _ctx(n: int = 12, k: int = 3, epochs: int = 6, noise_rate=0.4, batch_size: int = 4) -> tuple:
    """A FinetuneContext over n random 2x2 images and a tiny encoder with BatchNorm; ``batches`` honours ``rows``."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, 2, 2, generator=g), torch.randint(0, k, (n,), generator=g)

    def build_model(i: int) -> Classifier:
        torch.manual_seed(i)
        return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU()), 8, k)

    def build_optimizer(module):
        ctx.optimizers.append(torch.optim.SGD(module.parameters(), lr=0.1))
        return ctx.optimizers[-1]

    def batches(*, rows=None, augment=False, shuffle=False, epoch=0):
        rows = torch.arange(n) if rows is None else torch.as_tensor(rows)
        for part in rows.split(batch_size):
            yield Batch(x[part], y[part], part)

    ctx = FinetuneContext(num_classes=k, labels=y.numpy(), epochs=epochs, steps_per_epoch=math.ceil(n / batch_size),
                          device="cpu", seed=0, build_model=build_model, build_optimizer=build_optimizer,
                          batches=batches, predict_train=lambda fn: fn(x).detach().numpy(),
                          autocast=contextlib.nullcontext, noise_rate=noise_rate, augment=False,
                          batch_size=batch_size)
    return ctx, Batch(x, y, torch.arange(n))


# Softmax [0.5, 0.25, 0.25] and [0.1, 0.6, 0.3]: logits are their logs.
P = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.6, 0.3]])
LOGITS, Y = P.log(), torch.tensor([0, 2])


def test_gce_is_one_minus_p_to_the_q_over_q_and_tends_to_ce() -> None:
    expected = torch.tensor([(1 - 0.5 ** 0.7) / 0.7, (1 - 0.3 ** 0.7) / 0.7])
    torch.testing.assert_close(gce_loss(LOGITS, Y, 0.7), expected)
    torch.testing.assert_close(gce_loss(LOGITS, Y, 1.0), torch.tensor([0.5, 0.7]))  # q = 1: MAE-like 1 - p_y
    torch.testing.assert_close(gce_loss(LOGITS, Y, 1e-4), torch.tensor([math.log(2), -math.log(0.3)]),
                               atol=1e-3, rtol=1e-3)


def test_sce_is_alpha_ce_plus_beta_rce_with_a_log_1e4() -> None:
    a = -math.log(1e-4)  # 9.2103...
    torch.testing.assert_close(rce_loss(LOGITS, Y), torch.tensor([a * 0.5, a * 0.7]))
    expected = torch.tensor([0.1 * math.log(2) + a * 0.5, 0.1 * -math.log(0.3) + a * 0.7])
    torch.testing.assert_close(sce_loss(LOGITS, Y, 0.1, 1.0), expected)


def test_elr_targets_are_kept_by_index_and_enter_the_loss() -> None:
    targets = Targets(5, 3, beta=0.7)
    torch.testing.assert_close(targets.update(torch.tensor([1, 3]), P), 0.3 * P)
    q = torch.tensor([[0.2, 0.2, 0.6], [0.4, 0.4, 0.2]])
    targets.update(torch.tensor([3, 4]), q)
    torch.testing.assert_close(targets.t[1], 0.3 * P[0])                   # untouched since
    torch.testing.assert_close(targets.t[3], 0.7 * 0.3 * P[1] + 0.3 * q[0])  # two updates, by index
    torch.testing.assert_close(targets.t[4], 0.3 * q[1])
    assert torch.all(targets.t[[0, 2]] == 0)
    # The loss: CE + lam * mean log(1 - <t, p>) with the targets after this batch's update.
    fresh = Targets(2, 3, beta=0.5)
    fresh.t[:] = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])
    t = 0.5 * fresh.t.clone() + 0.5 * P
    expected = F.cross_entropy(LOGITS, Y) + 3 * torch.log(1 - (t * P).sum(1)).mean()
    torch.testing.assert_close(elr_loss(LOGITS, Y, fresh, torch.tensor([0, 1]), 3.0), expected)


def test_elr_method_updates_only_the_batch_rows_and_its_state_survives_a_reload() -> None:
    ctx, batch = _ctx()
    method = ROBUST["elr"](ctx, {})
    method.setup()
    method.train_step(Batch(batch.x[[2, 5]], batch.y[[2, 5]], torch.tensor([2, 5])), 0)
    changed = np.flatnonzero(method.targets.t.abs().sum(1).numpy() > 0)
    assert list(changed) == [2, 5]
    state = method.epoch_state()
    other = ROBUST["elr"](ctx, {})
    other.setup()
    other.load_epoch_state(state)
    assert torch.equal(other.targets.t, method.targets.t)
    with pytest.raises(ValueError, match="do not fit"):
        other.load_epoch_state({"targets": np.zeros((3, 3), np.float32)})


def test_coteaching_plus_selects_small_loss_within_the_disagreement_set() -> None:
    y = torch.zeros(6, dtype=torch.long)
    # predicted classes: net 1 [0, 0, 1, 1, 2, 0], net 2 [0, 1, 1, 0, 0, 2] -> disagree on rows 1, 3, 4, 5
    l1 = torch.tensor([[3., 0, 0], [2, 0, 0], [0, 3, 0], [0, 1, 0], [0, 0, 4], [1, 0, 0]], requires_grad=True)
    l2 = torch.tensor([[3., 0, 0], [0, 2, 0], [0, 3, 0], [5, 0, 0], [1, 0, 0], [0, 0, 3]], requires_grad=True)
    loss, disagree, pick1, pick2 = disagreement_update(l1, l2, y, tau=0.5)
    assert disagree.tolist() == [False, True, False, True, True, True]
    ce1 = F.cross_entropy(l1, y, reduction="none").detach()
    ce2 = F.cross_entropy(l2, y, reduction="none").detach()
    # keep = floor(0.5 * 4) = 2 per network, among rows 1, 3, 4, 5 only
    # CE over rows 1, 3, 4, 5: network 1 [0.24, 1.55, 4.04, 0.55], network 2 [2.24, 0.01, 0.55, 3.09]
    assert pick1.nonzero().squeeze(1).tolist() == [1, 5] and pick2.nonzero().squeeze(1).tolist() == [3, 4]
    torch.testing.assert_close(loss, (ce1[pick2].sum() + ce2[pick1].sum()) / 2)
    loss.backward()  # network 1's gradient comes only from network 2's pick
    assert torch.all(l1.grad[~pick2] == 0) and torch.any(l1.grad[pick2] != 0)
    # Full agreement: nothing to learn from.
    same = torch.eye(3)[[0, 1, 2, 0]] * 3
    loss, disagree, pick1, _ = disagreement_update(same.clone().requires_grad_(), same, torch.zeros(4).long(), 0.2)
    assert float(loss.detach()) == 0 and not disagree.any() and not pick1.any()


def test_jocor_joint_loss_and_one_shared_selection_for_both_networks() -> None:
    g = torch.Generator().manual_seed(1)
    a, b, y = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g), torch.tensor([0, 1, 2, 0, 1])
    kl = lambda p, q: (p * (p / q).log()).sum(1)  # noqa: E731
    pa, pb = a.softmax(1), b.softmax(1)
    expected = 0.2 * (-pa[range(5), y].log() - pb[range(5), y].log()) + 0.8 * (kl(pa, pb) + kl(pb, pa))
    torch.testing.assert_close(joint_loss(a, b, y, 0.8), expected)
    # The method: one pick by the joint loss, the mean over it, both networks updated.
    ctx, batch = _ctx(n=10)
    method = ROBUST["jocor"](ctx, {"num_gradual": 1, "co_lambda": 0.9})
    method.setup()
    out = method.train_step(batch, epoch=1)  # forget rate 0.4 -> keep 6 of 10
    with torch.no_grad():
        joint = joint_loss(method.net1(batch.x), method.net2(batch.x), batch.y, 0.9)
    assert int(out["selected"].sum()) == 6
    assert set(out["selected"].nonzero().squeeze(1).tolist()) == set(torch.argsort(joint)[:6].tolist())
    torch.testing.assert_close(out["loss"], joint[out["selected"]].mean())
    out["loss"].backward()
    assert all(net.head.weight.grad is not None and net.head.weight.grad.abs().sum() > 0 for net in method.nets)
    # The selection record survives a reload (resume): the same kept rows and frequencies.
    other = ROBUST["jocor"](ctx, {"num_gradual": 1})
    other.setup()
    other.load_epoch_state(method.epoch_state())
    assert np.array_equal(other.selection.outputs()["kept"], method.selection.outputs()["kept"])
    assert other.selection.epoch == 1 and int(other.selection.seen.sum()) == 10


def test_dividemix_mixture_splits_a_bimodal_loss() -> None:
    rng = np.random.default_rng(0)
    loss = np.concatenate([rng.normal(0.2, 0.05, 80), rng.normal(2.0, 0.2, 20)])
    prob = clean_posterior(loss, seed=0)
    assert prob.shape == (100,) and (prob[:80] > 0.5).all() and (prob[80:] < 0.5).all()
    assert np.all(clean_posterior(np.ones(7)) == 1)  # nothing to split
    assert [lambda_u_for(r) for r in (0.1, 0.45, 0.7)] == [0.0, 25.0, 150.0]


def test_dividemix_co_divide_each_network_trains_on_the_others_split() -> None:
    ctx, _ = _ctx(n=12, epochs=4, batch_size=4)
    method = ROBUST["dividemix"](ctx, {"warmup": 1, "lambda_u": 25})
    method.setup()
    assert method.warmup == 1 and not method.inactive_reason()
    method.on_epoch_start(0)
    assert method.divisions == 0  # warm-up: no division
    # Fix the two networks' divisions by hand: net 1 trusts rows 0-7, net 2 rows 4-11.
    method.prob = np.stack([(np.arange(12) < 8), (np.arange(12) >= 4)]).astype(np.float32) * 0.8 + 0.1
    batches = list(method._semi_batches(epoch=1))
    assert len(batches) == 2  # 8 labelled rows per network / batch size 4
    for b in batches:
        e = b.extra
        assert torch.equal(b.index, e["index0"]) and set(e["index0"].tolist()) <= set(range(4, 12))  # net 2's split
        assert set(e["index1"].tolist()) <= set(range(0, 8))                                        # net 1's split
        assert e["x0_1"].shape == e["x0_2"].shape == e["u0_1"].shape == (4, 3, 2, 2)
        torch.testing.assert_close(e["w0"], torch.full((4,), 0.9))
    # Every step trains both networks, each with its own parts.
    method.train()
    out = method.train_step(batches[0], epoch=1)
    out["loss"].backward()
    assert all(net.head.weight.grad.abs().sum() > 0 for net in method.nets)
    assert out["prob"].shape == (4,) and method.step_in_epoch == 1
    # A real division, then the outputs: kept is network 1's split, noise_score from a final mixture.
    method.on_epoch_start(1)
    assert method.divisions == 1 and np.isfinite(method.prob).all()
    outputs = method.outputs()
    assert np.array_equal(outputs["kept"], np.flatnonzero(method.prob[0] > 0.5))
    assert outputs["noise_score"].shape == (12,) and outputs["clean_prob"].shape == (2, 12)
    restored = ROBUST["dividemix"](ctx, {"warmup": 1, "lambda_u": 25})
    restored.setup()
    restored.load_epoch_state(method.epoch_state())
    assert np.array_equal(restored.prob, method.prob) and restored.divisions == 1


def test_dividemix_skips_a_network_whose_peer_trusts_fewer_than_two_samples() -> None:
    from ssl_noise.robust.base import MethodWarning

    ctx, _ = _ctx(n=12, epochs=4, batch_size=4)
    method = ROBUST["dividemix"](ctx, {"warmup": 1, "lambda_u": 25})
    method.setup()
    # network 2 marks one sample clean (network 1 has no labelled set), network 1 marks rows 0-7
    method.prob = np.stack([(np.arange(12) < 8), (np.arange(12) == 3)]).astype(np.float32) * 0.8 + 0.1
    with pytest.warns(MethodWarning, match="network 2's split marks fewer than 2 samples clean, so network 1 skips"):
        batches = list(method._semi_batches(epoch=1))
    assert method.skip_now == [True, False] and len(batches) == 2   # network 2's 8 labelled rows / 4
    assert all("x0_1" not in b.extra and set(b.index.tolist()) <= set(range(8)) for b in batches)
    method.train()
    out = method.train_step(batches[0], epoch=1)
    out["loss"].backward()
    assert method.net1.head.weight.grad is None and method.net2.head.weight.grad.abs().sum() > 0
    # both peers trust nothing: no step at all this epoch, both counted; the count survives a resume
    method.prob[:] = 0.1
    assert list(method._semi_batches(epoch=2)) == [] and method.skipped.tolist() == [2, 1]
    assert method.summary() == {"dividemix_skipped_epochs": [2, 1]}
    restored = ROBUST["dividemix"](ctx, {"warmup": 1, "lambda_u": 25})
    restored.setup()
    restored.load_epoch_state(method.epoch_state())
    assert restored.skipped.tolist() == [2, 1]


def test_mixmatch_shapes_mixing_and_the_loss_terms() -> None:
    torch.manual_seed(0)
    net = Classifier(nn.Flatten(), 12, 3).eval()
    b = 4
    parts = {name: torch.randn(b, 3, 2, 2) for name in ("x1", "x2", "u1", "u2")}
    tx, tu = sharpen(torch.rand(b, 3) + 0.1, 0.5), sharpen(torch.rand(b, 3) + 0.1, 0.5)
    torch.testing.assert_close(tx.sum(1), torch.ones(b))
    perm = torch.randperm(4 * b)
    loss, seen = mixmatch_loss(net, parts, tx, tu, lam=0.7, perm=perm, lambda_u=25.0)
    all_x = torch.cat([parts["x1"], parts["x2"], parts["u1"], parts["u2"]])
    all_t = torch.cat([tx, tx, tu, tu])
    torch.testing.assert_close(seen["mixed_input"], 0.7 * all_x + 0.3 * all_x[perm])
    torch.testing.assert_close(seen["mixed_target"], 0.7 * all_t + 0.3 * all_t[perm])
    assert seen["logits"].shape == (4 * b, 3)
    logits, mt = seen["logits"], seen["mixed_target"]
    lx = -(logits[:2 * b].log_softmax(1) * mt[:2 * b]).sum(1).mean()
    lu = ((logits[2 * b:].softmax(1) - mt[2 * b:]) ** 2).mean()
    mean_p = logits.softmax(1).mean(0)
    penalty = (torch.full((3,), 1 / 3) * torch.log((1 / 3) / mean_p)).sum()
    torch.testing.assert_close(loss, lx + 25.0 * lu + penalty)
    # Without unlabelled samples only the labelled half is mixed.
    loss, seen = mixmatch_loss(net, {"x1": parts["x1"], "x2": parts["x2"]}, tx, None, 0.6, torch.randperm(2 * b), 25)
    assert seen["logits"].shape == (2 * b, 3) and float(seen["loss_u"].detach()) == 0
    # Sharpening with T = 0.5 squares and renormalises.
    torch.testing.assert_close(sharpen(torch.tensor([[0.6, 0.4]]), 0.5), torch.tensor([[0.36, 0.16]]) / 0.52)


# ------------------------------------------------------------------------------------------ instance noise

def _images(n: int, seed: int = 0, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_instance_noise_rate_seed_and_never_the_true_class() -> None:
    from ssl_noise import noise

    images, clean = _images(4000), np.repeat(np.arange(4), 1000)
    process = noise.build_noise("instance", 4, 0.3, seed=5)
    out = noise.corrupt(clean, process, rng=np.random.default_rng(5), images=images)
    # Tolerance: the mean of 4000 flips with q ~ N(0.3, 0.1²) has a standard deviation of about 0.007.
    assert abs(out.realised_rate - 0.3) < 0.03 and abs(noise.expected_rate(out.T, clean) - 0.3) < 0.01
    np.testing.assert_allclose(out.T.sum(1), 1)
    np.testing.assert_allclose(out.realised_T.sum(1), 1)
    again = noise.corrupt(clean, noise.build_noise("instance", 4, 0.3, seed=5), rng=np.random.default_rng(5),
                          images=images)
    other = noise.corrupt(clean, noise.build_noise("instance", 4, 0.3, seed=6), rng=np.random.default_rng(6),
                          images=images)
    assert np.array_equal(out.noisy, again.noisy) and not np.array_equal(out.noisy, other.noisy)
    # With every sample forced to flip (q = 1) the clean class has probability 0: a flip never lands on it.
    p = process.probabilities(images, clean, np.ones(len(clean)))
    assert np.all(p[np.arange(len(clean)), clean] == 0) and np.allclose(p.sum(1), 1)
    assert np.array_equal(out.flipped, out.noisy != clean)
    assert np.all(noise.corrupt(clean, noise.instance(4, 0.0), rng=np.random.default_rng(0),
                                images=images).noisy == clean)  # rate 0: clean


def test_instance_noise_depends_on_the_image_only() -> None:
    from ssl_noise import noise

    a, b = _images(2, seed=1)
    images = np.concatenate([np.repeat(a[None], 3000, 0), np.repeat(b[None], 3000, 0)])
    clean = np.zeros(6000, dtype=np.int64)
    process = noise.instance(5, 0.4, seed=0)
    q = np.full(6000, 0.4)
    p = process.probabilities(images, clean, q)
    assert np.all(p[:3000] == p[0]) and np.all(p[3000:] == p[3000])  # identical images, identical distribution
    out = noise.corrupt(clean, process, rng=np.random.default_rng(0), images=images)
    for block in (slice(0, 3000), slice(3000, 6000)):  # two halves of one image's copies draw alike
        halves = [np.bincount(out.noisy[block][h::2], minlength=5) / 1500 for h in (0, 1)]
        assert np.abs(halves[0] - halves[1]).max() < 0.06
    assert not np.allclose(p[0], p[3000])  # another image, another distribution


def test_instance_noise_is_checked_and_recorded_by_finetune(tmp_path) -> None:
    from ssl_noise import noise
    from ssl_noise.config import FinetuneConfig, resolve
    from ssl_noise.errors import UserError
    from ssl_noise.finetune.prepare import prepare

    with pytest.raises(noise.MajorityNoiseError, match="--force"):
        noise.instance(4, 0.5)
    with pytest.raises(UserError, match="exact does not apply"):
        noise.corrupt(np.zeros(3, np.int64), noise.instance(2, 0.2), rng=np.random.default_rng(0),
                      images=_images(3), mode="exact")
    cfg = resolve(FinetuneConfig, {"dataset": "synthetic:n_train=64,n_val=32,n_test=16", "image_size": 16,
                                   "noise_type": "instance", "noise_rate": 0.3, "noise_seed": 2})
    prep = prepare(cfg, data_root=None, checkpoints=tmp_path)
    again = prepare(cfg, data_root=None, checkpoints=tmp_path)
    nz = prep.noise
    assert nz["type"] == "instance" and nz["rate"] == 0.3 and "inst0.3" in prep.run_id
    assert nz["realised_rate"] == float(prep.train_noise.flipped.mean()) and np.shape(nz["realised_T"]) == (4, 4)
    assert np.array_equal(prep.train_noise.noisy, again.train_noise.noisy)
    assert prep.val_noise is not None and prep.val_noise.realised_rate > 0  # noisy validation labels, same process


# --------------------------------------------------------------------------------------------- real noise

def _manifest(tmp_path) -> tuple:
    """48 tiny PNGs in 4 classes with a split column, clean_label, a noisy ``label`` (every 4th train image of
    classes a/b flipped to the next class) and three annotators; returns (path, rows as dicts)."""
    from PIL import Image

    names, rows = ["a", "b", "c", "d"], []
    rng = np.random.default_rng(0)
    for i in range(48):
        k, split = i % 4, ("train" if i < 32 else "val" if i < 40 else "test")
        Image.fromarray(np.full((8, 8, 3), 40 + 50 * k, np.uint8) + rng.integers(0, 20, (8, 8, 3), dtype=np.uint8)
                        ).save(tmp_path / f"{i}.png")
        label = names[(k + 1) % 4] if split != "test" and i % 8 in (0, 1) else names[k]
        votes = [label, names[k], label if i % 3 else names[(k + 2) % 4]]
        rows.append({"path": f"{i}.png", "label": label, "clean_label": names[k], "split": split,
                     "annotator_1": votes[0], "annotator_2": votes[1], "annotator_3": votes[2]})
    path = tmp_path / "manifest.csv"
    path.write_text(",".join(rows[0]) + "\n" + "".join(",".join(r.values()) + "\n" for r in rows))
    return path, rows


def test_manifest_with_clean_labels_trains_on_given_and_scores_against_clean(tmp_path) -> None:
    import json

    from ssl_noise.cli import main
    from ssl_noise.data import load_dataset

    path, rows = _manifest(tmp_path)
    train = [r for r in rows if r["split"] == "train"]
    code = {n: k for k, n in enumerate("abcd")}
    data = load_dataset(f"csv:{path}", size=8)
    assert np.array_equal(data.train.labels, [code[r["clean_label"]] for r in train])
    assert np.array_equal(data.train.given, [code[r["label"]] for r in train])
    assert np.array_equal(data.test.given, data.test.labels)
    one = load_dataset(f"csv:{path}", size=8, label_column="annotator_3")
    assert np.array_equal(one.train.given, [code[r["annotator_3"]] for r in train])
    # Majority of (label, clean, label-or-other): the given label wins 2:1 wherever annotators 1 and 3 agree.
    majority = load_dataset(f"csv:{path}", size=8, label_column="majority")
    expected = [code[r["annotator_1"]] if r["annotator_1"] in (r["annotator_2"], r["annotator_3"]) else
                code[r["annotator_2"]] if r["annotator_2"] == r["annotator_3"] else code[r["annotator_1"]]
                for r in train]
    assert np.array_equal(majority.train.given, expected)

    n_wrong = sum(r["label"] != r["clean_label"] for r in train)
    described = data.describe()  # `data info`: the clean counts, the given ones training uses, the real rate
    assert "train clean" in described and "train given" in described
    assert f"train: {n_wrong} of 32 given labels differ from the clean ones (noise rate {n_wrong / 32:.3f})" \
        in described
    assert "test: 0 of 8 given labels differ" in described
    runs = tmp_path / "runs"
    args = ["--runs", str(runs), "finetune", "--dataset", f"csv:{path}", "--image-size", "8", "--epochs", "1",
            "--batch-size", "16", "--method", "coteaching", "--quiet", "--set", "precision=fp32"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    folder = next(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["noise"]["source"] == "real" and metrics["noise"]["type"] == "real"
    assert metrics["noise"]["realised_rate"] == pytest.approx(n_wrong / len(train)) and n_wrong == 8
    assert metrics["detection"]["n_noisy"] == n_wrong
    written = (folder / "noisy_labels.csv").read_text().splitlines()[1:]
    assert sum(line.split(",")[1] != line.split(",")[2] for line in written) == n_wrong
    # Synthetic noise on top of real noise is refused (exit 2, one line).
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--noise", "0.2"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(args[:-2] + ["--label-column", "nosuch"])
    assert exit_info.value.code == 2
