"""The fine-tuning loop, plain as torchvision's reference scripts: ``train_one_epoch`` and ``evaluate`` with
explicit state, a noise-robust method plugged in through the hooks of :class:`ssl_noise.robust.RobustMethod`.

Every epoch records ``history[i, e]``, the softmax probability of sample i's training label in its own training
forward pass (HSA-NRL's recording, at no extra cost), evaluates validation and test (the test numbers are only
reported), and keeps the state of the epoch with the best validation ``select_metric``.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ssl_noise import engine, estimate, inits, io, noise, progress
from ssl_noise.data.dataset import Split
from ssl_noise.finetune.inputs import Inputs, chunks, encoded_splits
from ssl_noise.finetune.prepare import Prepared, oracle_rate, protocol_recipe
from ssl_noise.io import derive_seed
from ssl_noise.metrics import classification_metrics, memorisation, training_health
from ssl_noise.robust import ROBUST, Classifier, FinetuneContext
from ssl_noise.robust.base import MethodWarning


@dataclass
class TrainState:
    """What the loop carries from epoch to epoch."""

    history: np.ndarray                         # (N, epochs) float32, NaN where a method left a sample out
    selected: np.ndarray                        # (N, epochs) bool, samples a selecting method used
    log: List[Dict[str, Any]] = field(default_factory=list)
    val: List[Dict[str, Any]] = field(default_factory=list)
    test: List[Dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0                         # 0-based
    best_score: Optional[float] = None
    best_state: Optional[Dict[str, torch.Tensor]] = None
    test_probs: Optional[np.ndarray] = None     # (N_test, K) at best_epoch

    @classmethod
    def empty(cls, n: int, epochs: int) -> "TrainState":
        return cls(np.full((n, epochs), np.nan, dtype=np.float32), np.zeros((n, epochs), dtype=bool))


@dataclass
class FitResult:
    method: Any
    history: np.ndarray                 # (N, epochs) float32
    selected: Optional[np.ndarray]      # (N, epochs) bool, None when the method does not select
    log: List[Dict[str, Any]]
    val: List[Dict[str, Any]]           # per-epoch classification_metrics on the validation labels
    test: List[Dict[str, Any]]          # per-epoch classification_metrics on the clean test labels
    best_epoch: int                     # 0-based
    test_probs: np.ndarray              # (N_test, K) at best_epoch
    train: Dict[str, Dict[str, Any]]    # {"best", "last"}: metrics.memorisation on the training split
    outputs: Dict[str, np.ndarray]
    noise_rate: Optional[float] = None          # the rate the method was told (None: it needs none)
    noise_rate_source: Optional[str] = None     # auto | oracle | given
    noise_estimate: Optional[Any] = None        # the auto estimate (ssl_noise.estimate.Estimate): interval, T̂
    inactive_reason: Optional[str] = None       # why the schedule is too short for the method to work as designed
    health: List[str] = field(default_factory=list)  # metrics.training_health: loss_exploded, one_class
    method_summary: Dict[str, Any] = field(default_factory=dict)  # the method's summary() for metrics.json


def train_one_epoch(method, ctx: FinetuneContext, batches, state: TrainState, clean: torch.Tensor, epoch: int,
                    lr_of_step: Callable[[int], float], bar, recipe: Optional[engine.Recipe] = None,
                    total: int = 0) -> Dict[str, float]:
    """One pass: method step, loop-owned backward/step/lr, history filled from the step's own probabilities. A
    method's ``recipe`` (protocol paper) adds its Adam beta1 switch and gradient clipping."""
    method.train()
    loss_sum = n = hit_given = hit_clean = n_flip = hit_flip = n_sel = 0.0
    lr, start = 0.0, time.perf_counter()
    for i, batch in enumerate(batches):
        step = epoch * ctx.steps_per_epoch + i
        lr = lr_of_step(step)
        engine.set_lr(ctx.optimizers, lr)
        beta1 = recipe.beta1_at(step, total) if recipe is not None else None
        if beta1 is not None:
            engine.set_beta1(ctx.optimizers, beta1)
        with ctx.autocast():
            out = method.train_step(batch, epoch)
        for opt in ctx.optimizers:
            opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if recipe is not None and recipe.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for opt in ctx.optimizers for g in opt.param_groups
                                            for p in g["params"]], recipe.grad_clip)
        for opt in ctx.optimizers:
            opt.step()
        idx = batch.index.cpu()
        state.history[idx.numpy(), epoch] = out["prob"].float().cpu().numpy()
        b = len(idx)
        loss = float(out["loss"].detach())
        engine.check_finite(loss, epoch=epoch, step=i, what="fine-tuning")
        loss_sum, n = loss_sum + loss * b, n + b
        if "selected" in out:
            state.selected[idx.numpy(), epoch] = out["selected"].cpu().numpy()
            n_sel += float(out["selected"].sum())
        if "pred" in out:
            pred, flip = out["pred"].cpu(), batch.y.cpu() != clean[idx]
            hit_given += float((pred == batch.y.cpu()).sum())
            hit_clean += float((pred == clean[idx]).sum())
            n_flip, hit_flip = n_flip + float(flip.sum()), hit_flip + float((pred == batch.y.cpu())[flip].sum())
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.3g}")
    elapsed = time.perf_counter() - start
    return {"loss": loss_sum / max(n, 1), "lr": lr, "train_acc_given": hit_given / max(n, 1),
            "train_acc_clean": hit_clean / max(n, 1), "train_memorised": hit_flip / n_flip if n_flip else None,
            "selected_frac": n_sel / max(n, 1) if state.selected.any() else None, "epoch_time_s": elapsed,
            "samples_per_s": n / max(elapsed, 1e-9)}


def predict_probs(method, inputs: Inputs, images: np.ndarray, autocast) -> np.ndarray:
    """(N, K) softmax probabilities of ``method.predict`` in eval mode."""
    method.eval()
    with autocast():
        return torch.from_numpy(inputs.apply(method.predict, images)).softmax(dim=1).numpy()


def evaluate(method, inputs: Inputs, images: np.ndarray, labels: np.ndarray, *, task: str,
             autocast) -> Tuple[Dict[str, Any], np.ndarray]:
    """Metrics (:func:`ssl_noise.metrics.classification_metrics`) and (N, K) probabilities on one split."""
    probs = predict_probs(method, inputs, images, autocast)
    return classification_metrics(labels, probs, task=task), probs


def improves(state: TrainState, metric: str) -> bool:
    """Whether the latest validation ``metric`` beats the best so far (ties keep the earlier epoch)."""
    score = state.val[-1][metric]
    return state.best_state is None or (score is not None and (state.best_score is None or score > state.best_score))


def select(method, state: TrainState, epoch: int, metric: str, test_probs: Optional[np.ndarray]) -> None:
    """Keep the epoch with the best validation ``metric``, with its test probabilities."""
    if improves(state, metric):
        state.best_epoch, state.best_score, state.test_probs = epoch, state.val[-1][metric], test_probs
        state.best_state = {k: v.detach().clone() for k, v in method.state_dict().items()}


class _Loop:
    """What the loop offers a method through :class:`FinetuneContext`: models from the init, registered
    optimisers, the run's batches and predictions, nested plain-CE stages. Bound methods, no closures."""

    def __init__(self, prep: Prepared, inputs: Inputs, x_train: np.ndarray, device: str,
                 log_path: Optional[Path], show_progress: bool):
        self.prep, self.inputs, self.x_train, self.device = prep, inputs, x_train, device
        self.log_path, self.show_progress = log_path, show_progress
        self.images = torch.from_numpy(x_train)
        self.rows = torch.arange(len(prep.data.train))
        self.labels = torch.from_numpy(prep.train_noise.noisy)
        self.ctx: Optional[FinetuneContext] = None
        self.recipe = protocol_recipe(prep.cfg)   # the method's published recipe under protocol paper, else None
        self.rate_estimate: Optional[estimate.Estimate] = None

    def build_model(self, k: int) -> Classifier:
        """Classifier ``k`` from the init. Network 0 starts from the run's encoder; a second network of a
        two-network method gets its own encoder seed under random init (and ImageNet's re-initialised stem), as
        Han et al. initialise them, unless the init is a registry entry (one set of weights to start from) or the
        encoder is frozen (both heads read the same cached features)."""
        cfg, prep = self.prep.cfg, self.prep
        encoder = prep.encoder
        if k > 0 and prep.init["kind"] != "registry" and not cfg.freeze:
            encoder = inits.resolve(cfg.init, prep.data, backbone=cfg.backbone, stem=cfg.stem,
                                    seed=derive_seed(cfg.seed, k, 3)).encoder
        torch.manual_seed(derive_seed(cfg.seed, k, 2))  # head init
        model = Classifier(copy.deepcopy(encoder), prep.feat_dim, prep.data.num_classes, freeze=cfg.freeze)
        return model.to(self.device, memory_format=self.inputs.fmt)

    def build_optimizer(self, module: torch.nn.Module) -> torch.optim.Optimizer:
        self.ctx.optimizers.append(engine.build_optimizer(module, self.prep.cfg, self.recipe))
        return self.ctx.optimizers[-1]

    def batches(self, *, rows=None, **kw):
        rows = self.rows if rows is None else torch.as_tensor(rows, dtype=torch.int64)
        return self.inputs.batches(self.images, self.labels, rows, **kw)

    def predict_train(self, fn) -> np.ndarray:
        return self.inputs.apply(fn, self.x_train)

    def autocast(self):
        return engine.autocast(self.device, self.prep.cfg.precision)

    def run_stage(self, rows: np.ndarray, labels: np.ndarray, *, name: str, predict: Optional[np.ndarray] = None):
        stage_log = None if self.log_path is None else self.log_path.with_name(f"train_log_{name}.jsonl")
        result, probs = fit_subset(self.prep, rows, labels, name=name, predict=predict, device=self.device,
                                   log_path=stage_log, show_progress=self.show_progress)
        return result.history, probs  # nothing else: a method sees no metrics of the stage (test split included)

    def context(self) -> FinetuneContext:
        prep, cfg = self.prep, self.prep.cfg
        self.ctx = FinetuneContext(
            num_classes=prep.data.num_classes, labels=prep.train_noise.noisy.copy(), epochs=cfg.epochs,
            steps_per_epoch=len(chunks(self.rows, cfg.batch_size)), device=self.device, seed=cfg.seed,
            build_model=self.build_model, build_optimizer=self.build_optimizer, batches=self.batches,
            predict_train=self.predict_train, autocast=self.autocast, augment=cfg.augmentation,
            run_stage=self.run_stage, batch_size=cfg.batch_size,
            protocol="paper" if self.recipe is not None else "shared")
        return self.ctx

    def auto_rate(self) -> float:
        """``--noise-estimate auto``: the default estimator (:data:`ssl_noise.estimate.DEFAULT`) on the principal
        components of the training images' pixels and their noisy labels (what a user without clean labels can
        compute; the same for every init, so a paired comparison tells each the same rate). The whole
        :class:`~ssl_noise.estimate.Estimate` is kept for metrics.json."""
        train = self.prep.data.train
        if self.show_progress:
            print(f"noise rate: estimating it from the pixels of {len(train)} training images ...",
                  file=sys.stderr, flush=True)
        self.rate_estimate = estimate.estimate(estimate.pixel_features(train.images, seed=self.prep.cfg.seed),
                                               self.prep.train_noise.noisy, self.prep.data.num_classes,
                                               seed=self.prep.cfg.seed)
        if self.show_progress:
            print(f"noise rate: {self.rate_estimate.describe()}", file=sys.stderr, flush=True)
        return self.rate_estimate.rate

    def tell_rate(self, method) -> Tuple[Optional[float], Optional[str]]:
        """Set ``ctx.noise_rate`` for a method that needs one: its own ``method_args.noise_estimate`` (given), else
        ``--noise-estimate`` (auto by default; oracle = the configured noise's expected rate)."""
        if not method.needs_noise_rate(method.args):
            return None, None
        given = getattr(method.args, "noise_estimate", None)
        if given is not None:
            rate, source = float(given), "given"
        else:
            rate, source = estimate.resolve(self.prep.cfg.noise_estimate, oracle=oracle_rate(self.prep.noise),
                                            auto=self.auto_rate)
        self.ctx.noise_rate = rate
        return rate, source

    def use_training_set(self, method) -> None:
        """Train on the rows and labels the method's ``training_set()`` chose."""
        chosen, labels = method.training_set()
        if not np.any(chosen):
            raise ValueError(f"method {self.prep.cfg.method!r} kept no training samples")
        self.rows = torch.from_numpy(np.flatnonzero(chosen))
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.ctx.steps_per_epoch = len(chunks(self.rows, self.prep.cfg.batch_size))


def fit(prep: Prepared, *, device: str = "cpu", log_path: Optional[Path] = None, show_progress: bool = True,
        make_method: Optional[Callable[[FinetuneContext], Any]] = None, state_dir: Optional[Path] = None,
        resume: bool = False, on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None) -> FitResult:
    """Train ``prep.cfg.method`` on the prepared (noisy) labels and evaluate every epoch (the test split only at
    the epochs a result reports under ``cfg.test_eval == "reported"``: on a small training subset it costs more
    than the training).

    ``make_method(ctx)`` replaces the ROBUST lookup (``ssl_noise.refine`` continues a saved classifier this way).
    ``state_dir``: where the resumable state is written after every epoch (:func:`capture`); with ``resume`` the
    state found there is loaded first and training continues after its epoch (the log lines so far are rewritten
    to ``log_path``), to the same weights and metrics as an uninterrupted run. ``on_epoch(record)`` sees every
    epoch's log line (a tracker), restored ones included.
    """

    cfg, data = prep.cfg, prep.data
    inputs = Inputs(cfg, prep.init["normalisation"], device)
    x_train, x_val, x_test = encoded_splits(prep, inputs, device, lambda: engine.autocast(device, cfg.precision))
    loop = _Loop(prep, inputs, x_train, device, log_path, show_progress)
    ctx = loop.context()
    method = make_method(ctx) if make_method is not None else ROBUST[cfg.method](ctx, cfg.method_args)
    told = loop.tell_rate(method)
    method.setup()
    inactive = method.inactive_reason()
    if inactive:
        warnings.warn(f"{cfg.method}: {inactive}; the run is reported as method_active=false", MethodWarning,
                      stacklevel=2)
    loop.use_training_set(method)
    total = ctx.steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * ctx.steps_per_epoch))
    if loop.recipe is not None:   # protocol paper: the method's own schedule
        def lr_of_step(step: int) -> float:
            return loop.recipe.lr_at(step, total)
    else:
        def lr_of_step(step: int) -> float:
            return engine.lr_at(step, total, warmup, cfg.lr)
    val_labels = data.val.labels if prep.val_noise is None else prep.val_noise.noisy
    clean = torch.from_numpy(data.train.labels)
    state = TrainState.empty(len(data.train), cfg.epochs)
    start = restore(state_dir, prep.run_id, method, ctx, state, log_path, on_epoch) if resume and state_dir else 0
    bar = progress.bar(total=total, initial=start * ctx.steps_per_epoch, desc=f"finetune {prep.run_id}",
                       enabled=show_progress)
    # No bar in a log file: a plain line for the first and the last epoch, and between them at most one every
    # progress.LINE_EVERY_S seconds (a 5-epoch probe of a sweep cell gives two lines, a long run one an epoch).
    lines, began, said = show_progress and progress.plain_lines(), time.perf_counter(), -float("inf")
    for epoch in range(start, cfg.epochs):
        method.on_epoch_start(epoch)
        stats = train_one_epoch(method, ctx, method.epoch_batches(epoch), state, clean, epoch, lr_of_step, bar,
                                recipe=loop.recipe, total=total)
        stats.update(method.on_epoch_end(epoch))
        state.val.append(evaluate(method, inputs, x_val, val_labels, task=data.task, autocast=ctx.autocast)[0])
        test, probs = None, None
        if cfg.test_eval != "reported" or epoch >= cfg.epochs - 5 or improves(state, cfg.select_metric):
            test, probs = evaluate(method, inputs, x_test, data.test.labels, task=data.task, autocast=ctx.autocast)
        state.test.append(test)
        select(method, state, epoch, cfg.select_metric, probs)
        record = {"epoch": epoch + 1, **stats, **{f"val_{m}": state.val[-1][m] for m in ("acc", "macro_f1")},
                  **{f"test_{m}": test[m] if test else None for m in ("acc", "macro_f1")},
                  "best_epoch": state.best_epoch + 1}
        state.log.append(record)
        if log_path is not None:
            io.append_jsonl(log_path, record)
        if on_epoch is not None:
            on_epoch(record)
        if state_dir is not None:
            engine.save_training_state(state_dir, capture(prep.run_id, method, ctx, state), epoch=epoch + 1,
                                       kind=STATE_KIND)
        bar.set_postfix(val_acc=f"{state.val[-1]['acc']:.3f}", test_acc=f"{test['acc']:.3f}" if test else "-")
        now = time.perf_counter()
        if lines and (epoch in (start, cfg.epochs - 1) or now - said >= progress.LINE_EVERY_S):
            eta = (now - began) / (epoch + 1 - start) * (cfg.epochs - epoch - 1)
            print(f"finetune {prep.run_id}: " + progress.epoch_line({**record, "epochs": cfg.epochs, "eta_s": eta}),
                  file=sys.stderr, flush=True)
            said = now
    bar.close()
    result = _finish(method, state, inputs, x_train, prep)
    result.noise_rate, result.noise_rate_source = told
    result.noise_estimate = loop.rate_estimate if told[1] == "auto" else None
    result.inactive_reason = inactive
    result.method_summary = method.summary()
    if not data.multilabel:
        result.health = training_health([r["loss"] for r in state.log], result.test_probs, data.num_classes)
    return result


#: ``kind`` of the fine-tuning loop's resumable state (docs/formats.md, "Resumable state").
STATE_KIND = "finetune"


def capture(run_id: str, method, ctx: FinetuneContext, state: TrainState) -> Dict[str, Any]:
    """Everything the next epoch depends on: every network (``method.state_dict()``), every optimiser, the method's
    own cross-epoch state (``epoch_state``), the global RNGs, and the history, metrics and best-epoch selection so
    far. The lr schedule is a function of the step, so the epoch count restores it."""
    return {"run_id": run_id, "step": len(state.log) * ctx.steps_per_epoch, "method": method.state_dict(),
            "optimizers": [opt.state_dict() for opt in ctx.optimizers], "method_state": method.epoch_state(),
            "rng": engine.rng_state(), "history": state.history, "selected": state.selected, "log": state.log,
            "val": state.val, "test": state.test, "best_epoch": state.best_epoch, "best_score": state.best_score,
            "best_state": state.best_state, "test_probs": state.test_probs}


def restore(state_dir: Path, run_id: str, method, ctx: FinetuneContext, state: TrainState,
            log_path: Optional[Path], on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None) -> int:
    """Load :func:`capture`'s state from ``state_dir`` into a freshly set-up method; returns the epochs done (0
    when there is no state)."""
    loaded = engine.load_training_state(state_dir, kind=STATE_KIND)
    if loaded is None:
        return 0
    done, saved = loaded
    if saved["run_id"] != run_id or len(saved["optimizers"]) != len(ctx.optimizers):
        raise ValueError(f"the state in {state_dir} belongs to run {saved['run_id']}, not {run_id}")
    method.load_state_dict(saved["method"])
    for opt, opt_state in zip(ctx.optimizers, saved["optimizers"]):
        opt.load_state_dict(opt_state)
    method.load_epoch_state(saved["method_state"])
    for name in ("history", "selected", "log", "val", "test", "best_epoch", "best_score", "best_state", "test_probs"):
        setattr(state, name, saved[name])
    if log_path is not None:  # the interrupted run's lines, as written then
        log_path.unlink(missing_ok=True)
        for record in state.log:
            io.append_jsonl(log_path, record)
    for record in state.log if on_epoch is not None else ():
        on_epoch(record)
    engine.set_rng_state(saved["rng"])
    return done


def _finish(method, state: TrainState, inputs: Inputs, x_train: np.ndarray, prep: Prepared) -> FitResult:
    """Memorisation of the training split at the last and the selected epoch; the model ends at the selected one."""
    clean, given = prep.data.train.labels, prep.train_noise.noisy

    def train_split() -> Dict[str, Any]:  # eval-mode predictions on the training images vs noisy/clean labels
        pred = predict_probs(method, inputs, x_train, method.ctx.autocast).argmax(axis=1)
        return memorisation(pred, clean, given)

    train, outputs = {"last": train_split()}, method.outputs()
    method.load_state_dict(state.best_state)
    train["best"] = train_split()
    return FitResult(method, state.history, state.selected if state.selected.any() else None, state.log, state.val,
                     state.test, state.best_epoch, state.test_probs, train, outputs)


def fit_subset(prep: Prepared, rows: np.ndarray, labels: np.ndarray, *, name: str = "stage",
               predict: Optional[np.ndarray] = None, device: str = "cpu", log_path: Optional[Path] = None,
               show_progress: bool = True) -> Tuple[FitResult, Optional[np.ndarray]]:
    """Plain cross-entropy with the same config and init on training ``rows`` with ``labels``: a stage of a
    multi-stage method (HSA-NRL's history, anchor and correction runs), trained by this same loop.

    The given (noisy) labels stand in for the clean ones in the stage's own statistics, so nothing derived from the
    clean labels comes back. Returns the stage's :class:`FitResult` (history rows follow ``rows``) and, when
    ``predict`` (training rows) is given, the selected-epoch model's (len(predict), K) softmax on those images.
    """
    rows, data, given = np.asarray(rows, dtype=np.int64), prep.data, prep.train_noise.noisy
    sub = dataclasses.replace(
        prep, cfg=dataclasses.replace(prep.cfg, method="ce", method_args={}), run_id=f"{prep.run_id}/{name}",
        data=dataclasses.replace(data, train=Split(data.train.images[rows], given[rows]),
                                 train_indices=data.train_indices[rows]),
        train_noise=noise.NoisyLabels.from_labels(given[rows], np.asarray(labels, np.int64), np.eye(data.num_classes)))
    result = fit(sub, device=device, log_path=log_path, show_progress=show_progress)
    if predict is None:
        return result, None
    inputs = Inputs(prep.cfg, prep.init["normalisation"], device)
    images = data.train.images[np.asarray(predict, dtype=np.int64)]
    return result, predict_probs(result.method, inputs, images, result.method.ctx.autocast)
