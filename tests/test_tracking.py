"""--log tensorboard: event files with every epoch's scalars and the final metrics, for fine-tuning (also after a
resume, which replays the restored epochs) and pretraining; the JSON lines stay the record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from ssl_noise import engine  # noqa: E402
from ssl_noise.cli import main  # noqa: E402
from ssl_noise.tracking import scalars  # noqa: E402

TINY = ["--dataset", "synthetic:n_train=16,n_val=8,n_test=8", "--image-size", "8", "--batch-size", "8", "--quiet"]


def _events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder / "tensorboard"))
    acc.Reload()
    return acc


def _run(tmp_path: Path, capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["--threads", "1", "--checkpoints", str(tmp_path / "ck"), "--runs", str(tmp_path / "runs"), *args])
    out = capsys.readouterr()
    assert exit_info.value.code in (0, None), out.err
    return out.out.strip().splitlines()[-1]


class Stop(Exception):
    pass


def test_finetune_writes_every_epoch_and_the_final_metrics_also_across_a_resume(tmp_path, capsys, monkeypatch):
    args = ["finetune", *TINY, "--epochs", "3", "--set", "precision=fp32", "--log", "tensorboard"]
    save = engine.save_training_state

    def save_then_stop(folder, tree, *, epoch, kind):
        save(folder, tree, epoch=epoch, kind=kind)
        if epoch == 2:
            raise Stop

    monkeypatch.setattr(engine, "save_training_state", save_then_stop)
    with pytest.raises(SystemExit) as exit_info:  # main reports the unexpected Stop as a bug: status 1
        main(["--threads", "1", "--checkpoints", str(tmp_path / "ck"), "--runs", str(tmp_path / "runs"), *args])
    assert exit_info.value.code == 1 and "Stop" in capsys.readouterr().err
    monkeypatch.setattr(engine, "save_training_state", save)
    folder = Path(_run(tmp_path, capsys, *args, "--resume"))
    acc = _events(folder)
    tags = set(acc.Tags()["scalars"])
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert {f"epoch/{k}" for k in ("loss", "lr", "val_acc", "test_acc", "best_epoch")} <= tags
    # every epoch, the two restored ones included, with the JSON line's value
    loss = acc.Scalars("epoch/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in log], rel=1e-6)
    metrics = json.loads((folder / "metrics.json").read_text())
    final = acc.Scalars("final/test/best/acc")
    assert len(final) == 1 and final[0].value == pytest.approx(metrics["test"]["best"]["acc"])
    assert "final/selected_epoch" in tags


def test_pretrain_writes_knn_accuracy_and_loss(tmp_path, capsys) -> None:
    _run(tmp_path, capsys, "pretrain", "--method", "rotation", *TINY, "--epochs", "2", "--set", "precision=fp32",
         "--log", "tensorboard")
    (work,) = (tmp_path / "runs" / "pretrain").iterdir()
    acc = _events(work)
    assert [e.step for e in acc.Scalars("epoch/loss")] == [1, 2]
    assert len(acc.Scalars("final/knn_acc")) == 1


def test_scalars_flatten_nested_metrics() -> None:
    assert scalars({"a": {"b": 1, "c": float("nan")}, "d": "x"}) == {"a/b": 1.0}
