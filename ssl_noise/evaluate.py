"""Frozen-feature evaluation of an encoder: weighted k-NN and a linear probe on the clean test split.

``ssl-noise knn`` calls :func:`evaluate_encoder`; it lives here, not in the CLI, so scripts and studies measure an
encoder exactly as the command does, including the random-init baseline every SSL encoder is compared with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssl_noise.errors import UserError


def _random_encoder(dataset: str | None, seed: int, data_root: str | None) -> tuple[Any, str, dict, Any]:
    """Same backbone as the default encoders, random weights: the baseline, normalised by the data's own stats."""
    import torch

    from ssl_noise.backbones import build_backbone, default_stem
    from ssl_noise.data import load_dataset
    from ssl_noise.pretrain import channel_stats

    data = load_dataset(dataset or "bloodmnist", data_root=data_root)
    torch.manual_seed(seed)
    encoder, _ = build_backbone("resnet18", stem=default_stem(data.image_size), in_channels=data.channels)
    mean, std = channel_stats(data.train.images)
    return encoder, f"random-resnet18-s{seed}", {"normalisation": {"mean": mean, "std": std}}, data


def _registry_encoder(ref: str, dataset: str | None, data_root: str | None,
                      checkpoints: Path) -> tuple[Any, str, dict, Any]:
    """A registry entry and the data to evaluate it on (default: what it was pretrained on), at its image size."""
    from ssl_noise import registry
    from ssl_noise.data import load_dataset

    entry_id = registry.resolve(checkpoints, ref)
    encoder, meta = registry.load_encoder(checkpoints, entry_id)
    data = load_dataset(dataset or registry.pretrain_data_spec(checkpoints, entry_id), data_root=data_root,
                        size=meta["image_size"])
    if data.channels != meta["channels"]:
        raise UserError(f"encoder {entry_id} expects {meta['channels']}-channel images; {data.name} has "
                        f"{data.channels}")
    return encoder, entry_id, meta, data


def evaluate_encoder(ref: str, *, dataset: str | None = None, seed: int = 0, k: int = 200, t: float = 0.1,
                     data_root: str | None = None, checkpoints: Path = Path("checkpoints"),
                     device: str = "cpu") -> dict[str, Any]:
    """k-NN and linear-probe test accuracy of ``ref`` (registry reference, or ``random`` for the baseline).

    Returns ``{encoder, dataset, k, t, knn_test_acc, linear_probe_test_acc}``; ``seed`` only seeds the random
    baseline's weights.
    """
    from ssl_noise.knn import extract_features, knn_accuracy, linear_probe_accuracy

    if ref == "random":
        encoder, entry_id, meta, data = _random_encoder(dataset, seed, data_root)
    else:
        encoder, entry_id, meta, data = _registry_encoder(ref, dataset, data_root, checkpoints)
    encoder.to(device)
    norm = meta["normalisation"]
    feats = {split: extract_features(encoder, getattr(data, split).images, mean=norm["mean"], std=norm["std"],
                                     device=device) for split in ("train", "test")}
    y_train, y_test = data.train.labels, data.test.labels
    return {"encoder": entry_id, "dataset": data.name, "k": k, "t": t,
            "knn_test_acc": knn_accuracy(feats["train"], y_train, feats["test"], y_test, len(data.class_names),
                                         k=k, t=t),
            "linear_probe_test_acc": linear_probe_accuracy(feats["train"], y_train, feats["test"], y_test)}
