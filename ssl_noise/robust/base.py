"""The contract between the fine-tuning loop (:mod:`ssl_noise.finetune.loop`) and a noise-robust method.

A method is an ``nn.Module`` (so ``state_dict``, ``train``/``eval`` and ``to`` cover every network it owns) with
hooks; the loop owns data, augmentation, precision, the optimiser steps, the lr schedule, the per-sample history,
evaluation and model selection. Methods never see the clean training labels. The hooks, in the order the loop
calls them (each documented on :class:`RobustMethod`): ``setup``, ``training_set``, then per epoch
``on_epoch_start``, ``epoch_batches`` -> ``train_step`` per batch, ``on_epoch_end``; ``predict`` for evaluation;
``outputs`` at the end; ``epoch_state`` / ``load_epoch_state`` for state kept across epochs.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import (Any, Callable, ClassVar, ContextManager, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple,
                    Type)

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssl_noise._registry import Registry
from ssl_noise.config import NoArgs, resolve
from ssl_noise.engine import Recipe
from ssl_noise.errors import SslNoiseWarning

#: The registry every robust method file adds itself to with ``@ROBUST.register("<name>")``.
ROBUST: Registry = Registry("robust method")


@dataclass
class Batch:
    """One training batch as the loop hands it to ``train_step``."""

    x: torch.Tensor       # (B, C, H, W) float, augmented and normalised, channels_last, on the training device
    y: torch.Tensor       # (B,) int64 labels to train on (the given noisy labels unless training_set relabels)
    index: torch.Tensor   # (B,) int64 rows of the training split (= rows of history.npy)
    extra: Dict[str, torch.Tensor] = field(default_factory=dict)  # a method's own parts (e.g. an unlabelled batch)


@dataclass
class FinetuneContext:
    """What the loop offers a method; built by :func:`ssl_noise.finetune.fit` (tests build their own)."""

    num_classes: int
    labels: np.ndarray                                   # (N,) given (noisy) training labels
    epochs: int
    steps_per_epoch: int
    device: str
    seed: int
    build_model: Callable[[int], "Classifier"]           # k -> fresh classifier from the init (head seed from k)
    build_optimizer: Callable[[nn.Module], torch.optim.Optimizer]   # registers it with the loop
    # batches(augment=False, shuffle=False, epoch=0, rows=None): the kept training samples (or training ``rows``, in
    # that order; DivideMix's labelled/unlabelled parts) as Batch objects (keywords only); with augment/shuffle the
    # stream for that epoch is the one the loop itself uses (seeded from (seed, epoch)).
    batches: Callable[..., Iterator[Batch]]
    # predict_train(fn): fn over all N un-augmented training images under no_grad, stacked to (N, ...) float32
    # numpy in split order (features for a k-NN filter, logits for scores). Set eval mode and autocast yourself.
    predict_train: Callable[[Callable[[torch.Tensor], torch.Tensor]], np.ndarray]
    autocast: Callable[[], ContextManager]                # the run's precision (bf16 autocast or a no-op)
    optimizers: List[torch.optim.Optimizer] = field(default_factory=list)
    augment: bool = True                                  # the run's training batches are augmented
    # For multi-stage methods (HSA-NRL, a k-NN filter); optional so other callers need not fill them.
    noise_rate: Optional[float] = None                   # the wrong-label rate the method is told: estimated by
    #                                                      default, the injected one with --noise-estimate oracle
    # run_stage(rows, labels, *, name, predict=None) -> (history (len(rows), epochs), probs (len(predict), K) or
    # None): a nested plain-CE run of this config and init on training rows ``rows`` with ``labels``
    # (:func:`ssl_noise.finetune.fit_subset`); ``probs`` are its selected-epoch softmax on the un-augmented
    # training images ``predict``.
    run_stage: Optional[Callable[..., Tuple[np.ndarray, Optional[np.ndarray]]]] = None
    batch_size: Optional[int] = None                     # the run's batch size (a method's own batches)
    protocol: str = "shared"                             # paper: the method trains with its ``paper`` recipe, and
    #                                                      its phase starts scale with ``epochs`` (engine.scaled_epochs)


class MethodWarning(SslNoiseWarning):
    """A method runs, but not as designed (a schedule too short for its warm-up, ramp or window)."""


class Classifier(nn.Module):
    """Encoder + linear head. ``freeze=True`` is the linear probe: encoder weights *and* BatchNorm statistics stay
    as initialised (the encoder is kept in eval mode even when the classifier trains).

    The linear probe rescales each frozen feature vector to norm sqrt(feat_dim) (unit RMS per coordinate) before
    the head: SSL encoders' features differ in scale by 3x or more from a random encoder's (measured on
    BloodMNIST: mean norm ~35 for SimCLR vs ~12 for random), and without it one recipe learning rate diverged on
    SimCLR features (training loss 5-25) while suiting random ones. Linear-evaluation code often uses a
    parameter-free BatchNorm for the same purpose; this keeps the training pass identical to the evaluation
    pass (no batch statistics), has no parameters, and so is still a linear probe. ``return_features`` gives the
    rescaled features, i.e. the exact input of ``head``.

    A linear probe without augmentation sees each image through the same fixed function, so ``fit`` encodes every
    split once and feeds (B, feat_dim) features instead of images (:meth:`encode` passes them through): an epoch
    then costs a matrix product instead of a ResNet forward pass.
    """

    def __init__(self, encoder: nn.Module, feat_dim: int, num_classes: int, *, freeze: bool = False):
        super().__init__()
        self.encoder, self.head, self.freeze = encoder, nn.Linear(feat_dim, num_classes), freeze
        self.feature_scale = math.sqrt(feat_dim) if freeze else None
        self.encoder.requires_grad_(not freeze)

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        self.encoder.train(mode and not self.freeze)
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, feat_dim) encoder output for images (B, C, H, W); (B, feat_dim) inputs are already-encoded features
        of the frozen encoder (the cached linear-probe path) and pass through."""
        if x.dim() != 2:
            return self.encoder(x)
        if not self.freeze:
            raise ValueError("pre-computed features need a frozen encoder (freeze=True)")
        return x

    def forward(self, x: torch.Tensor, return_features: bool = False):
        h = self.encode(x)                       # (B, feat_dim)
        if self.feature_scale is not None:      # linear probe: features at a fixed scale (see the docstring)
            h = F.normalize(h.float(), dim=1) * self.feature_scale
        logits = self.head(h)                    # (B, K)
        return (logits, h) if return_features else logits



def label_prob(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) softmax probability of label ``y`` under ``logits`` (B, K), detached and in float32."""
    return logits.detach().float().softmax(dim=1).gather(1, y[:, None])[:, 0]


class RobustMethod(nn.Module):
    """Base class: keeps the context and the parsed ``method_args``. Subclass it directly (one level); share code
    between methods through functions, not through chains of subclasses.

    Designed for what noisy-label methods need: two networks that exchange selections inside ``train_step``
    (Co-teaching, Co-teaching+, JoCoR); a per-epoch split into labelled and unlabelled parts (``on_epoch_start``)
    with semi-supervised batches (``epoch_batches`` may yield batches of its own, e.g. a labelled ``Batch`` with an
    unlabelled one in ``extra``; DivideMix); per-sample targets kept across epochs by ``batch.index`` (ELR); and
    that per-epoch state as arrays (``epoch_state``) so a run can resume.
    """

    Args: ClassVar[Type] = NoArgs
    #: The authors' training recipe (``protocol: paper``; docs/methods.md cites their code), None: the shared one.
    paper: ClassVar[Optional[Recipe]] = None

    def __init__(self, ctx: FinetuneContext, args: Mapping[str, Any] | None = None):
        super().__init__()
        self.ctx = ctx
        self.args = self.parse_args(args)

    @classmethod
    def parse_args(cls, args: Mapping[str, Any] | None) -> Any:
        """Check ``method_args`` (unknown keys, types, the Args' own ``validate``) before any work is done."""
        return resolve(cls.Args, args)

    def setup(self) -> None:  # pragma: no cover - abstract
        """Once: build the networks with ``ctx.build_model(k)`` (``k`` picks the head seed) and register each
        optimiser with ``ctx.build_optimizer(module)`` (the loop zeroes, steps and schedules it). A filter method
        may look at the data here (``ctx.predict_train``, ``ctx.batches``)."""
        raise NotImplementedError

    @classmethod
    def needs_noise_rate(cls, args: Any) -> bool:
        """Whether ``setup`` with these parsed ``args`` reads ``ctx.noise_rate`` (the loop then estimates it, or
        takes the oracle or given one); it also decides whether ``--noise-estimate`` is part of the run id."""
        return False

    def inactive_reason(self) -> Optional[str]:
        """After ``setup``: why this run's schedule is too short for the method to act as designed (a warm-up,
        ramp or window that never completes), or None. Such runs are reported with ``method_active`` false."""
        return None

    def training_set(self) -> Tuple[np.ndarray, np.ndarray]:
        """Once: ``(keep, labels)``, (N,) bool samples to train on and (N,) int64 labels to train them with
        (default: every sample with its given label; a k-NN filter drops or relabels here)."""
        return np.ones(len(self.ctx.labels), dtype=bool), self.ctx.labels

    def on_epoch_start(self, epoch: int) -> None:
        """Before the epoch's batches: e.g. re-split the data into labelled and unlabelled parts."""

    def epoch_batches(self, epoch: int) -> Iterable[Batch]:
        """The epoch's training batches: by default the kept samples, shuffled and augmented from (seed, epoch)."""
        return self.ctx.batches(augment=self.ctx.augment, shuffle=True, epoch=epoch)

    def train_step(self, batch: Batch, epoch: int) -> Dict[str, torch.Tensor]:  # pragma: no cover - abstract
        """Per batch, inside autocast: ``loss`` (the loop calls backward and steps), ``prob`` ((B,) detached
        probability of ``batch.y`` from this forward pass: it fills history.npy), optionally ``pred`` ((B,)
        predicted class) and ``selected`` ((B,) bool, the samples used in the update)."""
        raise NotImplementedError

    def on_epoch_end(self, epoch: int) -> Dict[str, float]:
        """After the epoch's batches: scalars for the epoch's log line (VoG's gradient pass belongs here)."""
        return {}

    def predict(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Logits in eval mode for validation, test and training-split evaluation."""
        raise NotImplementedError

    def outputs(self) -> Dict[str, np.ndarray]:
        """Once at the end: arrays saved as ``<name>.npy`` in the run folder (kept rows, scores, labels)."""
        return {}

    def summary(self) -> Dict[str, Any]:
        """Once at the end: what the method did that a reader of metrics.json needs (its ``method`` block), e.g.
        DivideMix's epochs without a labelled set."""
        return {}

    def epoch_state(self) -> Dict[str, np.ndarray]:
        """State kept across epochs that is not in ``state_dict`` (windows, targets, splits), as arrays (numpy or
        tensors; 0-d arrays for scalars). The loop saves it after every epoch with the networks (``state_dict``),
        the registered optimisers and the RNGs, so a killed run resumes bitwise; a method whose only state is its
        modules needs neither hook."""
        return {}

    def load_epoch_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`epoch_state` returned (as numpy arrays), after ``setup`` on a resumed run."""
