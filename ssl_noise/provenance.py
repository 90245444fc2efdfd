"""What produced an artefact: library versions and the git state of the ssl-noise checkout.

Registry entries, run folders and detector outputs all record this, so that a number in a table can be traced
back to the code that made it.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional

import ssl_noise


def versions() -> Dict[str, Optional[str]]:
    """Versions that decide whether a result can be reproduced; ``lightly`` is looked up, not imported (slow)."""
    found: Dict[str, Optional[str]] = {"python": platform.python_version(), "ssl-noise": ssl_noise.__version__}
    for dist in ("torch", "torchvision", "lightly"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    return found


def git_state() -> Optional[Dict[str, Any]]:
    """``{"sha", "dirty"}`` of the checkout holding the ssl_noise package; None when it is not a git checkout."""
    where = Path(ssl_noise.__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        return {"sha": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None
