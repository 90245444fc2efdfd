"""Backbones: torchvision ResNets with a stem that fits the image size, and nothing else of our own.

torchvision, not a hand-written ResNet, because registry weights promise keys *exactly* those of
``torchvision.models.resnet18()`` minus ``fc``, so anyone can load them with ``strict=True`` into a plain
torchvision model (docs/formats.md, "Registry entry"). :func:`default_stem` picks the stem from the image size.
"""

from __future__ import annotations

import contextlib

import http.client
from pathlib import Path
from typing import Callable, List, Tuple

import torch
import torchvision
from torch import nn

from ssl_noise._registry import Registry
from ssl_noise.errors import UserError

STEMS = ("cifar", "imagenet")

#: name -> torchvision constructor (random init). Register a new ResNet-like backbone here; tests pick it up.
BACKBONES: Registry[Callable[..., torchvision.models.ResNet]] = Registry("backbone")
BACKBONES.register("resnet18")(torchvision.models.resnet18)
BACKBONES.register("resnet34")(torchvision.models.resnet34)
BACKBONES.register("resnet50")(torchvision.models.resnet50)

#: The torchvision weights used by ``--init imagenet`` (the classic V1 recipes, the ones most papers used).
IMAGENET_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
}

#: Normalisation the ImageNet weights were trained with (torchvision's transforms for these weights).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def list_backbones() -> List[str]:
    """Registered backbone names, sorted.

    >>> list_backbones()
    ['resnet18', 'resnet34', 'resnet50']
    """
    return BACKBONES.names()


def default_stem(image_size: int) -> str:
    """The stem that suits ``image_size``: ``"cifar"`` below 64 px, else ``"imagenet"``.

    >>> default_stem(28), default_stem(64), default_stem(224)
    ('cifar', 'imagenet', 'imagenet')
    """
    return "cifar" if image_size < 64 else "imagenet"


def build_backbone(name: str, *, stem: str = "cifar", in_channels: int = 3) -> Tuple[nn.Module, int]:
    """Build a randomly initialised torchvision ResNet without its classifier.

    The only surgery (repeated with torchvision calls alone in :func:`plain_torchvision_resnet`): ``fc`` becomes
    ``nn.Identity()``, so ``forward`` returns pooled features (heads live in the methods); ``stem="cifar"``
    (MedMNIST's ResNet (28) layout) makes ``conv1`` a 3×3 stride-1 conv and drops the max-pool, since the ImageNet
    stem shrinks a 28 px image to 7 px before the first block; ``conv1`` takes ``in_channels``.

    Args:
        name: a key of :data:`BACKBONES` (``resnet18``, ``resnet34``, ``resnet50``).
        stem: ``"cifar"`` (3×3 stride-1 conv1, no max-pool) or ``"imagenet"`` (torchvision's 7×7/2 + max-pool).
        in_channels: input channels (1 for grey, 3 for RGB, anything else works too).

    Returns:
        ``(model, feat_dim)``; ``model(x)`` maps ``(B, in_channels, H, W)`` to ``(B, feat_dim)``.

    Raises:
        UserError: unknown name or stem, or ``in_channels < 1``.

    >>> model, d = build_backbone("resnet50", stem="imagenet")
    >>> d
    2048
    """
    check_stem(stem)
    if in_channels < 1:
        raise UserError(f"in_channels must be at least 1, got {in_channels}")
    model = BACKBONES.get_or_fail(name)()
    feat_dim = model.fc.in_features
    model.fc = nn.Identity()
    if stem == "cifar":
        model.conv1 = _init_conv(nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False))
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = _init_conv(nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False))
    return model, feat_dim


def padding_only_convs(backbone: nn.Module, size: int, in_channels: int) -> List[str]:
    """Names of the backbone's strided convolutions that see a 1x1 map at input side ``size``: all their taps but the
    centre touch only padding. On CPU the bf16 backward-weights kernel (oneDNN) at times leaves those taps'
    gradients uninitialised (up to 4e37 or NaN, ``benchmarks/bf16_padding_taps.py``); fp32 gives exactly 0."""
    found: List[str] = []

    def note_1x1(name: str):
        def hook(module: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> None:
            if inputs[0].shape[-2:] == (1, 1):
                found.append(name)
        return hook

    hooks = [m.register_forward_pre_hook(note_1x1(name)) for name, m in backbone.named_modules()
             if isinstance(m, nn.Conv2d) and m.stride != (1, 1) and m.kernel_size != (1, 1) and m.padding != (0, 0)]
    was_training = backbone.training
    try:
        with torch.no_grad():
            backbone.eval()(torch.zeros(1, in_channels, size, size))
    finally:
        backbone.train(was_training)
        for h in hooks:
            h.remove()
    return found


def plain_torchvision_resnet(name: str, stem: str, in_channels: int) -> nn.Module:
    """The same architecture as :func:`build_backbone`, written with torchvision calls only.

    This is the recipe for people who do not use ssl-noise (and what the tests use to prove that registry weights
    load with ``strict=True`` into a plain torchvision model); ``ssl-noise registry export`` prints it.

    >>> model = plain_torchvision_resnet("resnet18", "cifar", 1)
    >>> model.conv1
    Conv2d(1, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
    """
    model = torchvision.models.get_model(name, weights=None)
    model.fc = nn.Identity()
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def load_imagenet_backbone(name: str, *, stem: str = "imagenet", in_channels: int = 3) -> Tuple[nn.Module, int]:
    """A backbone initialised from torchvision's ImageNet weights (the ``--init imagenet`` baseline).

    What is kept:

    * ``stem="imagenet"``, 3 channels: every weight except ``fc``.
    * ``stem="imagenet"``, other channel counts: ``conv1`` is adapted. For 1 channel its weights are *summed*
      over the RGB axis: a grey image ``g`` fed to the summed filter gives exactly the response of the RGB network
      to the grey image repeated three times (``sum_c W_c * g``), so the pretrained features are preserved. For
      ``C`` channels the mean filter is repeated ``C`` times and scaled by ``3 / C`` (the same rule, generalised;
      for ``C = 1`` it is the sum).
    * ``stem="cifar"``: every weight except ``conv1``, which is a freshly initialised 3×3 conv (a 7×7/2 filter
      has no faithful 3×3/1 counterpart); ``maxpool`` has no weights.

    Torchvision's ``IMAGENET1K_V1`` file is read from the torch hub cache (``$TORCH_HOME/hub/checkpoints``) or
    downloaded there. Normalise inputs with :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`.

    Raises:
        UserError: unknown name, or the weights are neither cached nor downloadable (offline machine).
    """
    model, feat_dim = build_backbone(name, stem=stem, in_channels=in_channels)
    state = {k: v for k, v in _imagenet_state_dict(name).items() if not k.startswith("fc.")}
    if stem == "cifar":
        state = {k: v for k, v in state.items() if not k.startswith("conv1.")}
    elif in_channels != 3:
        rgb = state["conv1.weight"]  # (64, 3, 7, 7)
        state["conv1.weight"] = rgb.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (3.0 / in_channels)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # The only key allowed to stay at its random init is the re-initialised cifar conv1 (MoCo lincls idiom).
    assert not unexpected and set(missing) == ({"conv1.weight"} if stem == "cifar" else set()), (missing, unexpected)
    return model, feat_dim


def _imagenet_state_dict(name: str) -> dict:
    """torchvision's ImageNet state_dict for ``name``, turning network failures into one actionable line."""
    BACKBONES.get_or_fail(name)
    weights = torchvision.models.get_weight(IMAGENET_WEIGHTS[name])
    file_name = Path(weights.url).name
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    absent = [p for p in (cache, *cache.parents) if not p.exists()]  # torch.hub creates them before downloading
    try:
        return torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True, weights_only=True)
    except (OSError, http.client.HTTPException) as e:
        for folder in absent:  # deepest first; only the empty folders this call created
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise UserError(
            f"ImageNet weights for {name} are not available offline; put {file_name} in {cache} "
            f"(download it from {weights.url} on a machine with network access) [{type(e).__name__}: {e}]"
        ) from e
    except RuntimeError as e:  # a truncated cached file or a hash mismatch
        raise UserError(f"ImageNet weights file {cache / file_name} cannot be read ({e}); delete it and retry") from e


def _init_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """Initialise a rebuilt conv exactly as torchvision's ResNet initialises its convs."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def check_stem(stem: str) -> None:
    """Raise :class:`UserError` listing the choices unless ``stem`` is one of :data:`STEMS`.

    >>> check_stem("cifar")
    """
    if stem not in STEMS:
        raise UserError(f"unknown stem {stem!r}; choose from: {', '.join(STEMS)}")
