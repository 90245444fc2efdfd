"""The sweep's job queue: files under the runs folder that say which cells are done, failed or claimed.

Any number of workers (processes, machines sharing one runs folder) take cells through :func:`claim`: an
``O_CREAT | O_EXCL`` claim file under an exclusive ``flock``, kept fresh by a :class:`Heartbeat`, taken over when
stale (dead owner on this host, or not refreshed for ``stale_after`` seconds). Format: docs/formats.md.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from ssl_noise.errors import UserError
from ssl_noise.io import write_json
from ssl_noise.runs import RunFolder
from ssl_noise.sweep.log import Log, log_stderr

#: Version of the sweep's records on disk (done, failed); also hashed into every cell id.
SCHEMA_VERSION = 1
DEFAULT_STALE_AFTER_S = 600.0


def cell_paths(runs: Path, cid: str) -> dict[str, Path]:
    """The done record, failed record, claim file and claims lock of cell ``cid``."""
    runs = Path(runs)
    return {"done": runs / ".done" / f"{cid}.json", "failed": runs / ".failed" / f"{cid}.json",
            "claim": runs / ".claims" / cid, "lock": runs / ".claims" / ".lock"}


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or unreadable (half-written, say)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def done_record(runs: Path, cid: str) -> dict[str, Any] | None:
    """The done record of a finished cell (its run folder still holding metrics.json), else None."""
    record = read_json(cell_paths(runs, cid)["done"])
    if record and RunFolder(Path(runs) / str(record.get("run_id"))).is_finished():
        return record
    return None


def cell_status(runs: Path, cid: str, *, stale_after: float = DEFAULT_STALE_AFTER_S) -> str:
    """``done``, ``running`` (a live claim), ``failed`` or ``pending``."""
    p = cell_paths(runs, cid)
    if done_record(runs, cid):
        return "done"
    if p["claim"].exists() and not _stale(p["claim"], stale_after):
        return "running"
    return "failed" if p["failed"].exists() else "pending"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(claim: Path, stale_after: float) -> bool:
    try:
        age = time.time() - claim.stat().st_mtime
    except FileNotFoundError:
        return False
    info = read_json(claim) or {}
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) and not _pid_alive(info["pid"]):
        return True
    return age > stale_after


class Locked:
    """Exclusive ``flock`` on a lock file (``.claims/.lock``): claim checks and takeovers are serialised."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a")
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.f.close()  # closing releases the lock


def claim(runs: Path, cid: str, *, started_at: float, retry_failed: bool = True,
          stale_after: float = DEFAULT_STALE_AFTER_S, log: Log = log_stderr) -> tuple[str, str | None]:
    """Try to take a cell: ``("claimed", token)`` or ``(reason, None)`` with reason done/running/failed."""
    p = cell_paths(runs, cid)
    with Locked(p["lock"]):
        if done_record(runs, cid):
            return "done", None
        failure = read_json(p["failed"])
        if failure and (not retry_failed or failure.get("failed_at", 0) >= started_at):
            return "failed", None
        if p["claim"].exists():
            if not _stale(p["claim"], stale_after):
                return "running", None
            old = read_json(p["claim"]) or {}
            log(f"{cid}: taking over the stale claim of {old.get('host')}:{old.get('pid')}")
            p["claim"].unlink()
        token = uuid.uuid4().hex
        fd = os.open(p["claim"], os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "token": token,
                       "claimed_at": time.time()}, f)
        return "claimed", token


def release(runs: Path, cid: str, token: str) -> None:
    """Remove the claim if it is still ours (a claim taken over as stale now belongs to someone else)."""
    p = cell_paths(runs, cid)
    with Locked(p["lock"]):
        if (read_json(p["claim"]) or {}).get("token") == token:
            p["claim"].unlink()


def record_done(runs: Path, cid: str, record: dict[str, Any]) -> None:
    """Write the done record of a cell (before its claim is released) and drop an older failure record."""
    p = cell_paths(runs, cid)
    write_json(p["done"], record)
    p["failed"].unlink(missing_ok=True)


def record_failed(runs: Path, cid: str, error: Exception, config: dict[str, Any]) -> Path:
    """Write the failed record of a cell (call it inside the ``except`` block: it saves the traceback)."""
    path = cell_paths(runs, cid)["failed"]
    write_json(path, {"schema_version": SCHEMA_VERSION, "cell_id": cid,
                      "error": f"{type(error).__name__}: {error}", "user_error": isinstance(error, UserError),
                      "traceback": traceback.format_exc(), "host": socket.gethostname(),
                      "pid": os.getpid(), "failed_at": time.time(), "config": config})
    return path


class Heartbeat:
    """Refreshes the claim's mtime every ``interval`` seconds while a cell trains."""

    def __init__(self, path: Path, interval: float):
        self.path, self.interval, self.stop = path, interval, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                os.utime(self.path)
            except OSError:
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
