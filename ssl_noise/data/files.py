"""Image sets stored as files: class-per-folder trees, CSV manifests and the Chaoyang JSON layout.

Each image is decoded once with PIL, kept at the files' own size (or resized to a square ``size`` when asked) as
uint8, so training reads arrays as it does for MedMNIST. Gray/RGB, 16-bit and missing-split rules (a split seed
separate from every training seed): docs/formats.md, "Dataset specs".
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ssl_noise.data.dataset import SPLITS, ImageDataset, Split, stratified_split
from ssl_noise.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
VAL_FRACTION = 0.1
CHAOYANG_CLASSES = ("normal", "serrated", "adenocarcinoma", "adenoma")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}

#: Image paths and their int labels for one split, before decoding.
Part = Tuple[List[Path], np.ndarray]


def decode_images(paths: Sequence[Path], size: int) -> np.ndarray:
    """Decode and resize every file to ``size``×``size``; ``N×size×size×1`` if all are gray, else ``×3``.

    Decoded once into the memory-mapped cache of :mod:`ssl_noise.data.cache` and read from there afterwards.

    Raises:
        UserError: A file that PIL cannot read (the message names it).
    """
    from ssl_noise.data.cache import load_images

    return load_images(paths, size, _decode_one, GRAY_MODES)


def native_size(paths: Sequence[Path], source: Path) -> int:
    """The side every file already has (read from the headers only, nothing decoded), so a folder of 64-px tiles
    trains at 64 px unless asked otherwise.

    Raises:
        UserError: Files of several sizes, or non-square files: the message asks for ``--image-size``.
    """
    from PIL import Image

    sizes: Dict[Tuple[int, int], Path] = {}
    for path in paths:
        try:
            with Image.open(path) as img:
                sizes.setdefault(img.size, path)
        except (OSError, ValueError, SyntaxError) as e:
            raise UserError(f"cannot read image {path}: {e}") from e
        if len(sizes) > 1:
            break
    (w, h), first = next(iter(sizes.items()))
    if len(sizes) > 1:
        (w2, h2), other = list(sizes.items())[1]
        raise UserError(f"{source}: images have different sizes ({first.name} is {w}x{h}, {other.name} is "
                        f"{w2}x{h2}); pass --image-size N to resize them all to N x N")
    if w != h:
        raise UserError(f"{source}: images are {w}x{h}, not square; pass --image-size N to resize them to N x N")
    return w


def _decode_one(path: Path, size: int) -> Tuple[np.ndarray, bool]:
    """One file as an RGB ``size``×``size`` array, and whether it was gray (then all channels are equal)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            gray = img.mode in GRAY_MODES
            img = _to_8bit(img) if img.mode in {"I", "F"} or img.mode.startswith("I;16") else img
            img = img.convert("L" if gray else "RGB").resize((size, size), Image.Resampling.BICUBIC)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path}: {e}") from e
    array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return array, gray


def _to_8bit(img):
    """16-bit or float image -> 8-bit ``L``, stretching its own min..max to 0..255."""
    from PIL import Image

    a = np.asarray(img, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")


def _build(name: str, source: Path, class_names: List[str], parts: Dict[str, Part],
           size: Optional[int]) -> ImageDataset:
    """Decode all splits' files in one pass (so the gray/RGB choice covers the whole set) and wrap them; ``size``
    None keeps the files' own size. Each split keeps its file paths, so detections can name the files."""
    paths = [p for split in SPLITS for p in parts[split][0]]
    if not paths:
        raise UserError(f"{source}: no images found")
    size = size or native_size(paths, source)
    images = decode_images(paths, size)
    bounds = np.cumsum([len(parts[s][0]) for s in SPLITS])[:-1]
    splits = {s: Split(chunk, parts[s][1].astype(np.int64), [str(p) for p in parts[s][0]])
              for s, chunk in zip(SPLITS, np.split(images, bounds))}
    return ImageDataset(name=name, class_names=class_names, channels=images.shape[-1], image_size=size,
                        **splits, source=source)


def _take(part: Part, indices: np.ndarray) -> Part:
    return [part[0][i] for i in indices], part[1][indices]


def _split_three(part: Part, seed: int) -> Dict[str, Part]:
    """Seeded stratified 70/10/20 train/val/test."""
    return {s: _take(part, idx) for s, idx in zip(SPLITS, stratified_split(part[1], SPLIT_FRACTIONS, seed))}


def _carve_val(train: Part, seed: int) -> Tuple[Part, Part]:
    """Seeded stratified 10 % of ``train`` as validation; returns ``(train, val)``."""
    keep, val = stratified_split(train[1], (1 - VAL_FRACTION, VAL_FRACTION), seed)
    return _take(train, keep), _take(train, val)


def _complete(parts: Dict[str, Part], source: Path, seed: int) -> Dict[str, Part]:
    """Given train and test, carve val from train when it is missing."""
    for needed in ("train", "test"):
        if not parts.get(needed) or not parts[needed][0]:
            raise UserError(f"{source}: the {needed} split is empty or missing")
    if parts.get("val") and parts["val"][0]:
        return parts
    train, val = _carve_val(parts["train"], seed)
    return {"train": train, "val": val, "test": parts["test"]}


# --- image folders -------------------------------------------------------------------------------------------

def _class_dirs(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> List[Path]:
    """Image files under ``folder`` (any depth), sorted, hidden files skipped."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _list_classes(folder: Path, class_names: List[str], require_all: bool) -> Part:
    """Files of ``folder/<class>/...``; a class folder not in ``class_names`` is an error."""
    paths, labels = [], []
    for class_dir in _class_dirs(folder):
        if class_dir.name not in class_names:
            raise UserError(f"{class_dir}: class {class_dir.name!r} does not exist in the train split")
        files = _image_files(class_dir)
        if require_all and not files:
            raise UserError(f"class folder {class_dir} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        paths += files
        labels += [class_names.index(class_dir.name)] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


def load_folder(root: str | os.PathLike, size: Optional[int] = None, split_seed: int = 0) -> ImageDataset:
    """Load ``root/<class>/<image>`` or ``root/{train,val,test}/<class>/<image>``.

    Without split folders the set is split 70/10/20 (stratified, ``split_seed``); with ``train/`` and
    ``test/`` but no ``val/``, 10 % of train becomes val. Class names are the train folder's sub-folder names.

    Raises:
        UserError: Missing or empty folder, a class without images, an unreadable image.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"no such image folder: {root}")
    top = root / "train" if (root / "train").is_dir() else root
    class_names = [d.name for d in _class_dirs(top)]
    if not class_names:
        raise UserError(f"{top} has no class sub-folders; expected {top}/<class name>/<image file>")
    if top == root:
        parts = _split_three(_list_classes(root, class_names, require_all=True), split_seed)
    else:
        parts = {s: _list_classes(root / s, class_names, require_all=s == "train")
                 for s in SPLITS if (root / s).is_dir()}
        parts = _complete(parts, root, split_seed)
    return _build(root.resolve().name, root, class_names, parts, size)


# --- CSV manifests -------------------------------------------------------------------------------------------

def encode_labels(values: Sequence[str], where: str) -> Tuple[List[str], np.ndarray]:
    """Class names and int labels from label strings: all integers -> used as is, else sorted names."""
    values = [str(v).strip() for v in values]
    if "" in values:
        raise UserError(f"{where}: row {values.index('') + 1} has an empty label")
    numeric = [bool(re.fullmatch(r"-?\d+", v)) for v in values]
    if any(numeric) and not all(numeric):  # `x` among 0/1 is a typo, not a third class
        odd = numeric.index(sum(numeric) < len(numeric) / 2)
        raise UserError(f"{where}: labels mix class indices and names (row {odd + 1}: {values[odd]!r}); use "
                        f"integers 0..K-1 throughout or class names throughout")
    if all(numeric):
        labels = np.asarray([int(v) for v in values], dtype=np.int64)
        unused = sorted(set(range(max(int(labels.max()), 0) + 1)) - set(labels.tolist()))
        if unused:  # one stray 255 among 0/1 would otherwise make a 256-class set
            raise UserError(f"{where}: label {int(labels.max())} implies {int(labels.max()) + 1} classes but "
                            f"{len(unused)} of them (e.g. {unused[0]}) have no row; labels must be 0..K-1")
        return [str(k) for k in range(max(int(labels.max()), 0) + 1)], labels
    names = sorted(set(values))
    index = {name: k for k, name in enumerate(names)}
    return names, np.asarray([index[v] for v in values], dtype=np.int64)


def _leading_comments(path: Path) -> List[str]:
    """The ``#`` lines that open a manifest (its ``# name:`` line and notes), above the header."""
    lines = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.startswith("#"):
                break
            lines.append(line)
    return lines


def manifest_name(path: Path) -> Optional[str]:
    """The name a manifest gives its data in a ``# name: <name>`` line above the header, else None (the file's
    stem is the name). Two views of the same files (a folder and a manifest over it) can so share one name, and
    with it their registry entries. Read from the leading comment lines only, so naming costs nothing.

    Raises:
        UserError: A name that is not a plain file-name component.
    """
    from ssl_noise.io import check_name

    try:
        comments = _leading_comments(path)
    except OSError:
        return None
    for line in comments:
        key, sep, value = line[1:].partition(":")
        if sep and key.strip().lower() == "name":
            return check_name(value.strip(), f"manifest {path}: name")
    return None


def _read_manifest(path: Path):
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, comment=None,
                            skiprows=len(_leading_comments(path)))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"cannot parse manifest {path}: {e}") from e
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    missing = [c for c in ("path", "label") if c not in frame.columns]
    if missing:
        raise UserError(f"manifest {path} lacks column(s) {', '.join(missing)} "
                        f"(found: {', '.join(frame.columns) or 'none'}; expected path,label[,split])")
    if frame.empty:
        raise UserError(f"manifest {path} has no rows")
    return frame


def _split_names(values: Sequence[str], where: str) -> np.ndarray:
    names = [SPLIT_ALIASES.get(str(v).strip().lower()) for v in values]
    if None in names:
        bad = values[names.index(None)]
        raise UserError(f"{where}: unknown split {bad!r}; use train, val or test")
    return np.asarray(names)


def load_csv(path: str | os.PathLike, size: Optional[int] = None, split_seed: int = 0,
             label_column: Optional[str] = None) -> ImageDataset:
    """Load a manifest with columns ``path,label[,split]`` (relative paths are relative to the CSV's folder).

    Labels are integers or class-name strings (names are sorted to give the label order). Without a split
    column the set is split 70/10/20; with one, a missing val split is carved from train.

    Real label noise (:func:`_label_rule`): a ``clean_label`` column holds the true labels, and the training label
    is ``label``, another column (``label_column``, e.g. one annotator's) or the ``majority`` of the annotator
    columns (``annotator*``/``rater*``); each split's ``given`` then holds the training labels.

    Raises:
        UserError: Missing columns, empty manifest, unknown split names, unreadable images.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such manifest: {path}")
    frame = _read_manifest(path)
    files = [p if p.is_absolute() else path.parent / p for p in map(Path, frame["path"].str.strip())]
    class_names, labels, given = _label_rule(frame, label_column, f"manifest {path}")
    rows = list(range(len(files)))  # splits are drawn over rows, so the given labels follow them
    if "split" not in frame.columns:
        parts = _split_three((rows, labels), split_seed)
    else:
        which = _split_names(list(frame["split"]), f"manifest {path}")
        parts = {s: _take((rows, labels), np.flatnonzero(which == s)) for s in SPLITS}
        parts = _complete(parts, path, split_seed)
    dataset = _build(manifest_name(path) or path.stem, path, class_names,
                     {s: ([files[i] for i in r], y) for s, (r, y) in parts.items()}, size)
    if given is None:
        return dataset
    return dataclasses.replace(dataset, **{s: dataclasses.replace(dataset.splits[s], given=given[parts[s][0]])
                                           for s in SPLITS})


ANNOTATOR_PREFIXES = ("annotator", "rater")


def _label_rule(frame, label_column: Optional[str], where: str) -> Tuple[List[str], np.ndarray, Optional[np.ndarray]]:
    """(class names, labels, given or None): with a ``clean_label`` column, labels = clean_label and given = the
    training label (``label``, the column ``label_column`` or ``majority`` over the annotator columns; ties go to
    the earliest tied annotator column); without one, labels = the training label and given = None. All label
    columns share one encoding."""
    annotators = [c for c in frame.columns if c.startswith(ANNOTATOR_PREFIXES)]
    rule = None if label_column is None else label_column.strip().lower()
    if rule is None and "clean_label" not in frame.columns:
        return (*encode_labels(list(frame["label"]), where), None)
    if rule not in (None, "majority") and rule not in frame.columns:
        raise UserError(f"{where}: no label column {label_column!r} (columns: {', '.join(frame.columns)})")
    if rule == "majority" and len(annotators) < 2:
        raise UserError(f"{where}: the majority needs two or more annotator columns (annotator*/rater*), found "
                        f"{len(annotators)}")
    columns = list(dict.fromkeys(["label"] + (["clean_label"] if "clean_label" in frame.columns else []) +
                                 annotators + ([rule] if rule not in (None, "majority") else [])))
    names, codes = encode_labels([v for c in columns for v in frame[c]], where)
    coded = dict(zip(columns, codes.reshape(len(columns), -1)))
    if rule == "majority":
        votes = np.stack([coded[c] for c in annotators], axis=1)                 # (N, A)
        counts = np.zeros((len(votes), len(names)), dtype=np.int64)
        np.add.at(counts, (np.repeat(np.arange(len(votes)), votes.shape[1]), votes.ravel()), 1)
        top = counts[np.arange(len(votes))[:, None], votes] == counts.max(axis=1, keepdims=True)
        train = votes[np.arange(len(votes)), top.argmax(axis=1)]
    else:
        train = coded[rule or "label"]
    if "clean_label" not in coded:
        return names, train, None
    return names, coded["clean_label"], train


# --- Chaoyang JSON -------------------------------------------------------------------------------------------

def _read_chaoyang_json(path: Path) -> Tuple[List[str], np.ndarray]:
    if not path.is_file():
        raise UserError(f"Chaoyang folder lacks {path.name}: {path} not found")
    try:
        records = json.loads(path.read_text())
        names = [str(r["name"]) for r in records]
        labels = np.asarray([int(r["label"]) for r in records], dtype=np.int64)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from e
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: expected a list of {{\"name\": ..., \"label\": int}} records ({e})") from e
    return names, labels


def load_chaoyang(root: str | os.PathLike, size: Optional[int] = None, split_seed: int = 0) -> ImageDataset:
    """Load the Chaoyang layout: ``train.json`` and ``test.json`` listing ``{"name", "label"}`` records.

    ``name`` is relative to ``root``. Val is 10 % of train (stratified, ``split_seed``). Labels 0..3 are named
    normal, serrated, adenocarcinoma, adenoma as in the Chaoyang release.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"no such Chaoyang folder: {root}")
    parts: Dict[str, Part] = {}
    for split in ("train", "test"):
        names, labels = _read_chaoyang_json(root / f"{split}.json")
        parts[split] = ([root / n for n in names], labels)
    parts = _complete(parts, root, split_seed)
    top = max(int(p[1].max()) for p in parts.values() if len(p[1]))
    class_names = list(CHAOYANG_CLASSES) if top < len(CHAOYANG_CLASSES) else [str(k) for k in range(top + 1)]
    return _build("chaoyang", root, class_names, parts, size)
