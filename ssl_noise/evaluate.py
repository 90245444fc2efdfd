"""Frozen-feature evaluation of an encoder: weighted k-NN and a linear probe on the clean test split.

``ssl-noise knn`` calls :func:`evaluate_encoder`; it lives here, not in the CLI, so scripts and studies measure an
encoder exactly as the command does, including the random-init baseline every SSL encoder is compared with. The
encoder comes from :func:`ssl_noise.inits.resolve`, like every fine-tuning run's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssl_noise import inits, registry
from ssl_noise.data import load_dataset
from ssl_noise.knn import check_knn_settings, extract_features, knn_accuracy, linear_probe_accuracy


def evaluate_encoder(ref: str, *, dataset: str | None = None, seed: int = 0, k: int = 200, t: float = 0.1,
                     data_root: str | None = None, checkpoints: Path = Path("checkpoints"),
                     device: str = "cpu", like: str | None = None) -> dict[str, Any]:
    """k-NN and linear-probe test accuracy of ``ref`` (registry reference, or ``random`` for the baseline: random
    weights from ``seed``, built like the entry ``like`` when given: its image size, stem and backbone), on
    ``dataset`` (default: what the entry was pretrained on; for the baseline, ``like``'s data, else bloodmnist).

    Returns ``{encoder, dataset, k, t, knn_test_acc, linear_probe_test_acc}``.
    """

    check_knn_settings(k, t)  # what needs no data, before anything loads
    if ref == "random":
        if dataset is None and like:
            dataset = registry.pretrain_data_spec(checkpoints, like)
        dataset = dataset or "bloodmnist"
        contract = inits.like("random", like, dataset=dataset, checkpoints=checkpoints, given={})
        data = load_dataset(dataset, data_root=data_root, size=contract.get("image_size"))
        backbone = contract.get("backbone", "resnet18")
        init = inits.resolve("random", data, checkpoints=checkpoints, seed=seed, backbone=backbone,
                             stem=contract.get("stem"))
        label = f"random-{backbone}-{init.stem}-{data.image_size}px-s{seed}"
    else:
        label = registry.resolve(checkpoints, ref)
        size = registry.read_meta(checkpoints, label)["image_size"]
        data = load_dataset(dataset or registry.pretrain_data_spec(checkpoints, label), data_root=data_root,
                            size=size)
        init = inits.resolve(label, data, checkpoints=checkpoints)
    check_knn_settings(k, t, len(data.train))  # before ~minutes of feature extraction
    encoder, norm = init.encoder.to(device), init.normalisation
    feats = {split: extract_features(encoder, getattr(data, split).images, mean=norm["mean"], std=norm["std"],
                                     device=device) for split in ("train", "test")}
    y_train, y_test = data.train.labels, data.test.labels
    return {"encoder": label, "dataset": data.name, "k": k, "t": t,
            "knn_test_acc": knn_accuracy(feats["train"], y_train, feats["test"], y_test, len(data.class_names),
                                         k=k, t=t),
            "linear_probe_test_acc": linear_probe_accuracy(feats["train"], y_train, feats["test"], y_test)}
