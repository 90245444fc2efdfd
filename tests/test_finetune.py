"""Fine-tuning harness: where noise goes, history, determinism, inits, noise-file reuse, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_noise import noise, registry
from ssl_noise.augment import normalize, to_float
from ssl_noise.cli import main
from ssl_noise.config import FinetuneConfig, resolve
from ssl_noise.data import load_dataset
from ssl_noise.finetune import finetune, fit, prepare
from ssl_noise.runs import RESULT_COLUMNS
from ssl_noise.metrics import classification_metrics
from ssl_noise.robust import ROBUST

SPEC = "synthetic:n_train=32,n_val=16,n_test=32"
TINY = dict(dataset=SPEC, image_size=16, epochs=1, batch_size=16, precision="fp32")
CLI_TINY = ["--dataset", SPEC, "--image-size", "16", "--epochs", "1", "--batch-size", "16", "--set", "precision=fp32",
            "--quiet"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Two busy cores: one torch thread avoids oversubscription (10x faster here) and keeps runs comparable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(**overrides) -> FinetuneConfig:
    return resolve(FinetuneConfig, TINY, overrides)



def _cli(capsys, tmp_path: Path, *args: str) -> tuple:
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoints", str(tmp_path / "ck"), "--runs", str(tmp_path / "runs"), "finetune", *args])
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


@pytest.mark.parametrize("clean_val", [False, True])
def test_noise_touches_train_and_val_per_flag_never_test(tmp_path, clean_val) -> None:
    cfg = _cfg(noise_rate=0.5, noise_mode="exact", noise_seed=3, clean_val=clean_val)
    prep = prepare(cfg, data_root=None, checkpoints=tmp_path / "ck")
    clean = load_dataset(SPEC, size=16)
    expected = noise.corrupt(clean.train.labels, noise.symmetric(4, 0.5), rng=np.random.default_rng(3), mode="exact")
    assert np.array_equal(prep.train_noise.noisy, expected.noisy)  # same labels as `ssl-noise noise --seed 3`
    assert prep.noise["realised_rate"] == 0.5
    assert np.array_equal(prep.data.test.labels, clean.test.labels)
    if clean_val:
        assert prep.val_noise is None and prep.noise["val_realised_rate"] is None
    else:
        assert prep.noise["val_realised_rate"] == 0.5 and (prep.val_noise.noisy != clean.val.labels).sum() == 8
    folder, trained = finetune(cfg, data_root=None, checkpoints=tmp_path / "ck", runs=tmp_path / "runs",
                               show_progress=False)
    metrics = json.loads((folder / "metrics.json").read_text())
    # The reported test metrics are those of the clean test labels and the stored test probabilities.
    probs = np.load(folder / "test_probs.npy")
    recomputed = classification_metrics(clean.test.labels, probs)
    assert metrics["test"]["best"]["acc"] == pytest.approx(recomputed["acc"])
    assert metrics["test"]["best"]["auc"] == pytest.approx(recomputed["auc"])
    assert metrics["val"]["labels"] == ("clean" if clean_val else "noisy")
    written = noise.read_noise_csv(folder / "noisy_labels.csv", num_samples=32, num_classes=4)
    assert np.array_equal(written.noisy, expected.noisy) and np.array_equal(written.clean, clean.train.labels)
    assert (folder / "noisy_val_labels.csv").exists() != clean_val


@pytest.mark.parametrize("noise_type", noise.NOISE_TYPES.names())
def test_every_noise_type_corrupts_train_only(tmp_path, noise_type) -> None:
    extra = {}
    if noise_type == "asymmetric":
        (tmp_path / "map.yaml").write_text("class_0: class_1\n2: [0, 3]\n")
        extra = {"class_map": str(tmp_path / "map.yaml")}
    prep = prepare(_cfg(noise_type=noise_type, noise_rate=0.4, noise_mode="exact", clean_val=True, **extra),
                   data_root=None, checkpoints=tmp_path / "ck")
    clean = load_dataset(SPEC, size=16)
    assert prep.noise["type"] == noise_type and prep.noise["realised_rate"] > 0
    assert (prep.train_noise.noisy != clean.train.labels).sum() == prep.noise["n_flipped"]
    assert np.array_equal(prep.data.val.labels, clean.val.labels) and np.array_equal(prep.data.test.labels,
                                                                                      clean.test.labels)


def test_results_csv_with_other_columns_is_merged(tmp_path) -> None:
    import pandas as pd

    from ssl_noise.runs import append_result

    (tmp_path / "results.csv").write_text("run_id,old_column\nr0,1\n")
    append_result(tmp_path, {"run_id": "r1", "test_acc": 0.5})
    frame = pd.read_csv(tmp_path / "results.csv")
    assert list(frame["run_id"]) == ["r0", "r1"] and {"old_column", "test_acc"} <= set(frame.columns)


def test_history_is_the_training_pass_probability_of_the_given_label(tmp_path) -> None:
    """Frozen encoder (eval-mode BN), no augmentation, lr ~ 0: the training forward pass equals an eval pass, so
    every history entry must equal softmax(model(x))[given label] of the (unchanged) final model."""
    cfg = _cfg(noise_rate=0.5, noise_mode="exact", freeze=True, augmentation=False, lr=1e-12, momentum=0.0,
               weight_decay=0.0, epochs=2)
    prep = prepare(cfg, data_root=None, checkpoints=tmp_path / "ck")
    result = fit(prep, show_progress=False)
    history = result.history
    assert history.shape == (32, 2) and history.dtype == np.float32
    assert np.isfinite(history).all() and ((history > 0) & (history < 1)).all()
    norm = prep.init["normalisation"]
    x = normalize(to_float(torch.from_numpy(prep.data.train.images)), norm["mean"], norm["std"])
    result.method.eval()
    with torch.no_grad():
        probs = result.method.predict(x).softmax(1).numpy()
    given, clean = prep.train_noise.noisy, prep.data.train.labels
    for epoch in range(2):
        np.testing.assert_allclose(history[:, epoch], probs[np.arange(32), given], atol=1e-5)
    flipped = given != clean
    assert not np.allclose(history[flipped, 0], probs[flipped, clean[flipped]], atol=1e-5)
    # The linear probe left the encoder exactly as initialised, BN statistics included (MoCo's sanity check).
    for key, value in prep.encoder.state_dict().items():
        assert torch.equal(result.method.model.encoder.state_dict()[key].cpu(), value), key


def test_linear_probe_on_cached_features_equals_the_image_path(tmp_path, monkeypatch) -> None:
    """A frozen encoder without augmentation is encoded once (encoded_splits); training the head on those features
    must give the run that pushing every batch of images through the encoder gives."""
    import ssl_noise.finetune as ft

    cfg = _cfg(noise_rate=0.4, freeze=True, augmentation=False, epochs=3, optimizer="adam", lr=1e-2,
               method="coteaching")
    prep = prepare(cfg, data_root=None, checkpoints=tmp_path / "ck")
    cached = fit(prep, show_progress=False)
    x_train = ft.encoded_splits(prep, ft.Inputs(cfg, prep.init["normalisation"], "cpu"), "cpu",
                                cached.method.ctx.autocast)[0]
    assert x_train.shape == (32, prep.feat_dim) and x_train.dtype == np.float32
    monkeypatch.setattr(ft.loop, "encoded_splits", lambda prep, *_: (prep.data.train.images, prep.data.val.images,
                                                                prep.data.test.images))
    plain = fit(prep, show_progress=False)
    np.testing.assert_allclose(cached.history, plain.history, atol=1e-4)
    np.testing.assert_allclose(cached.test_probs, plain.test_probs, atol=1e-4)
    assert [m["acc"] for m in cached.test] == [m["acc"] for m in plain.test]


def test_encoded_splits_are_reused_for_subsets_of_the_training_split(tmp_path) -> None:
    """HSA-NRL's stages train on subsets of the split: their features come from the full split's encoding."""
    import dataclasses

    import ssl_noise.finetune as ft
    from ssl_noise.data.dataset import Split

    prep = prepare(_cfg(freeze=True, augmentation=False), data_root=None, checkpoints=tmp_path / "ck")
    inputs = ft.Inputs(prep.cfg, prep.init["normalisation"], "cpu")
    autocast = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    full = ft.encoded_splits(prep, inputs, "cpu", autocast)
    rows = np.array([7, 3, 30, 0])
    data = prep.data
    sub = dataclasses.replace(prep, data=dataclasses.replace(
        data, train=Split(data.train.images[rows], data.train.labels[rows]), train_indices=data.train_indices[rows]))
    cached = ft.encoded_splits(sub, inputs, "cpu", autocast)
    assert np.array_equal(cached[0], full[0][rows]) and cached[1] is full[1]
    ft.ENCODED.clear()
    fresh = ft.encoded_splits(sub, inputs, "cpu", autocast)
    np.testing.assert_allclose(fresh[0], cached[0], atol=1e-5)


def test_pre_computed_features_need_a_frozen_encoder() -> None:
    from ssl_noise.backbones import build_backbone
    from ssl_noise.robust.base import Classifier

    encoder, _ = build_backbone("resnet18", stem="cifar", in_channels=3)
    assert Classifier(encoder, 512, 4, freeze=True)(torch.randn(2, 512)).shape == (2, 4)
    with pytest.raises(ValueError, match="frozen"):
        Classifier(encoder, 512, 4, freeze=False)(torch.randn(2, 512))


def test_same_seeds_identical_metrics_and_reruns_are_detected(tmp_path) -> None:
    cfg = resolve(FinetuneConfig, TINY, {"noise_rate": 0.4, "epochs": 2, "precision": "bf16"})
    a, _ = finetune(cfg, data_root=None, checkpoints=tmp_path / "ck", runs=tmp_path / "a", show_progress=False)
    b, _ = finetune(cfg, data_root=None, checkpoints=tmp_path / "ck", runs=tmp_path / "b", show_progress=False)
    assert a.name == b.name and a.name.startswith("random-synthetic-sym0.4n0-ce-s0-")
    assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()
    assert np.array_equal(np.load(a / "history.npy"), np.load(b / "history.npy"))
    assert sorted(p.name for p in a.iterdir()) == ["config.yaml", "history.npy", "metrics.json", "noisy_labels.csv",
                                                   "noisy_val_labels.csv", "run.json", "test_probs.npy",
                                                   "train_log.jsonl"]
    log = [json.loads(line) for line in (a / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert {"loss", "lr", "val_acc", "test_acc", "train_memorised"} <= set(log[0])
    metrics = json.loads((a / "metrics.json").read_text())
    assert set(metrics["test"]) == {"best", "last", "last5_mean", "last5_epochs"}
    assert {"acc", "auc", "balanced_acc", "macro_f1", "mcc", "per_class_acc"} <= set(metrics["test"]["best"])
    assert {"acc_noisy", "acc_clean", "memorised"} <= set(metrics["train"]["best"])
    # An identical re-run finds the finished folder; another seed is another run.
    again, trained = finetune(cfg, data_root=None, checkpoints=tmp_path / "ck", runs=tmp_path / "a",
                              show_progress=False)
    assert again == a and not trained
    header, *rows = (tmp_path / "a" / "results.csv").read_text().splitlines()
    assert header.split(",") == RESULT_COLUMNS and len(rows) == 1
    assert prepare(resolve(FinetuneConfig, TINY, {"noise_rate": 0.4, "epochs": 2, "precision": "bf16", "seed": 1}),
                   data_root=None, checkpoints=tmp_path / "ck").run_id != a.name


def test_cli_runs_from_random_and_from_a_registry_entry(make_entry, tmp_path, capsys) -> None:
    entry = make_entry(tmp_path / "ck")
    code, out, err = _cli(capsys, tmp_path, "--init", "random", "--noise", "0.25", *CLI_TINY)
    assert code == 0, err
    random_run = Path(out.strip().splitlines()[-1])
    assert random_run.parent == tmp_path / "runs" and (random_run / "metrics.json").exists()
    code, out, err = _cli(capsys, tmp_path, "--init", "simclr", "--noise", "0.25", *CLI_TINY)
    assert code == 0, err
    folder = Path(out.strip().splitlines()[-1])
    run = json.loads((folder / "run.json").read_text())
    assert run["init"]["id"] == entry and run["init"]["sha256"] == registry.read_meta(tmp_path / "ck", entry)["sha256"]
    assert run["init"]["normalisation"] == {"mean": [0.5] * 3, "std": [0.25] * 3}  # the contract from meta.json
    assert folder.name.startswith("simclr-synthetic-sym0.25n0-ce-s0-")
    frame = __import__("pandas").read_csv(tmp_path / "runs" / "results.csv")
    assert list(frame["encoder_id"]) == ["random-resnet18", entry] and list(frame["noise_rate"]) == [0.25, 0.25]
    # Same noisy labels in both runs: only the init differs.
    assert (random_run / "noisy_labels.csv").read_bytes() == (folder / "noisy_labels.csv").read_bytes()


def test_noise_file_reuse_gives_identical_noisy_labels(make_entry, tmp_path, capsys) -> None:
    noisy_csv = tmp_path / "noisy.csv"
    with pytest.raises(SystemExit) as exit_info:
        main(["noise", "--dataset", SPEC, "--image-size", "16", "--type", "pairflip", "--rate", "0.3", "--seed", "5",
              "--subset", "24", "--out", str(noisy_csv)])
    assert exit_info.value.code == 0
    capsys.readouterr()
    make_entry(tmp_path / "ck")
    folders = []
    for init in ("random", "simclr"):
        code, out, err = _cli(capsys, tmp_path, "--init", init, "--noise-file", str(noisy_csv), "--subset", "24",
                              "--noise-seed", "5", *CLI_TINY)
        assert code == 0, err
        folders.append(Path(out.strip().splitlines()[-1]))
    for folder in folders:
        assert (folder / "noisy_labels.csv").read_bytes() == noisy_csv.read_bytes()
        assert json.loads((folder / "metrics.json").read_text())["noise"]["source"] == "file"
    # The generated noise with the same parameters is the same labels (and the same label hash).
    generated = prepare(_cfg(noise_type="pairflip", noise_rate=0.3, noise_seed=5, subset=24), data_root=None,
                        checkpoints=tmp_path / "ck")
    reused = prepare(_cfg(noise_file=str(noisy_csv), noise_seed=5, subset=24), data_root=None,
                     checkpoints=tmp_path / "ck")
    assert np.array_equal(generated.train_noise.noisy, reused.train_noise.noisy)


@pytest.mark.parametrize("name", ROBUST.names())
def test_every_robust_method_trains_and_records(tmp_path, name) -> None:
    prep = prepare(_cfg(method=name, noise_rate=0.4), data_root=None, checkpoints=tmp_path / "ck")
    result = fit(prep, show_progress=False)
    assert result.history.shape == (32, 1) and np.nanmax(result.history) <= 1
    assert 0 <= result.best_epoch < 1 and result.test_probs.shape == (32, 4)


def _write_rows(path: Path, rows) -> str:
    path.write_text("index,clean_label,noisy_label\n" + "".join(f"{i},{c},{n}\n" for i, c, n in rows))
    return str(path)


def _bad_inputs(tmp_path: Path, make_entry) -> dict:
    labels = load_dataset(SPEC, size=16).train.labels
    good = [(i, int(c), int(c)) for i, c in enumerate(labels)]
    ck = tmp_path / "ck"
    grey = make_entry(ck, channels=1, seed=1)
    big = make_entry(ck, image_size=28, seed=2)
    return {
        "unknown init": (["--init", "nosuch"], "no entry matches"),
        "unknown method": (["--method", "nosuch"], "unknown robust method"),
        "encoder channels": (["--init", grey], "1-channel"),
        "encoder size": (["--init", big, "--image-size", "16"], "28 px"),
        "noise file indices": (["--noise-file", _write_rows(tmp_path / "dup.csv", good + [good[0]])],
                               "appears 2 times"),
        "noise file extra index": (["--noise-file", _write_rows(tmp_path / "extra.csv", good + [(99, 0, 0)])],
                                   "not a training sample"),
        "noise file classes": (["--noise-file", _write_rows(tmp_path / "k.csv", good[:-1] + [(31, 0, 9)])],
                               "out of range"),
        "noise file other data": (["--noise-file", _write_rows(tmp_path / "o.csv", [(i, (c + 1) % 4, c)
                                                                                     for i, c, _ in good])],
                                  "clean_label differs"),
        "rate too high": (["--noise", "1.2"], "[0, 1)"),
        "rate negative": (["--noise", "-0.1"], "[0, 1)"),
        "rate with noise file": (["--noise", "0.2", "--noise-file", _write_rows(tmp_path / "g.csv", good)], "drop"),
        "unknown noise type": (["--noise", "0.2", "--noise-type", "nosuch"], "unknown noise type"),
        "majority noise": (["--noise", "0.6", "--noise-type", "pairflip"], "--force"),
    }


def test_every_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, make_entry) -> None:
    cases = _bad_inputs(tmp_path, make_entry)
    for name, (args, needle) in cases.items():
        code, out, err = _cli(capsys, tmp_path, *args, *CLI_TINY)
        assert code == 2, (name, err)
        assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and needle in err, (name, err)
        assert out == "" and not (tmp_path / "runs").exists(), name
    # An empty registry says how to create an entry.
    code, _, err = _cli(capsys, tmp_path / "empty", "--init", "simclr", *CLI_TINY)
    assert code == 2 and "ssl-noise pretrain --method simclr" in err
    # ImageNet weights that can be neither found nor downloaded: exit 2 saying so.
    import torch.hub

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    code, _, err = _cli(capsys, tmp_path, "--init", "imagenet", *CLI_TINY)
    assert code == 2 and "not available offline" in err
    assert not (tmp_path / "runs").exists()


def test_method_hooks_drop_select_and_outputs_reach_the_run_folder(tmp_path) -> None:
    """A throw-away method exercising the hooks the next robust methods use: training_set (drop + relabel),
    per-batch selection, on_epoch_end scalars and outputs()."""
    from ssl_noise.robust.ce import CrossEntropy

    class DropHalf(CrossEntropy):
        def training_set(self):
            keep = np.arange(len(self.ctx.labels)) % 2 == 0
            return keep, np.zeros_like(self.ctx.labels)  # relabel everything kept to class 0

        def train_step(self, batch, epoch):
            out = super().train_step(batch, epoch)
            assert (batch.index % 2 == 0).all() and (batch.y == 0).all()
            return {**out, "selected": batch.index % 4 == 0}

        def on_epoch_end(self, epoch):
            return {"hook_epoch": epoch}

        def outputs(self):
            return {"kept": np.arange(0, len(self.ctx.labels), 2)}

    ROBUST.register("_drop_half")(DropHalf)
    try:
        folder, _ = finetune(_cfg(method="_drop_half", noise_rate=0.2), data_root=None, checkpoints=tmp_path / "ck",
                             runs=tmp_path / "runs", show_progress=False)
    finally:
        del ROBUST["_drop_half"]
    history = np.load(folder / "history.npy")
    assert np.isnan(history[1::2]).all() and np.isfinite(history[::2]).all()
    selected = np.load(folder / "selected.npy")
    assert selected.shape == (32, 1) and np.array_equal(np.flatnonzero(selected[:, 0]), np.arange(0, 32, 4))
    assert np.array_equal(np.load(folder / "kept.npy"), np.arange(0, 32, 2))
    log = json.loads((folder / "train_log.jsonl").read_text())
    assert log["hook_epoch"] == 0 and log["selected_frac"] == 0.5


def test_methods_plug_in_per_epoch_through_the_hooks(tmp_path) -> None:
    """on_epoch_start runs before each epoch and epoch_batches decides what the epoch trains on (a per-epoch split
    into labelled and unlabelled parts, as DivideMix needs): samples left out get no history entry that epoch."""
    from ssl_noise.robust.base import RobustMethod
    from ssl_noise.robust.ce import ce_step

    class HalfTheBatchesOnOddEpochs(RobustMethod):
        def setup(self) -> None:
            self.model = self.ctx.build_model(0)
            self.ctx.build_optimizer(self.model)
            self.started = []

        def on_epoch_start(self, epoch: int) -> None:
            self.started.append(epoch)

        def epoch_batches(self, epoch: int):
            batches = super().epoch_batches(epoch)
            return (b for i, b in enumerate(batches) if epoch % 2 == 0 or i % 2 == 0)

        def train_step(self, batch, epoch):
            return ce_step(self.model, batch)

        def predict(self, x):
            return self.model(x)

    prep = prepare(_cfg(epochs=2, batch_size=8, augmentation=False), data_root=None, checkpoints=tmp_path / "ck")
    result = fit(prep, show_progress=False, make_method=HalfTheBatchesOnOddEpochs)
    assert result.method.started == [0, 1]
    assert np.isfinite(result.history[:, 0]).all()
    assert np.isfinite(result.history[:, 1]).sum() == 16  # 2 of the 4 batches of 8


def test_test_eval_reported_scores_test_only_where_a_result_reads_it(tmp_path) -> None:
    """``test_eval=reported`` trains identically and reports the same selected-epoch and last-5 numbers; the test
    split is skipped at the epochs that are neither a new validation best nor among the last 5."""
    base = dict(epochs=10, noise_rate=0.4, lr=0.2)
    every = fit(prepare(_cfg(**base), data_root=None, checkpoints=tmp_path), show_progress=False)
    reported = fit(prepare(_cfg(**base, test_eval="reported"), data_root=None, checkpoints=tmp_path),
                   show_progress=False)
    np.testing.assert_array_equal(every.history, reported.history)
    assert every.best_epoch == reported.best_epoch
    assert reported.test[reported.best_epoch] == every.test[every.best_epoch]
    assert reported.test[-5:] == every.test[-5:]
    np.testing.assert_array_equal(every.test_probs, reported.test_probs)
    bests = [e for e in range(10) if e == 0 or every.val[e]["acc"] > max(v["acc"] for v in every.val[:e])]
    skipped = [e for e, t in enumerate(reported.test) if t is None]
    assert skipped == [e for e in range(5) if e not in bests] and skipped  # some epoch is skipped, none reported
    assert reported.log[skipped[0]]["test_acc"] is None and every.log[skipped[0]]["test_acc"] is not None
    with pytest.raises(Exception, match="test_eval"):
        _cfg(test_eval="sometimes").validate()
