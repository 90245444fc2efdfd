"""Running a sweep: workers that claim cells, fine-tune them and record each one done or failed.

:func:`work` is one worker over a list of cells (any number may share a runs folder); :func:`run_sweep` starts
``jobs`` of them on this machine. Every finished cell's noisy labels are checked against the shared noise file of
its noise key, so cells compared across inits and methods are paired. Format: docs/formats.md.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue as queue_mod
import shutil
import signal
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssl_noise import noise
from ssl_noise.config import FinetuneConfig, to_dict
from ssl_noise.errors import UserError
from ssl_noise.runs import RunFolder
from ssl_noise.sweep.cells import Cell, noise_key
from ssl_noise.sweep.log import Log, log_stderr
from ssl_noise.sweep.queue import (
    DEFAULT_STALE_AFTER_S,
    SCHEMA_VERSION,
    Heartbeat,
    cell_paths,
    claim,
    record_done,
    record_failed,
    release,
)

# Function-level imports of torch and ssl_noise.finetune keep ``ssl-noise --help`` fast.


def check_pairing(runs: Path, cfg: FinetuneConfig, folder: Path) -> Path:
    """Publish this run's training labels as the noise key's shared file, or check them against it.

    Returns the shared file. Raises UserError when the labels differ (the comparison would not be paired).
    """
    shared = Path(runs) / "noise" / f"{noise_key(cfg)}.csv"
    mine = RunFolder(folder).labels_file
    if not shared.exists():
        shared.parent.mkdir(parents=True, exist_ok=True)
        tmp = shared.with_name(f".{shared.name}.{uuid.uuid4().hex}.tmp")
        shutil.copyfile(mine, tmp)
        try:
            os.link(tmp, shared)  # atomic create-if-absent: the first finished cell of a noise key defines it
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    a, b = noise.read_noise_csv(shared), noise.read_noise_csv(mine)
    if not (np.array_equal(a.index, b.index) and np.array_equal(a.clean, b.clean) and np.array_equal(a.noisy, b.noisy)):
        raise UserError(f"the noisy labels of {folder.name} differ from the sweep's shared noise file {shared}: "
                        "the comparison across inits would not be paired (did the data or the noise code change?)")
    return shared


@dataclass
class WorkerReport:
    """What one worker did, by cell id."""

    trained: list[str] = field(default_factory=list)     # trained here
    reused: list[str] = field(default_factory=list)      # finetune found an identical finished run
    failed: list[str] = field(default_factory=list)      # failed here (recorded in .failed/)
    skipped: dict[str, str] = field(default_factory=dict)  # cell id -> done | running | failed

    def merge(self, other: WorkerReport) -> WorkerReport:
        """Both reports as one; a cell one worker skipped because the other ran it counts only as run."""
        trained, reused, failed = self.trained + other.trained, self.reused + other.reused, self.failed + other.failed
        ran = set(trained) | set(reused) | set(failed)
        skipped = {cid: why for cid, why in {**self.skipped, **other.skipped}.items() if cid not in ran}
        return WorkerReport(trained, reused, failed, skipped)


def run_cell(cell: Cell, *, runs: Path, checkpoints: Path, data_root: str | None, device: str,
             command: list[str] | None = None, show_progress: bool = False) -> dict[str, Any]:
    """Fine-tune one cell and check its labels against the shared noise file; returns the done record.

    A cell whose run was interrupted (a killed worker, a preempted job) continues from its last epoch's state."""
    from ssl_noise.finetune import finetune

    start = time.perf_counter()
    folder, trained = finetune(cell.config, data_root=data_root, checkpoints=checkpoints, runs=runs, device=device,
                               command=command, show_progress=show_progress, resume=None)
    shared = check_pairing(runs, cell.config, folder)
    metrics = RunFolder(folder).metrics()
    return {"schema_version": SCHEMA_VERSION, "cell_id": cell.cell_id, "run_id": folder.name, "trained": trained,
            "noise_file": os.path.relpath(shared, runs), "test_acc": metrics["test"]["best"]["acc"],
            "wall_time_s": round(time.perf_counter() - start, 2), "host": socket.gethostname(),
            "finished_at": time.time(), "values": dict(cell.values)}


def work(cells: Sequence[Cell], *, runs: Path, checkpoints: Path, data_root: str | None, device: str = "cpu",
         started_at: float | None = None, retry_failed: bool = True, stale_after: float = DEFAULT_STALE_AFTER_S,
         command: list[str] | None = None, show_progress: bool = False, log: Log = log_stderr) -> WorkerReport:
    """One worker: go through ``cells`` in order, claim each free one, run it, record done or failed.

    Any number of workers (processes, machines) may run this over the same cells and runs folder at once.
    """
    runs = Path(runs)
    started_at = time.time() if started_at is None else started_at
    report = WorkerReport()
    for i, cell in enumerate(cells, 1):
        status, token = claim(runs, cell.cell_id, started_at=started_at, retry_failed=retry_failed,
                              stale_after=stale_after, log=log)
        if status != "claimed":
            report.skipped[cell.cell_id] = status
            continue
        _run_claimed(cell, token, report, tag=f"[{i}/{len(cells)}]", runs=runs, stale_after=stale_after, log=log,
                     checkpoints=checkpoints, data_root=data_root, device=device, command=command,
                     show_progress=show_progress)
        release(runs, cell.cell_id, token)
    return report


def _run_claimed(cell: Cell, token: str, report: WorkerReport, *, tag: str, runs: Path, stale_after: float,
                 log: Log, **run_kwargs: Any) -> None:
    """Run a claimed cell under a heartbeat and write its done or failed record (before the claim is released).

    A failure is recorded and the sweep goes on; an interrupt releases the claim and propagates.
    """
    p = cell_paths(runs, cell.cell_id)
    log(f"{tag} {cell.cell_id}: {cell.describe()}")
    try:
        with Heartbeat(p["claim"], max(stale_after / 10, 0.05)):
            record = run_cell(cell, runs=runs, **run_kwargs)
        record_done(runs, cell.cell_id, record)
        (report.trained if record["trained"] else report.reused).append(cell.cell_id)
        how = "trained" if record["trained"] else "an identical run had finished"
        log(f"{tag} {cell.cell_id}: {how} in {record['wall_time_s']:.1f} s, test acc "
            f"{record['test_acc']:.4f} -> {runs / record['run_id']}")
    except KeyboardInterrupt:
        release(runs, cell.cell_id, token)
        raise
    except Exception as e:  # noqa: BLE001 - a failed cell is recorded and the sweep goes on
        failed = record_failed(runs, cell.cell_id, e, to_dict(cell.config))
        report.failed.append(cell.cell_id)
        log(f"{tag} {cell.cell_id}: FAILED ({type(e).__name__}: {e}); recorded in {failed}")


def _worker_main(index: int, gpu: int | None, threads: int | None, cells: list[Cell], kwargs: dict[str, Any],
                 queue) -> None:
    """Entry point of a spawned worker: pin its GPU / thread count, then :func:`work`."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before CUDA initialises in this process

    def log(message: str) -> None:
        log_stderr(f"worker {index}: {message}")

    try:  # an interrupt may come while torch is still importing
        import torch

        if threads:
            torch.set_num_threads(threads)
        queue.put((index, dataclasses.asdict(work(cells, log=log, **kwargs))))
    except KeyboardInterrupt:
        queue.put((index, None))


def run_sweep(cells: Sequence[Cell], *, runs: Path, checkpoints: Path, data_root: str | None, device: str = "cpu",
              jobs: int = 1, threads: int | None = None, retry_failed: bool = True,
              stale_after: float = DEFAULT_STALE_AFTER_S, command: list[str] | None = None,
              show_progress: bool = False, log: Log = log_stderr) -> WorkerReport:
    """Run ``cells`` with ``jobs`` workers on this machine.

    ``jobs == 1`` runs in this process. Otherwise ``jobs`` spawned processes each run :func:`work` over all cells
    (the claims share the cells out): on CPU each gets ``threads // jobs`` torch threads (``threads`` defaults to
    the usable cores); on CUDA worker ``w`` sees only GPU ``w % n_gpus`` (``CUDA_VISIBLE_DEVICES``).
    """
    kwargs = {"runs": Path(runs), "checkpoints": Path(checkpoints), "data_root": data_root, "device": device,
              "started_at": time.time(), "retry_failed": retry_failed, "stale_after": stale_after,
              "command": command}
    if jobs <= 1:
        return work(cells, show_progress=show_progress, log=log, **kwargs)
    return _run_workers(cells, jobs=jobs, threads=threads, kwargs=kwargs, log=log)


def _run_workers(cells: Sequence[Cell], *, jobs: int, threads: int | None, kwargs: dict[str, Any],
                 log: Log) -> WorkerReport:
    """Spawn ``jobs`` processes running :func:`work` over all of ``cells`` and merge their reports."""
    gpus = 0
    if kwargs["device"].startswith("cuda"):
        import torch

        gpus = torch.cuda.device_count()
    cores = threads or len(os.sched_getaffinity(0))
    per_worker = max(1, cores // jobs)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker_main, args=(w, w % gpus if gpus else None, per_worker, list(cells), kwargs,
                                                    results)) for w in range(jobs)]
    for proc in procs:
        proc.start()
    log(f"sweep: {jobs} workers, {per_worker} torch thread(s) each" + (f", on {gpus} GPU(s)" if gpus else ""))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = _gather(results, procs, jobs)
    except KeyboardInterrupt as stop:
        _stop_workers(procs, forward=isinstance(stop, _Terminated))
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        for proc in procs:
            proc.join()
    crashed = [w for w, proc in enumerate(procs) if proc.exitcode]
    if crashed:
        log(f"sweep: worker(s) {crashed} exited abnormally; their claims go stale and a re-run takes them over")
    return report


class _Terminated(KeyboardInterrupt):
    """SIGTERM in the parent: unlike Ctrl-C in a terminal, it reached no worker."""


def _interrupt(signum, frame) -> None:
    """SIGTERM (``kill``, a scheduler ending the job) stops the sweep as Ctrl-C does, workers included, instead of
    leaving them to train on as orphans."""
    raise _Terminated


def _stop_workers(procs: list[Any], *, forward: bool, grace_s: float = 10.0) -> None:
    """End the workers: pass the interrupt on as SIGINT where it did not reach them (``forward``), so each ends its
    cell as after Ctrl-C (its last epoch state stays for a re-run to resume); SIGTERM any still alive after
    ``grace_s``."""
    for proc in procs:
        if forward and proc.is_alive():
            os.kill(proc.pid, signal.SIGINT)
    deadline = time.time() + grace_s
    for proc in procs:
        proc.join(max(0.0, deadline - time.time()))
        if proc.is_alive():
            proc.terminate()


def _gather(results, procs: list[Any], jobs: int) -> WorkerReport:
    """Merge the workers' reports as they arrive; stop early when every worker has exited."""
    report, got = WorkerReport(), 0
    while got < jobs:
        try:
            _, data = results.get(timeout=1.0)
            got += 1
            if data is not None:
                report = report.merge(WorkerReport(**data))
        except queue_mod.Empty:
            if not any(proc.is_alive() for proc in procs):
                break
    return report
