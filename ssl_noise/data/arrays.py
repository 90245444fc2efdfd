"""Datasets from arrays in memory (a notebook's numpy or torch data), and their content-addressed ``.npz`` form.

Everything that trains or pretrains names its data by a spec string (run ids and registry entries hash it), so an
in-memory set is written once, as a MedMNIST-format archive whose folder is the hash of its content
(:func:`to_npz`): the same arrays always give the same spec, the same run ids and the same registry matches.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np

from ssl_noise.data.dataset import SPLITS, ImageDataset, Split, stratified_split
from ssl_noise.data.files import SPLIT_FRACTIONS, VAL_FRACTION  # as a manifest without a split column
from ssl_noise.errors import UserError
from ssl_noise.io import atomic_path

Splits = Union[None, Sequence[str], Mapping[str, Sequence[int]]]


def images_array(raw) -> np.ndarray:
    """uint8 (N, H, W, C): from numpy or torch, (N, H, W), (N, H, W, C) or channels-first (N, C, H, W)."""
    x = np.asarray(raw.detach().cpu() if hasattr(raw, "detach") else raw)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
        x = np.moveaxis(x, 1, -1)  # torch's (N, C, H, W)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise UserError(f"images must be (N, H, W), (N, H, W, C) or (N, C, H, W) with 1 or 3 channels, got {x.shape}")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating) or x.size and (np.nanmin(x) < 0 or np.nanmax(x) > 1):
            raise UserError(f"images must be uint8, or floats in [0, 1]; got {x.dtype}"
                            + (f" in [{np.nanmin(x):g}, {np.nanmax(x):g}]" if x.size else ""))
        x = np.round(x * 255).astype(np.uint8)
    if x.shape[1] != x.shape[2]:
        raise UserError(f"images must be square, got {x.shape[1]}x{x.shape[2]}; crop or pad them first")
    return np.ascontiguousarray(x)


def _split_rows(labels: np.ndarray, splits: Splits, seed: int) -> Dict[str, np.ndarray]:
    if splits is None:  # seeded stratified 70/10/20
        return dict(zip(SPLITS, stratified_split(labels, SPLIT_FRACTIONS, seed)))
    if isinstance(splits, Mapping):
        unknown = set(splits) - set(SPLITS)
        if unknown or not {"train", "test"} <= set(splits):
            raise UserError(f"splits must map train, test (and optionally val) to row indices; got {sorted(splits)}")
        rows = {s: np.asarray(splits[s], dtype=np.int64) for s in splits}
    else:
        names = np.asarray(list(splits), dtype=object)
        if len(names) != len(labels) or not set(names) <= set(SPLITS):
            raise UserError(f"splits must name train, val or test for each of the {len(labels)} images")
        rows = {s: np.flatnonzero(names == s) for s in SPLITS if np.any(names == s)}
    if "val" not in rows:  # carved from train, as a manifest without a val split
        keep, val = stratified_split(labels[rows["train"]], (1 - VAL_FRACTION, VAL_FRACTION), seed)
        rows["val"], rows["train"] = rows["train"][val], rows["train"][keep]
    every = np.concatenate([rows[s] for s in SPLITS])
    if every.min(initial=0) < 0 or every.max(initial=0) >= len(labels) or len(np.unique(every)) != len(every):
        raise UserError(f"split indices must be distinct rows in 0..{len(labels) - 1}")
    return rows


def from_arrays(images, labels, *, class_names: Optional[Sequence[str]] = None, splits: Splits = None,
                name: str = "arrays", seed: int = 0) -> ImageDataset:
    """An :class:`ImageDataset` from arrays: ``images`` uint8 (N, H, W[, C]) (or floats in [0, 1], or torch's
    (N, C, H, W)), ``labels`` integers 0..K-1; ``splits``: None (seeded stratified 70/10/20), one of
    train/val/test per image, or ``{"train": rows, "test": rows[, "val": rows]}`` (val carved from train when
    absent).

    >>> data = from_arrays(np.zeros((50, 8, 8), np.uint8), np.arange(50) % 2, class_names=["normal", "tumour"])
    >>> data.num_classes, data.channels, data.image_size, [len(s) for s in data.splits.values()]
    (2, 1, 8, [36, 4, 10])
    """
    x = images_array(images)
    y = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels).reshape(-1)
    if len(y) != len(x):
        raise UserError(f"{len(x)} images but {len(y)} labels")
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"labels must be integers 0..K-1, got {y.dtype}")
    y = y.astype(np.int64)
    K = len(class_names) if class_names is not None else int(y.max(initial=0)) + 1
    if y.min(initial=0) < 0 or y.max(initial=0) >= K or K < 2:
        raise UserError(f"labels must be 0..K-1 for K = {K} >= 2 classes, got {y.min(initial=0)}..{y.max(initial=0)}")
    missing = np.setdiff1d(np.arange(K), y)
    if class_names is None and missing.size:  # e.g. labels 1..K: the classes must be 0..K-1, or named
        raise UserError(f"labels must be 0..K-1: classes {missing[:5].tolist()} of 0..{K - 1} have no image; "
                        f"relabel, or give class_names for classes without images")
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise UserError(f"name must be letters, digits and _ (it goes into run ids and file names), got {name!r}")
    rows = _split_rows(y, splits, seed)
    return ImageDataset(name=name, class_names=[str(c) for c in class_names] if class_names is not None
                        else [str(k) for k in range(K)], channels=x.shape[-1], image_size=x.shape[1],
                        **{s: Split(x[rows[s]], y[rows[s]]) for s in SPLITS})


def to_npz(data: ImageDataset, folder: Union[str, os.PathLike]) -> Path:
    """Write ``data`` as ``folder/<sha12>/<name>.npz`` (MedMNIST keys plus ``class_names``) unless that file exists;
    returns its path, which every data spec accepts. The hash covers images, labels, splits and class names."""
    arrays = {}
    for s in SPLITS:
        split = data.splits[s]
        arrays[f"{s}_images"] = split.images
        arrays[f"{s}_labels"] = split.labels.reshape(-1, 1)
    arrays["class_names"] = np.asarray(data.class_names, dtype=str)
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    path = Path(folder).expanduser() / digest.hexdigest()[:12] / f"{data.name}.npz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
    return path
