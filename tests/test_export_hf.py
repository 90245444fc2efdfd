"""registry export --format hf: model.safetensors + config.json + model card, loadable strictly into plain
torchvision and into timm (with the recorded stem surgery for the cifar stem), giving the entry's own features."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from ssl_noise import registry
from ssl_noise.backbones import build_backbone
from ssl_noise.cli import main

timm = pytest.importorskip("timm")


def _imagenet_entry(root) -> str:
    meta = {"method": "moco", "method_config": {"temperature": 0.2}, "backbone": "resnet18", "stem": "imagenet",
            "feat_dim": 512, "dataset": "bloodmnist", "image_size": 64, "channels": 3,
            "normalisation": {"mean": [0.5] * 3, "std": [0.25] * 3}, "epochs": 3, "batch_size": 32,
            "optimizer": {"name": "sgd", "lr": 0.06, "momentum": 0.9, "weight_decay": 5e-4, "warmup_epochs": 1},
            "seed": 7, "metrics": {"knn_acc": 0.8125, "knn_k": 200, "knn_t": 0.1}}
    torch.manual_seed(1)
    return registry.save_entry(root, build_backbone("resnet18", stem="imagenet", in_channels=3)[0], meta, config={})


def _export(tmp_path, capsys, entry: str):
    out = tmp_path / "hf"
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoints", str(tmp_path / "ck"), "registry", "export", entry, "--format", "hf", "--out", str(out)])
    assert exit_info.value.code == 0, capsys.readouterr().err
    return out


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_export_loads_into_torchvision_and_timm_with_the_same_features(tmp_path, capsys, make_entry, stem) -> None:
    ck = tmp_path / "ck"
    entry = make_entry(ck, channels=1) if stem == "cifar" else _imagenet_entry(ck)
    out = _export(tmp_path, capsys, entry)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] == modes["README.md"]  # not safetensors' own 0600
    config = json.loads((out / "config.json").read_text())
    ours, meta = registry.load_encoder(ck, entry)
    c, size = meta["channels"], meta["image_size"]
    assert config["architecture"] == "resnet18" and config["model_args"] == {"in_chans": c}
    assert config["pretrained_cfg"]["input_size"] == [c, size, size]
    assert config["pretrained_cfg"]["mean"] == meta["normalisation"]["mean"]
    assert config["ssl_noise"]["stem"] == stem and config["ssl_noise"]["sha256"] == meta["sha256"]
    state = load_file(out / "model.safetensors")

    plain = torchvision.models.resnet18()
    plain.fc = torch.nn.Identity()
    t = timm.create_model("resnet18", pretrained=False, num_classes=0, in_chans=c)
    if config["ssl_noise"]["stem_surgery"]:  # timm and torchvision only have the ImageNet stem
        for model in (plain, t):
            model.conv1 = torch.nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = torch.nn.Identity()
    elif c != 3:
        plain.conv1 = torch.nn.Conv2d(c, 64, kernel_size=7, stride=2, padding=3, bias=False)
    plain.load_state_dict(state, strict=True)
    t.load_state_dict(state, strict=True)
    x = torch.rand(2, c, size, size)
    with torch.no_grad():
        expected = ours.eval()(x)
        assert torch.allclose(plain.eval()(x), expected, atol=1e-5)
        assert torch.allclose(t.eval()(x), expected, atol=1e-5)
    if stem == "imagenet":  # timm alone, from the exported file and config, as from the hub
        hub = timm.create_model("resnet18", pretrained=True, num_classes=0, in_chans=c,
                                pretrained_cfg_overlay={**config["pretrained_cfg"],
                                                        "file": str(out / "model.safetensors")})
        with torch.no_grad():
            assert torch.allclose(hub.eval()(x), expected, atol=1e-5)
        card = (out / "README.md").read_text()  # the card says what the hub snippet needs, and why
        assert "pretrained=True, num_classes=0)" in card and "random weights" in card


def test_model_card_records_method_data_schedule_knn_seed_and_licence(tmp_path, capsys) -> None:
    out = _export(tmp_path, capsys, _imagenet_entry(tmp_path / "ck"))
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: timm\n")
    for text in ("**moco**", '"temperature": 0.2', "**bloodmnist**", "CC BY 4.0", "3 epochs, batch 32",
                 "lr 0.06", "0.8125", "k=200", "pretraining seed 7", "mean [0.5, 0.5, 0.5]"):
        assert text in card, text
    with pytest.raises(SystemExit) as exit_info:  # never over an existing folder
        main(["--checkpoints", str(tmp_path / "ck"), "registry", "export", "moco", "--format", "hf", "--out",
              str(out)])
    assert exit_info.value.code == 2 and "already exists" in capsys.readouterr().err
