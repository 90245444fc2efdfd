"""The non-contrastive families (BYOL, SimSiam, Barlow Twins, VICReg, DINO): a real optimiser step trains the online
network and nothing else, momentum encoders follow the cosine schedule by exactly the EMA formula, DINO's teacher
temperature and centre behave, the exported backbone loads strictly into plain torchvision, every shipped recipe
resolves, and under a 2-process gloo group the losses gather and the momentum encoders stay in step.

Tiny on purpose (ResNet-18 with the cifar stem, batch 8, 16 px, narrow heads): the suite must stay fast on a shared
2-core CPU. The METHODS-parametrised tests in test_methods.py and test_pretrain.py cover these methods too.
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
import yaml

from ssl_noise.augment import AugmentConfig, augment
from ssl_noise.backbones import build_backbone
from ssl_noise.config import PretrainConfig, resolve
from ssl_noise.engine import build_optimizer
from ssl_noise.errors import UserError
from ssl_noise.methods import METHODS, InputSpec
from ssl_noise.methods.base import cosine_momentum

ROOT = Path(__file__).resolve().parents[1]
SIZE, BATCH = 16, 8
NEW = ["byol", "simsiam", "barlowtwins", "vicreg", "dino"]
SMALL = {"byol": {"hidden_dim": 64, "out_dim": 32}, "simsiam": {"hidden_dim": 64, "out_dim": 64, "pred_hidden_dim": 16},
         "barlowtwins": {"hidden_dim": 64, "out_dim": 64}, "vicreg": {"hidden_dim": 64, "out_dim": 64},
         "dino": {"hidden_dim": 64, "bottleneck_dim": 32, "out_dim": 128}}
# (online module, its momentum copy) pairs of the methods with a momentum encoder
MOMENTUM = {"byol": [("backbone", "backbone_momentum"), ("projector", "projector_momentum")],
            "dino": [("backbone", "teacher_backbone"), ("head", "teacher_head")]}


def _spec(channels: int = 3, size: int = SIZE) -> InputSpec:
    return InputSpec(channels, size, [0.5] * channels, [0.25] * channels, AugmentConfig(min_scale=0.3))


def _method(name: str, channels: int = 3, seed: int = 0, args: dict | None = None, size: int = SIZE):
    torch.manual_seed(seed)
    backbone, feat_dim = build_backbone("resnet18", stem="cifar", in_channels=channels)
    return METHODS[name](backbone, feat_dim, _spec(channels, size), {**SMALL[name], **(args or {})})


def _batch(n: int = BATCH, channels: int = 3, size: int = SIZE, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def _expected_momentum(progress: float, start: float) -> float:
    """The BYOL/DINO schedule written out: 1 - (1 - start) (cos(pi p) + 1) / 2."""
    return 1 - (1 - start) * (math.cos(math.pi * progress) + 1) / 2


# --------------------------------------------------------------------------------------------------------------
# One real step: the loop's optimiser trains the online parts and nothing else
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_one_step_trains_the_online_network_with_a_finite_loss(name: str) -> None:
    m = _method(name)
    opt = build_optimizer(m, resolve(PretrainConfig, {"lr": 0.1}))
    trained = {id(p) for group in opt.param_groups for p in group["params"]}
    frozen = {n: p for n, p in m.named_parameters() if not p.requires_grad}
    for online, momentum in MOMENTUM.get(name, []):
        # the momentum copy starts equal to the online module and is out of the optimiser's reach
        torch.testing.assert_close(_flat(getattr(m, momentum)), _flat(getattr(m, online)))
        assert all(id(p) not in trained for p in getattr(m, momentum).parameters())
    before = {n: p.detach().clone() for n, p in m.named_parameters()}

    loss = m(_batch(), _gen())
    assert loss.shape == () and torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is None for p in frozen.values())
    opt.step()

    changed = {n for n, p in m.named_parameters() if not torch.equal(before[n], p)}
    assert "backbone.conv1.weight" in changed and "backbone.layer4.1.conv2.weight" in changed
    head = {"byol": "predictor", "simsiam": "predictor", "dino": "head"}.get(name, "projector")
    assert any(n.startswith(head + ".") for n in changed)
    assert not changed & set(frozen)  # momentum encoders and DINO's fixed weight norm move by EMA only


def test_simsiam_stops_gradients_at_the_target() -> None:
    """Only the predictions carry gradient: replacing the targets by constants leaves every gradient unchanged."""
    m = _method("simsiam")
    x = _batch()
    m(x, _gen()).backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    v = torch.cat([m.normalize(augment(x, m.spec.augment, g)) for g in [_gen()] for _ in range(2)])
    z = m.projector(m.backbone(v))
    p = m.predictor(z)
    z = z.detach().clone()  # an explicit constant
    b = BATCH
    loss = -0.5 * (F.cosine_similarity(p[:b], z[b:]).mean() + F.cosine_similarity(p[b:], z[:b]).mean())
    loss.backward()
    for n, p_ in m.named_parameters():
        if n in grads:
            torch.testing.assert_close(p_.grad, grads[n], rtol=1e-4, atol=1e-6)


def test_barlowtwins_scale_loss_multiplies_the_loss() -> None:
    x = _batch()
    base = _method("barlowtwins")(x, _gen())
    scaled = _method("barlowtwins", args={"scale_loss": 0.1})(x, _gen())
    torch.testing.assert_close(scaled, 0.1 * base)
    with pytest.raises(UserError):
        resolve(METHODS["barlowtwins"].Args, {"scale_loss": 0.0})


# --------------------------------------------------------------------------------------------------------------
# Momentum schedules
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MOMENTUM))
def test_momentum_encoder_moves_by_the_cosine_schedule(name: str) -> None:
    m = _method(name, args={"momentum": 0.9})
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    for progress in (0.0, 0.5, 0.8):
        loss = m(_batch(), _gen())
        opt.zero_grad()
        loss.backward()
        opt.step()
        old = {mo: _flat(getattr(m, mo)) for _, mo in MOMENTUM[name]}
        m.on_step_end(progress)
        rate = _expected_momentum(progress, 0.9)
        assert cosine_momentum(progress, 0.9) == pytest.approx(rate, abs=1e-4)
        for online, mo in MOMENTUM[name]:
            torch.testing.assert_close(_flat(getattr(m, mo)), rate * old[mo] + (1 - rate) * _flat(getattr(m, online)))
            assert not torch.equal(_flat(getattr(m, mo)), old[mo])
    frozen = {mo: _flat(getattr(m, mo)) for _, mo in MOMENTUM[name]}
    m.on_step_end(1.0)  # momentum 1 at the end of training: the teacher stops moving
    for mo in frozen:
        torch.testing.assert_close(_flat(getattr(m, mo)), frozen[mo])


def test_dino_teacher_temperature_warms_up_and_the_centre_follows_the_teacher() -> None:
    m = _method("dino", args={"warmup_teacher_temp": 0.04, "teacher_temp": 0.07, "warmup_fraction": 0.3})
    temps = []
    for p in (0.0, 0.15, 0.3, 0.9):
        m.progress.fill_(p)
        temps.append(m.teacher_temperature())
    assert temps == pytest.approx([0.04, 0.055, 0.07, 0.07])
    m.on_step_end(0.15)
    assert float(m.progress) == 0.15 and m.teacher_temperature() == pytest.approx(0.055)
    assert "progress" in m.state_dict()  # a resumed run continues the warm-up where it stopped

    # The centre is an EMA (0.9) of the teacher's mean output over both global views, starting from 0.
    x, g = _batch(), _gen(3)
    views = torch.cat([m.normalize(augment(x, m.spec.augment, g)) for _ in range(2)])
    with torch.no_grad():
        teacher_mean = m.teacher_head(m.teacher_backbone(views)).mean(0)
    m(x, _gen(3))
    torch.testing.assert_close(m.criterion.center.flatten(), 0.1 * teacher_mean, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("freeze", [0, 1, 2])
def test_dino_last_layer_stays_fixed_for_its_first_epochs(freeze: int) -> None:
    """The step of the loop (backward, ``before_step(epoch)``, optimiser step) leaves the prototype layer alone in the
    first ``freeze_last_layer`` epochs, with weight decay on, and trains it afterwards; the rest of the head always."""
    m = _method("dino", args={"freeze_last_layer": freeze})
    opt = build_optimizer(m, resolve(PretrainConfig, {"lr": 0.1, "weight_decay": 0.1}))
    for epoch in range(3):
        last, rest = _flat(m.head.last_layer).clone(), _flat(m.head.layers).clone()
        opt.zero_grad()
        m(_batch(seed=epoch), _gen(epoch)).backward()
        m.before_step(epoch)
        opt.step()
        assert torch.equal(_flat(m.head.last_layer), last) == (epoch < freeze)
        assert not torch.equal(_flat(m.head.layers), rest)


def test_dino_multi_crop_adds_small_student_only_views() -> None:
    m = _method("dino", size=28, args={"n_local_views": 3, "local_size": 12})
    seen = []
    hook = m.backbone.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
    teacher_seen = []
    m.teacher_backbone.register_forward_hook(lambda mod, inp, out: teacher_seen.append(tuple(inp[0].shape)))
    loss = m(_batch(size=28), _gen())
    hook.remove()
    assert torch.isfinite(loss)
    assert seen == [(2 * BATCH, 3, 28, 28), (3 * BATCH, 3, 12, 12)]
    assert teacher_seen == [(2 * BATCH, 3, 28, 28)]
    assert (m.local_augment.min_scale, m.local_augment.max_scale) == (0.05, 0.4)
    with pytest.raises(UserError):
        resolve(METHODS["dino"].Args, {"local_min_scale": 0.5, "local_max_scale": 0.4})


def test_local_crops_cover_at_most_max_scale_of_the_image() -> None:
    """``max_scale`` bounds the crop area: a crop of at most 40% of a ramp spans at most ~sqrt(0.4 * 4/3) of it."""
    size = 32
    ramp = torch.linspace(0, 1, size).view(1, 1, 1, size).expand(64, 1, size, size).contiguous()
    cfg = AugmentConfig(min_scale=0.05, max_scale=0.4, hf_prob=0.0, cj_prob=0.0)
    out = augment(ramp, cfg, _gen())
    span = out[:, 0, size // 2, -1] - out[:, 0, size // 2, 0]
    assert span.max() <= math.sqrt(0.4 * 4 / 3) + 0.05
    wide = augment(ramp, AugmentConfig(min_scale=0.9, hf_prob=0.0, cj_prob=0.0), _gen())
    assert (wide[:, 0, size // 2, -1] - wide[:, 0, size // 2, 0]).min() > 0.7


# --------------------------------------------------------------------------------------------------------------
# Export and recipes
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_backbone_loads_strictly_into_plain_torchvision(name: str) -> None:
    m = _method(name, channels=1)
    m(_batch(channels=1), _gen()).backward()
    m.on_step_end(0.5)
    plain = torchvision.models.resnet18()
    plain.fc = torch.nn.Identity()
    plain.conv1 = torch.nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    plain.maxpool = torch.nn.Identity()
    plain.load_state_dict(m.backbone.state_dict(), strict=True)
    plain.eval()
    m.backbone.eval()
    x = _batch(channels=1)
    torch.testing.assert_close(plain(x), m.backbone(x))


def _recipes():
    for path in sorted((ROOT / "pretrain").glob("*/*.yaml")):
        method = yaml.safe_load(path.read_text()).get("method", path.stem)
        if method in METHODS:
            yield pytest.param(path, method, id=f"{path.parent.name}/{path.name}")


@pytest.mark.parametrize("path, method", _recipes())
def test_every_shipped_recipe_resolves_with_its_method(path: Path, method: str) -> None:
    cfg = resolve(PretrainConfig, yaml.safe_load(path.read_text()), {"method": method})
    resolve(METHODS[method].Args, cfg.method_args)
    AugmentConfig.from_mapping(cfg.augment)
    if method in NEW:  # each new recipe names where its values come from
        assert any(source in path.read_text() for source in ("paper", "benchmark", "solo-learn"))


def test_every_new_method_has_a_recipe_for_blood_cells_and_for_grey_x_rays() -> None:
    for name in NEW:
        for dataset in ("bloodmnist", "pneumoniamnist"):
            assert (ROOT / "pretrain" / dataset / f"{name}.yaml").is_file()
    grey = yaml.safe_load((ROOT / "pretrain/pneumoniamnist/byol.yaml").read_text())["augment"]
    assert grey["vf_prob"] == grey["rr_prob"] == grey["cj_sat"] == grey["cj_hue"] == 0


@pytest.mark.parametrize("name", NEW)
def test_grey_images_train(name: str) -> None:
    m = _method(name, channels=1)
    assert torch.isfinite(m(_batch(channels=1), _gen()))


# --------------------------------------------------------------------------------------------------------------
# DDP on CPU: two gloo processes
# --------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _all(t: torch.Tensor) -> list:
    out = [torch.empty_like(t) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(out, t.contiguous())
    return out


def _ddp_worker(rank: int, port: int, results: dict) -> None:
    from lightly.loss import BarlowTwinsLoss, VICRegLoss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    out: dict = {}
    try:
        # The losses on embeddings: each process holds half of the batch.
        gen = torch.Generator().manual_seed(0)
        za, zb = torch.randn(16, 32, generator=gen), torch.randn(16, 32, generator=gen)
        half = slice(8 * rank, 8 * rank + 8)
        # Barlow Twins: the processes' correlation matrices are averaged, so both see the same loss, that of the
        # mean of the halves' matrices (each half standardised on its own, as a process can only do).
        std = [F.batch_norm(z, None, None, training=True) for z in (za[:8], zb[:8], za[8:], zb[8:])]
        c = 0.5 * (std[0].T @ std[1] / 8 + std[2].T @ std[3] / 8)
        off = c - torch.diag(torch.diagonal(c))
        naive = float((torch.diagonal(c) - 1).pow(2).sum() + 5e-3 * off.pow(2).sum())
        out["barlow"] = float(BarlowTwinsLoss(gather_distributed=True)(za[half], zb[half]))
        out["barlow_naive"] = naive
        out["barlow_local"] = float(BarlowTwinsLoss()(za[half], zb[half]))
        # VICReg: variance and covariance over the gathered batch, invariance local; the mean over processes is
        # the one-process loss of the whole batch.
        out["vicreg_loss"] = float(VICRegLoss(gather_distributed=True)(za[half], zb[half]))
        out["vicreg_local"] = float(VICRegLoss()(za[half], zb[half]))
        out["vicreg_whole"] = float(VICRegLoss()(za, zb))

        # One DDP step of every method where gathering or momentum matters.
        x = _batch(16)[half]
        for name in ["byol", "dino", "barlowtwins", "vicreg"]:
            m = _method(name, args={"momentum": 0.9} if name in MOMENTUM else None)
            ddp = torch.nn.parallel.DistributedDataParallel(m)
            opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
            g_seed = 100 + rank
            if name == "dino":  # the teacher's local mean output on this process's two global views
                g = _gen(g_seed)
                views = torch.cat([m.normalize(augment(x, m.spec.augment, g)) for _ in range(2)])
                with torch.no_grad():
                    local_mean = m.teacher_head(m.teacher_backbone(views)).mean(0)
            teacher0 = {mo: _flat(getattr(m, mo)) for _, mo in MOMENTUM.get(name, [])}
            loss = ddp(x, _gen(g_seed))
            opt.zero_grad()
            loss.backward()
            opt.step()
            m.on_step_end(0.0)
            student = _flat(m.backbone)
            same_student = all(torch.equal(t, student) for t in _all(student))
            ok_teacher = True
            for online, mo in MOMENTUM.get(name, []):
                teacher = _flat(getattr(m, mo))
                ok_teacher &= all(torch.equal(t, teacher) for t in _all(teacher))
                ok_teacher &= bool(torch.allclose(teacher, 0.9 * teacher0[mo] + 0.1 * _flat(getattr(m, online)),
                                                  atol=1e-6))
            out[name] = {"loss": float(loss.detach()), "same_student": same_student, "same_teacher": ok_teacher}
            if name == "dino":
                center = m.criterion.center.flatten()
                global_mean = torch.stack(_all(local_mean)).mean(0)
                out[name]["same_center"] = all(torch.equal(t, center) for t in _all(center))
                out[name]["center_is_global"] = bool(torch.allclose(center, 0.1 * global_mean, rtol=1e-4,
                                                                    atol=1e-6))
                out[name]["center_is_local"] = bool(torch.allclose(center, 0.1 * local_mean, rtol=1e-4, atol=1e-6))
    finally:
        results[rank] = out
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_gathers_losses_and_keeps_momentum_encoders_in_step() -> None:
    import torch.multiprocessing as mp

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("no gloo backend")
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(_free_port(), results), nprocs=2, join=True)
        r = dict(results)
    assert r[0]["barlow"] == pytest.approx(r[1]["barlow"], rel=1e-6)
    assert r[0]["barlow"] == pytest.approx(r[0]["barlow_naive"], rel=1e-5)
    assert r[0]["barlow_local"] != pytest.approx(r[0]["barlow"], rel=1e-3)
    assert (r[0]["vicreg_loss"] + r[1]["vicreg_loss"]) / 2 == pytest.approx(r[0]["vicreg_whole"], rel=1e-5)
    assert (r[0]["vicreg_local"] + r[1]["vicreg_local"]) / 2 != pytest.approx(r[0]["vicreg_whole"], rel=1e-3)
    for rank in (0, 1):
        for name in ["byol", "dino", "barlowtwins", "vicreg"]:
            step = r[rank][name]
            assert math.isfinite(step["loss"]) and step["same_student"] and step["same_teacher"], (rank, name)
        dino = r[rank]["dino"]
        assert dino["same_center"] and dino["center_is_global"] and not dino["center_is_local"]
    # the two processes saw different data, and Barlow Twins' gathered loss is the same number on both
    assert r[0]["byol"]["loss"] != r[1]["byol"]["loss"]
    assert r[0]["barlowtwins"]["loss"] == pytest.approx(r[1]["barlowtwins"]["loss"], rel=1e-6)


# --------------------------------------------------------------------------------------------------------------
# Jigsaw's guards (Noroozi & Favaro 2016): a gap between tiles and per-tile normalisation
# --------------------------------------------------------------------------------------------------------------


def _jigsaw(size: int = 28, **args):
    torch.manual_seed(0)
    backbone, feat_dim = build_backbone("resnet18", stem="cifar", in_channels=3)
    spec = InputSpec(3, size, [0.5] * 3, [0.25] * 3, AugmentConfig(min_scale=0.6))
    return METHODS["jigsaw"](backbone, feat_dim, spec, {"num_permutations": 10, "hidden_dim": 32, **args})


@pytest.mark.parametrize("args, gap, tile", [({}, 1, 7), ({"tile_gap": 2, "tile_jitter": 2}, 2, 5),
                                              ({"tile_gap": 3, "tile_jitter": 1}, 3, 5)])
def test_jigsaw_tiles_never_touch_and_stay_in_their_cells(args: dict, gap: int, tile: int) -> None:
    size, cell, n = 28, 9, 64
    m = _jigsaw(size, **args)
    rows = torch.arange(size).view(1, 1, size, 1).expand(n, 1, size, size).float()
    cols = torch.arange(size).view(1, 1, 1, size).expand(n, 1, size, size).float()
    tiles = m.tiles(torch.cat([rows, cols, rows], 1), _gen(7))  # channel 0 = row index, 1 = column index
    assert tiles.shape == (n, 9, 3, tile, tile)
    top, left = tiles[:, :, 0, 0, 0].long(), tiles[:, :, 1, 0, 0].long()  # (n, 9) top-left pixel of every tile
    grid = torch.arange(9)
    assert ((top >= (grid // 3) * cell) & (top + tile <= (grid // 3 + 1) * cell)).all()
    assert ((left >= (grid % 3) * cell) & (left + tile <= (grid % 3 + 1) * cell)).all()
    across = left.view(n, 3, 3)[:, :, 1:] - (left.view(n, 3, 3)[:, :, :-1] + tile)  # px between side neighbours
    down = top.view(n, 3, 3)[:, 1:, :] - (top.view(n, 3, 3)[:, :-1, :] + tile)      # px between vertical ones
    assert across.min() >= gap and down.min() >= gap  # never touching, never overlapping
    assert across.min() == gap and across.max() > gap  # the gap is the guaranteed floor; placement is random


def test_jigsaw_defaults_at_28_px_keep_a_gap_and_normalise_each_tile() -> None:
    a = _jigsaw().args
    assert (a.gap(9), a.jitter(9), a.tile_size(9), a.tile_norm) == (1, 1, 7, True)
    assert a.gap(5) == 0  # tiny test images (16 px) keep 4 px tiles


@pytest.mark.parametrize("tile_norm", [True, False])
def test_jigsaw_normalises_each_tile_on_its_own(tile_norm: bool) -> None:
    m = _jigsaw(tile_norm=tile_norm)
    seen = []
    m.backbone.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    x = _batch(4, size=28) * 0.5 + torch.linspace(0, 0.5, 4).view(4, 1, 1, 1)  # images of different brightness
    assert torch.isfinite(m(x, _gen()))
    tiles = seen[0]                                                            # (4 * 9, 3, 7, 7) shuffled tiles
    mean, std = tiles.mean(dim=(-2, -1)), tiles.std(dim=(-2, -1))
    if tile_norm:
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0)
        torch.testing.assert_close(std, torch.ones_like(std), atol=1e-4, rtol=0)
    else:  # the dataset normalisation keeps each tile's own brightness: the shortcut the guard removes
        assert mean.abs().max() > 0.5


def test_normalize_tiles_leaves_flat_tiles_finite() -> None:
    from ssl_noise.methods.jigsaw import normalize_tiles

    flat = torch.full((2, 3, 5, 5), 0.7)
    out = normalize_tiles(flat)
    assert torch.isfinite(out).all() and out.abs().max() == 0


# --------------------------------------------------------------------------------------------------------------
# Resume: teacher, centre and the schedules' clock are part of the resumable state
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["byol", "dino"])
def test_resume_reaches_the_same_weights_bitwise(tmp_path, method: str) -> None:
    from safetensors.torch import load_file

    from ssl_noise.pretrain import pretrain

    cfg = resolve(PretrainConfig, dict(dataset="synthetic", subset=32, image_size=16, epochs=2, batch_size=16,
                                       knn_every=100, knn_k=10, warmup_epochs=0.5, method=method,
                                       method_args=SMALL[method]))
    straight = pretrain(cfg, data_root=None, checkpoints=tmp_path / "a", runs=tmp_path / "ra", show_progress=False)
    assert pretrain(cfg, data_root=None, checkpoints=tmp_path / "b", runs=tmp_path / "rb", stop_after=1,
                    show_progress=False) is None
    resumed = pretrain(cfg, data_root=None, checkpoints=tmp_path / "b", runs=tmp_path / "rb", resume=True,
                       show_progress=False)
    a = load_file(tmp_path / "a" / straight / "encoder.safetensors")
    b = load_file(tmp_path / "b" / resumed / "encoder.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
