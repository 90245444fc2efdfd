"""Batched, per-sample image augmentation on tensors, on whatever device the model runs on.

torchvision and lightly transforms work one image at a time, which at 28 px costs more than the model step; here
every random parameter is drawn for the whole batch from an explicit ``torch.Generator`` and applied with a few
tensor ops (one ``grid_sample`` for crop + flips), so augmentation is cheap and bitwise reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from ssl_noise.errors import UserError


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of one augmentation pipeline (a recipe's ``augment:`` mapping).

    Names follow lightly's ``SimCLRTransform``/``MoCoV2Transform`` so recipes read the same. Colour-jitter order is
    fixed (brightness, contrast, saturation, hue) where torchvision shuffles it, which keeps the code vectorised.
    Gaussian blur is left out on purpose: at 28 px it destroys the image (lightly's own CIFAR advice).
    """

    min_scale: float = 0.2          # RandomResizedCrop area range is (min_scale, max_scale)
    max_scale: float = 1.0          # below 1 only for small "local" crops (DINO's multi-crop)
    hf_prob: float = 0.5            # horizontal flip
    vf_prob: float = 0.0            # vertical flip (valid for microscopy: cells have no "up")
    rr_prob: float = 0.0            # rotation by a random multiple of 90 degrees
    cj_prob: float = 0.8            # probability of applying colour jitter
    cj_bright: float = 0.4
    cj_contrast: float = 0.4
    cj_sat: float = 0.4
    cj_hue: float = 0.1
    random_gray_scale: float = 0.2

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> "AugmentConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values or {}) - known
        if unknown:
            raise UserError(f"unknown augment keys {sorted(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: float(v) for k, v in (values or {}).items()})


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float32 (B, C, H, W) in [0, 1], channels_last in memory (free: it is a view)."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel (x - mean) / std; ``mean``/``std`` have one entry per channel."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


def _bernoulli(n: int, p: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < p


def crop_flip(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator, out_size: int | None = None) -> torch.Tensor:
    """Random resized crop + flips + 90° rotations, all as one per-sample affine warp.

    Scale and aspect ratio are drawn as in ``RandomResizedCrop(scale=(min_scale, max_scale), ratio=(3/4, 4/3))``; crops
    that would leave the image are shrunk to fit rather than re-drawn (torchvision retries ten times, then falls
    back to a centre crop; at these ratios the difference is a few percent of draws).
    """
    b, _, h, w = x.shape
    dev = x.device
    area = _uniform(b, cfg.min_scale, cfg.max_scale, g, dev)
    log_ratio = _uniform(b, math.log(3 / 4), math.log(4 / 3), g, dev)
    ratio = torch.exp(log_ratio)
    sw = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width as a fraction of the image
    sh = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(b, generator=g, device=dev) * 2 - 1) * (1 - sw)  # centre in [-1, 1] coordinates
    cy = (torch.rand(b, generator=g, device=dev) * 2 - 1) * (1 - sh)
    fx = torch.where(_bernoulli(b, cfg.hf_prob, g, dev), -1.0, 1.0)
    fy = torch.where(_bernoulli(b, cfg.vf_prob, g, dev), -1.0, 1.0)
    k = torch.randint(0, 4, (b,), generator=g, device=dev)
    k = torch.where(_bernoulli(b, cfg.rr_prob, g, dev), k, torch.zeros_like(k))
    cos = torch.cos(k * (math.pi / 2)).round()
    sin = torch.sin(k * (math.pi / 2)).round()
    # theta maps output coordinates to input coordinates: scale/flip, then rotate, then translate.
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0] = cos * sw * fx
    theta[:, 0, 1] = -sin * sh * fy
    theta[:, 1, 0] = sin * sw * fx
    theta[:, 1, 1] = cos * sh * fy
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    size = out_size or h
    grid = F.affine_grid(theta.to(x.dtype), [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


_GRAY = (0.299, 0.587, 0.114)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _hue_rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``angle`` radians per sample: a rotation of the chroma plane in YIQ space (linear)."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          dtype=x.dtype, device=x.device)
    from_yiq = torch.linalg.inv(to_yiq)
    c, s = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(x.shape[0], 3, 3, dtype=x.dtype, device=x.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    m = from_yiq @ rot @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", m, x)


def color(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Colour jitter (with probability ``cj_prob``) then random grayscale, per sample. Gray input: brightness and
    contrast only (saturation, hue and grayscale mean nothing for one channel)."""
    b, c = x.shape[:2]
    dev = x.device
    on = _bernoulli(b, cfg.cj_prob, g, dev).view(b, 1, 1, 1)
    one = torch.ones(b, device=dev)

    def factor(strength: float) -> torch.Tensor:
        f = _uniform(b, max(0.0, 1 - strength), 1 + strength, g, dev)
        return torch.where(on.view(b), f, one).view(b, 1, 1, 1).to(x.dtype)

    out = x * factor(cfg.cj_bright)
    lum = _gray(out) if c == 3 else out
    out = (out - lum.mean((1, 2, 3), keepdim=True)) * factor(cfg.cj_contrast) + lum.mean((1, 2, 3), keepdim=True)
    if c == 3:
        gray = _gray(out)
        out = (out - gray) * factor(cfg.cj_sat) + gray
        angle = _uniform(b, -cfg.cj_hue, cfg.cj_hue, g, dev) * (2 * math.pi) * on.view(b)
        out = _hue_rotate(out, angle.to(x.dtype))
        to_gray = _bernoulli(b, cfg.random_gray_scale, g, dev).view(b, 1, 1, 1)
        out = torch.where(to_gray, _gray(out).expand_as(out), out)
    return out.clamp_(0, 1)


def augment(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator, out_size: int | None = None) -> torch.Tensor:
    """The full pipeline on a float batch in [0, 1]: crop/flip/rotate, then colour. Returns a new tensor.

    Runs in float32 even inside a bf16 autocast region (methods call it from their forward): the colour matrices
    and the sampling grid are cheap and lose visible precision in bf16.
    """
    with torch.autocast(x.device.type, enabled=False):
        return color(crop_flip(x.float(), cfg, g, out_size), cfg, g)
