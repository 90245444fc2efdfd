"""Sweeps: grid expansion, id stability, skip-finished, shards, concurrent workers, failures, pairing, CLI errors."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ssl_noise import noise, registry, sweep
from ssl_noise.cli import main
from ssl_noise.config import FinetuneConfig, resolve
from ssl_noise.errors import UserError
from ssl_noise.sweep.queue import Heartbeat

SPEC = "synthetic:n_train=16,n_val=8,n_test=16"
BASE = {"dataset": SPEC, "image_size": 16, "epochs": 1, "batch_size": 8, "precision": "fp32", "augmentation": False}


def _spec(tmp_path: Path, grid: dict, base: dict | None = None, name: str = "t", **extra) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": {**BASE, **(base or {})}, "grid": grid, **extra}))
    return path



def _cells(path: Path, ck: Path, **kw):
    return sweep.expand(sweep.load_spec(path), checkpoints=ck, **kw)


def _cli(capsys, tmp_path: Path, *args: str) -> tuple:
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoints", str(tmp_path / "ck"), "--runs", str(tmp_path / "runs"), *args])
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


# ============ expansion and ids ============

def test_grid_expansion_layers_and_inits_resolved_once(make_entry, tmp_path) -> None:
    ck = tmp_path / "ck"
    entry = make_entry(ck)
    (tmp_path / "recipe.yaml").write_text("lr: 0.2\nweight_decay: 0.001\nepochs: 7\n")
    path = _spec(tmp_path, {"init": ["random", "simclr"], "noise_rate": [0.0, 0.4], "noise_seed": [1, 2],
                            "method_args": [{}]}, base={"recipe": "recipe.yaml", "weight_decay": 0.002})
    cells = sweep.expand(sweep.load_spec(path), checkpoints=ck, overrides={"batch_size": 4})
    # 2 inits x (clean once: its noise seeds draw nothing + 0.4 x 2 noise seeds)
    assert len(cells) == 6 and len({c.cell_id for c in cells}) == 6
    first = cells[0].config
    # defaults < recipe < base < --set < grid; the recipe path is found next to the spec
    assert (first.lr, first.weight_decay, first.epochs, first.batch_size) == (0.2, 0.002, 1, 4)
    assert [dict(c.values)["noise_rate"] for c in cells[:3]] == [0.0, 0.4, 0.4]  # grid order, last key fastest
    # a method name is resolved once, at expansion, to the concrete id (and hashed with the encoder's sha256)
    simclr = [c for c in cells if c.cell_id.startswith("simclr-")]
    assert len(simclr) == 3 and {c.config.init for c in simclr} == {entry}
    assert simclr[0].encoder_sha256 == registry.read_meta(ck, entry)["sha256"]
    assert simclr[0].cell_id.startswith("simclr-synthetic-cleann1-ce-s0-")
    # a newer simclr entry gives other ids on the next expansion: the cells name the encoder they run
    time.sleep(0.01)
    newer = make_entry(ck, seed=1)
    again = {c.cell_id for c in _cells(path, ck, overrides={"batch_size": 4})}
    assert {c.cell_id for c in cells if c.config.init == "random"} < again
    assert not {c.cell_id for c in simclr} & again and newer != entry
    # duplicates (an id and the method name resolving to it) are one cell
    dup = _spec(tmp_path, {"init": [newer, "simclr"]}, name="dup")
    assert len(_cells(dup, ck)) == 1


def test_clean_cells_that_differ_only_in_noise_draws_run_once(tmp_path) -> None:
    grid = {"noise_type": ["symmetric", "pairflip"], "noise_rate": [0.0, 0.3], "noise_seed": [1, 2]}
    cells = _cells(_spec(tmp_path, grid), tmp_path / "ck")
    clean = [c for c in cells if not c.config.noise_rate]
    assert len(cells) == 1 + 2 * 2 and len(clean) == 1
    # the one kept is the first in grid order, under the id it has on its own (finished cells keep their ids)
    assert dict(clean[0].values) == {"noise_type": "symmetric", "noise_rate": 0.0, "noise_seed": 1}
    alone = _cells(_spec(tmp_path, {"noise_rate": [0.0], "noise_seed": [1]}, name="alone"), tmp_path / "ck")
    assert clean[0].cell_id == alone[0].cell_id
    # a subset is drawn with the noise seed: there, clean cells of two noise seeds are different runs
    subset = _cells(_spec(tmp_path, {"noise_rate": [0.0], "noise_seed": [1, 2]}, base={"subset": 8}, name="sub"),
                    tmp_path / "ck")
    assert len(subset) == 2
    # so are two training seeds
    assert len(_cells(_spec(tmp_path, {"noise_rate": [0.0], "seed": [0, 1]}, name="seeds"), tmp_path / "ck")) == 2


def test_joined_grid_keys_vary_together_and_keep_the_ids_of_crossed_cells(tmp_path) -> None:
    joined = _cells(_spec(tmp_path, {"noise_type+noise_rate": [["symmetric", 0.4], ["pairflip", 0.3]],
                                     "seed": [0, 1]}, name="joined"), tmp_path / "ck")
    settings = [(c.config.noise_type, c.config.noise_rate, c.config.seed) for c in joined]
    assert settings == [("symmetric", 0.4, 0), ("symmetric", 0.4, 1), ("pairflip", 0.3, 0), ("pairflip", 0.3, 1)]
    assert dict(joined[0].values) == {"noise_type": "symmetric", "noise_rate": 0.4, "seed": 0}
    # each cell is the one the crossed grid holds, under the same id: joining only leaves the other pairs out
    crossed = _cells(_spec(tmp_path, {"noise_type": ["symmetric", "pairflip"], "noise_rate": [0.3, 0.4],
                                      "seed": [0, 1]}, name="crossed"), tmp_path / "ck")
    assert {c.cell_id for c in joined} < {c.cell_id for c in crossed} and len(crossed) == 8
    # each method with its own options (one base method_args would be refused by the methods it does not fit)
    per_method = _cells(_spec(tmp_path, {"method+method_args": [["ce", {}], ["nshe", {"forget_rate": 0.05}]]},
                              name="methods"), tmp_path / "ck")
    assert [(c.config.method, c.config.method_args) for c in per_method] == [("ce", {}),
                                                                             ("nshe", {"forget_rate": 0.05})]
    # a --set on a joined field is refused like one on any grid key
    with pytest.raises(UserError, match="grid key"):
        _cells(_spec(tmp_path, {"noise_type+noise_rate": [["symmetric", 0.4]]}, name="set"), tmp_path / "ck",
               overrides={"noise_rate": 0.2})


def test_ids_are_stable_and_hash_every_field(tmp_path, monkeypatch) -> None:
    path = _spec(tmp_path, {"noise_rate": [0.2], "seed": [0, 1]})
    a, b = _cells(path, tmp_path / "ck"), _cells(path, tmp_path / "ck")
    assert [c.cell_id for c in a] == [c.cell_id for c in b]
    # the same cells written in another key order and grid order: same ids
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"grid": {"seed": [1, 0], "noise_rate": [0.2]}, "base": dict(reversed(
        list(BASE.items())))}))
    assert sorted(c.cell_id for c in _cells(other, tmp_path / "ck")) == sorted(c.cell_id for c in a)
    # every FinetuneConfig field is in the hash (no dedup on a hand-picked subset of keys)
    cfg = a[0].config
    changed = {"init": "imagenet", "dataset": SPEC + ",seed=1", "image_size": 17, "subset": 8, "backbone": "resnet34",
               "stem": "imagenet", "freeze": True, "method": "other", "method_args": {"x": 1}, "noise_rate": 0.3,
               "noise_type": "pairflip", "noise_mode": "exact", "noise_seed": 5, "class_map": "m.yaml",
               "noise_matrix": None, "noise_file": "f.csv", "noise_force": True, "clean_val": True, "epochs": 2,
               "batch_size": 9, "optimizer": "adam", "lr": 0.3, "momentum": 0.5, "weight_decay": 0.1,
               "warmup_epochs": 1.0, "augmentation": True, "augment": {"hf_prob": 0.0}, "select_metric": "macro_f1",
               "seed": 9, "precision": "bf16", "channels_last": False, "eval_batch_size": 7,
               "noise_estimate": 0.3, "label_column": "annotator_1", "test_eval": "reported", "protocol": "shared"}
    (tmp_path / "m.yaml").write_text("0: 1\n")
    monkeypatch.chdir(tmp_path)
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    assert fields <= set(changed), f"add the new field(s) {fields - set(changed)} to this test"
    changed["noise_matrix"] = "m.yaml"
    base_id = sweep.cell_id(cfg, init_label="random", encoder_sha256=None)
    for name in sorted(fields - {"protocol"}):
        moved = dataclasses.replace(cfg, **{name: changed[name]})
        assert sweep.cell_id(moved, init_label="random", encoder_sha256=None) != base_id, name
    # protocol: hashed for a method with a published recipe; CE trains the same under both (its cells stay shared)
    assert cfg.method == "ce" and sweep.cell_id(dataclasses.replace(cfg, protocol="shared"), init_label="random",
                                                encoder_sha256=None) == base_id
    paper = dataclasses.replace(cfg, method="coteaching")
    assert sweep.cell_id(paper, init_label="random", encoder_sha256=None) != sweep.cell_id(
        dataclasses.replace(paper, protocol="shared"), init_label="random", encoder_sha256=None)
    assert sweep.cell_id(cfg, init_label="random", encoder_sha256="ab") != base_id


def test_every_committed_spec_expands_and_the_method_grids_share_their_ce_cells(tmp_path, monkeypatch) -> None:
    """The specs in finetune/sweeps/ are what the READMEs tell people to run: each loads and every cell's config
    resolves (configs are checked before inits; with an empty registry the cells of SSL inits are then skipped)."""
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    specs = sorted((root / "finetune" / "sweeps").glob("*.yaml"))
    assert len(specs) >= 10
    cells = {}
    for path in specs:
        cells[path.stem] = _cells(path, tmp_path / "empty", skip_missing=True, log=lambda message: None)
    methods, hsa = cells["bloodmnist_methods"], cells["bloodmnist_methods_hsa"]
    assert len(methods) == len(hsa) == 12  # random init only here: 2 rates x 3 methods x 2 noise seeds
    assert {c.config.epochs for c in methods + hsa} == {30}
    shared = {c.cell_id for c in methods} & {c.cell_id for c in hsa}
    assert len(shared) == 2 and all("-sym0.4n" in i and "-ce-" in i for i in shared)


def test_shards_are_disjoint_and_cover_the_grid(tmp_path) -> None:
    cells = _cells(_spec(tmp_path, {"noise_rate": [0.0, 0.2, 0.4], "noise_seed": [1, 2, 3], "seed": [0, 1]}),
                   tmp_path / "ck")
    shards = [sweep.shard(cells, i, 4) for i in range(4)]
    ids = [c.cell_id for s in shards for c in s]
    assert len(ids) == len(set(ids)) == len(cells) == 2 + 2 * 3 * 2  # clean: one cell per training seed
    assert sorted(ids) == sorted(c.cell_id for c in cells)
    assert [c.cell_id for c in sweep.shard(list(reversed(cells)), 1, 4)] == [c.cell_id for c in shards[1]]
    assert sweep.parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "1", "-1/2", "a/b"):
        with pytest.raises(UserError):
            sweep.parse_shard(bad)


@pytest.mark.parametrize("doc, needle", [
    ({"grid": {"seed": [0]}, "bogus": 1}, "unknown key(s) bogus"),
    ({"grid": {"sede": [0]}}, "unknown key 'sede'"),
    ({"base": {"lr_max": 1}, "grid": {"seed": [0]}}, "unknown key 'lr_max'"),
    ({"grid": {"noise_file": ["x.csv"]}}, "noise_file is set by the sweep"),
    ({"base": {"epochs": 1}}, "empty grid"),
    ({"grid": {}}, "empty grid"),
    ({"grid": {"seed": []}}, "empty grid"),
    ({"grid": {"seed": 0}}, "must be a list"),
    ({"base": {"seed": 1}, "grid": {"seed": [0]}}, "both base and grid"),
    ({"grid": {"seed": [0], "lr": ["fast"]}}, "expects a number"),
    ({"base": {"recipe": "nowhere.yaml"}, "grid": {"seed": [0]}}, "not found"),
    ({"grid": {"noise_type+noise_rte": [["symmetric", 0.4]]}}, "unknown key 'noise_rte'"),
    ({"grid": {"noise_type+noise_rate": [["symmetric"]]}}, "each value must be a list of 2"),
    ({"grid": {"noise_type+noise_rate": ["symmetric"]}}, "each value must be a list of 2"),
    ({"grid": {"noise_type+noise_rate": [["pairflip", 0.3]], "noise_rate": [0.4]}}, "more than one grid key"),
    ({"base": {"noise_rate": 0.2}, "grid": {"noise_type+noise_rate": [["pairflip", 0.3]]}}, "both base and grid"),
])
def test_bad_specs_exit_2_with_one_line(tmp_path, capsys, doc, needle) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, out, err = _cli(capsys, tmp_path, "sweep", str(path), "--dry-run")
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1 and needle in err, err
    assert out == "" and not (tmp_path / "runs").exists()


def test_dry_run_lists_cells_and_writes_nothing(make_entry, tmp_path, capsys) -> None:
    make_entry(tmp_path / "ck")
    path = _spec(tmp_path, {"init": ["random", "simclr", "moco"], "noise_rate": [0.0, 0.4]})
    code, out, err = _cli(capsys, tmp_path, "sweep", str(path), "--dry-run", "--skip-missing", "--shard", "0/2")
    assert code == 0, err
    assert "skipping the cells of init(s) moco" in err and "4 cells, shard 0/2: 2" in err
    lines = out.strip().splitlines()
    assert len(lines) == 2 and all("pending" in line and "noise_rate=" in line for line in lines)
    assert not (tmp_path / "runs").exists()


# ============ running ============

@pytest.fixture(scope="module")
def finished(tmp_path_factory, make_entry):
    """A finished 6-cell sweep: random + simclr x (clean once + rate 0.5 x noise seeds 1, 2), linear probe."""
    root = tmp_path_factory.mktemp("sweep")
    ck, runs = root / "ck", root / "runs"
    entry = make_entry(ck)
    path = _spec(root, {"init": ["random", "simclr"], "noise_rate": [0.0, 0.5], "noise_seed": [1, 2],
                        "freeze": [True]})
    cells = _cells(path, ck)
    report = sweep.run_sweep(cells, runs=runs, checkpoints=ck, data_root=None, log=lambda m: None)
    return dict(root=root, ck=ck, runs=runs, cells=cells, path=path, report=report, entry=entry)


def test_sweep_runs_every_cell_once_and_skips_finished(finished) -> None:
    cells, runs, report = finished["cells"], finished["runs"], finished["report"]
    assert sorted(report.trained) == sorted(c.cell_id for c in cells) and not report.failed
    frame = pd.read_csv(runs / "results.csv")
    assert len(frame) == len(cells) == 6 and frame["run_id"].is_unique
    for cell in cells:  # the run folder holds exactly the cell's config (init = the concrete registry id)
        record = sweep.done_record(runs, cell.cell_id)
        saved = yaml.safe_load((runs / record["run_id"] / "config.yaml").read_text())
        assert saved == dataclasses.asdict(cell.config)
    assert set(frame["noise_type"]) == {"symmetric"} and set(frame["noise_rate"]) == {0.0, 0.5}
    again = sweep.run_sweep(cells, runs=runs, checkpoints=finished["ck"], data_root=None, log=lambda m: None)
    assert not again.trained and set(again.skipped.values()) == {"done"}
    assert len(pd.read_csv(runs / "results.csv")) == 6
    table = pd.read_csv(sweep.write_table(cells, runs, "t"))
    assert sorted(table["cell_id"]) == sorted(c.cell_id for c in cells) and len(table) == 6
    assert table.columns.get_loc("method_args") == table.columns.get_loc("method") + 1
    assert table["method_args"].isna().all()  # the defaults: an empty field


def test_collect_takes_each_rows_method_args_from_its_cell_also_for_rows_written_without_them(finished,
                                                                                               tmp_path) -> None:
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(finished["runs"], runs)
    old = pd.read_csv(runs / "results.csv").drop(columns="method_args")  # a table from before the column
    old.to_csv(runs / "results.csv", index=False)
    cells = list(finished["cells"])
    cells[1] = dataclasses.replace(cells[1], config=dataclasses.replace(cells[1].config,
                                                                       method_args={"b": 2, "a": [1, 0.5]}))
    table = sweep.collect(cells, runs).set_index("cell_id")["method_args"]
    assert table[cells[1].cell_id] == '{"a":[1,0.5],"b":2}'
    assert (table.drop(cells[1].cell_id) == "").all()


def test_every_init_of_a_noise_seed_trains_on_the_same_labels(finished) -> None:
    runs, cells = finished["runs"], finished["cells"]
    by_key = {}
    for cell in cells:
        run = runs / sweep.done_record(runs, cell.cell_id)["run_id"]
        labels = noise.read_noise_csv(run / "noisy_labels.csv")
        shared = noise.read_noise_csv(runs / "noise" / f"{sweep.noise_key(cell.config)}.csv")
        assert (labels.noisy == shared.noisy).all() and (labels.index == shared.index).all()
        by_key.setdefault((cell.config.noise_rate, cell.config.noise_seed), []).append(labels.noisy)
    assert all(len(v) == 2 for v in by_key.values())  # random and simclr share each noise file
    assert (by_key[(0.5, 1)][0] != by_key[(0.5, 2)][0]).any()  # another noise seed is other noise
    assert len(list((runs / "noise").glob("*.csv"))) == 3


def test_interrupted_sweep_resumes_and_lost_records_are_rebuilt(finished, tmp_path) -> None:
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(finished["runs"], runs)
    cells = finished["cells"]
    lost_run = sweep.done_record(runs, cells[0].cell_id)["run_id"]
    shutil.rmtree(runs / lost_run)                                   # cell 0: as if never run
    (runs / ".done" / f"{cells[1].cell_id}.json").unlink()           # cell 1: killed after finetune finished
    report = sweep.run_sweep(cells, runs=runs, checkpoints=finished["ck"], data_root=None, log=lambda m: None)
    assert report.trained == [cells[0].cell_id] and report.reused == [cells[1].cell_id]
    assert (runs / lost_run / "metrics.json").exists() and sweep.done_record(runs, cells[1].cell_id)


def test_collect_writes_the_table_of_the_finished_cells_and_trains_nothing(finished, tmp_path, capsys) -> None:
    import shutil

    shutil.copytree(finished["runs"], tmp_path / "runs")
    shutil.copytree(finished["ck"], tmp_path / "ck")
    cells = finished["cells"]
    shutil.rmtree(tmp_path / "runs" / sweep.done_record(tmp_path / "runs", cells[0].cell_id)["run_id"])
    (tmp_path / "runs" / ".done" / f"{cells[0].cell_id}.json").unlink()  # cell 0: not finished (yet)
    code, out, err = _cli(capsys, tmp_path, "sweep", str(finished["path"]), "--collect")
    assert code == 0 and "5 of 6 cells finished" in err
    table = pd.read_csv(out.strip().splitlines()[-1])
    assert sorted(table["cell_id"]) == sorted(c.cell_id for c in cells[1:])
    assert sweep.done_record(tmp_path / "runs", cells[0].cell_id) is None  # nothing trained
    empty = tmp_path / "empty"
    code, out, err = _cli(capsys, empty, "sweep", str(finished["path"]), "--collect")
    assert code == 2 and not (empty / "runs").exists()
    assert err.splitlines()[-1].startswith("error: no cell of sweep t has finished")  # after the skipped-init note


def test_failed_cell_is_recorded_and_the_sweep_goes_on(tmp_path, capsys) -> None:
    path = _spec(tmp_path, {"noise_rate": [0.0, 0.9]})  # 0.9 symmetric on 4 classes: a wrong class outnumbers
    code, out, err = _cli(capsys, tmp_path, "--threads", "1", "sweep", str(path), "--quiet")
    assert code == 1 and "1 trained" in err and "1 failed" in err and "error: 1 cell(s) failed" in err
    failed = list((tmp_path / "runs" / ".failed").glob("*.json"))
    assert len(failed) == 1
    record = json.loads(failed[0].read_text())
    assert "MajorityNoiseError" in record["error"] and record["config"]["noise_rate"] == 0.9
    assert len(pd.read_csv(tmp_path / "runs" / "results.csv")) == 1
    assert Path(out.strip().splitlines()[-1]).name == "t.csv"  # the sweep's table of finished cells
    code, _, err = _cli(capsys, tmp_path, "sweep", str(path), "--quiet", "--skip-failed")
    assert code == 0 and "1 already done" in err and "1 earlier failures skipped" in err
    code, _, err = _cli(capsys, tmp_path, "sweep", str(path), "--quiet")  # retried by default (and fails again)
    assert code == 1 and "1 failed" in err
    code, out, _ = _cli(capsys, tmp_path, "sweep", str(path), "--dry-run")
    assert sorted(line.split()[1] for line in out.strip().splitlines()) == ["done", "failed"]


def test_claims_and_stale_claims(tmp_path) -> None:
    runs, cid, t0 = tmp_path / "runs", "cell-a", time.time()
    status, token = sweep.claim(runs, cid, started_at=t0)
    assert status == "claimed" and sweep.claim(runs, cid, started_at=t0) == ("running", None)
    sweep.release(runs, cid, "not-mine")
    assert (runs / ".claims" / cid).exists()  # only the owner's token releases it
    sweep.release(runs, cid, token)
    assert not (runs / ".claims" / cid).exists()
    # a claim of a dead process on this host is taken over at once
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (runs / ".claims" / cid).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout),
                                                    "token": "x"}))
    assert sweep.claim(runs, cid, started_at=t0, log=lambda m: None)[0] == "claimed"
    # a live claim from another host goes stale once it has not been refreshed for stale_after seconds
    claim = runs / ".claims" / "cell-b"
    claim.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "y"}))
    assert sweep.claim(runs, "cell-b", started_at=t0, stale_after=60)[0] == "running"
    os.utime(claim, (time.time() - 120, time.time() - 120))
    assert sweep.claim(runs, "cell-b", started_at=t0, stale_after=60, log=lambda m: None)[0] == "claimed"
    # while a cell trains, its owner keeps the claim fresh
    os.utime(claim, (time.time() - 120, time.time() - 120))
    with Heartbeat(claim, 0.02):
        time.sleep(0.2)
    assert time.time() - claim.stat().st_mtime < 5


@pytest.mark.slow
def test_concurrent_workers_run_each_cell_once(tmp_path) -> None:
    """Two worker processes (``--jobs 2``: spawned, sharing nothing but the runs folder) on one sweep at once."""
    ck, runs = tmp_path / "ck", tmp_path / "runs"
    cells = _cells(_spec(tmp_path, {"noise_rate": [0.0, 0.3, 0.6], "noise_seed": [1, 2]}), ck)
    messages = []
    report = sweep.run_sweep(cells, runs=runs, checkpoints=ck, data_root=None, jobs=2, threads=2,
                             log=messages.append)
    assert "sweep: 2 workers, 1 torch thread(s) each" in messages
    assert not report.failed and len(report.trained) == len(set(report.trained))
    assert sorted(report.trained) == sorted(c.cell_id for c in cells)  # each cell trained exactly once
    frame = pd.read_csv(runs / "results.csv")
    assert len(frame) == len(cells) and frame["run_id"].is_unique  # one intact row per cell
    assert {sweep.done_record(runs, c.cell_id)["run_id"] for c in cells} == set(frame["run_id"])
    assert not [p for p in (runs / ".claims").iterdir() if p.name != ".lock"]


def test_cell_ids_are_the_same_in_another_process(tmp_path) -> None:
    """Separate invocations (shards, re-runs, other machines) must agree on the ids: no hash randomisation."""
    path = _spec(tmp_path, {"noise_rate": [0.0, 0.3], "seed": [0, 1]})
    code = ("import sys; from ssl_noise import sweep; "
            "print(' '.join(c.cell_id for c in sweep.expand(sweep.load_spec(sys.argv[1]), checkpoints='ck')))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"}).stdout.split()
    assert out == [c.cell_id for c in _cells(path, tmp_path / "ck")]


def test_inits_stay_pinned_to_the_first_resolution(make_entry, tmp_path, capsys) -> None:
    """A resumed sweep must not switch to an encoder added to the registry since it started."""
    first = make_entry(tmp_path / "ck")
    path = _spec(tmp_path, {"init": ["simclr"], "noise_rate": [0.0]})
    code, _, err = _cli(capsys, tmp_path, "sweep", str(path), "--quiet")
    assert code == 0, err
    pins = tmp_path / "runs" / "sweeps" / "t.inits.json"
    assert json.loads(pins.read_text()) == {"simclr@synthetic": first}
    time.sleep(0.01)
    newer = make_entry(tmp_path / "ck", seed=1)
    code, out, err = _cli(capsys, tmp_path, "sweep", str(path), "--dry-run")
    assert code == 0 and "done" in out and f"simclr -> {first}" in err
    pins.unlink()  # re-resolve: the newest simclr entry, i.e. new cells
    code, out, _ = _cli(capsys, tmp_path, "sweep", str(path), "--dry-run")
    assert "pending" in out and newer != first
    registry.remove_entry(tmp_path / "ck", first)
    _cli(capsys, tmp_path, "sweep", str(path), "--quiet")  # pins the newer one
    registry.remove_entry(tmp_path / "ck", newer)
    code, _, err = _cli(capsys, tmp_path, "sweep", str(path), "--dry-run")
    assert code == 2 and "no longer in the registry" in err


def test_merged_worker_reports_count_each_cell_once() -> None:
    # worker a trained c1 and saw c2 running; worker b trained c2 and then saw c1 done, and skipped c3 (done before)
    a = sweep.WorkerReport(trained=["c1"], skipped={"c2": "running", "c3": "done"})
    b = sweep.WorkerReport(trained=["c2"], skipped={"c1": "done", "c3": "done"})
    for merged in (a.merge(b), b.merge(a)):
        assert sorted(merged.trained) == ["c1", "c2"] and merged.skipped == {"c3": "done"}


def test_collect_and_dry_run_follow_the_last_run_without_repeating_its_flags(tmp_path, capsys) -> None:
    """README: `sweep SPEC --collect` after `sweep SPEC --set epochs=1`, and `--dry-run` of a spec whose encoders
    are not pretrained yet (their cells are left out and said, not an exit 2)."""
    path = _spec(tmp_path, {"init": ["random"], "noise_rate": [0.0]})
    code, out, err = _cli(capsys, tmp_path, "sweep", str(path), "--set", "lr=0.02", "--quiet")
    assert code == 0, err
    code, out, err = _cli(capsys, tmp_path, "sweep", str(path), "--collect")
    assert code == 0 and "--set values of its last run: lr=0.02" in err and "1 of 1 cells finished" in err
    code, out, err = _cli(capsys, tmp_path, "sweep", str(path), "--quiet")  # a run without --set forgets them
    assert code == 0 and not (tmp_path / "runs" / "sweeps" / "t.set.json").exists()
    missing = _spec(tmp_path, {"init": ["random", "simclr"], "noise_rate": [0.0]}, name="m")
    code, out, err = _cli(capsys, tmp_path, "sweep", str(missing), "--dry-run")
    assert code == 0 and "skipping the cells of init(s) simclr" in err and len(out.strip().splitlines()) == 1
    code, out, err = _cli(capsys, tmp_path, "sweep", str(missing))  # a real run still refuses, naming the cure
    assert code == 2 and "not in the registry" in err and "--skip-missing" in err


def test_a_field_added_later_leaves_earlier_ids_as_they_were() -> None:
    """``label_column`` (real noise) and ``test_eval`` came after published sweeps: unset, they are not hashed, so
    their ids hold."""
    from ssl_noise.config import LATE_FIELDS, hashed_dict, to_dict

    cfg = resolve(FinetuneConfig, BASE)
    assert set(LATE_FIELDS) == {"label_column", "test_eval"}
    assert set(to_dict(cfg)) - set(hashed_dict(cfg)) == set(LATE_FIELDS)
    assert set(hashed_dict(dataclasses.replace(cfg, label_column="majority"))) == set(to_dict(cfg)) - {"test_eval"}
    assert set(hashed_dict(dataclasses.replace(cfg, label_column="majority", test_eval="reported"))) == set(
        to_dict(cfg))


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` that are sweep workers (spawned ``spawn_main``, not the resource tracker)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and "spawn_main" in cmd and "resource_tracker" not in cmd:
            found.append(int(proc.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_sigterm_to_a_sweep_stops_its_workers_too(tmp_path) -> None:
    """``kill PID`` of a ``--jobs 2`` sweep (or a scheduler's SIGTERM) must not leave its workers training on as
    orphans: it ends like Ctrl-C, exit 130, and a re-run takes the cells over."""
    path = _spec(tmp_path, {"noise_rate": [0.0, 0.3]}, base={"epochs": 10_000})
    cmd = ["ssl-noise", "--checkpoints", str(tmp_path / "ck"), "--runs", str(tmp_path / "runs"), "--threads", "2",
           "sweep", str(path), "--jobs", "2", "--quiet"]
    parent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while len(workers := _children(parent.pid)) < 2 or not list((tmp_path / "runs").glob(".claims/*-s0-*")):
            assert parent.poll() is None and time.time() < deadline, parent.communicate()
            time.sleep(0.2)
        parent.terminate()
        _, err = parent.communicate(timeout=60)
        assert parent.returncode == 130 and "Traceback" not in err, err
        deadline = time.time() + 30
        while alive := [w for w in workers if Path(f"/proc/{w}").exists()
                        and "Z" not in Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[:1]]:
            assert time.time() < deadline, f"workers {alive} still running after the sweep ended"
            time.sleep(0.2)
    finally:
        for pid in [parent.pid, *_children(parent.pid), *locals().get("workers", [])]:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        parent.wait()


def test_a_sweep_runs_instance_dependent_noise(tmp_path, capsys) -> None:
    """Instance noise works wherever noise does: the grid check knew only the matrix types and refused it."""
    path = _spec(tmp_path, {"noise_type+noise_rate": [["instance", 0.4], ["symmetric", 0.4]], "noise_seed": [1]})
    code, _, err = _cli(capsys, tmp_path, "sweep", str(path), "--quiet")
    assert code == 0, err
    rows = pd.read_csv(tmp_path / "runs" / "sweeps" / "t.csv")
    assert sorted(rows["noise_type"]) == ["instance", "symmetric"]
    assert rows["noise_realised_rate"].between(0.05, 0.8).all()
