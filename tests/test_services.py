"""The services layer: the run-folder contract (runs), init resolution (inits) and the training engine (engine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_noise import engine, inits, runs
from ssl_noise.data import load_dataset
from ssl_noise.errors import UserError

SPEC = "synthetic:n_train=32,n_val=16,n_test=16"


def test_run_folder_round_trips_arrays_and_refuses_pickles_and_loop_names(tmp_path) -> None:
    run = runs.RunFolder(tmp_path)
    run.write_array("history", np.arange(6, dtype=np.float32).reshape(3, 2))
    assert run.has("history") and np.array_equal(run.array("history"), np.arange(6).reshape(3, 2))
    with pytest.raises(ValueError, match="plain name other than"):
        run.write_array("history", np.zeros(3), owner="method")  # a method may not overwrite the loop's arrays
    np.save(tmp_path / "evil.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="cannot read"):
        run.array("evil")                                       # numbers only: no pickled objects
    with pytest.raises(UserError, match="is not a finished run folder \\(no metrics.json\\)"):
        run.require("metrics.json")
    run.write_metrics({"schema_version": runs.SCHEMA_VERSION})
    assert run.is_finished() and run.metrics()["schema_version"] == runs.SCHEMA_VERSION
    assert run.provenance() == {}                               # folders written before run.json existed


def test_results_table_appends_under_the_fixed_columns(tmp_path) -> None:
    runs.append_result(tmp_path, {"run_id": "a", "test_acc": 0.5})
    runs.append_result(tmp_path, {"run_id": "b", "test_acc": 0.25})
    frame = runs.read_results(runs.results_path(tmp_path))
    assert list(frame.columns) == runs.RESULT_COLUMNS and list(frame["run_id"]) == ["a", "b"]
    assert runs.read_results(tmp_path / "missing.csv").empty


def test_random_init_is_a_function_of_its_seed_and_records_its_contract() -> None:
    data = load_dataset(SPEC, size=16)
    a, b = (inits.resolve("random", data, checkpoints="unused", seed=3) for _ in range(2))
    c = inits.resolve("random", data, checkpoints="unused", seed=4)
    assert a.sha256 == b.sha256 != c.sha256 and a.sha256 == inits.encoder_sha256(a.encoder)
    record = a.record()
    assert record["kind"] == "random" and record["stem"] == "cifar" and record["image_size"] == 16
    assert len(record["normalisation"]["mean"]) == data.channels
    assert inits.image_size("random", SPEC, checkpoints="unused") is None  # no entry: the data's own size
    with pytest.raises(UserError):
        inits.image_size("simclr", SPEC, checkpoints="empty-registry")  # fails before any data is loaded


def test_engine_schedule_precision_and_state_files(tmp_path) -> None:
    # lightly's schedule: warm-up step i takes (i + 1) / warmup of the peak, then cosine down to 0 at the end
    assert engine.lr_at(0, 100, 10, 1.0) == pytest.approx(0.1) and engine.lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert 0.49 < engine.lr_at(55, 100, 10, 1.0) < 0.51 and engine.lr_at(100, 100, 10, 1.0) < 1e-3
    with engine.autocast("cpu", "fp32"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    with engine.autocast("cpu", "bf16"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16
    model = torch.nn.Linear(3, 2)
    engine.save_state(model.state_dict(), tmp_path / "m.safetensors")
    loaded = engine.load_state(tmp_path / "m.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
