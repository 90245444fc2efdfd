"""HSA-NRL: hard-sample-aware noise-robust learning (Zhu et al., IEEE TMI 2021, arXiv 2112.03694; code
bupt-ai-cz/HSA-NRL ``step1.py``), as explicit stages that run and can be inspected one by one.

Per round: CE with history, easy/dirty split, anchor noise, the EHN detector, label correction (the functions
below); then :class:`~ssl_noise.robust.nshe.NSHE` on the kept, corrected samples, all in one run folder.
Stages, outputs, our choices where the paper is open, deviations: docs/methods.md#hsa-nrl-hsa_nrlpy
"""

from __future__ import annotations

import warnings
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ssl_noise import noise
from ssl_noise.errors import UserError
from ssl_noise.robust.base import ROBUST, Batch, RobustMethod
from ssl_noise.robust.nshe import NSHE, NSHEArgs, nshe_too_short

#: Arrays written to the run folder, each (rounds, N) or (rounds, N, epochs), -1 / NaN where a sample took no part.
STAGE_OUTPUTS = ("round_history", "easy_score", "split", "anchor_labels", "anchor_history", "ehn_scores",
                 "correction_pred")
EASY, HARD, NOISY, ABSENT = 0, 1, 2, -1  # values of ``split``


@dataclass
class HSANRLArgs(NSHEArgs):
    noise_estimate: Optional[float] = None  # ε̂ in (0, 0.5]; None: ctx.noise_rate (--noise-estimate, auto by default)
    dirty_factor: float = 1.5               # dirty share = dirty_factor x ε̂ (the authors' rule, issue #4)
    skip_epochs: int = 10                   # epochs left out of the easy score (capped at epochs - 1)
    rounds: int = 1                         # correction rounds (the public code: 1)
    ehn_hidden: int = 200
    ehn_steps: int = 500
    ehn_lr: float = 0.02

    def validate(self) -> None:
        super().validate()
        if self.noise_estimate is not None:
            check_estimate(self.noise_estimate, self.dirty_factor)
        if self.rounds < 1 or self.skip_epochs < 0 or self.ehn_hidden < 1 or self.ehn_steps < 1 or self.ehn_lr <= 0:
            raise UserError("rounds, ehn_hidden, ehn_steps must be >= 1, skip_epochs >= 0 and ehn_lr > 0")


def check_estimate(rate: float, factor: float = 1.5) -> float:
    if not 0 < rate <= 0.5 or not 0 < factor * rate < 1:
        raise UserError(f"noise estimate {rate:g} is outside (0, 0.5] (the dirty share is {factor:g} x the estimate); "
                        f"set method_args.noise_estimate")
    return float(rate)


def easy_score(history: np.ndarray, skip: int = 10) -> np.ndarray:
    """(N,) mean probability of the given label over epochs ``skip:`` (capped at E − 1), ignoring NaN."""
    history = np.asarray(history, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN
        return np.nanmean(history[:, min(skip, history.shape[1] - 1):], axis=1)


def split_easy_dirty(history: np.ndarray, rate: float, *, skip: int = 10,
                     factor: float = 1.5) -> Tuple[np.ndarray, np.ndarray]:
    """Rows of ``history`` (N, E): (easy, dirty) int64 sorted; dirty = the round(factor·rate·N) lowest easy scores
    (at least 1, at most N − 1; ties: lower row first)."""
    n = len(history)
    n_dirty = min(n - 1, max(1, int(round(factor * rate * n))))
    order = np.argsort(easy_score(history, skip), kind="stable")
    return np.sort(order[n_dirty:]), np.sort(order[:n_dirty])


def inject_anchor_noise(labels: np.ndarray, easy_idx: np.ndarray, rate: float, rng: np.random.Generator, *,
                        num_classes: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Symmetric noise at ``rate`` on ``labels[easy_idx]`` (exact counts per class): (anchor labels, flipped), both
    aligned with ``easy_idx``; a flipped anchor never keeps its label."""
    labels = np.asarray(labels, dtype=np.int64)[np.asarray(easy_idx, dtype=np.int64)]
    k = num_classes or int(labels.max(initial=1)) + 1
    out = noise.corrupt(labels, noise.symmetric(k, rate), rng=rng, mode="exact")
    return out.noisy, out.flipped


def train_ehn(histories: np.ndarray, flips: np.ndarray, *, hidden: int = 200, steps: int = 500, lr: float = 0.02,
              seed: int = 0) -> nn.Module:
    """The EHN detector: MLP E → hidden (ReLU) → 2 on raw trajectories (N, E), full-batch plain SGD on
    cross-entropy against ``flips`` (1 = noisy), no class weights, as coded. Returns it in eval mode (CPU)."""
    x = torch.as_tensor(np.asarray(histories, dtype=np.float32))
    if not torch.isfinite(x).all():
        raise ValueError("EHN trajectories must be finite (one value per epoch for every sample)")
    y = torch.as_tensor(np.asarray(flips, dtype=np.int64))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, 2))
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def ehn_noisy_prob(net: nn.Module, histories: np.ndarray) -> np.ndarray:
    """(N,) float32 p(noisy) of the EHN detector; the trajectories must have the length it was trained on."""
    x = torch.as_tensor(np.asarray(histories, dtype=np.float32))
    if x.shape[1] != net[0].in_features:
        raise ValueError(f"EHN was trained on {net[0].in_features}-epoch trajectories, got {x.shape[1]}")
    return net(x).softmax(dim=1)[:, 1].numpy()


def correct_labels(given: np.ndarray, noisy: np.ndarray, pred: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Relabel dirty samples: (new labels = ``pred``, dropped), all aligned. Dropped where the detector and the
    correction disagree: hard (``~noisy``) but ``pred != given``, or noisy but ``pred == given``.

    >>> correct_labels(np.array([0, 0, 1, 1]), np.array([False, False, True, True]), np.array([0, 1, 0, 1]))
    (array([0, 1, 0, 1]), array([False,  True, False,  True]))
    """
    given, pred = np.asarray(given, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    return pred.copy(), (pred != given) != np.asarray(noisy, dtype=bool)


@dataclass
class Correction:
    """Result of :func:`label_correction`: ``labels`` (N,) to train on, ``keep`` (N,) bool, per-round ``stages``
    (``STAGE_OUTPUTS``, stacked over rounds), the ``estimates`` ε̂ used per round."""

    labels: np.ndarray
    keep: np.ndarray
    stages: Dict[str, np.ndarray] = field(default_factory=dict)
    estimates: List[float] = field(default_factory=list)

    def arrays(self) -> Dict[str, np.ndarray]:
        return {**self.stages, "corrected_labels": self.labels, "dropped": np.flatnonzero(~self.keep),
                "noise_estimates": np.asarray(self.estimates, dtype=np.float64)}


def _full(n: int, values: np.ndarray, at: np.ndarray, fill, dtype) -> np.ndarray:
    """An (n, ...) array of ``fill`` with ``values`` at rows ``at``."""
    out = np.full((n,) + np.shape(values)[1:], fill, dtype=dtype)
    out[at] = values
    return out


def label_correction(labels: np.ndarray, num_classes: int, run_stage: Callable, *, noise_estimate: float,
                     rounds: int = 1, dirty_factor: float = 1.5, skip: int = 10, hidden: int = 200, steps: int = 500,
                     lr: float = 0.02, seed: int = 0) -> Correction:
    """Stages 1-5 for ``rounds`` rounds (docs/methods.md#hsa-nrl-hsa_nrlpy). ``run_stage(rows, labels, *, name,
    predict=None) -> (history, probs)`` trains a model (:attr:`FinetuneContext.run_stage`)."""
    labels = np.asarray(labels, dtype=np.int64)
    n, current, keep, est = len(labels), labels.copy(), np.ones(len(labels), dtype=bool), float(noise_estimate)
    per_round: Dict[str, List[np.ndarray]] = {k: [] for k in STAGE_OUTPUTS}
    estimates: List[float] = []
    for r in range(rounds):
        rows, tag = np.flatnonzero(keep), f"r{r + 1}"
        history, _ = run_stage(rows, current[rows], name=f"{tag}_history")                              # 1
        easy, dirty = split_easy_dirty(history, est, skip=skip, factor=dirty_factor)                      # 2
        anchor, flips = inject_anchor_noise(current[rows], easy, est, np.random.default_rng([seed, r]),  # 3
                                            num_classes=num_classes)
        anchor_history, _ = run_stage(rows[easy], anchor, name=f"{tag}_anchor")
        ehn = train_ehn(anchor_history, flips, hidden=hidden, steps=steps, lr=lr, seed=seed + r)         # 4
        p_noisy = ehn_noisy_prob(ehn, history[dirty])
        verdict = p_noisy > 0.5
        fit_rows = rows[np.sort(np.concatenate([easy, dirty[~verdict]]))]                                 # 5
        _, probs = run_stage(fit_rows, current[fit_rows], name=f"{tag}_correction", predict=rows[dirty])
        new, drop = correct_labels(current[rows[dirty]], verdict, probs.argmax(axis=1))

        split = np.concatenate([np.full(len(easy), EASY), np.where(verdict, NOISY, HARD)])
        stage = {"round_history": _full(n, history, rows, np.nan, np.float32),
                 "easy_score": _full(n, easy_score(history, skip), rows, np.nan, np.float32),
                 "split": _full(n, split, rows[np.concatenate([easy, dirty])], ABSENT, np.int8),
                 "anchor_labels": _full(n, anchor, rows[easy], -1, np.int64),
                 "anchor_history": _full(n, anchor_history, rows[easy], np.nan, np.float32),
                 "ehn_scores": _full(n, p_noisy, rows[dirty], np.nan, np.float32),
                 "correction_pred": _full(n, new, rows[dirty], -1, np.int64)}
        for key, value in stage.items():
            per_round[key].append(value)
        estimates.append(est)
        relabelled = int(np.sum((new != current[rows[dirty]]) & ~drop))
        kept_dirty = rows[dirty][~drop]
        current[kept_dirty] = new[~drop]
        keep[rows[dirty][drop]] = False
        est = min(0.5, (est * len(rows) - relabelled - int(drop.sum())) / max(int(keep.sum()), 1))
        if est * keep.sum() < 1:  # less than one expected wrong label left: another round has nothing to find
            break
    return Correction(current, keep, {k: np.stack(v) for k, v in per_round.items()}, estimates)


def resolve_estimate(estimate: Optional[float], configured: Optional[float], factor: float = 1.5) -> float:
    """ε̂: the explicit ``estimate``, else ``ctx.noise_rate`` (``--noise-estimate``: auto by default); UserError
    when neither fits."""
    if estimate is None and configured is None:
        raise UserError("hsa_nrl needs a noise-rate estimate for labels from a noise file: "
                        "--set method_args.noise_estimate=RATE")
    return check_estimate(configured if estimate is None else estimate, factor)


@ROBUST.register("hsa_nrl")
class HSANRL(RobustMethod):
    """Label correction (stages 1-5, nested runs in ``setup``) then NSHE on the kept, corrected samples; the NSHE
    stage is a composed :class:`~ssl_noise.robust.nshe.NSHE` that this method delegates training to.

    >>> from ssl_noise.robust import ROBUST
    >>> ROBUST["hsa_nrl"].Args().dirty_factor
    1.5
    """

    Args = HSANRLArgs

    def setup(self) -> None:
        a, ctx = self.args, self.ctx
        if ctx.run_stage is None:
            raise ValueError("hsa_nrl trains stage models through ctx.run_stage (ssl_noise.finetune.fit provides it)")
        rate = resolve_estimate(a.noise_estimate, ctx.noise_rate, a.dirty_factor)
        self.correction = label_correction(ctx.labels, ctx.num_classes, ctx.run_stage, noise_estimate=rate,
                                           rounds=a.rounds, dirty_factor=a.dirty_factor, skip=a.skip_epochs,
                                           hidden=a.ehn_hidden, steps=a.ehn_steps, lr=a.ehn_lr, seed=ctx.seed)
        self.nshe = NSHE(ctx, {f.name: getattr(a, f.name) for f in dataclasses.fields(NSHEArgs)})
        self.nshe.setup()

    @classmethod
    def needs_noise_rate(cls, args) -> bool:
        return True

    def inactive_reason(self) -> Optional[str]:
        if self.ctx.epochs <= self.args.skip_epochs:
            return (f"the easy score leaves out the first {self.args.skip_epochs} epochs of a history that has "
                    f"{self.ctx.epochs}")
        return nshe_too_short(self.nshe.args, self.ctx.epochs)

    def training_set(self) -> Tuple[np.ndarray, np.ndarray]:
        return self.correction.keep, self.correction.labels

    def train_step(self, batch: Batch, epoch: int) -> Dict[str, torch.Tensor]:
        return self.nshe.train_step(batch, epoch)

    def on_epoch_end(self, epoch: int) -> Dict[str, float]:
        return self.nshe.on_epoch_end(epoch)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.nshe.predict(x)

    def outputs(self) -> Dict[str, np.ndarray]:
        return {**self.nshe.outputs(), **self.correction.arrays()}

    def epoch_state(self) -> Dict[str, np.ndarray]:
        """The NSHE stage's state; the correction is rebuilt by ``setup`` (its stage runs are deterministic)."""
        return self.nshe.epoch_state()

    def load_epoch_state(self, state: Mapping[str, np.ndarray]) -> None:
        self.nshe.load_epoch_state(state)
