"""``finetune(cfg)``: prepare, train, and write the run folder and its results row (through :mod:`ssl_noise.runs`).

The folder is built under a temporary name and renamed at the end, so a failed run leaves nothing; a finished
folder with the same run id is returned without training.
"""

from __future__ import annotations

import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ssl_noise import engine, io
from ssl_noise.config import FINETUNE_AUGMENT, FinetuneConfig, method_args_text, to_dict
from ssl_noise.errors import SslNoiseWarning, UserError
from ssl_noise.finetune.loop import FitResult, fit
from ssl_noise.finetune.prepare import Prepared, check_trainable, prepare, protocol_recipe
from ssl_noise.metrics import SCALARS, detection_report, mean_metrics
from ssl_noise.provenance import git_state, versions
from ssl_noise.runs import SCHEMA_VERSION, RunFolder, append_result
from ssl_noise.tracking import Tracker


ESTIMATE_FIELDS = ("noise_rate_estimate_lo", "noise_rate_estimate_hi", "noise_estimator")


def _interval(found) -> Dict[str, Any]:
    """The auto estimate's 90 % interval and estimator (None for a given or oracle rate, or no rate)."""
    return dict.fromkeys(ESTIMATE_FIELDS) if found is None else \
        {k: v for k, v in found.record().items() if k in ESTIMATE_FIELDS}


def training(prep: Prepared, result: FitResult) -> Dict[str, Any]:
    """How the method was trained: ``protocol`` (paper: its authors' recipe; shared: the config's optimiser and
    cosine schedule), the optimiser in words, the recipe's source, whether a two-network method's networks
    started from one set of weights (a registry init or a frozen encoder) or independent ones, and whether the
    training batches were augmented (DivideMix's two views, for one, are the same image without it)."""
    cfg, recipe = prep.cfg, protocol_recipe(prep.cfg)
    two = len(getattr(result.method, "nets", [])) > 1
    return {"protocol": "paper" if recipe is not None else "shared",
            "optimizer": recipe.describe() if recipe is not None else
            f"{cfg.optimizer} lr {cfg.lr:g}, momentum {cfg.momentum:g}, wd {cfg.weight_decay:g}, cosine",
            "source": recipe.source if recipe is not None else None,
            "starts": None if not two else "shared" if prep.init["kind"] == "registry" or cfg.freeze else "independent",
            "augmentation": bool(cfg.augmentation)}


def summarise(prep: Prepared, result: FitResult) -> Dict[str, Any]:
    """``metrics.json``: deterministic (no times), epochs 1-based."""
    b, epochs = result.best_epoch, prep.cfg.epochs
    last5 = result.test[-5:] if len(result.test) >= 5 else []  # fewer than 5 epochs: no last-5 mean at all
    return {"schema_version": SCHEMA_VERSION, "run_id": prep.run_id, "select_metric": prep.cfg.select_metric,
            "selected_epoch": b + 1, "epochs": epochs, "class_names": prep.data.class_names,
            "method_active": result.inactive_reason is None, "method_inactive_reason": result.inactive_reason,
            "health": result.health, "method": result.method_summary, "training": training(prep, result),
            "noise_rate_estimate": result.noise_rate, "noise_rate_source": result.noise_rate_source,
            **_interval(result.noise_estimate),
            "test": {"best": result.test[b], "last": result.test[-1],
                     "last5_mean": mean_metrics(last5) if last5 else None,
                     "last5_epochs": list(range(epochs - len(last5) + 1, epochs + 1)) if last5 else []},
            "val": {"best": result.val[b], "last": result.val[-1],
                    "labels": "clean" if prep.cfg.clean_val else "noisy"},
            "train": result.train, "noise": prep.noise,
            "init": {k: v for k, v in prep.init.items() if k != "normalisation"}}


def result_row(prep: Prepared, metrics: Dict[str, Any], wall: float, created: str) -> Dict[str, Any]:
    """The run's row of results.csv (columns: :data:`ssl_noise.runs.RESULT_COLUMNS`)."""
    cfg, init, nz, t = prep.cfg, prep.init, prep.noise, metrics["test"]
    best, train = metrics["val"]["best"], metrics["train"]
    row = {"run_id": prep.run_id, "dataset": prep.data.name, "image_size": prep.data.image_size,
           "n_train": len(prep.data.train), "init": cfg.init, "encoder_id": init["id"],
           "encoder_sha256": init["sha256"], "encoder_method": None if init["kind"] == "random" else init["method"],
           "encoder_seed": init.get("seed"), "backbone": init["backbone"], "stem": init["stem"],
           "protocol": "linear_probe" if cfg.freeze else "finetune", "method": cfg.method,
           "method_args": method_args_text(cfg.method_args), "method_active": metrics["method_active"],
           "health": ";".join(metrics["health"]) or "ok", "method_protocol": metrics["training"]["protocol"],
           "optimizer": metrics["training"]["optimizer"], "starts": metrics["training"]["starts"],
           "augmentation": metrics["training"]["augmentation"],
           "noise_source": nz["source"], "noise_type": nz["type"], "noise_rate": nz["rate"],
           "noise_realised_rate": nz["realised_rate"], "noise_seed": nz["seed"], "noise_mode": nz["mode"],
           "clean_val": cfg.clean_val, "val_realised_rate": nz["val_realised_rate"],
           "noise_rate_estimate": metrics["noise_rate_estimate"], "noise_rate_source": metrics["noise_rate_source"],
           **{k: metrics.get(k) for k in ESTIMATE_FIELDS}, "seed": cfg.seed,
           "epochs": cfg.epochs, "select_metric": cfg.select_metric, "selected_epoch": metrics["selected_epoch"],
           "val_acc": best["acc"], "val_macro_f1": best["macro_f1"],
           "train_acc_noisy": train["best"]["acc_noisy"], "train_acc_clean": train["best"]["acc_clean"],
           "train_memorised": train["best"]["memorised"], "train_memorised_last": train["last"]["memorised"],
           "wall_time_s": round(wall, 2), "created_at": created}
    for suffix, key in (("", "best"), ("_last", "last"), ("_last5", "last5_mean")):
        row.update({f"test_{m}{suffix}": None if t[key] is None else t[key][m] for m in SCALARS})
    return row


def write_outputs(run: RunFolder, prep: Prepared, result: FitResult) -> Dict[str, Any]:
    """The arrays, the selecting method's model and metrics.json; returns the metrics."""
    run.write_array("history", result.history)
    run.write_array("test_probs", result.test_probs.astype(np.float32))
    if result.selected is not None:
        run.write_array("selected", result.selected)
    for name, array in result.outputs.items():
        run.write_array(name, array, owner="method")
    if "kept" in result.outputs:  # a selecting method: `ssl-noise refine` continues its selected-epoch state
        run.write_model_state(result.method.state_dict())
    metrics = summarise(prep, result)
    if "kept" in result.outputs or "flagged" in result.outputs:  # how well its selection finds the flipped labels
        metrics["detection"] = detection_report(result.outputs, prep.data.train.labels, prep.train_noise.noisy,
                                                prep.data.num_classes)
    run.write_metrics(metrics)
    return metrics


def provenance(prep: Prepared, row: Dict[str, Any], created: str, device: str, command) -> Dict[str, Any]:
    """run.json: how and where the run was made (not part of the deterministic metrics)."""

    cfg, data = prep.cfg, prep.data
    return {"schema_version": SCHEMA_VERSION, "run_id": prep.run_id, "created_at": created,
            "wall_time_s": row["wall_time_s"], "device": device, "command": command or sys.argv,
            "versions": versions(), "git": git_state(), "init": prep.init,
            "augment": {**FINETUNE_AUGMENT, **cfg.augment} if cfg.augmentation else None,
            "data": {"source": data.source, "md5": data.md5, "task": data.task, "n_train": len(data.train),
                     "n_val": len(data.val), "n_test": len(data.test)}, "result": row}


def state_folder(runs: Path, run_id: str) -> Path:
    """``<runs>/.work/<run_id>/``: the run's resumable state while it trains (hidden: not a run folder)."""
    return Path(runs) / ".work" / run_id


def finetune(cfg: FinetuneConfig, *, data_root: Optional[str], checkpoints: Path, runs: Path, device: str = "cpu",
             command: Optional[List[str]] = None, show_progress: bool = True,
             resume: Optional[bool] = False, log: Sequence[str] = ()) -> Tuple[Path, bool]:
    """Prepare, train, write ``runs/<run_id>/`` and the results row; returns ``(folder, trained)``.

    ``trained`` is False when a finished run with the same id already existed (nothing was done). Bad input
    raises UserError before anything is written. Every epoch's state goes to :func:`state_folder` (removed when
    the run folder is written); ``resume``: True continues it (a UserError when there is none), None continues
    it when there is one (a sweep cell), False starts over. ``log``: trackers that mirror each epoch's line and
    the final metrics into the run folder (:mod:`ssl_noise.tracking`).
    """
    from datetime import datetime, timezone

    start = time.perf_counter()
    prep = prepare(cfg, data_root=data_root, checkpoints=checkpoints)
    check_trainable(prep)
    folder = Path(runs) / prep.run_id
    if RunFolder(folder).is_finished():
        return folder, False
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    data = prep.data
    work = state_folder(runs, prep.run_id)
    if resume and not (work / engine.STATE_JSON).is_file():
        raise UserError(f"nothing to resume for run {prep.run_id} (no {work / engine.STATE_JSON}); resume needs the "
                        f"same flags as the interrupted run")
    if resume is False and (work / engine.STATE_JSON).is_file():  # kept until this run's first epoch replaces it
        warnings.warn(f"run {prep.run_id} has the state of an interrupted run in {work}; starting over (--resume "
                      f"continues it)", SslNoiseWarning, stacklevel=2)
    io.remove_stale_temps(runs)  # a killed run's half-built folder (its state for --resume is in `work`)
    with io.atomic_dir(folder) as tmp:
        run = RunFolder(tmp)
        tracker = Tracker(log, tmp)
        run.write_config(to_dict(cfg))
        run.write_labels(data.train.labels, prep.train_noise.noisy, indices=data.train_indices)
        if prep.val_noise is not None:
            run.write_labels(data.val.labels, prep.val_noise.noisy, split="val")
        try:
            result = fit(prep, device=device, log_path=run.log_path(), show_progress=show_progress, state_dir=work,
                         resume=resume is not False, on_epoch=tracker.epoch)
            metrics = write_outputs(run, prep, result)
            tracker.final(metrics, cfg.epochs)
        finally:
            tracker.close()
        row = result_row(prep, metrics, time.perf_counter() - start, created)
        run.write_provenance(provenance(prep, row, created, device, command))
    shutil.rmtree(work, ignore_errors=True)
    append_result(runs, row)
    if result.health:
        losses = [r["loss"] for r in result.log]
        warnings.warn(f"run {prep.run_id} finished but means little ({', '.join(result.health)}): epoch losses "
                      f"{losses[0]:.3g} -> {max(losses):.3g}, test predictions in "
                      f"{len(np.unique(result.test_probs.argmax(axis=1)))} of {data.num_classes} classes"
                      + ("; a lower --lr usually fixes a loss that grows" if "loss_exploded" in result.health else
                         "; more epochs or data, or a lower noise rate, may give a classifier")
                      + ". Flagged as health in metrics.json and results.csv",
                      SslNoiseWarning, stacklevel=2)
    return folder, True
