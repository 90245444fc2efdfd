"""The memory-mapped decode cache of folder and CSV data (ssl_noise/data/cache.py): decoded once, keyed by the files
and the size, written atomically, and a memory map trains exactly as the same images in RAM."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_noise.config import FinetuneConfig, resolve
from ssl_noise.data import cache, files, load_dataset
from ssl_noise.data.dataset import channel_stats
from ssl_noise.errors import UserError
from ssl_noise.finetune.inputs import Inputs


@pytest.fixture(autouse=True)
def cache_root(monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("SSL_NOISE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "images"


def make_folder(root: Path, per_class: int = 12, colour: bool = True) -> Path:
    """Two classes of random 20x20 images (RGB, or gray with ``colour=False``)."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (20, 20, 3) if colour else (20, 20)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def count_decodes(monkeypatch) -> list:
    calls: list = []
    real = files._decode_one

    def counted(path, size):
        calls.append(path)
        return real(path, size)

    monkeypatch.setattr(files, "_decode_one", counted)
    return calls


def test_second_load_is_a_cache_hit_on_a_memory_map(tmp_path, cache_root, monkeypatch) -> None:
    folder = make_folder(tmp_path / "set")
    calls = count_decodes(monkeypatch)
    first = load_dataset(f"folder:{folder}", size=16)
    assert len(calls) == 24 and len(list(cache_root.glob("images-*-16px.npy"))) == 1
    second = load_dataset(f"folder:{folder}", size=16)
    assert len(calls) == 24  # no decode the second time
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(first.splits[split].images, second.splits[split].images)
    base = second.train.images
    while base.base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)  # file-backed, not a copy in RAM
    (cached,) = cache_root.glob("*.npy")
    assert oct(cached.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    # the cached pixels are what PIL decodes
    path = sorted((folder / "a").glob("*.png"))[0]
    direct, _ = files._decode_one(path, 16)
    every = np.load(cached)
    assert any(np.array_equal(direct, image) for image in every)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_key_follows_content_and_size(tmp_path, monkeypatch) -> None:
    folder = make_folder(tmp_path / "set", per_class=4, colour=False)
    paths = sorted(folder.rglob("*.png"))
    key = cache.cache_key(paths, 16)
    assert cache.cache_key(paths, 16) == key and cache.cache_key(paths, 24) != key
    assert cache.cache_key(paths[:-1], 16) != key
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(paths[0])  # edited in place
    stamp = time.time() + 5
    os.utime(paths[0], (stamp, stamp))
    assert cache.cache_key(paths, 16) != key
    # an edited file is decoded afresh: the loaded pixels follow the file
    calls = count_decodes(monkeypatch)
    data = load_dataset(f"folder:{folder}", size=16)
    assert len(calls) == 8 and data.channels == 1
    assert load_dataset(f"folder:{folder}", size=12).image_size == 12 and len(calls) == 16
    with pytest.raises(UserError, match="cannot read image"):
        cache.cache_key([tmp_path / "gone.png"], 16)


def test_atomic_write_ignores_and_cleans_leftover_temps(tmp_path, cache_root, monkeypatch) -> None:
    folder = make_folder(tmp_path / "set", per_class=4)
    cache_root.mkdir(parents=True)
    stale, fresh = cache_root / ".images-dead.npy.x1.tmp", cache_root / ".images-live.npy.x2.tmp"
    for tmp in (stale, fresh):
        tmp.write_bytes(b"half a cache")
    old = time.time() - 2 * cache.STALE_TEMP_S
    os.utime(stale, (old, old))
    # A decode that fails half-way leaves no cache and no temporary file behind.
    real = files._decode_one
    seen: list = []

    def fails_late(path, size):
        seen.append(path)
        if len(seen) > 5:
            raise UserError(f"cannot read image {path}: broken")
        return real(path, size)

    monkeypatch.setattr(files, "_decode_one", fails_late)
    with pytest.raises(UserError, match="broken"):
        load_dataset(f"folder:{folder}", size=16)
    assert sorted(p.name for p in cache_root.iterdir()) == [fresh.name]  # stale one removed, live one kept
    monkeypatch.setattr(files, "_decode_one", real)
    data = load_dataset(f"folder:{folder}", size=16)
    assert len(list(cache_root.glob("images-*.npy"))) == 1 and len(data.train) + len(data.val) + len(data.test) == 8


def test_a_truncated_cache_file_is_decoded_again(tmp_path, cache_root, monkeypatch) -> None:
    folder = make_folder(tmp_path / "set", per_class=4)
    load_dataset(f"folder:{folder}", size=16)
    (cached,) = cache_root.glob("*.npy")
    cached.write_bytes(cached.read_bytes()[:200])
    calls = count_decodes(monkeypatch)
    assert load_dataset(f"folder:{folder}", size=16).train.images.shape[1:] == (16, 16, 3) and len(calls) == 8


def test_unwritable_cache_decodes_into_ram(tmp_path, monkeypatch) -> None:
    folder = make_folder(tmp_path / "set", per_class=4)

    def refuse(*args, **kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(cache.io, "atomic_path", refuse)
    data = load_dataset(f"folder:{folder}", size=16)
    assert data.train.images.shape[1:] == (16, 16, 3) and not isinstance(data.train.images.base, np.memmap)


def test_memory_map_gives_the_same_batches_as_ram(tmp_path) -> None:
    folder = make_folder(tmp_path / "set", per_class=16)
    mapped = load_dataset(f"csv:{_manifest(folder)}", size=16).train.images
    in_ram = np.array(mapped)  # the same pixels, a plain copy
    assert channel_stats(mapped) == channel_stats(in_ram)
    cfg = resolve(FinetuneConfig, {"dataset": "synthetic", "batch_size": 8, "image_size": 16, "precision": "fp32"})
    inputs = Inputs(cfg, {"mean": [0.5] * 3, "std": [0.25] * 3}, "cpu")
    rows, labels = torch.arange(len(mapped)), torch.zeros(len(mapped), dtype=torch.int64)
    a = list(inputs.batches(torch.from_numpy(mapped), labels, rows, augment=True, shuffle=True, epoch=1))
    b = list(inputs.batches(torch.from_numpy(in_ram), labels, rows, augment=True, shuffle=True, epoch=1))
    assert len(a) == len(b) > 1
    for x, y in zip(a, b):
        assert torch.equal(x.index, y.index) and torch.equal(x.x, y.x)


def _manifest(folder: Path) -> Path:
    lines = ["path,label"] + [f"{p.relative_to(folder)},{p.parent.name}" for p in sorted(folder.rglob("*.png"))]
    path = folder / "labels.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _rss_file_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


def test_channel_stats_leaves_a_memory_map_out_of_the_resident_set(tmp_path) -> None:
    if not Path("/proc/self/status").is_file():
        pytest.skip("Linux only")
    path = tmp_path / "big.npy"
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(400, 128, 128, 3))  # 19.7 MB
    array[:] = np.arange(128, dtype=np.uint8)[None, None, :, None]
    array.flush()
    del array
    mapped = np.load(path, mmap_mode="c").view(np.ndarray)
    before = _rss_file_kb()
    stats = channel_stats(mapped[10:390])
    assert _rss_file_kb() - before < 4000  # without releasing its pages a full pass maps all 18.7 MB
    assert stats == channel_stats(np.array(mapped[10:390]))
    int(mapped[:200].sum())
    assert _rss_file_kb() - before > 8000  # (the measurement sees a pass that keeps its pages)
