"""Advise's first step: what the data is, and which images appear twice (across splits, or under two labels).

Exact duplicates are equal pixel arrays. Near duplicates (a re-saved or re-encoded copy) are found in two steps:
candidate pairs among each image's nearest neighbours in the pixels' principal components (faiss), then kept
only when the two images differ by at most ``NEAR_MAD`` grey levels per pixel on average, a test in pixel space
that a neighbour which merely looks alike does not pass.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np

from ssl_noise.data import ImageDataset
from ssl_noise.estimate import pixel_features
from ssl_noise.knn import search
from ssl_noise.refine.review import shown_path

NEAR_MAD = 4.0        # mean absolute difference (of 255) under which two images count as near duplicates
NEIGHBOURS = 5        # candidates per image
MIN_COSINE = 0.95     # and their similarity in the principal components
SHOWN = 20            # pairs listed in the report


def given_labels(split) -> np.ndarray:
    """The labels a split was annotated with (what training uses)."""
    return split.given if split.given is not None else split.labels


@dataclass
class Look:
    """Sizes, classes and balance, and the duplicate pairs that matter: ``pairs`` rows are dicts with the two
    images' split, position, file and given label, the kind (exact / near) and why it matters."""

    sizes: Dict[str, int]
    class_names: List[str]
    counts: Dict[str, List[int]]       # per split, given labels
    image_size: int
    channels: int
    imbalance: float                   # largest / smallest training class
    has_clean_labels: bool
    pairs: List[Dict] = field(default_factory=list)
    n_exact: int = 0
    n_near: int = 0

    def problems(self) -> Dict[str, int]:
        """Counts of duplicate pairs that cross splits (test leakage) and that carry different labels."""
        return {"cross_split": sum(p["cross_split"] for p in self.pairs),
                "label_conflict": sum(p["label_conflict"] for p in self.pairs)}


def look(data: ImageDataset, *, seed: int = 0) -> Look:
    """Summarise ``data`` and find its exact and near duplicates (:data:`NEAR_MAD`)."""
    splits = data.splits
    where = [(s, i) for s, split in splits.items() for i in range(len(split))]
    images = np.concatenate([split.images for split in splits.values()])
    labels = np.concatenate([given_labels(split) for split in splits.values()])
    paths = [None if p is None else shown_path(p, data.source) for split in splits.values()
             for p in (split.paths if split.paths is not None else [None] * len(split))]
    counts = {s: np.bincount(given_labels(split), minlength=data.num_classes).tolist() for s, split in splits.items()}
    train = np.array(counts["train"])
    found = Look({s: len(split) for s, split in splits.items()}, list(data.class_names), counts, data.image_size,
                 data.channels, float(train.max() / max(train.min(), 1)), data.train.given is not None)
    exact = _exact_pairs(images)
    near = _near_pairs(images, seed=seed) - exact
    found.n_exact, found.n_near = len(exact), len(near)
    for kind, pairs in (("exact", exact), ("near", near)):
        for a, b in sorted(pairs):
            (sa, ia), (sb, ib) = where[a], where[b]
            cross, conflict = sa != sb, labels[a] != labels[b]
            if cross or conflict:
                found.pairs.append({"kind": kind, "a": f"{sa} {ia}", "b": f"{sb} {ib}", "path_a": paths[a],
                                    "path_b": paths[b], "label_a": data.class_names[labels[a]],
                                    "label_b": data.class_names[labels[b]], "cross_split": bool(cross),
                                    "label_conflict": bool(conflict)})
    return found


def _exact_pairs(images: np.ndarray) -> set:
    """Pairs (i < j) of byte-identical images (each image paired with the first of its group)."""
    first: Dict[bytes, int] = {}
    pairs = set()
    for i, image in enumerate(images):
        key = hashlib.sha1(np.ascontiguousarray(image).tobytes()).digest()
        if key in first:
            pairs.add((first[key], i))
        else:
            first[key] = i
    return pairs


def _near_pairs(images: np.ndarray, *, seed: int) -> set:
    """Pairs (i < j) among each image's nearest neighbours whose pixels differ by at most NEAR_MAD on average."""
    if len(images) <= NEIGHBOURS:
        return set()
    features = pixel_features(images, seed=seed)
    sims, idx = search(features, features, NEIGHBOURS, exclude_self=True)
    pairs = set()
    for i, j in zip(*np.nonzero(sims >= MIN_COSINE)):
        a, b = sorted((int(i), int(idx[i, j])))
        if (a, b) in pairs:
            continue
        mad = np.mean(np.abs(images[a].astype(np.int16) - images[b].astype(np.int16)))
        if mad <= NEAR_MAD:
            pairs.add((a, b))
    return pairs
