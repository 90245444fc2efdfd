"""A refinement session of one LNL run: its settings, its state on disk, and its rounds.

Round 0 evaluates the run's network 1; every later round merges an oracle's labels for the acquired samples,
fine-tunes on kept + refined samples (the loop of :mod:`ssl_noise.finetune`) and writes the round's files.
:func:`refine_run` drives the rounds with the simulated oracle. Format: docs/formats.md (refinement session).
"""

from __future__ import annotations

import dataclasses
import warnings
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import pandas as pd
import torch

from ssl_noise import engine, io, noise
from ssl_noise.acquisition import ACQUISITION
from ssl_noise.backbones import build_backbone
from ssl_noise.config import resolve
from ssl_noise.errors import SslNoiseWarning, UserError
from ssl_noise.finetune import Inputs, Prepared, evaluate, fit
from ssl_noise.io import derive_seed
from ssl_noise.metrics import SCALARS
from ssl_noise.refine.oracle import SimulatedOracle
from ssl_noise.refine.pool import PoolView, acquire
from ssl_noise.refine.run import LNLRun, load_run
from ssl_noise.robust.base import Batch, Classifier, RobustMethod
from ssl_noise.robust.ce import ce_step

SCHEMA_VERSION = 1
POOL, KEPT, ORACLE = 0, 1, 2
SOURCES = ("pool", "kept", "oracle")


@dataclass
class RefineConfig:
    """A refinement session's settings (fixed once the session exists).

    >>> RefineConfig(budget=10).default_name(), RefineConfig(oracle="expert").default_name()
    ('entropy-b10-s0', 'expert-entropy-b70-s0')
    """

    acquisition: str = "entropy"
    budget: int = 70                 # samples relabelled per round (ALR README: 70; 0: the extra-training control)
    oracle: str = "simulated"        # simulated | expert
    epochs: int = 10                 # fine-tuning epochs per round (ALR: 25 recalibration epochs)
    lr: float = 0.01                 # peak lr per round (ALR's lr_AL); other optimiser settings from the run
    seed: int = 0                    # acquisition (random, BALD) and fine-tuning order/augmentation
    bald_passes: int = 10            # stochastic passes for BALD

    def validate(self) -> None:
        ACQUISITION.get_or_fail(self.acquisition)
        if self.oracle not in ("simulated", "expert"):
            raise UserError(f"unknown oracle {self.oracle!r}; choose from: expert, simulated")
        for name in ("epochs", "bald_passes"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.budget < 0:
            raise UserError(f"budget must be non-negative (0: the control), got {self.budget}")
        if self.lr <= 0 or self.seed < 0:
            raise UserError(f"lr must be positive and seed non-negative (got {self.lr}, {self.seed})")

    def default_name(self) -> str:
        if self.budget == 0:  # the same rounds of fine-tuning with nothing relabelled: acquisition plays no part
            return f"control-b0-s{self.seed}"
        return f"{'expert-' if self.oracle == 'expert' else ''}{self.acquisition}-b{self.budget}-s{self.seed}"


class _Refit(RobustMethod):
    """Cross-entropy on kept + refined samples, continuing from a saved classifier state."""

    def __init__(self, ctx, state, keep: np.ndarray, labels: np.ndarray):
        super().__init__(ctx)
        self._start, self._keep, self._labels = state, keep, labels

    def setup(self) -> None:
        self.model = self.ctx.build_model(0)
        self.model.load_state_dict(self._start, strict=True)
        self.ctx.build_optimizer(self.model)

    def training_set(self):
        return self._keep, self._labels

    def train_step(self, batch: Batch, epoch: int) -> Dict[str, torch.Tensor]:
        return ce_step(self.model, batch)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _Predictor(torch.nn.Module):
    """A bare classifier behind the ``predict`` hook that :func:`ssl_noise.finetune.evaluate` calls."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` to ``path`` atomically, without the pandas index."""
    with io.atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


class Session:
    """One refinement session of one LNL run: its state on disk and the three steps (evaluate, acquire, round)."""

    def __init__(self, run: LNLRun, name: str, config: RefineConfig, state: Optional[dict], device: str):
        self.run, self.name, self.config, self.device = run, name, config, device
        self.folder = run.folder / "refine" / name
        self.state = state or {"schema_version": SCHEMA_VERSION, "run_id": run.folder.name, "name": name,
                               "config": dataclasses.asdict(config), "round": -1, "budget_used": 0,
                               "pending": None}
        n = len(run.given)
        if self.state["round"] >= 0:
            frame = pd.read_csv(self.folder / f"labels_r{self.state['round']}.csv")
            self.labels = np.array(frame["label"], dtype=np.int64)  # writable copies
            self.source = np.array(frame["source"].map({s: i for i, s in enumerate(SOURCES)}), dtype=np.int64)
        else:
            self.labels, self.source = run.given.copy(), np.where(run.kept, KEPT, POOL)
        assert len(self.labels) == n
        self.inputs = Inputs(run.cfg, run.init["normalisation"], device)

    def autocast(self):
        return engine.autocast(self.device, self.run.cfg.precision)

    @property
    def round(self) -> int:
        return int(self.state["round"])

    @property
    def pool_rows(self) -> np.ndarray:
        return np.flatnonzero(self.source == POOL)

    def model(self) -> Classifier:
        """The current classifier (latest round's, else the LNL run's network 1), in eval mode."""
        init, data = self.run.init, self.run.data
        encoder, feat_dim = build_backbone(init["backbone"], stem=init["stem"], in_channels=data.channels)
        model = Classifier(encoder, feat_dim, data.num_classes, freeze=self.run.cfg.freeze)
        path = self.folder / "model.safetensors"
        model.load_state_dict(engine.load_state(path) if path.is_file() else self.run.state)
        return model.to(self.device, memory_format=engine.memory_format(self.run.cfg.channels_last)).eval()

    def check_budget(self, rounds: int) -> int:
        """How many of the next ``rounds`` can relabel anything. A pool smaller than budget x rounds (a short or
        small run rejects few samples) is not an error: the last round relabels what is left and the session
        stops there, said in a warning; ``rounds.csv`` records each round's real count (``acquired``)."""
        budget, have = self.config.budget, len(self.pool_rows)
        if budget == 0 or budget * rounds <= have:
            return rounds
        if have == 0:
            raise UserError("the pool of samples the LNL run rejected is empty: nothing left to relabel")
        possible = -(-have // budget)
        warnings.warn(f"budget {budget} x {rounds} round(s) = {budget * rounds} relabels, but the pool of samples "
                      f"the LNL run rejected holds {have}: {possible} round(s) run, the last relabelling "
                      f"{have - budget * (possible - 1)}", SslNoiseWarning, stacklevel=2)
        return possible

    def acquire(self) -> Dict[str, np.ndarray]:
        """The next ``budget`` pool rows to relabel, with their acquisition scores and the model's prediction."""
        if self.config.budget == 0:  # the control: nothing acquired, the round only fine-tunes
            empty = np.zeros(0, np.int64)
            return {"rows": empty, "score": np.zeros(0), "probs": np.zeros((0, self.run.data.num_classes))}
        view = PoolView(self, self.model(), self.pool_rows, np.flatnonzero(self.source != POOL))
        rng = np.random.default_rng(derive_seed(self.config.seed, self.round + 1))
        return acquire(view, self.config.acquisition, min(self.config.budget, len(self.pool_rows)), rng)

    def evaluate_lnl(self) -> Dict[str, Any]:
        """Round 0: the LNL run's network 1 on the validation and clean test splits."""
        wrap, data = _Predictor(self.model()), self.run.data
        val_labels = data.val.labels if self.run.val_noise is None else self.run.val_noise.noisy
        val = evaluate(wrap, self.inputs, data.val.images, val_labels, task=data.task, autocast=self.autocast)[0]
        test = evaluate(wrap, self.inputs, data.test.images, data.test.labels, task=data.task,
                        autocast=self.autocast)[0]
        return self._write_round(0, np.zeros(0, np.int64), None, {"val": val, "test": test, "selected_epoch": None})

    def complete_round(self, rows: np.ndarray, score: np.ndarray, oracle_labels: np.ndarray,
                       show_progress: bool = False) -> Dict[str, Any]:
        """Merge the oracle's labels of ``rows``, fine-tune on kept + refined samples, evaluate, write the round."""
        r, run, data = self.round + 1, self.run, self.run.data
        self.labels[rows], self.source[rows] = oracle_labels, ORACLE
        keep, labels = self.source != POOL, self.labels.copy()
        cfg = dataclasses.replace(run.cfg, epochs=self.config.epochs, lr=self.config.lr, warmup_epochs=0.0,
                                  method="ce", method_args={}, seed=derive_seed(self.config.seed, r))
        start = self.model()
        state = {k: v.detach().clone() for k, v in start.state_dict().items()}
        prep = Prepared(cfg, data, start.encoder, start.head.in_features, run.init,
                        noise.NoisyLabels.from_labels(data.train.labels, labels, np.eye(data.num_classes)),
                        run.val_noise, {"source": "refine", "expected_rate": None},
                        f"{run.folder.name}/refine/{self.name}/r{r}")
        result = fit(prep, device=self.device, show_progress=show_progress,
                     make_method=lambda ctx: _Refit(ctx, state, keep, labels))
        b = result.best_epoch
        self._save_model(result.method.model.state_dict())
        return self._write_round(r, rows, score, {"val": result.val[b], "test": result.test[b],
                                                  "selected_epoch": b + 1, "train": result.train["best"]})

    def write_state(self) -> None:
        """``state.json``, written last after every change (atomically)."""
        io.write_json(self.folder / "state.json", self.state)

    def _save_model(self, state: Dict[str, torch.Tensor]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        engine.save_state(state, self.folder / "model.safetensors")

    def _write_round(self, r: int, rows: np.ndarray, score: Optional[np.ndarray], m: Dict[str, Any]) -> Dict:
        run, keep = self.run, self.source != POOL
        given, clean = run.given, run.data.train.labels  # clean: a diagnostic column only, never trained on
        self.folder.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame({"index": run.index, "given_label": given, "label": self.labels,
                              "source": np.asarray(SOURCES)[self.source]})
        write_csv(self.folder / f"labels_r{r}.csv", frame)
        if len(rows):
            write_csv(self.folder / f"acquired_r{r}.csv", pd.DataFrame(
                {"index": run.index[rows], "score": score, "given_label": given[rows],
                 "oracle_label": self.labels[rows]}))
        io.write_json(self.folder / f"metrics_r{r}.json", {"round": r, **m})
        budget = int(self.state["budget_used"]) + len(rows)
        row = {"round": r, "budget": budget, "acquired": len(rows), "n_train": int(keep.sum()),
               "n_pool": int((~keep).sum()), "n_changed": int((self.labels[rows] != given[rows]).sum()),
               "train_label_noise": float(np.mean(self.labels[keep] != clean[keep])),
               "selected_epoch": m["selected_epoch"],
               **{f"test_{k}": m["test"][k] for k in SCALARS},
               "val_acc": m["val"]["acc"], "val_macro_f1": m["val"]["macro_f1"],
               "acquisition": self.config.acquisition, "oracle": self.config.oracle}
        path = self.folder / "rounds.csv"
        old = pd.read_csv(path) if path.is_file() else pd.DataFrame()
        old = old[old["round"] < r] if len(old) else old
        table = pd.concat([old, pd.DataFrame([row])], ignore_index=True)
        table["selected_epoch"] = table["selected_epoch"].astype("Int64")  # round 0 has none
        write_csv(path, table)
        self.state.update(round=r, budget_used=budget, pending=None)
        self.write_state()
        return row


def open_session(run: LNLRun, name: Optional[str], given: Dict[str, Any], *, device: str) -> Session:
    """The session ``name`` of ``run``: resumed when it exists (explicitly ``given`` settings must match), else new
    with ``given`` over the defaults. None values in ``given`` mean "not given"."""
    config = resolve(RefineConfig, given)
    name = name or config.default_name()
    path = run.folder / "refine" / name / "state.json"
    if not path.is_file():
        return Session(run, name, config, None, device)
    state = json.loads(path.read_text())
    stored = RefineConfig(**state["config"])
    for key, value in given.items():
        if value is not None and getattr(stored, key) != value:
            raise UserError(f"refine session {name} was started with {key}={getattr(stored, key)!r}, not "
                            f"{value!r}; pass --name NEW for another session")
    return Session(run, name, stored, state, device)


def refine_run(run_folder: str | Path, *, rounds: int, given: Dict[str, Any], name: Optional[str] = None,
               data_root: Optional[str] = None, device: str = "cpu", show_progress: bool = True,
               on_round: Optional[Callable[[Dict[str, Any]], None]] = None) -> Path:
    """Rounds 1..``rounds`` with the simulated oracle (resuming a session that has fewer); returns its folder."""
    if rounds < 1:
        raise UserError(f"rounds must be at least 1, got {rounds}")
    run = load_run(run_folder, data_root=data_root)
    session = open_session(run, name, {**given, "oracle": "simulated"}, device=device)
    rounds = max(session.round, 0) + session.check_budget(max(0, rounds - max(session.round, 0)))
    oracle = SimulatedOracle(run)
    report = on_round or (lambda row: None)
    if session.round < 0:
        report(session.evaluate_lnl())
    while session.round < rounds:
        picked = session.acquire()
        report(session.complete_round(picked["rows"], picked["score"], oracle(picked["rows"]),
                                      show_progress=show_progress))
    return session.folder
