"""Shared fixtures: the real data folder (tests that need it skip when it is absent) and a tiny synthetic set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ssl_noise.data import ImageDataset
from ssl_noise.data.synthetic import make_synthetic


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder with the real MedMNIST files (``$SSL_NOISE_DATA``, else ``../shared/data``)."""
    root = Path(os.environ.get("SSL_NOISE_DATA", "../shared/data")).resolve()
    if not (root / "bloodmnist.npz").is_file():
        pytest.skip(f"real data not found: {root / 'bloodmnist.npz'} (set SSL_NOISE_DATA)")
    return root


@pytest.fixture
def tiny_synthetic() -> ImageDataset:
    """4 classes, 28×28 RGB, 64/16/32 images: enough to see learning, instant to make."""
    return make_synthetic(n_train=64, n_val=16, n_test=32, num_classes=4, channels=3, size=28, seed=0)


@pytest.fixture(autouse=True, scope="session")
def _image_cache_in_tmp(tmp_path_factory):
    """Decoded folder/CSV images go to a temporary cache, not ./cache of the checkout."""
    import os

    old = os.environ.get("SSL_NOISE_CACHE")
    os.environ["SSL_NOISE_CACHE"] = str(tmp_path_factory.mktemp("image-cache"))
    yield
    if old is None:
        os.environ.pop("SSL_NOISE_CACHE", None)
    else:
        os.environ["SSL_NOISE_CACHE"] = old


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread for the whole suite: the tests run tiny tensors, where a second OpenMP thread only adds
    synchronisation; on a loaded 2-core machine it made the method tests 6x slower (10 s vs 60 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def make_entry():
    """Write a registry entry of random ResNet-18 (cifar stem) weights for 16 px synthetic images: the cheapest
    real encoder for tests of code that consumes the registry. Returns ``make(root, *, channels, image_size, seed,
    dataset, stem)`` -> entry id (``seed`` sets the weights, hence the id)."""
    from ssl_noise import registry
    from ssl_noise.backbones import build_backbone

    def make(root, *, channels: int = 3, image_size: int = 16, seed: int = 0, dataset: str = "synthetic",
             stem: str = "cifar") -> str:
        meta = {"method": "simclr", "method_config": {}, "backbone": "resnet18", "stem": stem, "feat_dim": 512,
                "dataset": dataset, "image_size": image_size, "channels": channels,
                "normalisation": {"mean": [0.5] * channels, "std": [0.25] * channels}, "epochs": 1,
                "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1}, "seed": seed}
        torch.manual_seed(seed)
        return registry.save_entry(root, build_backbone("resnet18", stem=stem, in_channels=channels)[0], meta,
                                   config={})

    return make
