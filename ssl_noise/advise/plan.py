"""Advise's pilot plan: which methods the estimated noise calls for (and why), and a grid that fits the time budget.

The methods are picked by rules written from the project's measurements, the size of the grid from a timed probe:
a few ResNet-18 training steps at the data's size on this machine, scaled by each method's measured cost relative
to CE. Rules and costs: docs/methods.md#advise-ssl_noiseadvise-ssl-noise-advise
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ssl_noise.errors import UserError

UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """Seconds in ``90m``, ``2h``, ``1.5h``, ``45min`` or ``600s`` (a unit is required: minutes or hours?).

    >>> parse_duration("2h"), parse_duration("90m"), parse_duration("30 min")
    (7200.0, 5400.0, 1800.0)
    """
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)\s*", str(text).lower())
    if not found or float(found.group(1)) <= 0:
        raise UserError(f"--time-budget {text!r}: give a positive duration with its unit, e.g. 45m, 2h, 600s")
    return float(found.group(1)) * UNITS[found.group(2)]


#: A cell's training time relative to CE's (CPU sweeps of studies/bloodmnist_fft_methods: two-network methods
#: about twice CE, DivideMix about ten times).
COST = {"ce": 1.0, "gce": 1.0, "sce": 1.0, "elr": 1.1, "coteaching": 2.0, "coteaching_plus": 2.0, "jocor": 2.0,
        "dividemix": 10.0}
PRETRAIN_COST = 2.5      # a SimCLR image (two augmented views, projection head) against one CE training image
EVAL_COST = 0.35         # a forward pass on a validation image against one training image
RUN_OVERHEAD_S = 8.0     # per pilot run: loading the data, the rate estimate, the test passes, writing
PRETRAIN_SHARE = 0.3     # of the time left after the look, estimate and ranking
MIN_EPOCHS, EPOCHS = 10, 30
MIN_PRETRAIN_EPOCHS, MAX_PRETRAIN_EPOCHS = 3, 50
MIN_SUBSET = 1000        # below this the random init barely learns (studies/bloodmnist_fft_methods)
LOW_RATE = 0.05          # an upper interval end below this: the labels look nearly clean


@dataclass(frozen=True)
class Choice:
    method: str
    why: str


def concentration(T: np.ndarray, labels: np.ndarray) -> float:
    """How much of each class's wrong-label mass goes to its single most likely wrong class, averaged with the
    classes' shares: 1/(K−1) under symmetric noise, 1 when each class is mistaken for one other (pair flips). For
    two classes, where it is always 1, the larger flip rate's share of both.

    >>> round(concentration(np.full((4, 4), 0.1) + np.eye(4) * 0.6, np.arange(4)), 3)
    0.333
    >>> round(concentration(np.array([[0.7, 0.3], [0.1, 0.9]]), np.array([0, 1])), 3)
    0.75
    """
    T = np.asarray(T, np.float64)
    K = len(T)
    off = T * (1 - np.eye(K))
    if K == 2:
        return float(off.max() / max(off.sum(), 1e-12))
    shares = np.bincount(labels, minlength=K) / len(labels)
    rows = off.sum(axis=1)
    peak = np.where(rows > 0, off.max(axis=1) / np.maximum(rows, 1e-12), 0.0)
    return float(np.sum(shares * rows * peak) / max(np.sum(shares * rows), 1e-12))


def is_concentrated(T: np.ndarray, labels: np.ndarray) -> bool:
    """Class-dependent rather than uniform noise: concentration above halfway between symmetric and pair flips
    (two classes: one direction at least twice the other)."""
    K = len(T)
    return concentration(T, labels) >= (2 / 3 if K == 2 else 0.5 * (1 + 1 / (K - 1)))


def choose_methods(rate: float, lo: float, hi: float, T: np.ndarray, labels: np.ndarray) -> List[Choice]:
    """CE and the two methods the estimated noise calls for, each with the reason it was picked."""
    picked = [Choice("ce", "the baseline every gain is paired against")]
    if hi < LOW_RATE:
        return picked + [Choice("gce", f"the labels look nearly clean (estimate {rate:.3f}, interval up to "
                                       f"{hi:.3f}): a bounded loss checks that robustness costs nothing here"),
                         Choice("elr", "needs no noise rate; checks whether early-learning regularisation helps "
                                       "with the few wrong labels there are")]
    picked.append(Choice("coteaching", f"drops the estimated share ({rate:.2f}) of large-loss samples; told the "
                                       "new estimate it closed 0.79-0.83 of its gap to the true rate "
                                       "(studies/bloodmnist_fft_methods)"))
    if is_concentrated(T, labels):
        picked.append(Choice("elr", f"the noise is class-dependent (concentration {concentration(T, labels):.2f}): "
                                    "ELR needs no rate and keeps each sample near its early, mostly right "
                                    "prediction, which is what its paper reports for asymmetric noise"))
    else:
        picked.append(Choice("jocor", f"the noise is spread over the classes (concentration "
                                      f"{concentration(T, labels):.2f}): JoCoR, under its authors' recipe, was "
                                      f"+9.2 points over CE at symmetric 0.6 (n = 3, 2/3)"))
    return picked


def given_methods(names: Sequence[str]) -> List[Choice]:
    """The user's ``--methods``: CE first (the pairing baseline), then theirs."""
    unknown = [m for m in names if m not in COST]
    if unknown:
        raise UserError(f"advise cannot pilot {', '.join(unknown)}; choose from {', '.join(COST)}")
    rest = [m for m in dict.fromkeys(names) if m != "ce"]
    return [Choice("ce", "the baseline every gain is paired against")] + [Choice(m, "asked for") for m in rest]


def seconds_per_image(image_size: int, channels: int, stem: str, *, device: str, precision: str = "bf16",
                      batch: int = 64, steps: int = 4) -> float:
    """Measured seconds per training image of a ResNet-18 step (forward, backward, SGD) at this size, here."""
    import torch

    from ssl_noise.backbones import build_backbone
    from ssl_noise.engine import autocast

    encoder, dim = build_backbone("resnet18", stem=stem, in_channels=channels)
    model = torch.nn.Sequential(encoder, torch.nn.Linear(dim, 8)).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, channels, image_size, image_size, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 8, (batch,), device=device)
    times = []
    for step in range(steps + 1):          # the first step warms up (allocations, kernel choice)
        start = time.perf_counter()
        with autocast(device, precision):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - start)
    return float(np.median(times) / batch)


@dataclass
class Plan:
    """The pilot: pretraining epochs (0: an entry was given), the grid's subset, epochs and seeds, and the time
    each part is expected to take on this machine."""

    methods: List[Choice]
    seeds: List[int]
    epochs: int
    subset: Optional[int]
    pretrain_epochs: int
    seconds_per_image: float
    expected_s: Dict[str, float] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    @property
    def cells(self) -> int:
        return 2 * len(self.seeds) * len(self.methods)

    def describe(self) -> str:
        grid = (f"2 inits x {len(self.methods)} methods x {len(self.seeds)} seeds = {self.cells} runs of "
                f"{self.epochs} epochs on {self.subset or 'all'} training images")
        pre = f"SimCLR {self.pretrain_epochs} epochs, " if self.pretrain_epochs else ""
        return (f"{pre}{grid}; expected {_minutes(sum(self.expected_s.values()))} "
                f"({', '.join(f'{k} {_minutes(v)}' for k, v in self.expected_s.items())})")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def grid_seconds(methods: Sequence[Choice], seeds: int, epochs: int, n_train: int, n_val: int, c: float) -> float:
    """Expected time of the grid: 2 inits x seeds x methods, each epoch a training and a validation pass, and each
    run its fixed cost."""
    per_seed = sum(epochs * c * (COST[m.method] * n_train + EVAL_COST * n_val) + RUN_OVERHEAD_S for m in methods)
    return 2 * seeds * per_seed


def plan(budget_s: float, *, methods: List[Choice], n_train: int, n_val: int, c: float, seeds: int = 2,
         pretrain: bool = True, epochs: Optional[int] = None, pretrain_epochs: Optional[int] = None,
         subset: Optional[int] = None) -> Plan:
    """Fit pretraining and the grid into ``budget_s``: pretraining gets :data:`PRETRAIN_SHARE`, the grid the rest,
    first at :data:`EPOCHS` epochs on every training image, then on a smaller subset (down to :data:`MIN_SUBSET`),
    then with fewer epochs (down to :data:`MIN_EPOCHS`). Given values are kept as they are.

    >>> p = plan(3600, methods=[Choice("ce", ""), Choice("gce", "")], n_train=2000, n_val=200, c=0.001)
    >>> p.epochs, p.subset, p.pretrain_epochs
    (30, None, 50)
    """
    notes = []
    pre_s = PRETRAIN_SHARE * budget_s if pretrain else 0.0
    if pretrain and pretrain_epochs is None:
        pretrain_epochs = int(min(MAX_PRETRAIN_EPOCHS, pre_s // (PRETRAIN_COST * c * n_train)))
        if pretrain_epochs < MIN_PRETRAIN_EPOCHS:
            raise UserError(f"a {budget_s / 60:.0f}-min budget leaves {pre_s / 60:.1f} min for pretraining, under "
                            f"{MIN_PRETRAIN_EPOCHS} SimCLR epochs on {n_train} images here; raise --time-budget, "
                            f"or pass --encoder ENTRY (an encoder pretrained before)")
    pretrain_epochs = pretrain_epochs if pretrain else 0
    pre_s = PRETRAIN_COST * c * n_train * pretrain_epochs
    left = budget_s - pre_s
    n = subset or n_train
    E = epochs or EPOCHS
    if subset is None and grid_seconds(methods, seeds, E, n, n_val, c) > left:
        n = max(min(n_train, MIN_SUBSET), int(n * left / grid_seconds(methods, seeds, E, n, n_val, c)))
        if n < n_train:
            notes.append(f"a stratified subset of {n} of the {n_train} training images, to fit the budget")
    if epochs is None and grid_seconds(methods, seeds, E, n, n_val, c) > left:
        E = max(MIN_EPOCHS, int(E * left / grid_seconds(methods, seeds, E, n, n_val, c)))
        notes.append(f"{E} epochs instead of {EPOCHS}, to fit the budget")
    need = grid_seconds(methods, seeds, E, n, n_val, c)
    if need > left * 1.05:
        raise UserError(f"the smallest pilot ({2 * seeds * len(methods)} runs of {E} epochs on {n} images) needs "
                        f"about {need / 60:.0f} min here and the budget leaves {left / 60:.0f}; raise "
                        f"--time-budget, or pass fewer --methods or an --encoder")
    return Plan(methods, list(range(seeds)), E, None if n >= n_train else n, pretrain_epochs, c,
                {"pretraining": pre_s, "pilot": need} if pretrain_epochs else {"pilot": need}, notes)

