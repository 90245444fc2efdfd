"""The fine-tuning input pipeline: uint8 images in memory, batches as index lookups, augmentation on the device.

A linear probe without augmentation sees every image through the same fixed function, so its splits are encoded
once (:func:`encoded_splits`) and the head trains on stored features: an epoch costs a matrix product.
"""

from __future__ import annotations

import copy
import json
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from ssl_noise.augment import AugmentConfig, augment, normalize, to_float
from ssl_noise.config import FINETUNE_AUGMENT, FinetuneConfig
from ssl_noise.engine import memory_format
from ssl_noise.io import derive_seed
from ssl_noise.robust import Batch


def chunks(rows: torch.Tensor, batch_size: int) -> List[torch.Tensor]:
    """Batches of ``rows``; a last batch of one sample joins the previous one (BatchNorm needs two samples)."""
    parts = list(rows.split(batch_size))
    if len(parts) > 1 and len(parts[-1]) == 1:
        parts[-2:] = [torch.cat(parts[-2:])]
    return parts


class Inputs:
    """uint8 (N, H, W, C) images -> normalised float model inputs on the device: shuffled, augmented training
    batches (order and augmentation re-seeded from (seed, epoch), so every epoch is reproducible on its own) and
    plain evaluation passes; float (N, feat_dim) features from :func:`encoded_splits` pass through unchanged.
    One gather per batch, no per-sample ``__getitem__``/collate as a DataLoader over a TensorDataset would do."""

    def __init__(self, cfg: FinetuneConfig, normalisation: Dict[str, List[float]], device: str):
        self.cfg, self.norm, self.device = cfg, normalisation, device
        self.aug = AugmentConfig.from_mapping({**FINETUNE_AUGMENT, **cfg.augment})
        self.fmt = memory_format(cfg.channels_last)

    def to_input(self, u8: torch.Tensor, g: Optional[torch.Generator] = None) -> torch.Tensor:
        if u8.is_floating_point():  # (B, feat_dim) features of a frozen encoder (encoded_splits): inputs already
            return u8.to(self.device, non_blocking=True)
        x = to_float(u8.to(self.device, non_blocking=True))  # (B, C, H, W) in [0, 1]
        x = augment(x, self.aug, g) if g is not None else x
        return normalize(x, self.norm["mean"], self.norm["std"]).contiguous(memory_format=self.fmt)

    def batches(self, images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, *, augment: bool = False,
                shuffle: bool = False, epoch: int = 0) -> Iterator[Batch]:
        cfg = self.cfg
        if shuffle:
            order = torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, 0))
            rows = rows[torch.randperm(len(rows), generator=order)]
        g = torch.Generator(device=self.device).manual_seed(derive_seed(cfg.seed, epoch, 1)) if augment else None
        for idx in chunks(rows, cfg.batch_size):
            yield Batch(self.to_input(images[idx], g), labels[idx].to(self.device), idx.to(self.device))

    @torch.no_grad()
    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor], u8: np.ndarray) -> np.ndarray:
        """``fn`` over the plain (non-augmented) images in eval batches, outputs stacked as float32 numpy."""
        step = self.cfg.eval_batch_size
        return torch.cat([fn(self.to_input(torch.from_numpy(u8[s:s + step]))).float().cpu()
                          for s in range(0, len(u8), step)]).numpy()


class EncodedCache:
    """The last :func:`encoded_splits` result, (train_indices, train, val, test). A linear-probe sweep runs the
    cells of one init one after another in a process (noise rates and seeds change the labels, not the images),
    and HSA-NRL's stages train on subsets of the same split, so they all reuse one encoding."""

    def __init__(self) -> None:
        self.key: Optional[str] = None
        self.value: Tuple[np.ndarray, ...] = ()

    def clear(self) -> None:
        self.key, self.value = None, ()

    def lookup(self, key: str, rows: np.ndarray) -> Optional[Tuple[np.ndarray, ...]]:
        """The cached splits when ``key`` matches and every training row in ``rows`` was encoded then."""
        if key != self.key or not len(rows):
            return None
        indices, x_train, x_val, x_test = self.value
        position = np.full(max(int(indices.max()), int(rows.max())) + 1, -1, dtype=np.int64)
        position[indices] = np.arange(len(indices))
        if not np.all(position[rows] >= 0):
            return None
        return x_train[position[rows]], x_val, x_test


#: One per process (see :class:`EncodedCache`); tests and benchmarks clear it.
ENCODED = EncodedCache()


def encoded_splits(prep, inputs: Inputs, device: str, autocast) -> Tuple[np.ndarray, ...]:
    """The model inputs of the train, validation and test splits: the uint8 images themselves, or, for a linear
    probe without augmentation, their (N, feat_dim) float32 features under the frozen encoder (eval mode, the
    run's precision), computed once here instead of in every epoch's forward passes."""
    data, cfg = prep.data, prep.cfg
    splits = (data.train.images, data.val.images, data.test.images)
    if not (cfg.freeze and not cfg.augmentation):
        return splits
    key = json.dumps([prep.init["sha256"], data.name, data.md5, data.image_size, len(data.val), len(data.test),
                      cfg.precision, cfg.channels_last, device])
    rows = np.asarray(data.train_indices, dtype=np.int64)
    cached = ENCODED.lookup(key, rows)
    if cached is not None:
        return cached
    encoder = copy.deepcopy(prep.encoder).to(device, memory_format=inputs.fmt).eval()
    with autocast():
        encoded = tuple(inputs.apply(encoder, images) for images in splits)
    ENCODED.key, ENCODED.value = key, (rows, *encoded)
    return encoded
