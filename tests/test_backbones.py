"""Backbones: every registered ResNet × stem × channel count builds, runs, and matches plain torchvision."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from ssl_noise import backbones
from ssl_noise.backbones import BACKBONES, build_backbone, default_stem, load_imagenet_backbone
from ssl_noise.errors import UserError

FEAT_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("stem", backbones.STEMS)
@pytest.mark.parametrize("name", BACKBONES.names())
def test_forward_shape_and_plain_torchvision_layout(name: str, stem: str, channels: int) -> None:
    torch.manual_seed(0)
    model, feat_dim = build_backbone(name, stem=stem, in_channels=channels)
    assert feat_dim == FEAT_DIMS.get(name, feat_dim)
    size = 8 if stem == "cifar" else 32  # tiny inputs: the test is about shapes, not accuracy
    with torch.no_grad():
        out = model.eval()(torch.randn(2, channels, size, size))
    assert out.shape == (2, feat_dim)
    assert isinstance(model.fc, nn.Identity)
    assert model.conv1.in_channels == channels
    # The same keys and shapes as the torchvision-only recipe, so registry weights load strictly there.
    with torch.device("meta"):  # shapes only: skip the (slow) weight init
        plain = backbones.plain_torchvision_resnet(name, stem, channels)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", BACKBONES.names())
def test_cifar_stem_layout(name: str) -> None:
    with torch.device("meta"):  # layout only: skip the weight init
        model, _ = build_backbone(name, stem="cifar", in_channels=1)
        imagenet, _ = build_backbone(name, stem="imagenet")
    conv = model.conv1
    assert (conv.kernel_size, conv.stride, conv.padding, conv.bias) == ((3, 3), (1, 1), (1, 1), None)
    assert isinstance(model.maxpool, nn.Identity)
    assert imagenet.conv1.kernel_size == (7, 7) and isinstance(imagenet.maxpool, nn.MaxPool2d)


def test_default_stem() -> None:
    assert [default_stem(s) for s in (28, 32, 63, 64, 128, 224)] == ["cifar"] * 3 + ["imagenet"] * 3


def test_bad_names_list_choices() -> None:
    with pytest.raises(UserError, match="resnet18, resnet34, resnet50"):
        build_backbone("vgg16")
    with pytest.raises(UserError, match="cifar, imagenet"):
        build_backbone("resnet18", stem="tiny")


def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def fail(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)


def test_imagenet_weights_unavailable_offline(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    _offline(monkeypatch, tmp_path)
    with pytest.raises(UserError, match=r"ImageNet weights for resnet18 are not available offline; "
                                        r"put resnet18-f37072fd\.pth in .*torch.hub.checkpoints"):
        load_imagenet_backbone("resnet18")


def test_imagenet_weights_from_cache(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A cached file is used without network; grey conv1 = RGB sum; the cifar stem keeps all but conv1."""
    _offline(monkeypatch, tmp_path)
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / "resnet18-f37072fd.pth")
    ref = reference.state_dict()

    grey, _ = load_imagenet_backbone("resnet18", stem="imagenet", in_channels=1)
    torch.testing.assert_close(grey.conv1.weight, ref["conv1.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(grey.layer4[1].conv2.weight, ref["layer4.1.conv2.weight"])

    cifar, _ = load_imagenet_backbone("resnet18", stem="cifar", in_channels=3)
    assert cifar.conv1.weight.shape == (64, 3, 3, 3)
    for key, value in cifar.state_dict().items():
        if key != "conv1.weight":
            torch.testing.assert_close(value, ref[key])
