"""Small file utilities shared by the data layer, the registry and the run folders.

Everything that writes an artefact goes through here so that "nothing half-written" holds everywhere: files are
written to a temporary sibling and renamed into place (``os.replace`` is atomic on one filesystem), folders are
built under a temporary name and renamed at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml

from ssl_noise.errors import UserError


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks (md5 for MedMNIST archives, sha256 for weights)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, on failure delete it.

    >>> out = Path(tempfile.mkdtemp()) / "out.csv"
    >>> with atomic_path(out) as tmp:
    ...     _ = tmp.write_text("a,b\\n1,2\\n")
    ...     out.exists()
    False
    >>> out.read_text()
    'a,b\\n1,2\\n'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # not mkstemp's 0600 (nor a writer's own): files as open() makes them
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; rename it to ``path`` on success, remove it on failure.

    Refuses to replace an existing folder: registry entries and run folders are never overwritten.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would survive the rename: group-readable as mkdir makes it
    try:
        yield tmp
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def short_hash(obj: Any, length: int = 10) -> str:
    """The first ``length`` hex digits of the sha256 of ``obj`` as key-sorted JSON: every id that names a
    configuration (run ids, cell ids, detection folders, pretraining work folders) is built with this."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def derive_seed(*parts: int) -> int:
    """A reproducible 63-bit seed for a tuple such as (run seed, epoch, stream), via numpy's SeedSequence.

    Every per-epoch or per-stream generator in ssl-noise is seeded from this, so a resumed or re-run job draws
    exactly the same numbers, and streams that share a run seed are still statistically independent.
    """
    import numpy as np

    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def read_csv_strict(path: str | os.PathLike, *, what: str, columns: tuple = ()):
    """Read a user-supplied CSV as strings; a missing file, a parse error or missing ``columns`` is a UserError
    naming the file and ``what`` it is (e.g. "noise file"). Column names are stripped of spaces."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"cannot parse {what} {path}: {str(e).strip().splitlines()[0]}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(f"{what} {path} lacks column(s) {', '.join(missing)} (expected {','.join(columns)})")
    return frame


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as YAML (block style, keys in insertion order)."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(obj, sort_keys=False))


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON object as a line (the per-epoch logs); one ``write`` call so lines never interleave."""
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
