"""Resumable fine-tuning: a run stopped after epoch k (raised in-process, or killed with SIGKILL in a subprocess)
and resumed ends bitwise where an uninterrupted run ends: weights, optimiser and method state, history, metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_noise import engine
from ssl_noise.cli import main
from ssl_noise.config import FinetuneConfig, resolve
from ssl_noise.finetune import fit, prepare

SPEC = "synthetic:n_train=24,n_val=8,n_test=8"
TINY = dict(dataset=SPEC, image_size=8, epochs=3, batch_size=12, precision="fp32", noise_rate=0.4,
            noise_estimate="oracle")
CLI = ["--dataset", SPEC, "--image-size", "8", "--epochs", "3", "--batch-size", "12", "--noise", "0.4",
       "--noise-estimate", "oracle", "--set", "precision=fp32", "--quiet"]
ROOT = Path(__file__).resolve().parents[1]


class Stop(Exception):
    """The injected interruption."""


def _state_files(folder: Path):
    record = json.loads((folder / engine.STATE_JSON).read_text())
    return record, engine.load_training_state(folder, kind="finetune")[1]


def _same(a, b) -> None:
    """Nested states equal bitwise (tensors and arrays by value and dtype; NaN equal to NaN)."""
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a.nan_to_num(0.5), b.nan_to_num(0.5)) if a.is_floating_point() \
            else torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b)
    else:
        assert a == b


TIMES = ("epoch_time_s", "samples_per_s")
QUIET = pytest.mark.filterwarnings("ignore::UserWarning")  # schedules far too short for the methods, on purpose


@QUIET
@pytest.mark.parametrize("method", ["ce", "coteaching", "vog", "nshe", "elr", "coteaching_plus", "dividemix"])
def test_stopped_and_resumed_fit_is_bitwise_an_uninterrupted_one(tmp_path, monkeypatch, method) -> None:
    args = {"vog": {"warmup": 1, "vog_window": 2, "vog_inputs": "train"}, "nshe": {"warm_up": 1},
            "coteaching_plus": {"num_gradual": 1, "init_epoch": 1}, "dividemix": {"warmup": 1, "lambda_u": 25},
            }.get(method, {})
    prep = prepare(resolve(FinetuneConfig, {**TINY, "method": method, "method_args": args}), data_root=None,
                   checkpoints=tmp_path / "ck")
    straight = fit(prep, show_progress=False, state_dir=tmp_path / "a")

    save = engine.save_training_state

    def save_then_stop(folder, tree, *, epoch, kind):
        path = save(folder, tree, epoch=epoch, kind=kind)
        if epoch == 2:
            raise Stop
        return path

    monkeypatch.setattr(engine, "save_training_state", save_then_stop)
    with pytest.raises(Stop):
        fit(prep, show_progress=False, state_dir=tmp_path / "b")
    monkeypatch.setattr(engine, "save_training_state", save)
    assert json.loads((tmp_path / "b" / engine.STATE_JSON).read_text())["epoch"] == 2
    torch.manual_seed(123)  # the resumed process's global generators differ; the state restores them
    resumed = fit(prep, show_progress=False, state_dir=tmp_path / "b", resume=True)

    assert len(list((tmp_path / "b").glob("state-e*.safetensors"))) == 1  # older epochs' tensors are gone
    (ra, a), (rb, b) = _state_files(tmp_path / "a"), _state_files(tmp_path / "b")
    assert ra["epoch"] == rb["epoch"] == 3
    for key in ("log",):  # wall-clock fields differ between runs; everything else is the same
        a[key] = [{k: v for k, v in r.items() if k not in TIMES} for r in a[key]]
        b[key] = [{k: v for k, v in r.items() if k not in TIMES} for r in b[key]]
    del a["rng"], b["rng"]  # the straight run never reseeded the global generator: the start differs, not the use
    _same(a, b)  # last-epoch weights, optimisers, method state, history, metrics, best-epoch selection
    _same(straight.method.state_dict(), resumed.method.state_dict())  # the selected epoch's weights
    _same(straight.outputs, resumed.outputs)
    assert straight.val == resumed.val and straight.test == resumed.test and straight.train == resumed.train
    np.testing.assert_array_equal(straight.test_probs, resumed.test_probs)
    if method != "ce":
        assert a["method_state"]  # the method's own cross-epoch state is part of it


KILL = """
import os, signal, sys
from ssl_noise import engine
from ssl_noise.cli import main
save = engine.save_training_state
def save_then_die(folder, tree, *, epoch, kind):
    save(folder, tree, epoch=epoch, kind=kind)
    if epoch == 2:
        os.kill(os.getpid(), signal.SIGKILL)
engine.save_training_state = save_then_die
main(sys.argv[1:])
"""


def _cli(runs: Path, *args: str) -> list:
    return ["--threads", "1", "--checkpoints", str(runs.parent / "ck"), "--runs", str(runs), "finetune", *CLI, *args]


@pytest.mark.slow
@QUIET
@pytest.mark.parametrize("method", ["ce", "coteaching"])
def test_killed_finetune_resumes_to_the_same_run_folder(tmp_path, capsys, method) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", KILL, *_cli(tmp_path / "b", "--method", method)], env=env,
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    works = list((tmp_path / "b" / ".work").iterdir())
    assert len(works) == 1 and json.loads((works[0] / engine.STATE_JSON).read_text())["epoch"] == 2
    assert len(list((tmp_path / "b").glob(".*.tmp"))) == 1  # the killed run's half-built folder
    for runs, extra in ((tmp_path / "b", ["--resume"]), (tmp_path / "a", [])):
        with pytest.raises(SystemExit) as exit_info:
            main(_cli(runs, "--method", method, *extra))
        assert exit_info.value.code == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[0])
    a, b = tmp_path / "a" / folder.name, tmp_path / "b" / folder.name
    assert not works[0].exists()  # the state goes once the run folder is written
    assert not list((tmp_path / "b").glob(".*.tmp"))  # and the killed run's temporary folder with it
    assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())
    for name in ("history.npy", "test_probs.npy") + (("model.safetensors",) if method == "coteaching" else ()):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    lines = [[{k: v for k, v in json.loads(line).items() if k not in TIMES} for line in (f / "train_log.jsonl")
              .read_text().splitlines()] for f in (a, b)]
    assert lines[0] == lines[1] and len(lines[0]) == 3


def test_resume_without_state_is_a_user_error(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(_cli(tmp_path / "runs", "--resume"))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: nothing to resume")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
