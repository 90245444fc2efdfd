"""What a new user hits on the first day (issue #55): plain progress lines in a log, the noise-rate step, a warning
near the symmetric limit, an init that names a manifest's missing entry before any image is decoded, the clean and
given counts of a manifest, and small output fixes."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from ssl_noise.cli import main
from ssl_noise.noise import NoiseWarning, symmetric

SPEC = "synthetic:n_train=32,n_val=16,n_test=32"
TINY = ["--dataset", SPEC, "--image-size", "16", "--batch-size", "16", "--set", "precision=fp32"]


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out


def test_finetune_into_a_log_prints_the_rate_step_and_a_line_per_epoch(tmp_path, capsys) -> None:
    """stderr is captured (no terminal), as under nohup or a scheduler: no bar, so one line an epoch with an ETA."""
    code, out = _run(["--runs", str(tmp_path / "runs"), "finetune", *TINY, "--epochs", "2", "--noise", "0.4",
                      "--method", "coteaching", "--set", "method_args.num_gradual=1"], capsys)
    assert code == 0, out.err
    lines = out.err.splitlines()
    assert any(line.startswith("noise rate: estimating it from the pixels of 32 training images") for line in lines)
    assert any(line.startswith("noise rate: ") and "90 % interval" in line and "knn_agreement" in line
               for line in lines)
    epochs = [line for line in lines if line.startswith("finetune ") and ": epoch " in line]
    assert len(epochs) == 2 and "epoch 1/2" in epochs[0] and "ETA" in epochs[0] and "val acc" in epochs[1]
    quiet = _run(["--runs", str(tmp_path / "runs2"), "--quiet", "finetune", *TINY, "--epochs", "1"], capsys)[1]
    assert "epoch 1/1" not in quiet.err


def test_a_symmetric_rate_near_the_limit_warns() -> None:
    with pytest.warns(NoiseWarning, match=r"within 0\.1 of 0\.5, where the clean class stops being the majority"):
        symmetric(2, 0.4)
    with pytest.warns(NoiseWarning, match="within 0.1 of 0.875"):
        symmetric(8, 0.8)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        symmetric(2, 0.3), symmetric(8, 0.6)  # far enough: silent


def _manifest(folder, name_line: str = "") -> str:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{'ab'[i % 2]}")
    path = folder / "cells.csv"
    path.write_text(name_line + "path,label\n" + "\n".join(rows) + "\n")
    return f"csv:{path}"


def test_an_init_without_an_entry_of_this_manifest_names_the_name_line_before_decoding(tmp_path, capsys,
                                                                                        make_entry) -> None:
    ck = tmp_path / "ck"
    make_entry(ck, dataset="my_cells")
    spec = _manifest(tmp_path)
    start = time.perf_counter()
    code, out = _run(["--checkpoints", str(ck), "finetune", "--init", "simclr", "--dataset", spec,
                      "--noise", "0.2", "--epochs", "1"], capsys)
    assert code == 2 and time.perf_counter() - start < 20
    error = [line for line in out.err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "channels=None" not in error[0]
    assert "named 'cells'" in error[0] and "`# name: <name>` line" in error[0] and "entries are of my_cells" in error[0]
    named = _manifest(tmp_path, "# name: my_cells\n")   # the fix the message names: the entry is found
    assert _run(["--checkpoints", str(ck), "knn", "--init", "simclr", "--dataset", named, "--k", "5", "--json"],
                capsys)[0] == 0


def test_knn_json_is_the_only_stdout_and_the_encoder_is_printed_once(tmp_path, capsys, make_entry) -> None:
    ck = tmp_path / "ck"
    entry = make_entry(ck)
    code, out = _run(["--checkpoints", str(ck), "knn", "--init", entry, "--dataset", SPEC, "--k", "5", "--json"],
                     capsys)
    assert code == 0 and json.loads(out.out)["encoder"] == entry and "encoder:" not in out.err
    code, out = _run(["--checkpoints", str(ck), "knn", "--init", entry, "--dataset", SPEC, "--k", "5"], capsys)
    assert out.out.count("encoder:") == 1 and "encoder:" not in out.err


def test_detect_says_its_cut_in_three_decimals(tmp_path, capsys) -> None:
    code, out = _run(["--runs", str(tmp_path / "runs"), "detect", "--init", "random", "--dataset", SPEC,
                      "--image-size", "16", "--noise", "0.25", "--noise-estimate", "oracle", "--k", "5"], capsys)
    assert code == 0, out.err
    assert "top 0.250 share by score (oracle estimate)" in out.out + out.err


def test_a_diverged_run_is_flagged_on_the_terminal_and_in_its_records(tmp_path, capsys) -> None:
    """The battery's case: --lr 1e6 with --freeze stays finite but predicts one class; it must not pass as a run."""
    code, out = _run(["--runs", str(tmp_path / "runs"), "--quiet", "finetune", *TINY, "--epochs", "2", "--noise", "0.2",
                      "--freeze", "--lr", "1e6"], capsys)
    assert code == 0, out.err
    assert "finished but means little (loss_exploded" in out.err
    folder = next(p for p in (tmp_path / "runs").iterdir() if p.is_dir() and not p.name.startswith("."))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert "loss_exploded" in metrics["health"]
    import pandas as pd

    row = pd.read_csv(tmp_path / "runs" / "results.csv").iloc[-1]
    assert "loss_exploded" in row["health"]
    code, out = _run(["--runs", str(tmp_path / "runs"), "--quiet", "finetune", *TINY, "--epochs", "2", "--noise", "0.2",
                      "--freeze"], capsys)
    assert code == 0 and "loss_exploded" not in out.err   # the default lr: no explosion (2 epochs may still
    assert pd.read_csv(tmp_path / "runs" / "results.csv").iloc[-1]["health"] in ("ok", "one_class")  # be 1 class)


def test_pretraining_that_diverges_is_refused_once_by_verify_s_rule_and_leaves_no_state(tmp_path, capsys) -> None:
    """The battery's temperature 1e-6: BatchNorm variances of 1e16, finite; the registry used to save what `registry
    verify` then failed, and a re-run trained again before refusing."""
    argv = ["--checkpoints", str(tmp_path / "ck"), "--runs", str(tmp_path / "runs"), "--quiet", "pretrain",
            "--dataset", "synthetic:n_train=64,n_val=16,n_test=16", "--image-size", "16", "--epochs", "1",
            "--batch-size", "32", "--set", "method_args.temperature=1e-6"]
    code, out = _run(argv, capsys)
    errors = [line for line in out.err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "refusing to register diverged weights" in errors[0]
    assert "beyond 1e+10" in errors[0] and "--lr" in errors[0]
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())
    assert not list(tmp_path.rglob("state*"))  # nothing to resume: a resumed run would diverge again
