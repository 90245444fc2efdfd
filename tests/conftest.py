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
def _one_torch_thread():
    """One intra-op thread for the whole suite: the tests run tiny tensors, where a second OpenMP thread only adds
    synchronisation; on a loaded 2-core machine it made the method tests 6x slower (10 s vs 60 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
