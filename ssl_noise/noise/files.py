"""The noise file ``index,clean_label,noisy_label``: what a run stores and what a user can hand back in.

Format: docs/formats.md, "Noise file".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ssl_noise.errors import UserError
from ssl_noise.io import atomic_path, read_csv_strict
from ssl_noise.noise.corruption import corrupt
from ssl_noise.noise.instance import build_noise, check_noise_type
from ssl_noise.noise.matrices import PathLike, load_class_map

NOISE_CSV_COLUMNS = ("index", "clean_label", "noisy_label")


@dataclass(frozen=True)
class NoiseFile:
    """Rows of a noise file: (N,) int64 ``index``, ``clean`` and ``noisy``, ordered by index (or as requested)."""

    index: np.ndarray
    clean: np.ndarray
    noisy: np.ndarray


def write_noise_csv(path: PathLike, clean: np.ndarray, noisy: np.ndarray, *,
                    indices: Optional[np.ndarray] = None) -> None:
    """Atomically write ``index,clean_label,noisy_label``, one row per training sample.

    Args:
        path: output file (replaced if it exists).
        clean: (N,) clean labels.
        noisy: (N,) noisy labels.
        indices: (N,) position of each sample in the training split as loaded; with a subset, the original
            indices. Defaults to ``0..N-1``.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "noisy.csv"
    >>> write_noise_csv(path, np.array([0, 1]), np.array([1, 1]))
    >>> print(path.read_text(), end="")
    index,clean_label,noisy_label
    0,0,1
    1,1,1
    """
    clean, noisy = np.asarray(clean).reshape(-1), np.asarray(noisy).reshape(-1)
    index = np.arange(len(clean)) if indices is None else np.asarray(indices).reshape(-1)
    if not all(np.issubdtype(a.dtype, np.integer) for a in (clean, noisy, index)):
        raise UserError("noise file columns (indices, clean and noisy labels) must be integer arrays")
    if not len(clean) == len(noisy) == len(index):
        raise UserError(f"noise file columns differ in length: {len(index)} indices, {len(clean)} clean, "
                        f"{len(noisy)} noisy labels")
    if len(np.unique(index)) != len(index):
        raise UserError("noise file indices must be unique")
    rows = zip(index.astype(np.int64).tolist(), clean.astype(np.int64).tolist(), noisy.astype(np.int64).tolist())
    text = ",".join(NOISE_CSV_COLUMNS) + "\n" + "".join(f"{i},{c},{n}\n" for i, c, n in rows)
    with atomic_path(path) as tmp:
        tmp.write_text(text, newline="\n")


def _int_column(frame, column: str, path: Path) -> np.ndarray:
    values = frame[column].fillna("").str.strip()
    bad = ~values.str.fullmatch(r"[+-]?\d+")
    if bad.any():
        row = int(np.argmax(bad.to_numpy()))
        raise UserError(f"noise file {path}: {column} on data row {row + 1} is {values.iloc[row]!r}, not an integer")
    return values.astype(np.int64).to_numpy()


def _check_index(index: np.ndarray, path: Path, num_samples: Optional[int],
                 expected: Optional[np.ndarray]) -> np.ndarray:
    """Validate the index column; return the row order (sorted by index, or following ``expected``)."""
    if index.min() < 0:
        raise UserError(f"noise file {path}: index {index.min()} is negative")
    values, counts = np.unique(index, return_counts=True)
    if (counts > 1).any():
        raise UserError(f"noise file {path}: index {values[counts > 1][0]} appears {counts.max()} times")
    if num_samples is not None and expected is None:
        expected = np.arange(num_samples)
    if expected is None:
        return np.argsort(index, kind="stable")
    expected = np.asarray(expected).reshape(-1)
    extra, missing = np.setdiff1d(index, expected), np.setdiff1d(expected, index)
    if extra.size:
        raise UserError(f"noise file {path}: index {extra[0]} is not a training sample here "
                        f"({len(expected)} samples expected)")
    if missing.size:
        raise UserError(f"noise file {path}: {missing.size} of {len(expected)} training samples are missing "
                        f"(first: index {missing[0]})")
    return np.argsort(index)[np.searchsorted(values, expected)]


def read_noise_csv(path: PathLike, *, num_samples: Optional[int] = None, num_classes: Optional[int] = None,
                   indices: Optional[np.ndarray] = None) -> NoiseFile:
    """Read and validate a noise file written by :func:`write_noise_csv` (or by hand).

    Checks: the three columns exist (others are ignored), every value is an integer, indices are non-negative and
    unique, labels lie in 0..num_classes-1 (when given), and the indices are exactly ``0..num_samples-1`` (when
    given) or exactly ``indices`` (a subset's original indices, when given).

    Args:
        path: the CSV file.
        num_samples: training-split size the file must cover completely.
        num_classes: number of classes K.
        indices: (N,) the exact training indices expected; the result then follows their order.

    Returns:
        :class:`NoiseFile` ordered by index, or in the order of ``indices``.

    Raises:
        UserError: naming the first problem found.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "noisy.csv"
    >>> _ = path.write_text("index,clean_label,noisy_label\\n1,2,2\\n0,0,1\\n")
    >>> read_noise_csv(path, num_samples=2, num_classes=3).noisy
    array([1, 2])
    """
    path = Path(path)
    frame = read_csv_strict(path, what="noise file", columns=NOISE_CSV_COLUMNS)
    if frame.empty:
        raise UserError(f"noise file {path} has no rows")
    index, clean, noisy = (_int_column(frame, c, path) for c in NOISE_CSV_COLUMNS)
    for name, column in (("clean_label", clean), ("noisy_label", noisy)):
        bad = np.flatnonzero((column < 0) | (column >= (num_classes if num_classes is not None else np.inf)))
        if bad.size:
            limit = f"0..{num_classes - 1}" if num_classes is not None else "0 or more"
            raise UserError(f"noise file {path}: {name} {column[bad[0]]} at index {index[bad[0]]} is out of range "
                            f"(classes are {limit})")
    order = _check_index(index, path, num_samples, indices)
    return NoiseFile(index[order], clean[order], noisy[order])


def noise_file(out: Union[str, os.PathLike], dataset: str, noise_type: str = "symmetric", rate: Optional[float] = None,
               *, seed: int = 0, mode: str = "sampled", class_map: Optional[str] = None, matrix: Optional[str] = None,
               force: bool = False, size: Optional[int] = None, subset: Optional[int] = None,
               data_root: Optional[str] = None) -> tuple:
    """Corrupt ``dataset``'s training labels and write them to ``out`` (``ssl-noise noise``).

    Returns ``(dataset, T, NoisyLabels)`` for the caller's summary (T: the matrix; for instance noise the expected
    matrix given the images). The type is checked before any data is loaded; the
    file records original indices under ``subset``, so other commands map it back onto the full split.
    """
    from ssl_noise.data import load_dataset  # only this command loads images; readers of noise files need not

    check_noise_type(noise_type)  # fail on a typo before loading any data
    ds = load_dataset(dataset, data_root=data_root, size=size, subset=subset, seed=seed)
    if getattr(ds, "multilabel", False):
        raise UserError(f"{dataset} is multi-label; label noise needs one class per image")
    mapping = load_class_map(class_map, ds.class_names) if class_map else None
    process = build_noise(noise_type, len(ds.class_names), rate, class_map=mapping, matrix=matrix, force=force,
                          seed=seed)
    images = ds.train.images if getattr(process, "image_dependent", False) else None  # instance noise reads them
    result = corrupt(ds.train.labels, process, rng=np.random.default_rng(seed), mode=mode, images=images)
    write_noise_csv(out, ds.train.labels, result.noisy, indices=ds.train_indices)
    return ds, result.T, result
