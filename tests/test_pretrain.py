"""The pretraining loop: every method writes a strictly loadable entry, resume is exact, DDP gathers negatives."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from ssl_noise.cli import main
from ssl_noise.config import PretrainConfig, resolve
from ssl_noise.methods import METHODS
from ssl_noise.pretrain import pretrain, work_dir

TINY = dict(dataset="synthetic", subset=32, image_size=16, epochs=2, batch_size=16, knn_every=100, knn_k=10,
            warmup_epochs=0.5)


def _cfg(**overrides) -> PretrainConfig:
    return resolve(PretrainConfig, TINY, overrides)


def _plain_resnet18(meta: dict) -> torch.nn.Module:
    """A torchvision ResNet-18 set up from meta.json alone: no ssl-noise code involved."""
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    if meta["stem"] == "cifar":
        model.conv1 = torch.nn.Conv2d(meta["channels"], 64, 3, 1, 1, bias=False)
        model.maxpool = torch.nn.Identity()
    return model


@pytest.mark.parametrize("method", METHODS.names())
def test_each_method_writes_a_strictly_loadable_entry(tmp_path, method):
    # jigsaw's 4 px tiles at 16 px reach 1x1 maps: bf16 on CPU is refused there (the test below), fp32 trains
    precision = {"precision": "fp32"} if method == "jigsaw" else {}
    entry = pretrain(_cfg(method=method, epochs=1, **precision), data_root=None, checkpoints=tmp_path / "ck",
                     runs=tmp_path / "runs", show_progress=False)
    folder = tmp_path / "ck" / entry
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["method"] == method and meta["seed"] == 0 and meta["epochs"] == 1
    assert meta["metrics"]["knn_acc"] is not None  # the monitor always runs at the end
    _plain_resnet18(meta).load_state_dict(load_file(folder / "encoder.safetensors"), strict=True)
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert {"epoch", "loss", "lr", "samples_per_s", "knn_acc"} <= set(log[0])


@pytest.mark.parametrize("method", ["simclr", "moco"])  # moco: the queue and key encoder must resume too
def test_resume_reaches_the_same_weights_bitwise(tmp_path, method):
    cfg = _cfg(method=method)
    straight = pretrain(cfg, data_root=None, checkpoints=tmp_path / "a", runs=tmp_path / "runs_a",
                        show_progress=False)
    assert pretrain(cfg, data_root=None, checkpoints=tmp_path / "b", runs=tmp_path / "runs_b", stop_after=1,
                    show_progress=False) is None
    assert (work_dir(tmp_path / "runs_b", cfg) / "state.json").exists()
    resumed = pretrain(cfg, data_root=None, checkpoints=tmp_path / "b", runs=tmp_path / "runs_b", resume=True,
                       show_progress=False)
    a = load_file(tmp_path / "a" / straight / "encoder.safetensors")
    b = load_file(tmp_path / "b" / resumed / "encoder.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert straight == resumed  # the id ends in the weights' sha256, so identical weights give the same id



def test_resume_without_the_original_flags_names_the_command_that_resumes(tmp_path, capsys):
    """README: `pretrain --method simclr --resume` without the interrupted run's flags says which command resumes
    it, and that command (its own config.yaml as the recipe) continues to the same weights."""
    from ssl_noise.cli import main

    cfg = _cfg()
    straight = pretrain(cfg, data_root=None, checkpoints=tmp_path / "a", runs=tmp_path / "runs", show_progress=False)
    pretrain(cfg, data_root=None, checkpoints=tmp_path / "ck", runs=tmp_path / "runs", stop_after=1,
             show_progress=False)
    base = ["--checkpoints", str(tmp_path / "ck"), "--runs", str(tmp_path / "runs"), "pretrain"]
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--method", "simclr", "--resume"])
    err = capsys.readouterr().err
    hint = f"ssl-noise pretrain --recipe {work_dir(tmp_path / 'runs', cfg) / 'config.yaml'} --resume"
    assert exit_info.value.code == 2 and "nothing to resume" in err and hint in err
    with pytest.raises(SystemExit) as exit_info:
        main([*base, *hint.split()[2:], "--quiet"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == straight


@pytest.mark.parametrize("spec, label", [("bloodmnist", "bloodmnist"),
                                         ("../data/pneumoniamnist_balanced.npz", "pneumoniamnist_balanced"),
                                         ("folder:/srv/my cells", "my_cells"), ("synthetic:n_train=64", "synthetic")])
def test_work_folder_is_one_folder_under_runs_for_every_data_spec(tmp_path, spec, label):
    """A file spec used to go into the folder name as it was typed, so ``../x.npz`` nested the work folder under
    ``runs/pretrain/simclr-..``; the resumable state must live in one folder named after the data set."""
    work = work_dir(tmp_path, _cfg(dataset=spec))
    assert work.parent == tmp_path / "pretrain" and work.name.startswith(f"simclr-{label}-s0-")

def test_resume_without_state_is_a_user_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--checkpoints", str(tmp_path / "ck"), "--runs", str(tmp_path / "runs"), "pretrain",
              "--dataset", "synthetic", "--epochs", "1", "--batch-size", "8", "--resume", "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: nothing to resume")


@pytest.mark.parametrize("args, message", [
    (["--method", "swav"], "unknown method 'swav'"),
    (["--backbone", "vgg16"], "unknown backbone 'vgg16'"),
    (["--batch-size", "100000"], "larger than"),
    (["--set", "epochz=3"], "unknown config key 'epochz'"),
    (["--set", "epochs=three"], "expects an integer"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(["--checkpoints", str(tmp_path / "ck"), "--runs", str(tmp_path / "runs"), "pretrain",
              "--dataset", "synthetic", "--epochs", "1", "--quiet", *args])
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())


def test_recipe_with_unknown_keys_is_refused(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 1\nlearning_rate: 0.1\n")
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--dataset", "synthetic", "--recipe", str(recipe), "--quiet"])
    assert e.value.code == 2 and "learning_rate" in capsys.readouterr().err


def test_jigsaw_on_too_small_images_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--checkpoints", str(tmp_path / "ck"), "pretrain", "--method", "jigsaw", "--dataset", "synthetic",
              "--image-size", "12", "--epochs", "1", "--quiet"])
    assert e.value.code == 2 and "jigsaw" in capsys.readouterr().err


def test_inputs_that_reach_1x1_maps_are_found_per_stem() -> None:
    """The convs whose taps see only padding on a 7 px jigsaw tile: where bf16's garbage gradients went (the NaN
    weights of two ImageNet-stem jigsaw runs were exactly these two); the cifar stem keeps 2x2 maps there."""
    from ssl_noise.backbones import build_backbone, padding_only_convs

    imagenet, _ = build_backbone("resnet18", stem="imagenet", in_channels=3)
    cifar, _ = build_backbone("resnet18", stem="cifar", in_channels=3)
    assert padding_only_convs(imagenet, 7, 3) == ["layer3.0.conv1", "layer4.0.conv1"]
    assert padding_only_convs(imagenet, 12, 3) == ["layer4.0.conv1"]       # DINO's 12 px local views
    assert padding_only_convs(imagenet, 28, 3) == padding_only_convs(cifar, 7, 3) == []


@pytest.mark.parametrize("method,args", [("jigsaw", []), ("dino", ["--set", "method_args.n_local_views=2"])])
def test_bf16_on_cpu_is_refused_where_small_inputs_reach_1x1_maps(tmp_path, capsys, method, args):
    base = ["--checkpoints", str(tmp_path / "ck"), "--runs", str(tmp_path / "runs"), "pretrain", "--method", method,
            "--dataset", "synthetic", "--subset", "32", "--image-size", "28", "--stem", "imagenet", "--epochs", "1",
            "--batch-size", "16", "--quiet", *args]
    with pytest.raises(SystemExit) as e:
        main(base)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "precision=fp32" in err and "layer4.0.conv1" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "ck").exists()  # nothing half-written
    with pytest.raises(SystemExit) as e:
        main([*base, "--set", "precision=fp32", "--set", "knn_every=100"])          # fp32 trains
    assert e.value.code == 0
    assert len(list((tmp_path / "ck").glob(f"{method}-*"))) == 1


# ---------------------------------------------------------------- DDP on CPU (gloo, two processes)

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, root: str, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    from lightly.loss import NTXentLoss

    # Negatives are gathered: the processes' losses on their halves average to the one-process whole-batch loss
    # (each query sees all 2B - 2 negatives); without gathering they do not.
    gen = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(8, 16, generator=gen), torch.randn(8, 16, generator=gen)
    half = slice(rank * 4, rank * 4 + 4)
    gathered = NTXentLoss(gather_distributed=True)(z0[half], z1[half])
    local = NTXentLoss()(z0[half], z1[half])
    whole = NTXentLoss()(z0, z1)
    entry = pretrain(_cfg(method="simclr", epochs=1), data_root=None, checkpoints=os.path.join(root, "ck"),
                     runs=os.path.join(root, "runs"), show_progress=False)
    results[rank] = {"gathered": float(gathered), "local": float(local), "whole": float(whole), "entry": entry}
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_on_cpu_gathers_negatives_and_writes_one_entry(tmp_path):
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path), results), nprocs=2, join=True)
        results = dict(results)
    whole = results[0]["whole"]
    assert (results[0]["gathered"] + results[1]["gathered"]) / 2 == pytest.approx(whole, rel=1e-5)
    assert (results[0]["local"] + results[1]["local"]) / 2 != pytest.approx(whole, rel=1e-3)
    assert results[1]["entry"] is None and results[0]["entry"]
    entries = [p for p in (tmp_path / "ck").iterdir() if not p.name.startswith(".")]
    assert [p.name for p in entries] == [results[0]["entry"]]
    meta = json.loads((entries[0] / "meta.json").read_text())
    assert meta["world_size"] == 2
