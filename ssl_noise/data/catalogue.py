"""The MedMNIST 2D catalogue: which flags exist, their classes, splits, download urls and official md5s.

The facts come from ``medmnist.INFO`` rather than a hand-copied table, so a new catalogue arrives with a package
upgrade; only ``medmnist/info.py`` is loaded (``import medmnist`` pulls in torch). A second table lists mirrors:
PyPI wheels with byte-identical copies of some official files, for machines that reach a package index only.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import sys
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Dict, Optional, Tuple

from ssl_noise.errors import UserError

SIZES: Tuple[int, ...] = (28, 64, 128, 224)


@dataclass(frozen=True)
class CatalogueEntry:
    """One 2D MedMNIST dataset as described by ``medmnist.INFO``.

    Attributes:
        flag: The dataset's name, e.g. ``"bloodmnist"``.
        task: MedMNIST's task string, e.g. ``"multi-class"`` or ``"multi-label, binary-class"``.
        n_channels: 1 (gray) or 3 (RGB).
        class_names: Names ordered by their integer label.
        n_samples: Official split sizes, keys ``train``/``val``/``test``.
        licence: The data licence, e.g. ``"CC BY 4.0"``.
        urls: Official download url per image size.
        md5s: Official md5 per image size.
    """

    flag: str
    task: str
    n_channels: int
    class_names: Tuple[str, ...]
    n_samples: Dict[str, int]
    licence: str
    urls: Dict[int, str]
    md5s: Dict[int, str]

    @property
    def multilabel(self) -> bool:
        """True for chestmnist: one binary label per class, which the training code refuses."""
        return self.task.startswith("multi-label")

    def filename(self, size: int) -> str:
        """The official file name: ``<flag>.npz`` at 28 px, ``<flag>_<size>.npz`` otherwise."""
        check_size(size)
        return f"{self.flag}.npz" if size == 28 else f"{self.flag}_{size}.npz"


@dataclass(frozen=True)
class WheelMirror:
    """A PyPI wheel that carries an official file byte for byte (checked by md5 before use)."""

    package: str
    version: str
    member: str
    python_version: str = "3.13"

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


MIRRORS: Dict[Tuple[str, int], WheelMirror] = {
    (flag, 28): WheelMirror("kosmos-core", "0.6.2", f"kosmos/ml/datasets/data/{flag}.npz")
    for flag in ("bloodmnist", "organamnist")
}


def check_size(size: int) -> int:
    """Return ``size`` if MedMNIST publishes it, else raise :class:`UserError`."""
    if size not in SIZES:
        raise UserError(f"image size {size} is not a MedMNIST size; choose from: {', '.join(map(str, SIZES))}")
    return size


@functools.lru_cache(maxsize=1)
def _info_module() -> ModuleType:
    """``medmnist.info`` without executing ``medmnist/__init__.py`` (which imports torch)."""
    if "medmnist.info" in sys.modules:
        return sys.modules["medmnist.info"]
    spec = importlib.util.find_spec("medmnist")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the MedMNIST catalogue needs the 'medmnist' package: pip install 'medmnist>=3'")
    path = f"{list(spec.submodule_search_locations)[0]}/info.py"
    info_spec = importlib.util.spec_from_file_location("_ssl_noise_medmnist_info", path)
    module = importlib.util.module_from_spec(info_spec)
    with medmnist_quietly():
        info_spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def medmnist_quietly():
    """Import (parts of) ``medmnist`` without its "Failed to setup default root." warning.

    ``medmnist/info.py`` creates ``~/.medmnist`` at import time and warns when it cannot: on a read-only home (a
    cluster container) and whenever two sweep workers import it at the same moment (its exists-then-makedirs races).
    ssl-noise never uses that folder (data roots: :mod:`ssl_noise.data.medmnist`), so the warning says nothing
    true about a run and would only be printed into every worker's log.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Failed to setup default root", category=UserWarning)
        yield


def _entry(flag: str, info: dict) -> CatalogueEntry:
    """Build a :class:`CatalogueEntry` from one ``INFO`` record (keys ``url``, ``MD5``, ``url_64``, ...)."""
    suffix = {size: "" if size == 28 else f"_{size}" for size in SIZES}
    labels = info["label"]
    return CatalogueEntry(
        flag=flag,
        task=info["task"],
        n_channels=int(info["n_channels"]),
        class_names=tuple(labels[k] for k in sorted(labels, key=int)),
        n_samples={k: int(v) for k, v in info["n_samples"].items()},
        licence=info.get("license", "unknown"),
        urls={s: info[f"url{x}"] for s, x in suffix.items() if f"url{x}" in info},
        md5s={s: info[f"MD5{x}"] for s, x in suffix.items() if f"MD5{x}" in info},
    )


@functools.lru_cache(maxsize=1)
def catalogue() -> Dict[str, CatalogueEntry]:
    """Every 2D MedMNIST flag, in ``medmnist.INFO`` order."""
    info = _info_module().INFO
    return {flag: _entry(flag, rec) for flag, rec in info.items() if not flag.endswith("3d")}


def is_3d_flag(flag: str) -> bool:
    """True for MedMNIST's 3D flags (``organmnist3d``, ...), which the catalogue leaves out."""
    return flag.lower() in _info_module().INFO and flag.lower().endswith("3d")


def get_entry(flag: str) -> CatalogueEntry:
    """The catalogue entry for ``flag`` (case-insensitive); an unknown flag lists the known ones."""
    entries = catalogue()
    key = flag.lower()
    if key in entries:
        return entries[key]
    if is_3d_flag(key):
        raise UserError(f"{flag!r} is a 3D MedMNIST dataset; ssl-noise handles 2D only")
    raise UserError(f"unknown MedMNIST flag {flag!r}; choose from: {', '.join(entries)}")


def flag_for_stem(stem: str) -> Optional[str]:
    """The longest catalogue flag that ``stem`` starts with (``pneumoniamnist_balanced`` -> ``pneumoniamnist``)."""
    matches = [flag for flag in catalogue() if stem.lower().startswith(flag)]
    return max(matches, key=len) if matches else None


def flag_of_file(stem: str) -> Optional[str]:
    """The flag whose official file name ``stem`` is (``bloodmnist``, ``bloodmnist_64``), else None.

    >>> flag_of_file("bloodmnist_64"), flag_of_file("pneumoniamnist_balanced")
    ('bloodmnist', None)
    """
    flag, _, size = stem.lower().partition("_")
    return flag if flag in catalogue() and (not size or size.isdigit() and int(size) in SIZES) else None
