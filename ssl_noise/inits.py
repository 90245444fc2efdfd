"""One place turns an ``--init`` (random | imagenet | a registry reference) into an encoder and its input contract.

Fine-tuning, the k-NN evaluation, the detectors and sweeps all compare encoders; they must agree on which entry a
reference means, which image size and normalisation it takes, and the sha256 that identifies it in run ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ssl_noise import backbones, registry
from ssl_noise.config import BUILTIN_INITS
from ssl_noise.data import ImageDataset, channel_stats, dataset_name
from ssl_noise.errors import UserError

#: A random encoder has no recorded normalisation: statistics of at most about this many training images.
STATS_IMAGES = 4096


@dataclass
class Init:
    """An encoder ready to fine-tune, with everything a run records about where it came from."""

    encoder: torch.nn.Module
    feat_dim: int
    kind: str                          # random | imagenet | registry
    id: str
    sha256: str
    method: str
    backbone: str
    stem: str
    pretrain_dataset: Optional[str]
    seed: Optional[int]                # the entry's pretraining seed (None for random and ImageNet weights)
    image_size: int
    channels: int
    normalisation: Dict[str, List[float]]

    def record(self) -> Dict[str, Any]:
        """The ``init`` block of run.json (metrics.json drops ``normalisation``)."""
        return {"kind": self.kind, "id": self.id, "sha256": self.sha256, "method": self.method,
                "backbone": self.backbone, "stem": self.stem, "pretrain_dataset": self.pretrain_dataset,
                "seed": self.seed, "image_size": self.image_size, "channels": self.channels,
                "normalisation": {"mean": list(self.normalisation["mean"]), "std": list(self.normalisation["std"])}}


def image_size(ref: str, dataset: str, *, checkpoints: Path, requested: Optional[int] = None) -> Optional[int]:
    """The size to load ``dataset`` at: ``requested``, else the entry's own size, else None (the data's own: 28 for
    MedMNIST, the files' size for image files). A method name picks among the entries of *this* data (by
    :func:`~ssl_noise.data.dataset_name`); resolving here fails fast (empty registry, unknown reference, no entry
    for this data) before any image is decoded."""
    if ref in BUILTIN_INITS:
        return requested
    entry = registry.resolve(checkpoints, ref, dataset=dataset_name(dataset), spec=dataset)
    return requested or registry.read_meta(checkpoints, entry)["image_size"]


def like(ref: str, entry: Optional[str], *, dataset: str, checkpoints: Path, given: Dict[str, Any]) -> Dict[str, Any]:
    """The ``image_size``, ``stem`` and ``backbone`` that make a random or ImageNet init compare like for like with
    the registry ``entry`` (``--like ENTRY``; a method name means its newest entry for ``dataset``): a baseline
    built for 28 px and the cifar stem against a 64-px imagenet-stem encoder measures the input contract, not the
    pretraining. Empty without ``entry``.

    Raises:
        UserError: ``entry`` with a registry init, or a flag in ``given`` that contradicts the entry.
    """
    if not entry:
        return {}
    if ref not in BUILTIN_INITS:
        raise UserError(f"--like sets the input contract of a random or imagenet init; --init {ref} has its own")
    meta = registry.read_meta(checkpoints, registry.resolve(checkpoints, entry, dataset=dataset_name(dataset)))
    contract = {k: meta[k] for k in ("image_size", "stem", "backbone")}
    for key, value in contract.items():
        if given.get(key) is not None and given[key] != value:
            raise UserError(f"--{key.replace('_', '-')} {given[key]} contradicts --like {meta['id']} "
                            f"({key} {value}); drop one of them")
    return contract


def resolve(ref: str, data: ImageDataset, *, checkpoints: Optional[Path] = None, backbone: str = "resnet18",
            stem: Optional[str] = None, seed: int = 0) -> Init:
    """The encoder ``ref`` names for ``data``: random weights from ``seed``, torchvision's ImageNet weights, or a
    registry entry (sha256 checked, loaded strictly, channels / size / stem checked against the data; only this
    needs ``checkpoints``)."""
    given_stem, stem = stem, stem or backbones.default_stem(data.image_size)
    torch.manual_seed(seed)  # random init, and imagenet's re-initialised cifar conv1
    if ref == "random":
        encoder, feat_dim = backbones.build_backbone(backbone, stem=stem, in_channels=data.channels)
        mean, std = channel_stats(data.train.images[::max(1, len(data.train) // STATS_IMAGES)])
        meta = {"id": f"random-{backbone}", "method": "random"}
    elif ref == "imagenet":
        encoder, feat_dim = backbones.load_imagenet_backbone(backbone, stem=stem, in_channels=data.channels)
        mean, std = _imagenet_stats(data.channels)
        meta = {"id": f"imagenet-{backbone}", "method": "imagenet"}
    else:
        encoder, meta = _load_entry(ref, data, checkpoints, given_stem)
        feat_dim, stem = int(meta["feat_dim"]), meta["stem"]
        mean, std = meta["normalisation"]["mean"], meta["normalisation"]["std"]
    return Init(encoder, feat_dim, ref if ref in BUILTIN_INITS else "registry", meta["id"],
                meta.get("sha256") or encoder_sha256(encoder), meta["method"], meta.get("backbone", backbone), stem,
                meta.get("dataset"), meta.get("seed"),
                data.image_size, data.channels, {"mean": list(mean), "std": list(std)})


def _load_entry(ref: str, data: ImageDataset, checkpoints: Path, given_stem: Optional[str]):
    """A registry entry's encoder and meta.json, checked against the data and an explicit ``--stem``."""
    entry = registry.resolve(checkpoints, ref, dataset=data.name, channels=data.channels)
    encoder, meta = registry.load_encoder(checkpoints, entry)
    if int(meta["channels"]) != data.channels:
        raise UserError(f"encoder {entry} takes {meta['channels']}-channel images but {data.name} has "
                        f"{data.channels}; pretrain on this dataset or pick another encoder")
    if int(meta["image_size"]) != data.image_size:
        raise UserError(f"encoder {entry} takes {meta['image_size']} px images but {data.name} is "
                        f"{data.image_size} px; use --image-size {meta['image_size']} or another encoder")
    if given_stem is not None and given_stem != meta["stem"]:
        raise UserError(f"encoder {entry} has the {meta['stem']} stem; drop --stem {given_stem}")
    return encoder, meta


def _imagenet_stats(channels: int):
    """ImageNet's statistics; for grey images conv1 was summed over RGB, so one averaged statistic per channel."""
    if channels == 3:
        return list(backbones.IMAGENET_MEAN), list(backbones.IMAGENET_STD)
    return [float(np.mean(backbones.IMAGENET_MEAN))] * channels, [float(np.mean(backbones.IMAGENET_STD))] * channels


def encoder_sha256(encoder: torch.nn.Module) -> str:
    """The sha256 a registry entry would record for these weights (random and ImageNet inits get one too)."""
    import safetensors.torch

    return hashlib.sha256(safetensors.torch.save(registry.encoder_state_dict(encoder))).hexdigest()
