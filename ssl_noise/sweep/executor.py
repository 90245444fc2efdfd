"""Sweeps on a cluster through submitit: the cells as one job array, each cell a job that claims it, runs it
(continuing from its last epoch's state) and records it, and that is requeued when preempted or out of time.

``cluster="local"`` runs the same path with submitit's local executor (one process per cell on this machine).
The jobs use the same claims, done records and runs folder as ``ssl-noise sweep`` and the shell array
(finetune/sweeps/slurm_array.sh), so all three can work on one sweep at once. submitit stores each job's callable
and result as pickles in its own folder (``<runs>/.submitit/``): its transport, not an artefact of ours.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ssl_noise.errors import UserError
from ssl_noise.settings import resolve_device
from ssl_noise.sweep.cells import Cell
from ssl_noise.sweep.log import Log, log_stderr
from ssl_noise.sweep.queue import DEFAULT_STALE_AFTER_S, cell_paths, read_json, release
from ssl_noise.sweep.runner import WorkerReport, work

EXECUTORS = ("slurm", "local")


@dataclass
class ClusterOptions:
    """What the job array asks the scheduler for (submitit's generic names, ``slurm_`` ones where SLURM-only)."""

    partition: str | None = None        # SLURM partition
    gpus_per_task: int = 0              # GPUs per cell
    cpus_per_task: int = 4              # also the cell's torch threads
    time_limit_min: int = 240           # per job; a cell that outlives it is requeued and resumes
    array_parallelism: int = 16         # cells running at once
    mem_gb: int | None = None

    def parameters(self, name: str) -> dict[str, Any]:
        params = {"name": name, "timeout_min": self.time_limit_min, "gpus_per_node": self.gpus_per_task,
                  "cpus_per_task": self.cpus_per_task, "tasks_per_node": 1, "nodes": 1,
                  "slurm_array_parallelism": self.array_parallelism, "mem_gb": self.mem_gb}
        if self.partition:
            params["slurm_partition"] = self.partition
        return params


class CellJob:
    """The callable submitit runs for one cell (``map_array`` gives each job its cell). A class, not a function,
    because submitit calls its :meth:`checkpoint` on preemption or timeout: the claim is released and the same
    cell is resubmitted, and the new job continues from the cell's last epoch state (``finetune(resume=None)``)."""

    def __init__(self, *, runs: Path, checkpoints: Path, data_root: str | None, device: str, started_at: float,
                 retry_failed: bool, stale_after: float, threads: int | None, command: list[str] | None):
        self.kwargs = {"runs": Path(runs), "checkpoints": Path(checkpoints), "data_root": data_root,
                       "started_at": started_at, "retry_failed": retry_failed, "stale_after": stale_after,
                       "command": command}
        self.device, self.threads = device, threads

    def __call__(self, cell: Cell) -> dict[str, Any]:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        device = resolve_device(self.device)  # on the compute node, not where the array was submitted
        return asdict(work([cell], device=device, **self.kwargs))

    def checkpoint(self, cell: Cell) -> Any:
        """submitit's hook before a requeue: give the claim back (it is this process's), resubmit the cell."""
        import submitit

        p = cell_paths(self.kwargs["runs"], cell.cell_id)
        info = read_json(p["claim"]) or {}
        if info.get("host") == socket.gethostname() and info.get("pid") == os.getpid():
            release(self.kwargs["runs"], cell.cell_id, info["token"])
        return submitit.helpers.DelayedSubmission(self, cell)


def submit(cells: Sequence[Cell], *, cluster: str, name: str, runs: Path, checkpoints: Path, data_root: str | None,
           device: str = "auto", options: ClusterOptions | None = None, started_at: float,
           retry_failed: bool = True, stale_after: float = DEFAULT_STALE_AFTER_S, command: list[str] | None = None,
           log: Log = log_stderr) -> list[Any]:
    """Submit ``cells`` as one job array (``slurm``) or as local processes (``local``); returns the jobs."""
    try:
        import submitit
    except ImportError:
        raise UserError('--executor needs submitit: pip install "ssl-noise[slurm]"') from None
    if cluster not in EXECUTORS:
        raise UserError(f"unknown executor {cluster!r}; choose from: {', '.join(EXECUTORS)}")
    options = options or ClusterOptions()
    folder = Path(runs) / ".submitit" / name
    # slurm fills %j with the job id; the local executor does not (it would leave a literal "%j" folder)
    executor = submitit.AutoExecutor(folder=folder if cluster == "local" else folder / "%j", cluster=cluster)
    executor.update_parameters(**options.parameters(f"ssl-noise-{name}"))
    job = CellJob(runs=runs, checkpoints=checkpoints, data_root=data_root, device=device, started_at=started_at,
                  retry_failed=retry_failed, stale_after=stale_after, threads=options.cpus_per_task,
                  command=command)
    jobs = executor.map_array(job, list(cells))
    if jobs and cluster == "local":  # one process, so one id, per cell
        log(f"submitted {len(jobs)} cell(s) as local process(es) {', '.join(j.job_id for j in jobs)}; logs in {folder}")
    elif jobs:
        log(f"submitted {len(jobs)} cell(s) to {cluster} as job array {jobs[0].job_id.split('_')[0]}"
            f"_[0-{len(jobs) - 1}]; logs in {folder}")
    return jobs


def gather(jobs: Sequence[Any], log: Log = log_stderr) -> WorkerReport:
    """Wait for ``jobs`` and merge their reports; a job that died (not a failed cell: those are recorded) is
    said and its cell left to a re-run, which resumes it."""
    report = WorkerReport()
    for job in jobs:
        try:
            report = report.merge(WorkerReport(**job.result()))
        except Exception as e:  # noqa: BLE001 - one lost job must not hide the others' results
            log(f"job {job.job_id} ended without a result ({type(e).__name__}: {str(e).strip()[-300:]}); "
                f"re-run the sweep to resume its cell")
    return report
