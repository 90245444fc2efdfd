"""Jigsaw puzzles (Noroozi & Favaro, ECCV 2016, arXiv 1603.09246): shuffle a grid of tiles with one of a fixed set of
permutations and classify which one from the tiles' features.

The whole image first gets the spec's crop/flip augmentation (flips and quarter turns cannot make the label
ambiguous: the tiles turn with the image). Permutation set, tile sizes and shortcut blockers: docs/methods.md,
"Jigsaw", and :func:`hamming_permutations`.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssl_noise.augment import color, crop_flip
from ssl_noise.config import resolve
from ssl_noise.errors import UserError
from ssl_noise.methods.base import METHODS, InputSpec, SSLMethod

_MIN_TILE = 4         # px; below this a ResNet sees too little of a tile to compare it with the others
_POOL_SIZE = 100_000  # random candidates when grid_cells! is too large to enumerate


@dataclass
class JigsawArgs:
    """Hyper-parameters of :class:`Jigsaw` (the recipe's ``method_args``)."""

    grid: int = 3                       # tiles per side (paper: 3)
    num_permutations: int = 100         # classes of the pretext task (the paper studies 100 to 1000)
    tile_jitter: Optional[int] = None   # px of random placement inside a cell; None: about 15% of the cell
                                        # (paper: 64 px tiles placed at random in 75 px cells)
    tile_gap: Optional[int] = None      # px always left between neighbouring tiles; None: about 10% of the cell
                                        # (1 px at 28 px; 0 lets tiles touch)
    tile_norm: bool = True              # normalise each tile by its own per-channel mean and std (paper)
    perm_seed: int = 0                  # seed of the permutation set
    hidden_dim: int = 1024              # MLP width on the concatenated tile features

    def validate(self) -> None:
        if self.grid < 2:
            raise UserError(f"jigsaw grid must be >= 2, got {self.grid}")
        top = _max_permutations(self.grid**2)
        if not 2 <= self.num_permutations <= top:
            raise UserError(f"jigsaw num_permutations must be in [2, {top}] for a {self.grid}x{self.grid} grid, "
                            f"got {self.num_permutations}")
        if self.tile_jitter is not None and self.tile_jitter < 0:
            raise UserError(f"jigsaw tile_jitter must be >= 0, got {self.tile_jitter}")
        if self.tile_gap is not None and self.tile_gap < 0:
            raise UserError(f"jigsaw tile_gap must be >= 0, got {self.tile_gap}")
        if self.hidden_dim < 1:
            raise UserError(f"jigsaw hidden_dim must be >= 1, got {self.hidden_dim}")

    def jitter(self, cell: int) -> int:
        """The jitter in px for a cell of ``cell`` px (the explicit value, or about 15% of the cell, at least 1)."""
        return self.tile_jitter if self.tile_jitter is not None else max(1, round(0.15 * cell))

    def gap(self, cell: int) -> int:
        """The guaranteed gap in px between neighbouring tiles (the explicit value, or about 10% of the cell)."""
        return self.tile_gap if self.tile_gap is not None else round(0.1 * cell)

    def tile_size(self, cell: int) -> int:
        """Tile side in px for a cell of ``cell`` px: what the gap and the jitter leave of it."""
        return cell - self.gap(cell) - self.jitter(cell)


def _max_permutations(grid_cells: int) -> int:
    return math.factorial(grid_cells) if grid_cells <= 9 else _POOL_SIZE // 2


@functools.lru_cache(maxsize=8)
def _hamming_permutations(n: int, grid_cells: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if grid_cells <= 9:
        cand = np.array(list(itertools.permutations(range(grid_cells))), dtype=np.int8)  # cand: (k!, k)
    else:
        pool = np.argsort(rng.random((_POOL_SIZE, grid_cells)), axis=1).astype(np.int8)
        cand = np.unique(pool, axis=0)
    chosen = [int(rng.integers(len(cand)))]
    min_dist = np.full(len(cand), grid_cells + 1, dtype=np.int8)  # min Hamming distance to the chosen set
    for _ in range(n - 1):
        d = (cand != cand[chosen[-1]]).sum(axis=1, dtype=np.int8)  # d: (k!,) distance to the newest member
        np.minimum(min_dist, d, out=min_dist)                      # chosen rows are at 0, never picked again
        ties = np.flatnonzero(min_dist == min_dist.max())
        chosen.append(int(ties[rng.integers(len(ties))]))
    out = cand[chosen].astype(np.int64)
    out.flags.writeable = False
    return out


def hamming_permutations(n: int, grid_cells: int = 9, seed: int = 0) -> np.ndarray:
    """A deterministic set of ``n`` permutations of ``range(grid_cells)`` far apart in Hamming distance.

    Greedy max-min selection: a seeded random first permutation, then each step adds the candidate whose smallest
    Hamming distance (number of positions that differ) to the permutations chosen so far is largest, ties broken
    at random with the same seed. Candidates are all ``grid_cells!`` permutations up to 9 cells (about 1 s for 100
    on a CPU, 8 s for 1000), else 100,000 seeded random ones. Max-min guarantees a floor (for 100 permutations of
    9 tiles at least 6 positions differ; no set of more than 72 reaches 8) where the paper ranks by summed distance.

    Args:
        n: number of permutations, ``1 <= n <= grid_cells!`` (at most 50,000 above 9 cells).
        grid_cells: tiles per puzzle (9 for a 3×3 grid).
        seed: seed of ``numpy.random.default_rng`` for the first pick and the tie breaks.

    Returns:
        int64 array (n, grid_cells), distinct rows; row ``p`` means "position j shows tile ``p[j]``".

    Raises:
        UserError: ``n`` out of range.

    >>> p = hamming_permutations(10, grid_cells=4, seed=0)
    >>> p.shape, sorted(p[0].tolist())
    ((10, 4), [0, 1, 2, 3])
    """
    limit = _max_permutations(grid_cells)
    if not 1 <= n <= limit:
        raise UserError(f"cannot choose {n} permutations of {grid_cells} tiles (at most {limit})")
    return _hamming_permutations(n, grid_cells, seed).copy()


def shuffle_tiles(tiles: torch.Tensor, perms: torch.Tensor, g: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Shuffle each sample's tiles by a permutation drawn from ``perms`` with ``g``.

    Args:
        tiles: (B, n, ...) tiles in row-major cell order.
        perms: (P, n) int64 permutation set.
        g: generator on ``tiles``' device.

    Returns:
        ``(shuffled, label)``: ``shuffled[b, j] == tiles[b, perms[label[b], j]]``; ``label`` (B,) int64 in [0, P).
    """
    b = tiles.shape[0]
    label = torch.randint(0, len(perms), (b,), generator=g, device=tiles.device)  # label: (B,)
    order = perms[label]                                                          # order: (B, n)
    return tiles[torch.arange(b, device=tiles.device)[:, None], order], label


def normalize_tiles(tiles: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each tile and channel to mean 0 and standard deviation 1 over its own pixels (a flat tile only centred).

    The paper normalises every tile on its own so that the puzzle cannot be solved by matching the tiles' brightness
    and colour statistics (chromatic aberration, vignetting) instead of their content.

    Args:
        tiles: (N, C, t, t) float tiles.

    Returns:
        (N, C, t, t) normalised tiles, ``channels_last`` like :meth:`SSLMethod.normalize`'s output.
    """
    mean = tiles.mean(dim=(-2, -1), keepdim=True)                             # (N, C, 1, 1)
    std = tiles.std(dim=(-2, -1), keepdim=True)                               # (N, C, 1, 1)
    std = torch.where(std > eps, std, torch.ones_like(std))
    return ((tiles - mean) / std).contiguous(memory_format=torch.channels_last)


@METHODS.register("jigsaw")
class Jigsaw(SSLMethod):
    """Jigsaw puzzles (Noroozi & Favaro, 2016, "Unsupervised Learning of Visual Representations by Solving Jigsaw
    Puzzles", https://arxiv.org/abs/1603.09246).

    Args:
        backbone: the shared tile encoder (torchvision ResNet with ``fc = Identity``), trained and exported.
        feat_dim: its output width.
        spec: input contract (channels, size, normalisation, augmentation recipe).
        args: mapping validated into :class:`JigsawArgs`.

    Raises:
        UserError: images too small for the grid (see :meth:`check_input`).

    >>> from ssl_noise.backbones import build_backbone
    >>> net, d = build_backbone("resnet18", stem="cifar", in_channels=1)
    >>> method = Jigsaw(net, d, InputSpec(1, 16, [0.5], [0.5]), {"num_permutations": 10})
    >>> method(torch.rand(4, 1, 16, 16), torch.Generator().manual_seed(0)).shape
    torch.Size([])
    """

    Args = JigsawArgs

    @classmethod
    def check_input(cls, spec: InputSpec, args: Mapping[str, Any] | None = None) -> None:
        a = args if isinstance(args, JigsawArgs) else resolve(JigsawArgs, args)
        cell = spec.image_size // a.grid
        if a.tile_size(cell) < _MIN_TILE:
            need = next(a.grid * c for c in itertools.count(_MIN_TILE) if a.tile_size(c) >= _MIN_TILE)
            raise UserError(f"jigsaw needs images of at least {need} px for a {a.grid}x{a.grid} grid "
                            f"(tiles of {_MIN_TILE} px or more after gap and jitter); got {spec.image_size} px")

    def __init__(self, backbone: nn.Module, feat_dim: int, spec: InputSpec, args=None):
        super().__init__(backbone, feat_dim, spec, args)
        a = self.args
        self.check_input(spec, a)
        n = a.grid**2
        perms = hamming_permutations(a.num_permutations, n, a.perm_seed)
        self.register_buffer("perms", torch.from_numpy(perms), persistent=False)  # (P, n), rebuilt from the seed
        self.head = nn.Sequential(
            nn.Linear(n * feat_dim, a.hidden_dim), nn.BatchNorm1d(a.hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(a.hidden_dim, a.num_permutations),
        )

    def smallest_input(self) -> int:
        return self.args.tile_size(self.spec.image_size // self.args.grid)

    def tiles(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Cut (B, C, H, W) into (B, grid², C, t, t) tiles in row-major cell order, t = cell - gap - jitter.

        Each tile sits at a random offset in ``[gap // 2, gap // 2 + jitter]`` inside its cell, so two neighbouring
        tiles are always at least ``tile_gap`` px apart (and at most ``gap + 2 jitter``): no edge or line runs
        straight from one tile into the next, the shortcut the paper's gaps are there to block.
        """
        b, _, h, w = x.shape
        grid, dev = self.args.grid, x.device
        cell = min(h, w) // grid
        jitter = self.args.jitter(cell)
        t = self.args.tile_size(cell)
        n = grid * grid
        off = torch.randint(0, jitter + 1, (b, n, 2), generator=g, device=dev)  # off: (B, n, 2) row/col offset
        off = off + self.args.gap(cell) // 2
        idx = torch.arange(n, device=dev)
        top = (idx // grid) * cell + off[..., 0]                               # top: (B, n)
        left = (idx % grid) * cell + off[..., 1]                               # left: (B, n)
        span = torch.arange(t, device=dev)
        rows = (top[..., None] + span)[..., :, None]                           # rows: (B, n, t, 1)
        cols = (left[..., None] + span)[..., None, :]                          # cols: (B, n, 1, t)
        bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
        return x[bi, :, rows, cols].permute(0, 1, 4, 2, 3)                     # (B, n, t, t, C) -> (B, n, C, t, t)

    def forward(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # x: (B, C, H, W) in [0, 1]
        b, c = x.shape[:2]
        x = crop_flip(x, self.spec.augment, g)                                 # whole-image crop/flip
        tiles = self.tiles(x, g)                                               # tiles: (B, n, C, t, t)
        n, t = tiles.shape[1], tiles.shape[-1]
        tiles = color(tiles.reshape(b * n, c, t, t), self.spec.augment, g)     # per-tile colour: (B*n, C, t, t)
        tiles = normalize_tiles(tiles) if self.args.tile_norm else self.normalize(tiles)
        tiles = tiles.reshape(b, n, c, t, t)
        shuffled, label = shuffle_tiles(tiles, self.perms, g)                 # (B, n, C, t, t), (B,)
        feats = self.backbone(shuffled.flatten(0, 1))                          # feats: (B*n, F)
        logits = self.head(feats.view(b, n * self.feat_dim))                   # logits: (B, P)
        return F.cross_entropy(logits, label)

    def extra_files(self) -> Dict[str, Any]:
        return {"permutations.json": self.perms.tolist()}
