"""Decode image files once into a uint8 ``.npy`` on disk and train from its memory map, so sets larger than RAM train.

Decoding PNG or JPEG costs about a millisecond an image on every run, and a set decoded into RAM must fit there.
Here a set is decoded once, in parallel threads (PIL releases the GIL while it decodes and resizes), into
``images-<key>.npy``; later loads open it with ``np.load(mmap_mode="c")``. A batch stays an index lookup into that
map; the kernel's page cache keeps the pages in use in memory (as fast as RAM once warm) and drops cold ones, so
a process holds only what it touches. Copy-on-write mode gives a writable array (``torch.from_numpy`` takes it
without a warning or a copy); nothing writes to it.

Where: ``$SSL_NOISE_CACHE/images`` when that variable is set, else ``cache/images`` in the working directory
(git-ignored, beside ``runs/`` and ``checkpoints/``); delete it to reclaim the space. The key hashes every file's
path, byte size and modification time with the image size, so an edited, added or removed file or another
``--image-size`` decodes afresh. Files are written to a temporary name and renamed, so a killed run leaves no
half-written cache (its temporary file is ignored, and removed once stale); an unwritable folder decodes into RAM.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Collection, Iterator, Optional, Sequence, Tuple

import numpy as np

from ssl_noise import io, progress
from ssl_noise.errors import UserError

CACHE_VERSION = 1
STALE_TEMP_S = 15 * 60       # a writer touches its temporary file every chunk; one this old belongs to a dead run
CHUNK = 256                  # images decoded per block: bounds the memory held between decoding and writing

#: ``decode(path, size) -> (RGB uint8 size×size×3 array, whether the file is gray)``.
Decoder = Callable[[Path, int], Tuple[np.ndarray, bool]]


def cache_dir() -> Path:
    """``$SSL_NOISE_CACHE/images`` when set, else ``cache/images`` under the working directory."""
    env = os.environ.get("SSL_NOISE_CACHE")
    return Path(env).expanduser() / "images" if env else Path("cache") / "images"


def cache_key(paths: Sequence[Path], size: int) -> str:
    """Hash of the image size and every file's resolved path, byte size and mtime (ns), in order."""
    h = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "size": int(size)}).encode())
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as e:
            raise UserError(f"cannot read image {path}: {e.strerror or e}") from None
        h.update(f"{Path(path).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def load_images(paths: Sequence[Path], size: int, decode: Decoder, gray_modes: Collection[str], *,
                folder: Optional[Path] = None, workers: Optional[int] = None) -> np.ndarray:
    """The decoded ``N×size×size×C`` uint8 images of ``paths`` (C = 1 when every file is gray), memory-mapped
    from the cache: decoded now when the cache has no entry for these files at this size.

    Raises:
        UserError: A missing or unreadable file (nothing is left in the cache).
    """
    folder = cache_dir() if folder is None else Path(folder)
    path = folder / f"images-{cache_key(paths, size)}-{size}px.npy"
    cached = _open(path, len(paths), size)
    if cached is not None:
        return cached
    channels = 1 if _all_gray(paths, gray_modes, workers) else 3
    shape = (len(paths), size, size, channels)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(folder)
        with io.atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
                for block in _decoded_blocks(paths, size, decode, channels, workers):
                    f.write(block.tobytes())  # plain writes: the pages go to the page cache, not this process
    except PermissionError:  # a read-only place: decode into RAM as before
        return np.concatenate(list(_decoded_blocks(paths, size, decode, channels, workers))).reshape(shape)
    cached = _open(path, len(paths), size)
    assert cached is not None, path
    return cached


def release_pages(array: np.ndarray) -> None:
    """Unmap ``array``'s pages from this process when it is a contiguous view of a cache map (else do nothing).

    After a pass over a whole set (channel statistics) the data then stays in the page cache, shared and
    reclaimable, instead of counting in this process's resident set; the next access maps it again. Safe because
    nothing writes to the copy-on-write map (a private change would be dropped).
    """
    base = array
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    handle = getattr(base, "_mmap", None)
    if handle is None or not hasattr(handle, "madvise") or not array.flags.c_contiguous or not array.nbytes:
        return
    head = base.offset % mmap.ALLOCATIONGRANULARITY  # np.memmap maps from the aligned offset below its data
    start = array.__array_interface__["data"][0] - base.__array_interface__["data"][0] + head
    page = start - start % mmap.PAGESIZE
    handle.madvise(mmap.MADV_DONTNEED, page, start + array.nbytes - page)


def remove_stale_temps(folder: Path) -> None:
    """Remove temporary cache files that no writer has touched for ``STALE_TEMP_S`` (their run was killed)."""
    now = time.time()
    for tmp in folder.glob(".images-*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TEMP_S:
                tmp.unlink()
        except FileNotFoundError:  # another process finished or removed it
            pass


def _open(path: Path, n: int, size: int) -> Optional[np.ndarray]:
    """The cached array as a plain ndarray over a copy-on-write map, or None when absent or not of this shape."""
    if not path.is_file():
        return None
    try:
        array = np.load(path, mmap_mode="c")
    except (ValueError, OSError):
        return None
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[:3] != (n, size, size):
        return None
    return array.view(np.ndarray)


def _workers(workers: Optional[int]) -> int:
    return workers or min(8, os.cpu_count() or 1)


def _mode(args: Tuple[Path, Collection[str]]) -> bool:
    """Whether the file's header says gray; an unreadable file counts as colour (decoding names it)."""
    from PIL import Image

    path, gray_modes = args
    try:
        with Image.open(path) as img:
            return img.mode in gray_modes
    except Exception:  # noqa: BLE001 - the decoder raises the UserError that names the file
        return False


def _all_gray(paths: Sequence[Path], gray_modes: Collection[str], workers: Optional[int]) -> bool:
    """Read only the files' headers: the channel count must be known before the first block is written."""
    with ThreadPoolExecutor(_workers(workers)) as pool:
        return all(pool.map(_mode, ((p, gray_modes) for p in paths)))


def _decoded_blocks(paths: Sequence[Path], size: int, decode: Decoder, channels: int,
                    workers: Optional[int]) -> Iterator[np.ndarray]:
    """``CHUNK``-image blocks in file order, decoded by a thread pool, with a progress bar on a terminal."""
    with ThreadPoolExecutor(_workers(workers)) as pool, \
            progress.bar(total=len(paths), desc="decoding images", unit="img", leave=False,
                         enabled=len(paths) >= CHUNK) as bar:
        for start in range(0, len(paths), CHUNK):
            block = np.empty((len(paths[start:start + CHUNK]), size, size, channels), np.uint8)
            for i, (rgb, _) in enumerate(pool.map(lambda p: decode(p, size), paths[start:start + CHUNK])):
                block[i] = rgb[..., :channels]
            bar.update(len(block))
            yield block
