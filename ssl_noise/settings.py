"""Where things live and what runs them: data, registry and run roots, device and thread count.

Each root resolves in the same order: the command-line option, then an environment variable, then a default.
The CLI stores the resolved values in :class:`Settings` and hands it to every command.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ssl_noise.errors import UserError

DEFAULT_CACHE = Path("~/.cache/ssl-noise").expanduser()


def data_roots(option: Optional[str] = None) -> List[Path]:
    """Folders searched for dataset files, most specific first: ``--data-root``, ``$SSL_NOISE_DATA``, the cache.

    The cache is always last and is where downloads are written when no other root is writable.
    """
    roots = [Path(p).expanduser() for p in (option, os.environ.get("SSL_NOISE_DATA")) if p]
    cache = Path(os.environ.get("SSL_NOISE_CACHE", DEFAULT_CACHE)).expanduser()
    return roots + [cache]


def checkpoints_root(option: Optional[str] = None) -> Path:
    """The encoder registry root: ``--checkpoints``, ``$SSL_NOISE_CHECKPOINTS``, else ``./checkpoints``."""
    return Path(option or os.environ.get("SSL_NOISE_CHECKPOINTS") or "checkpoints").expanduser()


def runs_root(option: Optional[str] = None) -> Path:
    """The fine-tune and sweep output root: ``--runs``, ``$SSL_NOISE_RUNS``, else ``./runs``."""
    return Path(option or os.environ.get("SSL_NOISE_RUNS") or "runs").expanduser()


def resolve_device(name: str = "auto") -> str:
    """``auto`` picks CUDA when present; asking for CUDA on a machine without it is a user error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; choose from: auto, cpu, cuda")
    return name


@dataclass
class Settings:
    """Global options shared by every command (filled by the CLI's root group)."""

    data_root: Optional[str] = None
    checkpoints: Path = Path("checkpoints")
    runs: Path = Path("runs")
    device: str = "auto"
    threads: Optional[int] = None

    def torch_device(self) -> str:
        return resolve_device(self.device)


#: Where an installed package keeps its copy of the repository's recipes and sweep specs. In a checkout,
#: ``_shipped/pretrain`` and ``_shipped/finetune`` are links to the top-level folders (setup.cfg ships the YAMLs
#: through them), so the files stay where users edit them and a plain ``pip install .`` still finds them.
SHIPPED = Path(__file__).resolve().parent / "_shipped"


def shipped_file(relpath: str | os.PathLike) -> Optional[Path]:
    """The package's copy of a repository file such as ``finetune/sweeps/demo.yaml``; None when there is none.

    Falls back on the source checkout for checkouts whose links did not survive (git without symlinks).
    """
    for base in (SHIPPED, SHIPPED.parents[1]):
        candidate = base / relpath
        if candidate.is_file():
            return candidate
    return None


def given_recipe(recipe: str | os.PathLike) -> Path:
    """A ``--recipe`` as given: the file itself when it exists, else the shipped recipe of that relative path, so
    ``--recipe pretrain/bloodmnist/simclr.yaml`` works from any folder, as the README writes it."""
    path = Path(recipe).expanduser()
    if path.is_file() or path.is_absolute():
        return path
    return shipped_file(path) or path


def recipe_path(kind: str, dataset: str, name: str) -> Optional[Path]:
    """The default recipe ``<kind>/<dataset>/<name>.yaml``: the working folder's first (a user's own recipes),
    then the one shipped with the package; None when neither exists (the dataclass defaults then apply)."""
    relpath = Path(kind) / Path(dataset).stem / f"{name}.yaml"
    local = Path.cwd() / relpath
    return local if local.is_file() else shipped_file(relpath)
