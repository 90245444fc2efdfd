"""Co-teaching (Han, Yao, Yu, Niu, Xu, Hu, Tsang & Sugiyama, NeurIPS 2018, arXiv 1804.06872).

Two networks from the same ``--init`` each pick their small-loss samples per batch and update their peer on them;
the forget rate ramps up to the estimated noise rate. :mod:`ssl_noise.robust.vog` reuses its pieces.
Details, defaults, outputs and deviations: docs/methods.md#co-teaching-coteachingpy
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ssl_noise.engine import Recipe, scaled_epochs
from ssl_noise.errors import UserError
from ssl_noise.robust.base import ROBUST, Batch, Classifier, RobustMethod, label_prob


@dataclass
class CoteachingArgs:
    noise_estimate: Optional[float] = None  # tau_max; None: ctx.noise_rate (--noise-estimate, auto by default)
    num_gradual: Optional[int] = None       # T_k epochs of linear ramp; None: min(10, max(1, epochs // 3))

    def validate(self) -> None:
        if self.noise_estimate is not None and not 0 <= self.noise_estimate < 1:
            raise UserError(f"noise_estimate must be in [0, 1), got {self.noise_estimate}")
        if self.num_gradual is not None and self.num_gradual < 1:
            raise UserError(f"num_gradual must be at least 1, got {self.num_gradual}")


def forget_rate(epoch: int, tau_max: float, num_gradual: int) -> float:
    """``tau_max * min(epoch / num_gradual, 1)`` for a 0-based epoch.

    >>> [forget_rate(e, 0.4, 4) for e in (0, 2, 4, 9)]
    [0.0, 0.2, 0.4, 0.4]
    """
    return tau_max * min(epoch / num_gradual, 1.0)


def keep_count(batch_size: int, tau: float) -> int:
    """``floor((1 - tau) * B)``, at least 1 (a loss over no sample is undefined).

    >>> keep_count(128, 0.4), keep_count(3, 0.9)
    (76, 1)
    """
    return max(1, math.floor((1.0 - tau) * batch_size + 1e-9))


def small_loss_pick(loss: torch.Tensor, keep: int) -> torch.Tensor:
    """(B,) bool mask of the ``keep`` smallest losses (ties: the earlier position)."""
    order = torch.sort(loss, stable=True).indices
    mask = torch.zeros_like(loss, dtype=torch.bool)
    mask[order[:keep]] = True
    return mask


class Selection:
    """Network 1's picks across training: how often each sample was picked, and the latest epoch's pick."""

    def __init__(self, n: int, device: str):
        self.picked = torch.zeros(n, dtype=torch.int32, device=device)   # epochs network 1 picked i
        self.seen = torch.zeros(n, dtype=torch.int32, device=device)     # epochs i was in a batch
        self.last = torch.zeros(n, dtype=torch.bool, device=device)      # picked in the latest epoch
        self.epoch = -1

    def record(self, index: torch.Tensor, pick: torch.Tensor, epoch: int) -> None:
        if epoch != self.epoch:  # a new epoch: the latest pick is rebuilt from this epoch's batches
            self.epoch = epoch
            self.last.zero_()
        self.seen[index] += 1
        self.picked[index] += pick.int()
        self.last[index] = pick

    def state(self) -> Dict[str, np.ndarray]:
        """The record as arrays (a method's ``epoch_state``)."""
        return {"picked": self.picked.cpu().numpy(), "seen": self.seen.cpu().numpy(),
                "last": self.last.cpu().numpy(), "epoch": np.asarray(self.epoch)}

    def load(self, state: Mapping[str, np.ndarray]) -> None:
        for name in ("picked", "seen", "last"):
            getattr(self, name).copy_(torch.from_numpy(np.asarray(state[name])))
        self.epoch = int(state["epoch"])

    def outputs(self) -> Dict[str, np.ndarray]:
        seen = self.seen.cpu().numpy()
        freq = np.where(seen > 0, self.picked.cpu().numpy() / np.maximum(seen, 1), np.nan).astype(np.float32)
        return {"kept": np.flatnonzero(self.last.cpu().numpy()).astype(np.int64), "selection_freq": freq}


def setup_pair(method: RobustMethod) -> None:
    """Co-teaching's start, shared with VoG: two classifiers with their optimisers, the forget-rate schedule
    (``tau_max``, ``num_gradual``) and the selection record, set on ``method``."""
    ctx, args = method.ctx, method.args
    method.net1, method.net2 = ctx.build_model(0), ctx.build_model(1)
    ctx.build_optimizer(method.net1)
    ctx.build_optimizer(method.net2)
    tau = args.noise_estimate if args.noise_estimate is not None else ctx.noise_rate
    if tau is None:
        raise UserError(f"{type(method).__name__} needs a noise-rate estimate when the noise rate is unknown "
                        f"(labels from a noise file): --set method_args.noise_estimate=RATE")
    if not 0 <= tau < 1:
        raise UserError(f"the noise-rate estimate {tau} is not in [0, 1); set method_args.noise_estimate")
    method.tau_max = float(tau)
    shared = min(10, max(1, ctx.epochs // 3))   # the shared protocol's ramp: the paper's 10, a third of a short run
    method.num_gradual = args.num_gradual or (scaled_epochs(PAPER_RAMP, 200, ctx.epochs) if ctx.protocol == "paper"
                                              else shared)
    method.selection = Selection(len(ctx.labels), ctx.device)


def cross_update(method: RobustMethod, batch: Batch, epoch: int,
                 observe: Optional[Callable] = None) -> Dict[str, torch.Tensor]:
    """One Co-teaching step: each network picks ``R`` samples with ``method.pick`` and its peer learns from them.
    ``observe(batch, [(logits, h)] x 2, epoch)`` sees the training forward pass (VoG's ``train`` vectors)."""
    nets = [method.net1, method.net2]
    out = [net(batch.x, return_features=True) for net in nets]               # [(logits (B, K), h (B, D))] x 2
    losses = [F.cross_entropy(logits.float(), batch.y, reduction="none") for logits, _ in out]  # (B,) x 2
    if observe is not None:
        observe(batch, out, epoch)
    keep = keep_count(len(batch.y), forget_rate(epoch, method.tau_max, method.num_gradual))
    picks = [method.pick(k, loss.detach(), batch, keep, epoch) for k, loss in enumerate(losses)]
    loss = (losses[0][picks[1]].sum() + losses[1][picks[0]].sum()) / keep  # network 1 learns from 2's pick
    method.selection.record(batch.index, picks[0], epoch)
    logits = out[0][0].detach() + out[1][0].detach()
    return {"loss": loss, "prob": label_prob(logits, batch.y), "pred": logits.argmax(dim=1), "selected": picks[0]}


#: The forget-rate ramp of the paper and the ALR code (epochs); a shorter ramp is not Co-teaching as designed.
PAPER_RAMP = 10
#: The authors' recipe (bhanML/Co-teaching@7c7fbe2): Adam lr 0.001, no weight decay (main.py:263, 268); lr
#: constant, then linear to 0 from epoch 80 of 200 with beta1 0.9 -> 0.1 (main.py:72-73, 120-131).
COTEACHING_RECIPE = Recipe("adam", 1e-3, momentum=0.9, schedule="linear_decay", decay_start=80 / 200,
                           beta1_after=0.1, source="bhanML/Co-teaching@7c7fbe2 main.py:120-131,263,268")


def short_ramp(method: RobustMethod) -> Optional[str]:
    """Why Co-teaching's schedule is too short (a ramp under the paper's 10 epochs), or None (also under protocol
    paper, whose ramp is the paper's share of the run by design)."""
    if method.num_gradual < PAPER_RAMP and method.args.num_gradual is None and method.ctx.protocol != "paper":
        return (f"the forget rate reaches its maximum after {method.num_gradual} epoch(s) of {method.ctx.epochs} "
                f"(the paper ramps over {PAPER_RAMP}; at least {3 * PAPER_RAMP} epochs give that ramp)")
    return None


@torch.no_grad()
def noise_score(method: RobustMethod) -> np.ndarray:
    """(N,) network 1's eval-mode cross-entropy of the given label on the un-augmented training images."""
    method.eval()
    with method.ctx.autocast():
        logits = torch.from_numpy(method.ctx.predict_train(lambda x: method.net1(x).float()))
    method.train()
    return F.cross_entropy(logits, torch.as_tensor(method.ctx.labels), reduction="none").numpy()


def pair_outputs(method: RobustMethod) -> Dict[str, np.ndarray]:
    """``kept`` (network 1's last pick), ``selection_freq`` and ``noise_score``."""
    return {**method.selection.outputs(), "noise_score": noise_score(method).astype(np.float32)}


class PairMethod:
    """What every two-network small-loss method shares (Co-teaching, Co-teaching+, JoCoR): two independently
    initialised classifiers, a noise rate to forget, the ramp check, the summed prediction, and the selection record
    as outputs and resumable state. A mixin listed before :class:`RobustMethod`, so each method stays one level
    below it and reads as its own ``train_step``."""

    def setup(self) -> None:
        setup_pair(self)

    @classmethod
    def needs_noise_rate(cls, args) -> bool:
        return True

    def inactive_reason(self) -> Optional[str]:
        return short_ramp(self)

    @property
    def nets(self) -> List[Classifier]:
        return [self.net1, self.net2]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.net1(x) + self.net2(x)

    def outputs(self) -> Dict[str, np.ndarray]:
        return pair_outputs(self)

    def epoch_state(self) -> Dict[str, np.ndarray]:
        return self.selection.state()

    def load_epoch_state(self, state: Mapping[str, np.ndarray]) -> None:
        self.selection.load(state)


@ROBUST.register("coteaching")
class CoTeaching(PairMethod, RobustMethod):
    """Two classifiers, per-batch small-loss selection, cross update (Han et al. 2018, arXiv 1804.06872).

    >>> from ssl_noise.robust import ROBUST
    >>> ROBUST["coteaching"].Args().num_gradual is None
    True
    """

    Args = CoteachingArgs
    paper = COTEACHING_RECIPE

    def pick(self, k: int, loss: torch.Tensor, batch: Batch, keep: int, epoch: int) -> torch.Tensor:
        """Network ``k``'s clean pick of the batch from its own detached per-sample loss."""
        return small_loss_pick(loss, keep)

    def train_step(self, batch: Batch, epoch: int) -> Dict[str, torch.Tensor]:
        return cross_update(self, batch, epoch)

    def on_epoch_end(self, epoch: int) -> Dict[str, float]:
        return {"forget_rate": forget_rate(epoch, self.tau_max, self.num_gradual)}
