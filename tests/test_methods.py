"""SSL methods: every registered method trains one step reproducibly; the losses match naive references; the
method-specific pieces (MoCo's key encoder and queue, jigsaw's permutations and tiles, rotation labels) behave.

Tiny on purpose (ResNet-18 with the cifar stem, batch 8, 16 px): the suite must stay fast on a shared 2-core CPU.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss

from ssl_noise.augment import AugmentConfig
from ssl_noise.backbones import build_backbone
from ssl_noise.config import resolve
from ssl_noise.errors import UserError
from ssl_noise.methods import METHODS, InputSpec
from ssl_noise.methods.jigsaw import Jigsaw, hamming_permutations, shuffle_tiles
from ssl_noise.methods.rotation import Rotation, rotate_batch

SIZE, BATCH = 16, 8
# Shrink the parts that only cost time at test size; methods not listed here run with their defaults.
SMALL_ARGS = {"moco": {"queue_size": 32}, "jigsaw": {"num_permutations": 10, "hidden_dim": 64}}


def _spec(channels: int, size: int = SIZE, **augment) -> InputSpec:
    return InputSpec(channels, size, [0.5] * channels, [0.25] * channels, AugmentConfig(**augment))


def _method(name: str, channels: int = 1, seed: int = 0, args: dict | None = None, size: int = SIZE):
    torch.manual_seed(seed)
    backbone, feat_dim = build_backbone("resnet18", stem="cifar", in_channels=channels)
    return METHODS[name](backbone, feat_dim, _spec(channels, size), {**SMALL_ARGS.get(name, {}), **(args or {})})


def _batch(channels: int, size: int = SIZE) -> torch.Tensor:
    return torch.rand(BATCH, channels, size, size, generator=torch.Generator().manual_seed(1))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------------------------
# Every registered method
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", METHODS.names())
def test_train_step_is_finite_reproducible_and_updates_the_backbone(name: str, channels: int) -> None:
    x = _batch(channels)
    a, b = _method(name, channels), _method(name, channels)
    a.check_input(a.spec, SMALL_ARGS.get(name))
    # Same step seed -> same loss, whatever the global RNG says; and forward draws nothing from the global RNG.
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    loss = a(x, _gen())
    assert torch.equal(state, torch.random.get_rng_state()), "forward used the global RNG"
    torch.manual_seed(456)
    assert torch.equal(loss.detach(), b(x, _gen()).detach())
    assert loss.shape == () and torch.isfinite(loss)

    opt = torch.optim.SGD([p for p in a.parameters() if p.requires_grad], lr=0.1)
    before = {k: v.clone() for k, v in a.backbone.state_dict().items()}
    loss.backward()
    grad = a.backbone.conv1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    opt.step()
    a.on_step_end(0.5)
    assert not torch.equal(before["conv1.weight"], a.backbone.conv1.weight)
    # The exported encoder is the plain torchvision backbone: same keys as before, no method parts inside.
    assert set(a.backbone.state_dict()) == set(before)
    json.dumps(a.extra_files())


@pytest.mark.parametrize("name", METHODS.names())
def test_args_are_validated(name: str) -> None:
    cls = METHODS[name]
    resolve(cls.Args, {})  # defaults are valid
    with pytest.raises(UserError, match="unknown config key"):
        resolve(cls.Args, {"no_such_knob": 1})
    cls.check_input(_spec(1, 28), None)  # MedMNIST size works with the defaults


@pytest.mark.parametrize(
    "name, bad",
    [("simclr", {"temperature": 0.0}), ("moco", {"momentum": 1.5}), ("moco", {"queue_size": 0}),
     ("rotation", {"mode": "one"}), ("jigsaw", {"num_permutations": 25, "grid": 2}), ("jigsaw", {"grid": 1})],
)
def test_bad_args_raise_user_error(name: str, bad: dict) -> None:
    with pytest.raises(UserError):
        resolve(METHODS[name].Args, bad)


# --------------------------------------------------------------------------------------------------------------
# NT-Xent (lightly) against naive loops: the in-batch (SimCLR) and the queue (MoCo) forms
# --------------------------------------------------------------------------------------------------------------


def _naive_ntxent(z0: torch.Tensor, z1: torch.Tensor, t: float) -> float:
    """Mean over the 2B views of -log(exp(s_pos / t) / sum_{k != i} exp(s_ik / t)), cosine similarities s."""
    z = [v / v.norm() for v in torch.cat([z0, z1])]  # the 2B views, unit length
    n, b = len(z), len(z0)
    total = 0.0
    for i in range(n):
        pos = math.exp(float(z[i] @ z[(i + b) % n]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n) if k != i)
        total += -math.log(pos / den)
    return total / n


def _naive_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float) -> float:
    """Mean over queries of -log(exp(q.k / t) / (exp(q.k / t) + sum_j exp(q.n_j / t))), all unit vectors."""
    total = 0.0
    for qi, ki in zip(F.normalize(q, dim=1), F.normalize(k, dim=1)):
        pos = math.exp(float(qi @ ki) / t)
        neg = sum(math.exp(float(qi @ nj) / t) for nj in queue)
        total += -math.log(pos / (pos + neg))
    return total / len(q)


@pytest.mark.parametrize("temperature", [0.5, 0.07])
def test_ntxent_matches_naive_loop(temperature: float) -> None:
    g = _gen(3)
    z0 = torch.randn(BATCH, 16, generator=g, dtype=torch.float64)
    z1 = torch.randn(BATCH, 16, generator=g, dtype=torch.float64)
    got = NTXentLoss(temperature=temperature)(z0, z1)
    assert got.item() == pytest.approx(_naive_ntxent(z0, z1, temperature), rel=1e-9)


@pytest.mark.parametrize("temperature", [0.2, 0.07])
def test_ntxent_with_queue_matches_naive_moco_loss(temperature: float) -> None:
    torch.manual_seed(0)
    crit = NTXentLoss(temperature=temperature, memory_bank_size=(32, 16))
    g = _gen(4)
    q = torch.randn(BATCH, 16, generator=g, requires_grad=True)
    k = torch.randn(BATCH, 16, generator=g)
    queue = crit.memory_bank.bank.clone()  # (K, D), unit rows; the current keys are NOT among the negatives
    got = crit(q, k)
    assert got.item() == pytest.approx(_naive_infonce(q.detach(), k, queue, temperature), rel=1e-5)
    # The keys (second argument) were enqueued, normalised, at the head of the queue.
    torch.testing.assert_close(crit.memory_bank.bank[:BATCH], F.normalize(k, dim=1))


# --------------------------------------------------------------------------------------------------------------
# MoCo
# --------------------------------------------------------------------------------------------------------------


def test_moco_key_encoder_follows_by_momentum_only() -> None:
    m = _method("moco", args={"momentum": 0.9})
    key = dict(m.backbone_momentum.named_parameters())
    assert all(not p.requires_grad for p in list(key.values()) + list(m.head_momentum.parameters()))
    assert m.backbone_momentum is not m.backbone
    torch.testing.assert_close(key["conv1.weight"], m.backbone.conv1.weight)  # starts as a copy

    loss = m(_batch(1), _gen())
    loss.backward()
    assert all(p.grad is None for p in m.backbone_momentum.parameters())
    torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5).step()
    old_key, query = key["conv1.weight"].clone(), m.backbone.conv1.weight.detach().clone()
    assert not torch.equal(old_key, query)

    m.on_step_end(0.0)  # momentum 0.9 at the start of the cosine schedule
    torch.testing.assert_close(key["conv1.weight"], 0.9 * old_key + 0.1 * query)
    frozen = key["conv1.weight"].clone()
    m.on_step_end(1.0)  # momentum 1.0 at the end: the key encoder stops moving
    torch.testing.assert_close(key["conv1.weight"], frozen)


def test_moco_symmetric_enqueues_both_views_once() -> None:
    m = _method("moco", args={"symmetric": True})
    loss = m(_batch(1), _gen())
    assert torch.isfinite(loss)
    assert int(m.criterion.memory_bank.bank_ptr) == 2 * BATCH


def test_moco_distributed_path_matches_single_process(tmp_path) -> None:
    """A one-process gloo group runs the DDP branch (seeded shuffle BN, gathers): same loss, global RNG untouched."""
    dist = torch.distributed
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("no gloo backend")
    x = _batch(1)
    single = _method("moco")(x, _gen())
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        m = _method("moco")  # built inside the group: the loss gathers across processes
        assert m.criterion.gather_distributed
        state = torch.random.get_rng_state()
        multi = m(x, _gen())
        assert torch.equal(state, torch.random.get_rng_state())
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(multi, single)


# --------------------------------------------------------------------------------------------------------------
# Rotation
# --------------------------------------------------------------------------------------------------------------


def test_rotation_labels_match_rot90() -> None:
    x = _batch(3)
    rotated, k = rotate_batch(x, "all")
    assert rotated.shape == (4 * BATCH, 3, SIZE, SIZE) and k.tolist() == [r for r in range(4) for _ in range(BATCH)]
    for i in range(4 * BATCH):
        assert torch.equal(rotated[i], torch.rot90(x[i % BATCH], int(k[i]), dims=(-2, -1)))

    rotated, k = rotate_batch(x, "sampled", _gen(5))
    assert rotated.shape == x.shape and len(set(k.tolist())) > 1
    assert torch.equal(k, rotate_batch(x, "sampled", _gen(5))[1])
    for i in range(BATCH):  # undoing the labelled rotation gives the source image back
        assert torch.equal(torch.rot90(rotated[i], -int(k[i]), dims=(-2, -1)), x[i])


def test_rotation_augmentation_never_turns_or_flips_vertically() -> None:
    backbone, d = build_backbone("resnet18", stem="cifar", in_channels=1)
    m = Rotation(backbone, d, _spec(1, vf_prob=0.5, rr_prob=0.5, min_scale=0.3))
    assert (m.augment_cfg.vf_prob, m.augment_cfg.rr_prob, m.augment_cfg.min_scale) == (0.0, 0.0, 0.3)


# --------------------------------------------------------------------------------------------------------------
# Jigsaw
# --------------------------------------------------------------------------------------------------------------


def _min_hamming(p: np.ndarray) -> int:
    d = (p[:, None, :] != p[None, :, :]).sum(-1)
    np.fill_diagonal(d, p.shape[1])
    return int(d.min())


@pytest.mark.parametrize("n, bound", [(100, 6), (10, 8)])
def test_hamming_permutations_are_distinct_valid_and_far_apart(n: int, bound: int) -> None:
    p = hamming_permutations(n, 9, seed=0)
    assert p.shape == (n, 9) and p.dtype == np.int64
    assert all(sorted(row) == list(range(9)) for row in p.tolist())
    assert len({tuple(row) for row in p.tolist()}) == n
    assert _min_hamming(p) >= bound  # greedy max-min: 6 for 100 (8 is impossible above 72 permutations)
    assert np.array_equal(p, hamming_permutations(n, 9, seed=0))
    assert not np.array_equal(p, hamming_permutations(n, 9, seed=1))


def test_hamming_permutations_rejects_impossible_counts() -> None:
    with pytest.raises(UserError):
        hamming_permutations(25, grid_cells=4)


def test_jigsaw_check_input_rejects_small_images() -> None:
    Jigsaw.check_input(_spec(1, 15), None)  # 5 px cells, 1 px jitter: 4 px tiles, the smallest allowed
    with pytest.raises(UserError, match="at least 15 px for a 3x3 grid"):
        Jigsaw.check_input(_spec(1, 14), None)
    with pytest.raises(UserError, match="at least 24 px"):  # 8 px cells: 1 px gap + 3 px jitter leave 4 px
        Jigsaw.check_input(_spec(1, 16), {"tile_jitter": 3})
    Jigsaw.check_input(_spec(1, 21), {"tile_jitter": 3, "tile_gap": 0})
    backbone, d = build_backbone("resnet18", stem="cifar", in_channels=1)
    with pytest.raises(UserError):
        Jigsaw(backbone, d, _spec(1, 12), {"num_permutations": 10})


def test_jigsaw_tiles_come_from_their_cells_and_are_shuffled_by_the_label() -> None:
    size = 28  # 9 px cells, 7 px tiles at offsets 0..2
    m = _method("jigsaw", args={"tile_jitter": 2, "tile_gap": 0}, size=size)  # the gap: test_ssl_families.py
    rows = torch.arange(size).view(1, 1, size, 1).expand(BATCH, 1, size, size).float()
    cols = torch.arange(size).view(1, 1, 1, size).expand(BATCH, 1, size, size).float()
    tiles = m.tiles(torch.cat([rows, cols], 1), _gen())  # channel 0 = row index, channel 1 = column index
    assert tiles.shape == (BATCH, 9, 2, 7, 7)
    top, left = tiles[:, :, 0, 0, 0], tiles[:, :, 1, 0, 0]  # (B, 9) top-left pixel of every tile
    cell = torch.arange(9)
    assert ((top - (cell // 3) * 9).ge(0) & (top - (cell // 3) * 9).le(2)).all()
    assert ((left - (cell % 3) * 9).ge(0) & (left - (cell % 3) * 9).le(2)).all()
    assert torch.equal(tiles[:, :, 0, 6, 0] - top, torch.full_like(top, 6))  # contiguous 7 px blocks
    assert len(set((top - (cell // 3) * 9).flatten().tolist())) == 3  # every offset 0, 1, 2 occurs

    shuffled, label = shuffle_tiles(tiles, m.perms, _gen(2))
    for b in range(BATCH):
        for j in range(9):
            assert torch.equal(shuffled[b, j], tiles[b, m.perms[label[b], j]])
    assert m.extra_files()["permutations.json"] == m.perms.tolist()
