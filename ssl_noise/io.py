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
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml

from ssl_noise.errors import UserError


def check_writable(path: str | os.PathLike, what: str, *, folder: bool = False) -> Path:
    """Refuse, before any work starts, an output location that cannot be written; returns ``path``.

    A command that trains for minutes and then fails to write its result loses the work, so every command checks
    its outputs first: the nearest existing ancestor must be a writable folder (no file on the way), and the target
    itself must be a folder when ``folder`` else not one. Nothing is created here.

    >>> check_writable(Path(tempfile.mkdtemp()) / "a" / "b.csv", "--out").name
    'b.csv'
    """
    path = Path(path).expanduser()
    if path.exists():
        if folder and not path.is_dir():
            raise UserError(f"{what} {path} is a file, not a folder")
        if not folder and path.is_dir():
            raise UserError(f"{what} {path} is a folder; give a file name")
        target = path if path.is_dir() else path.parent
        if not os.access(target, os.W_OK | os.X_OK):
            raise UserError(f"{what} {path} is not writable (permission denied)")
        return path
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{what} {path} cannot be created: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} cannot be created: {ancestor} is not writable (permission denied)")
    return path


def check_name(name: str, what: str) -> str:
    """Refuse a user-given name that becomes a path component but could name another place: empty, absolute,
    containing ``/``, ``\\`` or ``..``, or hidden (leading ``.``, the prefix of our temporary folders).

    >>> check_name("entropy-b70", "--name")
    'entropy-b70'
    """
    text = str(name)
    if (not text.strip() or text.startswith(".") or "/" in text or "\\" in text or ".." in text
            or os.path.isabs(text) or "\0" in text):
        raise UserError(f"{what} {text!r} must be a plain name: no '/', '\\', '..' or "
                        f"leading '.', not empty, not a path")
    return text


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


def file_mode() -> int:
    """The mode ``open()`` gives a new file under this process's umask (0644 under the usual 022)."""
    return 0o666 & ~_umask()


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, file_mode())  # not mkstemp's 0600 (nor a writer's own): files as open() makes them
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_owner()}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would survive the rename: group-readable as mkdir makes it
    try:
        yield tmp
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _owner() -> str:
    """``p<pid>@<host>``: written into every temporary name, so a later process can tell a dead writer's leftovers
    (a killed sweep cell's half-built run folder) from a live writer's work in progress."""
    return f"p{os.getpid()}@{socket.gethostname().replace('.', '_')}"


_TEMP = re.compile(r"^\..*\.p(\d+)@([^.]+)\.[^.]+\.tmp$")


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders in ``folder`` whose writer was a process of this host that is no
    longer alive (killed mid-write); returns what was removed. Live writers and other hosts' temps are left alone.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    host = socket.gethostname().replace(".", "_")
    for path in folder.iterdir():
        match = _TEMP.match(path.name)
        if not match or match[2] != host or _alive(int(match[1])):
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


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
