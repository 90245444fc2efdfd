"""Co-teaching with Variance-of-Gradients selection: Active Label Refinement's training phase (Khanal et al.,
MICCAI 2024, arXiv 2407.05973), with VoG from Agarwal, D'souza & Hooker (CVPR 2022, arXiv 2008.11600).

After the warm-up, part of each network's pick is the lowest-VoG samples among those loss alone would reject, so
clean but hard samples (often minority classes) stay in training.
Details, defaults, memory and deviations: docs/methods.md#vog-vogpy
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

import numpy as np
import torch

from ssl_noise.errors import UserError
from ssl_noise.robust.base import ROBUST, Batch, Classifier, RobustMethod
from ssl_noise.robust.coteaching import (CoteachingArgs, cross_update, forget_rate, pair_outputs, setup_pair,
                                         short_ramp, small_loss_pick)


@dataclass
class VoGArgs(CoteachingArgs):
    mix_ratio: float = 0.2          # lambda: share of each batch's pick made by lowest VoG (0: Co-teaching)
    vog_window: int = 5             # W epochs of gradient vectors
    warmup: Optional[int] = None    # first (0-based) epoch with VoG selection; None: num_gradual
    vog_inputs: str = "eval"        # eval: extra eval-mode pass on plain images | train: the training pass

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.mix_ratio <= 1:
            raise UserError(f"mix_ratio must be in [0, 1], got {self.mix_ratio}")
        if self.vog_window < 2:
            raise UserError(f"vog_window must be at least 2 epochs (a standard deviation), got {self.vog_window}")
        if self.warmup is not None and self.warmup < 0:
            raise UserError(f"warmup must be non-negative, got {self.warmup}")
        if self.vog_inputs not in ("eval", "train"):
            raise UserError(f"unknown vog_inputs {self.vog_inputs!r}; choose from: eval, train")


def gradient_rows(logits: torch.Tensor, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, D + 1) per-sample gradient of CE w.r.t. the final layer's row of label ``y``: ``(p_y - 1) * [h, 1]``.

    ``logits``: (B, K), ``h``: (B, D) features entering the final layer, ``y``: (B,) labels. Float32.
    """
    p_y = logits.detach().float().softmax(dim=1).gather(1, y[:, None])          # (B, 1)
    h = h.detach().float()
    return (p_y - 1.0) * torch.cat([h, torch.ones_like(h[:, :1])], dim=1)        # (B, D + 1)


class GradientWindow:
    """The last ``window`` epochs of per-sample gradient vectors, float16 (W, N, D + 1), and their VoG."""

    def __init__(self, window: int, n: int, dim: int, device: str):
        self.data = torch.zeros(window, n, dim, dtype=torch.float16, device=device)
        self.epochs: list = []  # epochs held, oldest first

    def record(self, epoch: int, index: torch.Tensor, rows: torch.Tensor) -> None:
        """Store ``rows`` (B, D + 1) of training rows ``index`` (B,) for ``epoch`` (the oldest epoch is replaced)."""
        if not self.epochs or self.epochs[-1] != epoch:
            self.epochs = (self.epochs + [epoch])[-len(self.data):]
        self.data[epoch % len(self.data), index] = rows.to(torch.float16)

    def vog(self, chunk: int = 8192) -> torch.Tensor:
        """(N,) mean over dimensions of the population std across the epochs held (float32; chunked)."""
        slots = torch.as_tensor([e % len(self.data) for e in self.epochs], device=self.data.device)
        out = torch.empty(self.data.shape[1], dtype=torch.float32, device=self.data.device)
        for s in range(0, len(out), chunk):
            block = self.data[slots, s:s + chunk].float()                          # (W, n, D + 1)
            out[s:s + chunk] = block.std(dim=0, unbiased=False).mean(dim=1)
        return out


def mixed_pick(loss: torch.Tensor, vog: torch.Tensor, keep: int, mix_ratio: float) -> torch.Tensor:
    """(B,) bool: ``keep - floor(mix_ratio * keep)`` smallest losses plus the ``floor(mix_ratio * keep)`` lowest-VoG
    samples among the rest (ALR's ``loss_coteaching_select_with_VOG_mixed``; it drops one sample to rounding where
    ``floor((1 - lambda) R) + floor(lambda R) < R``, here the pick is always exactly R)."""
    n_vog = math.floor(mix_ratio * keep + 1e-9)
    mask = small_loss_pick(loss, keep - n_vog)
    if n_vog:
        rest = torch.nonzero(~mask).squeeze(1)
        mask[rest[torch.sort(vog[rest], stable=True).indices[:n_vog]]] = True
    return mask


@ROBUST.register("vog")
class VoGCoTeaching(RobustMethod):
    """Co-teaching whose per-batch pick mixes small loss with low Variance of Gradients (arXiv 2407.05973).

    >>> from ssl_noise.robust import ROBUST
    >>> ROBUST["vog"].Args().mix_ratio
    0.2
    """

    Args = VoGArgs

    def setup(self) -> None:
        setup_pair(self)
        args, n = self.args, len(self.ctx.labels)
        self.warmup = self.num_gradual if args.warmup is None else args.warmup
        self.record_from = max(0, self.warmup - args.vog_window)
        dim = self.net1.head.in_features + 1
        self.windows = [GradientWindow(args.vog_window, n, dim, self.ctx.device) for _ in self.nets]
        self.scores: Optional[list] = None  # [(N,) float32] per network, from the epochs before the current one

    @classmethod
    def needs_noise_rate(cls, args) -> bool:
        return True

    def inactive_reason(self) -> Optional[str]:
        if self.warmup + 2 > self.ctx.epochs or self.args.mix_ratio == 0:
            return (f"VoG never mixes in: its selection starts at epoch {self.warmup + 1} of {self.ctx.epochs} and "
                    f"needs two epochs of gradients first")
        if self.record_from + self.args.vog_window > self.ctx.epochs:
            return f"VoG's window of {self.args.vog_window} epochs never fills in {self.ctx.epochs} epochs"
        return short_ramp(self)

    @property
    def nets(self) -> List[Classifier]:
        return [self.net1, self.net2]

    def train_step(self, batch: Batch, epoch: int) -> Dict[str, torch.Tensor]:
        return cross_update(self, batch, epoch, observe=self.observe)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.net1(x) + self.net2(x)

    def vog_active(self, epoch: int) -> bool:
        return epoch >= self.warmup and self.scores is not None and self.args.mix_ratio > 0

    def pick(self, k: int, loss: torch.Tensor, batch: Batch, keep: int, epoch: int) -> torch.Tensor:
        if not self.vog_active(epoch):
            return small_loss_pick(loss, keep)
        return mixed_pick(loss, self.scores[k][batch.index], keep, self.args.mix_ratio)

    def observe(self, batch: Batch, out, epoch: int) -> None:
        if self.args.vog_inputs == "train" and epoch >= self.record_from:
            for window, (logits, h) in zip(self.windows, out):
                window.record(epoch, batch.index, gradient_rows(logits, h, batch.y))

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> Dict[str, float]:
        stats = {"forget_rate": forget_rate(epoch, self.tau_max, self.num_gradual),
                 "vog_active": float(self.vog_active(epoch))}
        if epoch < self.record_from:
            return stats
        if self.args.vog_inputs == "eval":
            self.eval()
            with self.ctx.autocast():
                for batch in self.ctx.batches(augment=False, shuffle=False):
                    for window, net in zip(self.windows, self.nets):
                        logits, h = net(batch.x, return_features=True)
                        window.record(epoch, batch.index, gradient_rows(logits, h, batch.y))
            self.train()
        if len(self.windows[0].epochs) >= 2:
            self.scores = [window.vog() for window in self.windows]
            stats["vog_mean"] = float(self.scores[0].mean())
        return stats

    def outputs(self) -> Dict[str, np.ndarray]:
        vog = (np.full(len(self.ctx.labels), np.nan, np.float32) if self.scores is None
               else self.scores[0].cpu().numpy().astype(np.float32))
        return {**pair_outputs(self), "vog": vog}

    def epoch_state(self) -> Dict[str, np.ndarray]:
        """Co-teaching's record, both gradient windows (float16) with their epochs, and the current VoG scores."""
        state = {f"selection.{k}": v for k, v in self.selection.state().items()}
        for k, window in enumerate(self.windows):
            state[f"window{k}"] = window.data.cpu().numpy()
            state[f"window{k}_epochs"] = np.asarray(window.epochs, dtype=np.int64)
        if self.scores is not None:
            state["scores"] = torch.stack(self.scores).cpu().numpy()
        return state

    def load_epoch_state(self, state: Mapping[str, np.ndarray]) -> None:
        self.selection.load({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("selection.")})
        for k, window in enumerate(self.windows):
            window.data.copy_(torch.from_numpy(np.asarray(state[f"window{k}"])))
            window.epochs = [int(e) for e in state[f"window{k}_epochs"]]
        self.scores = (None if "scores" not in state
                       else list(torch.from_numpy(np.asarray(state["scores"])).to(self.ctx.device).unbind(0)))
