"""Sweeps through submitit: a 4-cell sweep with the local executor (the path a SLURM array takes), a cell
interrupted earlier resumed from its state, and the requeue hook that gives the claim back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytest.importorskip("submitit")

from ssl_noise import engine, sweep  # noqa: E402
from ssl_noise.cli import main  # noqa: E402
from ssl_noise.finetune import finetune  # noqa: E402
from ssl_noise.sweep.executor import CellJob  # noqa: E402
from ssl_noise.sweep.queue import cell_paths, claim  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE = {"dataset": "synthetic:n_train=16,n_val=8,n_test=8", "image_size": 8, "epochs": 2, "batch_size": 8,
        "precision": "fp32"}


class Stop(Exception):
    pass


def _spec(tmp_path: Path) -> Path:
    path = tmp_path / "four.yaml"
    path.write_text(yaml.safe_dump({"name": "four", "base": BASE, "grid": {"noise_rate": [0.2, 0.4],
                                                                           "seed": [0, 1]}}))
    return path


@pytest.mark.slow
def test_local_executor_runs_a_four_cell_sweep_and_resumes_an_interrupted_cell(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the job processes import this checkout
    spec, runs, ck = _spec(tmp_path), tmp_path / "runs", tmp_path / "ck"
    cells = sweep.expand(sweep.load_spec(spec), checkpoints=ck)
    assert len(cells) == 4
    # one cell was killed after its first epoch in an earlier attempt: its state waits in runs/.work/
    save = engine.save_training_state

    def save_then_stop(folder, tree, *, epoch, kind):
        save(folder, tree, epoch=epoch, kind=kind)
        raise Stop

    monkeypatch.setattr(engine, "save_training_state", save_then_stop)
    with pytest.raises(Stop):
        finetune(cells[0].config, data_root=None, checkpoints=ck, runs=runs, show_progress=False)
    monkeypatch.setattr(engine, "save_training_state", save)
    work = next((runs / ".work").iterdir())
    first_epoch = engine.load_training_state(work, kind="finetune")[1]["log"][0]

    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoints", str(ck), "--runs", str(runs), "sweep", str(spec), "--executor", "local",
              "--cpus-per-task", "1", "--time-limit", "10", "--quiet"])
    out = capsys.readouterr()
    assert exit_info.value.code == 0, out.err
    assert "4 trained" in out.err and "submitted 4 cell(s) as local process(es) " in out.err
    ids = out.err.split("local process(es) ")[1].split(";")[0].split(", ")
    assert len(ids) == 4 and all(i.isdigit() for i in ids)  # one process id per cell
    table = pd.read_csv(out.out.strip().splitlines()[-1])
    assert sorted(table["run_id"]) == sorted(json.loads(cell_paths(runs, c.cell_id)["done"].read_text())["run_id"]
                                             for c in cells)
    assert len(list((runs / ".submitit" / "four").iterdir())) >= 4  # submitit's files for each cell
    assert not (runs / ".submitit" / "four" / "%j").exists()  # no literal %j folder (only slurm fills it)
    # the interrupted cell continued from its state: its first epoch's log line is the one written before
    done = json.loads(cell_paths(runs, cells[0].cell_id)["done"].read_text())
    log = [json.loads(line) for line in (runs / done["run_id"] / "train_log.jsonl").read_text().splitlines()]
    assert log[0] == first_epoch and len(log) == 2
    assert not work.exists() and not list((runs / ".claims").glob("*-*"))  # state gone, every claim released


def test_requeue_hook_releases_the_claim_and_resubmits_the_same_cell(tmp_path) -> None:
    runs = tmp_path / "runs"
    cell = sweep.expand(sweep.load_spec(_spec(tmp_path)), checkpoints=tmp_path / "ck")[0]
    job = CellJob(runs=runs, checkpoints=tmp_path / "ck", data_root=None, device="cpu", started_at=0.0,
                  retry_failed=True, stale_after=600, threads=1, command=None)
    assert claim(runs, cell.cell_id, started_at=0.0)[0] == "claimed"
    assert sweep.cell_status(runs, cell.cell_id) == "running"
    again = job.checkpoint(cell)  # what submitit calls on preemption or timeout
    assert again.function is job and again.args == (cell,)
    assert sweep.cell_status(runs, cell.cell_id) == "pending"  # the requeued job can claim it at once


def test_slurm_executor_submits_one_array_with_the_options(tmp_path, monkeypatch, capsys) -> None:
    """Without a cluster: stand-in ``srun``/``sbatch`` on PATH; the sbatch script submitit writes is checked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in *.sh) cp \"$a\" "
                                    f"{tmp_path}/job.sh;; esac; done\necho 'Submitted batch job 4242'\n")
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoints", str(tmp_path / "ck"), "--runs", str(tmp_path / "runs"), "sweep", str(_spec(tmp_path)),
              "--executor", "slurm", "--partition", "gpu", "--gpus-per-task", "1", "--time-limit", "90",
              "--array-parallelism", "2"])
    err = capsys.readouterr().err
    assert exit_info.value.code in (0, None), err
    assert "submitted 4 cell(s) to slurm as job array 4242_[0-3]" in err and "--dry-run" in err  # returns, no wait
    script = (tmp_path / "job.sh").read_text()
    for line in ("--array=0-3%2", "--partition=gpu", "--gpus-per-node=1", "--time=90", "--cpus-per-task=4",
                 "--signal=USR2@"):  # the signal is submitit's cue to checkpoint and requeue
        assert f"#SBATCH {line}" in script, line
