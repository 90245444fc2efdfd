"""The one in-memory shape every loader returns, and the seeded stratified splits and subsets built on it.

Whatever the source, the rest of ssl-noise sees uint8 ``N×H×W×C`` images and int64 labels per split, the class
names and where the data came from; in memory because that is what makes 28-224 px sets fast to train on, and
checked once, here. Guarantees (subsets keep ``train_indices``): docs/formats.md, "Dataset specs".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ssl_noise.errors import UserError

SPLITS = ("train", "val", "test")

#: md5 statuses: the official md5 matched, did not match, the file is not an official release, no file at all.
MD5_OK, MD5_MISMATCH, MD5_UNOFFICIAL, MD5_NA = "OK", "MISMATCH", "unofficial", "n/a"


@dataclass
class Split:
    """Images and labels of one split.

    Attributes:
        images: ``uint8`` array ``N×H×W×C`` (C = 1 for gray, 3 for RGB).
        labels: ``int64`` array ``(N,)``; ``(N, K)`` of 0/1 for multi-label sets such as chestmnist.
        paths: The image file of each row for folder and CSV data (what an expert is shown), else None.
        given: ``int64`` ``(N,)`` labels as annotated, when the data carries real label noise (a manifest with a
            ``clean_label`` column): ``labels`` then holds the clean ones. Training uses ``given``.
    """

    images: np.ndarray
    labels: np.ndarray
    paths: Optional[List[str]] = None
    given: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self, num_classes: int) -> np.ndarray:
        """Images per class (for multi-label sets: positive labels per class)."""
        if self.labels.ndim == 2:
            return self.labels.sum(axis=0).astype(np.int64)
        return np.bincount(self.labels, minlength=num_classes).astype(np.int64)

    def take(self, indices: np.ndarray) -> "Split":
        paths = None if self.paths is None else [self.paths[i] for i in np.asarray(indices).reshape(-1)]
        return Split(self.images[indices], self.labels[indices], paths,
                     None if self.given is None else self.given[indices])


@dataclass
class ImageDataset:
    """A labelled image set with train/val/test splits, ready for training.

    Attributes:
        name: Short name used in registry ids and run folders (``bloodmnist``, ``synthetic``, a folder name).
        class_names: One name per class, indexed by label.
        channels: 1 or 3.
        image_size: Side of the square images in pixels.
        train: The training split (possibly a subset, see ``train_indices``).
        val: The validation split.
        test: The test split.
        task: MedMNIST's task string; ``"multi-class"`` for non-MedMNIST sources.
        source: The file or folder the data was read from; None for synthetic data.
        md5: md5 of the source file, when it is one file.
        md5_status: ``OK``, ``MISMATCH`` (official md5 differs), ``unofficial`` or ``n/a``.
        licence: The data licence when known.
        train_indices: For each train row, its index in the full train split of the source (``arange`` when
            no subset was taken).
    """

    name: str
    class_names: List[str]
    channels: int
    image_size: int
    train: Split
    val: Split
    test: Split
    task: str = "multi-class"
    source: Optional[Path] = None
    md5: Optional[str] = None
    md5_status: str = MD5_NA
    licence: Optional[str] = None
    train_indices: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.train_indices is None:
            self.train_indices = np.arange(len(self.train), dtype=np.int64)
        self.validate()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_arrays(cls, images, labels, **options) -> "ImageDataset":
        """A dataset from arrays in memory: :func:`ssl_noise.data.arrays.from_arrays`."""
        from ssl_noise.data.arrays import from_arrays

        return from_arrays(images, labels, **options)

    @property
    def multilabel(self) -> bool:
        """True when labels are ``(N, K)`` 0/1 vectors; training code refuses such sets."""
        return self.task.startswith("multi-label")

    @property
    def splits(self) -> Dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def describe(self, name_width: int = 40) -> str:
        """A human-readable summary: source, md5 status, split sizes and per-class counts per split."""
        sizes = " / ".join(f"{s} {len(split)}" for s, split in self.splits.items())
        lines = [f"dataset   {self.name}",
                 f"task      {self.task}, {self.num_classes} classes, {self.channels} channel(s), "
                 f"{self.image_size}x{self.image_size} px",
                 f"source    {self.source or 'generated in memory'}",
                 f"md5       {self.md5 + '  ' if self.md5 else ''}{self.md5_status}",
                 f"licence   {self.licence or 'unknown'}",
                 f"splits    {sizes}", ""]
        if self.multilabel:
            lines.append("(multi-label: counts are positive labels per class)")
        counts = {s: split.class_counts(self.num_classes) for s, split in self.splits.items()}
        given = {f"{s} given": np.bincount(split.given, minlength=self.num_classes)
                 for s, split in self.splits.items() if split.given is not None}
        if given:  # real label noise: the clean labels, and the given ones training uses
            counts = {f"{s} clean": c for s, c in counts.items()} | given
        width = max(8, *(len(s) + 2 for s in counts))
        lines.append(f"{'label':>5}  {'class':<{name_width}}" + "".join(f"{s:>{width}}" for s in counts))
        for k, name in enumerate(self.class_names):
            short = name if len(name) <= name_width else name[:name_width - 3] + "..."
            lines.append(f"{k:>5}  {short:<{name_width}}" + "".join(f"{c[k]:>{width}}" for c in counts.values()))
        for s, split in self.splits.items():
            if split.given is not None:
                wrong = int(np.sum(split.given != split.labels))
                lines.append(f"{s}: {wrong} of {len(split)} given labels differ from the clean ones "
                             f"(noise rate {wrong / max(len(split), 1):.3f})")
        if given:
            lines.append("training uses the given labels; the test split is scored against the clean ones")
        return "\n".join(lines)

    def validate(self) -> None:
        """Check shapes, dtypes and label ranges; raise :class:`UserError` naming the source on any problem."""
        where = self.source or self.name
        for split_name, split in self.splits.items():
            _check_images(split.images, self.channels, self.image_size, f"{where} [{split_name}]")
            if len(split.images) != len(split.labels):
                raise UserError(f"{where} [{split_name}]: {len(split.images)} images but {len(split.labels)} labels")
            _check_labels(split.labels, self.num_classes, self.multilabel, f"{where} [{split_name}]")
            if split.given is not None:
                _check_labels(split.given, self.num_classes, False, f"{where} [{split_name}, given labels]")
                if split.given.shape != split.labels.shape:
                    raise UserError(f"{where} [{split_name}]: {len(split.given)} given labels for {len(split)} images")
        if len(self.train_indices) != len(self.train):
            raise UserError(f"{where}: train_indices has {len(self.train_indices)} rows, train has {len(self.train)}")


def _check_images(images: np.ndarray, channels: int, size: int, where: str) -> None:
    if images.dtype != np.uint8 or images.ndim != 4:
        raise UserError(f"{where}: images must be uint8 N×H×W×C, got {images.dtype} {images.shape}")
    if images.shape[1:] != (size, size, channels):
        raise UserError(f"{where}: images are {images.shape[1:]}, expected {(size, size, channels)}")


def _check_labels(labels: np.ndarray, num_classes: int, multilabel: bool, where: str) -> None:
    if labels.dtype != np.int64:
        raise UserError(f"{where}: labels must be int64, got {labels.dtype}")
    if multilabel:
        if labels.ndim != 2 or labels.shape[1] != num_classes or not np.isin(labels, (0, 1)).all():
            raise UserError(f"{where}: multi-label labels must be N×{num_classes} of 0/1, got {labels.shape}")
        return
    if labels.ndim != 1:
        raise UserError(f"{where}: labels must be one per image, got shape {labels.shape}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise UserError(f"{where}: label {int(bad[0])} is out of range for {num_classes} classes "
                        f"(valid: 0..{num_classes - 1}); {bad.size} label(s) affected")


def as_labels(raw: np.ndarray, where: str) -> np.ndarray:
    """Labels stored as ``(N,)``, ``(N, 1)`` or ``(N, K)`` -> int64 ``(N,)`` or ``(N, K)``."""
    raw = np.asarray(raw)
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw.reshape(-1)
    if raw.ndim not in (1, 2) or not (np.issubdtype(raw.dtype, np.integer) or _integral_floats(raw)):
        raise UserError(f"{where}: labels must be integers of shape (N,) or (N, 1), got {raw.dtype} {raw.shape}")
    return raw.astype(np.int64)


def _integral_floats(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating) and bool(np.all(np.isfinite(a) & (a == np.round(a))))


def channel_stats(images: np.ndarray) -> tuple[list, list]:
    """Per-channel mean and std of uint8 images (N, H, W, C) in [0, 1] units: the normalisation an encoder records.

    Counted as a 256-bin histogram per channel over blocks of images: exact, and a memory-mapped set larger than
    RAM is read once, block by block, without a float copy and without keeping its pages mapped.
    """
    from ssl_noise.data.cache import release_pages

    c = images.shape[-1]
    counts = np.zeros((c, 256), np.int64)
    step = max(1, (1 << 23) // max(1, int(np.prod(images.shape[1:]))))
    for start in range(0, len(images), step):
        block = np.asarray(images[start:start + step]).reshape(-1, c)
        for k in range(c):
            counts[k] += np.bincount(block[:, k], minlength=256)
        release_pages(images[start:start + step])
    values = np.arange(256) / 255.0
    mean = counts @ values / counts.sum(axis=1)
    std = np.sqrt((counts * (values[None] - mean[:, None]) ** 2).sum(axis=1) / counts.sum(axis=1))
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std.clip(1e-3)]


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> List[np.ndarray]:
    """Split positions ``0..N-1`` into parts with the given fractions, class by class.

    Every part after the first gets at least one image of each class that has at least ``len(fractions)``
    images, so small sets still have every class in val and test. Each part is returned sorted.

    Args:
        labels: int labels ``(N,)``.
        fractions: Fractions of each part, e.g. ``(0.7, 0.1, 0.2)``; they should sum to 1.
        seed: Seed of the shuffle.

    Returns:
        One sorted int64 index array per fraction.
    """
    rng = np.random.default_rng(seed)
    parts: List[List[np.ndarray]] = [[] for _ in fractions]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        counts = [int(round(f * len(members))) for f in fractions[1:]]
        if len(members) >= len(fractions):
            counts = [max(1, c) for c in counts]
        bounds = np.cumsum([len(members) - sum(counts)] + counts)[:-1]
        for part, chunk in zip(parts, np.split(members, bounds)):
            part.append(chunk)
    return [np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64) for p in parts]


def stratified_subset_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Pick ``n`` positions keeping class proportions and at least one image of every class (sorted).

    Args:
        labels: int labels ``(N,)``.
        n: Subset size, between the number of classes present and ``N``.
        seed: Seed of the draw.

    Returns:
        Sorted int64 positions into ``labels``.
    """
    classes, counts = np.unique(labels, return_counts=True)
    if not len(classes) <= n <= len(labels):
        raise UserError(f"subset size {n} must be between {len(classes)} (one per class) and {len(labels)}")
    quota = _allocate(counts, n)
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _allocate(counts: np.ndarray, n: int) -> np.ndarray:
    """Largest-remainder allocation of ``n`` over classes, at least 1 and at most ``counts[k]`` each."""
    exact = counts * n / counts.sum()
    quota = np.clip(np.floor(exact).astype(np.int64), 1, counts)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    while quota.sum() < n:
        for k in order:
            if quota.sum() < n and quota[k] < counts[k]:
                quota[k] += 1
    while quota.sum() > n:  # the minimum of one per class overshot: take from the largest quotas
        quota[np.argmax(quota)] -= 1
    return quota


def subset_train(dataset: ImageDataset, n: Optional[int], seed: int = 0) -> ImageDataset:
    """Return ``dataset`` with a seeded stratified subset of ``n`` train images (val and test untouched).

    ``train_indices`` of the result map each kept row to the source's full train split, composing with any
    earlier subset. ``n=None`` returns the dataset unchanged.
    """
    if n is None:
        return dataset
    if dataset.multilabel:
        raise UserError(f"{dataset.name} is multi-label ({dataset.task}); "
                        f"a stratified subset needs one label per image")
    if n == len(dataset.train):
        return dataset
    picked = stratified_subset_indices(dataset.train.labels, n, seed)
    return dataclasses.replace(dataset, train=dataset.train.take(picked),
                               train_indices=dataset.train_indices[picked])
