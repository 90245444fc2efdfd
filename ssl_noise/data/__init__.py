"""The data layer: one call, :func:`load_dataset`, turns a dataset spec into in-memory uint8 arrays.

Every stage names its data with one string (``bloodmnist``, ``path.npz``, ``folder:PATH``, ``csv:PATH``,
``chaoyang:PATH``, ``synthetic[:k=v,...]``), so recipes, the CLI and run records spell it the same way.
Spec syntax and guarantees: docs/formats.md, "Dataset specs".
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, Optional

from ssl_noise.data.catalogue import SIZES, CatalogueEntry, catalogue, get_entry, is_3d_flag
from ssl_noise.data.dataset import (MD5_MISMATCH, MD5_NA, MD5_OK, MD5_UNOFFICIAL, ImageDataset, Split,
                                    channel_stats, stratified_split, stratified_subset_indices, subset_train)
from ssl_noise.errors import UserError

__all__ = ["load_dataset", "spec_label", "dataset_name", "ImageDataset", "Split", "CatalogueEntry", "catalogue",
           "get_entry", "SIZES", "channel_stats", "subset_train", "stratified_split", "stratified_subset_indices",
           "MD5_OK", "MD5_MISMATCH", "MD5_UNOFFICIAL", "MD5_NA"]

FILE_KINDS = ("folder", "csv", "chaoyang", "npz")
SYNTHETIC_PARAMS = ("n_train", "n_val", "n_test", "num_classes", "channels", "size", "seed")


def spec_label(spec: str) -> str:
    """A data spec as one safe file-name component, for ids and work folders: a flag stays itself, a file or
    folder spec becomes its stem, ``synthetic:...`` becomes ``synthetic`` (a path must never nest or escape the
    folder it names).

    >>> spec_label("bloodmnist"), spec_label("../data/pneumoniamnist_balanced.npz"), spec_label("folder:/x/my set")
    ('bloodmnist', 'pneumoniamnist_balanced', 'my_set')
    """
    kind, _, rest = spec.partition(":")
    label = kind if kind == "synthetic" else Path(rest or spec).stem if (rest or spec.endswith(".npz")) else spec
    return re.sub(r"[^A-Za-z0-9_.]+", "_", label).strip("._") or "data"


def dataset_name(spec: str | os.PathLike) -> str:
    """The name the data of ``spec`` is recorded under (registry entries, run records), known without reading it,
    so that ``--init simclr`` can pick among the entries of *this* data before any image is decoded.

    A MedMNIST flag, or its file (``bloodmnist_64.npz``), is the flag; another ``.npz`` its stem; a CSV manifest the
    name in its ``# name: <name>`` line, else its stem;
    a folder its own name; Chaoyang data ``chaoyang``; generated data ``synthetic``.

    >>> dataset_name("bloodmnist"), dataset_name("/d/bloodmnist_64.npz"), dataset_name("csv:/d/cells.csv")
    ('bloodmnist', 'bloodmnist', 'cells')
    """
    from ssl_noise.data.catalogue import flag_of_file

    spec = str(spec).strip()
    kind, _, rest = spec.partition(":")
    if kind == "synthetic":
        return "synthetic"
    if kind == "chaoyang" and rest:
        return "chaoyang"
    if kind == "folder" and rest:
        return Path(os.path.expanduser(rest)).resolve().name
    if kind == "csv" and rest:
        from ssl_noise.data.files import manifest_name

        return manifest_name(Path(os.path.expanduser(rest))) or Path(rest).stem
    if spec.lower() in catalogue():
        return spec.lower()
    stem = Path(os.path.expanduser(spec)).stem
    return flag_of_file(stem) or stem


def load_dataset(spec: str | os.PathLike, *, data_root: Optional[str] = None, size: Optional[int] = None,
                 subset: Optional[int] = None, seed: int = 0, download: bool = True,
                 label_column: Optional[str] = None) -> ImageDataset:
    """Load the dataset named by ``spec`` (syntax: docs/formats.md, "Dataset specs").

    Args:
        spec: A MedMNIST flag, a path to an ``.npz``, ``folder:PATH``, ``csv:PATH``, ``chaoyang:PATH`` or
            ``synthetic[:k=v,...]``.
        data_root: The ``--data-root`` option, searched first for MedMNIST files.
        size: MedMNIST image size (None: 28), or the size image files are resized to (None: the files' own
            common size; files of several sizes then need one).
        subset: Keep a stratified subset of this many train images (val and test stay whole).
        seed: Seed of the subset draw.
        download: Allow downloading MedMNIST files that are not on disk.
        label_column: ``csv:PATH`` only: the column to train on, or ``majority`` of the annotator columns
            (real label noise: :func:`ssl_noise.data.files.load_csv`).

    Returns:
        The dataset; ``train_indices`` maps train rows to the source's full train split.

    Raises:
        UserError: Unknown spec, missing or corrupt files, bad labels (the message says what to fix).
    """
    spec = str(spec).strip()
    if size is not None and size <= 0:
        raise UserError(f"--image-size must be a positive number of pixels, got {size}")
    if label_column is None:
        dataset = _load(spec, data_root=data_root, size=size, download=download)
    else:
        kind, _, rest = spec.partition(":")
        if kind != "csv" or not rest:
            raise UserError(f"--label-column picks a column of a CSV manifest; {spec!r} is not csv:PATH")
        from ssl_noise.data import files

        dataset = files.load_csv(os.path.expanduser(rest), size=size, label_column=label_column)
    return subset_train(dataset, subset, seed)


def _load(spec: str, *, data_root: Optional[str], size: Optional[int], download: bool) -> ImageDataset:
    kind, _, rest = spec.partition(":")
    if kind == "synthetic":
        from ssl_noise.data.synthetic import make_synthetic

        return make_synthetic(**{**({"size": size} if size else {}), **_synthetic_params(rest)})
    if kind in FILE_KINDS and rest:
        return _load_file(kind, rest, size)
    if spec.lower() in catalogue():
        from ssl_noise.data.medmnist import load_medmnist

        return load_medmnist(spec.lower(), size or 28, data_root=data_root, download=download)
    _suggest_prefix(spec)
    if spec.endswith(".npz") or os.sep in spec or Path(spec).exists():
        return _load_file("npz", spec, size)
    if is_3d_flag(spec):
        get_entry(spec)  # raises the 3D message
    raise UserError(f"unknown dataset {spec!r}; use a MedMNIST flag ({', '.join(catalogue())}), a path to an .npz, "
                    f"folder:PATH, csv:PATH, chaoyang:PATH or synthetic")


def _suggest_prefix(spec: str) -> None:
    """A folder or a CSV given without its ``folder:`` / ``csv:`` prefix: say the spec that reads it."""
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        kind = "chaoyang" if (path / "train.json").is_file() else "folder"
        raise UserError(f"{spec} is a folder; name it --dataset {kind}:{spec} (a dataset spec says how to read it)")
    if path.suffix.lower() in {".csv", ".tsv", ".txt"}:
        raise UserError(f"{spec} looks like a manifest; name it --dataset csv:{spec} "
                        f"(a CSV with columns path,label[,split])")


def _load_file(kind: str, path: str, size: Optional[int]) -> ImageDataset:
    from ssl_noise.data import files, medmnist

    loader = {"folder": files.load_folder, "csv": files.load_csv, "chaoyang": files.load_chaoyang}
    path = os.path.expanduser(path)
    return medmnist.load_npz(path) if kind == "npz" else loader[kind](path, size=size)


def _synthetic_params(text: str) -> Dict[str, int]:
    """``"num_classes=6,n_train=200"`` -> ``{"num_classes": 6, "n_train": 200}`` (integers only)."""
    params: Dict[str, int] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in SYNTHETIC_PARAMS:
            raise UserError(f"bad synthetic parameter {item!r}; use key=int with key in {', '.join(SYNTHETIC_PARAMS)}")
        try:
            params[key] = int(value)
        except ValueError:
            raise UserError(f"synthetic parameter {key} must be an integer, got {value.strip()!r}") from None
    return params
