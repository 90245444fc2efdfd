"""The Python API (ssl_noise.api, docs/api.md): each public function on synthetic data, the CLI and the API giving
the same run, arrays in memory as datasets, and the README's "From Python" block as typed (slow)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ssl_noise
import ssl_noise.api as sn
from ssl_noise.cli import main

SPEC = "synthetic:n_train=48,n_val=16,n_test=32"
TINY = dict(image_size=16, epochs=1, batch_size=16, precision="fp32")
README = Path(__file__).resolve().parents[1] / "README.md"


def _blobs(n_per_class: int = 60, K: int = 3, size: int = 8, seed: int = 0):
    """uint8 (N, size, size, 3) images whose colour says the class."""
    rng = np.random.default_rng(seed)
    clean = np.repeat(np.arange(K), n_per_class)
    images = (np.eye(3)[clean % 3][:, None, None, :] * 150 + rng.integers(0, 60, (len(clean), size, size, 3)))
    return images.astype(np.uint8), clean


def test_the_package_root_exports_the_api_lazily() -> None:
    code = "import sys, ssl_noise; assert 'torch' not in sys.modules; ssl_noise.find_label_issues; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"
    assert ssl_noise.ImageDataset is sn.ImageDataset and ssl_noise.UserError is sn.UserError
    assert {"find_label_issues", "load_dataset", "estimate_noise_rate"} <= set(dir(ssl_noise))
    with pytest.raises(AttributeError):
        ssl_noise.no_such_name


def test_from_arrays_takes_numpy_torch_and_floats_and_refuses_what_it_cannot_read() -> None:
    import torch

    images, labels = _blobs()
    data = sn.ImageDataset.from_arrays(images, labels, class_names=["a", "b", "c"], name="cells")
    assert (data.name, data.num_classes, data.channels, data.image_size) == ("cells", 3, 3, 8)
    assert sum(len(s) for s in data.splits.values()) == len(labels)
    chw = sn.ImageDataset.from_arrays(torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels))
    assert np.array_equal(chw.train.images, data.train.images)  # same seed, same split, same pixels
    floats = sn.ImageDataset.from_arrays(images / 255.0, labels)
    assert np.array_equal(floats.train.images, data.train.images)
    given = np.array(["train"] * 150 + ["test"] * 30)
    fixed = sn.ImageDataset.from_arrays(images, labels, splits=given)
    assert (len(fixed.test), len(fixed.train) + len(fixed.val)) == (30, 150) and len(fixed.val) > 0
    for bad, match in [((images[:, :7], labels), "square"), ((images, labels[:-1]), "180 images but 179 labels"),
                       ((images * 2.0, labels), "floats in"), ((images, labels + 5), "labels must be 0..K-1"),
                       ((images[..., :2], labels), "1 or 3 channels")]:
        with pytest.raises(sn.UserError, match=match):
            sn.ImageDataset.from_arrays(*bad)
    with pytest.raises(sn.UserError, match="name must be"):
        sn.ImageDataset.from_arrays(images, labels, name="../x")


def test_corrupt_labels_are_the_labels_finetune_trains_on_and_the_cli_and_api_agree(tmp_path, capsys) -> None:
    """One config through `ssl-noise finetune` and through api.finetune: the same run id, metrics and labels."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--runs", str(tmp_path / "cli"), "--quiet", "finetune", "--dataset", SPEC, "--image-size", "16",
              "--epochs", "1", "--batch-size", "16", "--noise", "0.4", "--noise-seed", "3", "--method", "coteaching",
              "--set", "precision=fp32", "--set", "method_args.num_gradual=1"])
    assert exit_info.value.code == 0
    cli_folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    run = sn.finetune("random", SPEC, noise=0.4, noise_seed=3, method="coteaching", runs=tmp_path / "api",
                      sets=["method_args.num_gradual=1"], device="cpu", **TINY)
    assert run.trained and run.id == cli_folder.name
    assert run.metrics == json.loads((cli_folder / "metrics.json").read_text())
    assert run.metrics["noise_estimator"] == "knn_agreement" and run.history().shape == (48, 1)
    again = sn.finetune("random", SPEC, noise=0.4, noise_seed=3, method="coteaching", runs=tmp_path / "api",
                        sets=["method_args.num_gradual=1"], device="cpu", **TINY)
    assert not again.trained and again.folder == run.folder and len(again.log()) == 1
    data = sn.load_dataset(SPEC, image_size=16)
    noisy = sn.corrupt_labels(data.train.labels, "symmetric", 0.4, seed=3)
    written = pd.read_csv(run.folder / "noisy_labels.csv")
    assert np.array_equal(written["noisy_label"], noisy.noisy)
    with pytest.raises(sn.UserError, match="unknown FinetuneConfig option"):
        sn.finetune("random", SPEC, epoch=1)


def test_a_dataset_from_arrays_trains_and_gives_the_same_run_twice(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SSL_NOISE_CACHE", str(tmp_path / "cache"))
    images, labels = _blobs(size=16)
    data = sn.ImageDataset.from_arrays(images, labels, name="cells")
    first = sn.finetune("random", data, noise=0.2, runs=tmp_path / "runs", device="cpu", **TINY)
    second = sn.finetune("random", sn.ImageDataset.from_arrays(images, labels, name="cells"), noise=0.2,
                         runs=tmp_path / "runs", device="cpu", **TINY)
    assert first.trained and not second.trained and first.id == second.id and first.id.startswith("random-cells-")
    assert len(list((tmp_path / "cache" / "arrays").glob("*/cells.npz"))) == 1


def test_estimate_noise_rate_from_arrays_a_dataset_or_an_encoder(make_entry, tmp_path) -> None:
    images, clean = _blobs(100)
    noisy = sn.corrupt_labels(clean, "symmetric", 0.3, seed=2)
    found = sn.estimate_noise_rate(images, noisy.noisy, seed=1)
    assert abs(found.rate - noisy.realised_rate) < 0.08 and found.lo < found.rate < found.hi
    again = sn.estimate_noise_rate(images, noisy.noisy, seed=1)
    assert found.T.shape == (3, 3) and (again.rate, again.lo, again.hi) == (found.rate, found.lo, found.hi)
    data = sn.ImageDataset.from_arrays(images, clean)
    on_data = sn.estimate_noise_rate(data)      # the labels it trains on: clean here
    assert on_data.rate < 0.1
    ck = tmp_path / "ck"
    make_entry(ck, image_size=8, dataset="arrays")
    with_encoder = sn.estimate_noise_rate(images, noisy.noisy, encoder="simclr", checkpoints=ck, device="cpu")
    assert 0 <= with_encoder.rate < 1 and with_encoder.estimator == "knn_agreement"
    with pytest.raises(sn.UserError, match="give the labels"):
        sn.estimate_noise_rate(images)
    with pytest.raises(sn.UserError, match="300 images, 299 labels"):
        sn.find_label_issues(images, noisy.noisy[:-1])


def test_find_label_issues_in_three_lines_and_from_a_run(tmp_path) -> None:
    images, labels = _blobs()
    wrong = [5, 70, 150]
    labels[wrong] = (labels[wrong] + 1) % 3
    issues = ssl_noise.find_label_issues(images, labels)
    assert sorted(issues["index"][:3]) == wrong and list(issues.columns) == [
        "index", "given_label", "suggested_label", "score", "rank", "flagged", "borderline"]
    assert list(issues["rank"][:3]) == [1, 2, 3] and issues["flagged"].sum() >= 3
    cleanlab = sn.find_label_issues(images, labels, detector="cleanlab")
    assert set(cleanlab["index"][:3]) == set(wrong)
    run = sn.finetune("random", SPEC, noise=0.3, runs=tmp_path, device="cpu", **{**TINY, "epochs": 2})
    by_loss = sn.find_label_issues(run, detector="loss")
    assert len(by_loss) == 48 and "clean_label" in by_loss.columns  # injected noise: the truth is known
    with pytest.raises(sn.UserError, match="detector loss reads a finished Run"):
        sn.find_label_issues(images, labels, detector="loss")


def test_load_encoder_gives_the_module_and_its_input_contract(tmp_path, make_entry) -> None:
    import torch

    entry = make_entry(tmp_path, channels=1, image_size=16)
    encoder = sn.load_encoder("simclr", checkpoints=tmp_path)
    assert (encoder.id, encoder.image_size, encoder.channels, encoder.stem, encoder.feat_dim) == (
        entry, 16, 1, "cifar", 512)
    assert encoder.mean == [0.5] and not encoder.module.training
    with torch.no_grad():
        assert encoder.module(torch.zeros(2, 1, 16, 16)).shape == (2, 512)


def test_sweep_and_report_give_the_table_and_the_paired_report(tmp_path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(f"name: tiny\nbase:\n  dataset: '{SPEC}'\n  image_size: 16\n  epochs: 1\n  batch_size: 16\n"
                    "  precision: fp32\n  freeze: true\ngrid:\n  noise_rate: [0.2]\n  noise_seed: [1, 2]\n"
                    "  init: [random]\n")
    table = sn.sweep(spec, runs=tmp_path / "runs", checkpoints=tmp_path / "ck", device="cpu")
    assert len(table) == 2 and set(table["noise_seed"]) == {1, 2}
    assert len(sn.sweep(spec, runs=tmp_path / "runs", checkpoints=tmp_path / "ck", device="cpu")) == 2  # resumed
    text = sn.report(table, tmp_path / "report.md")
    assert (tmp_path / "report.md").read_text() == text and "random" in text


def _from_python_block() -> str:
    text = README.read_text()
    start = text.index("<!-- from-python")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SSL_NOISE_DATA"), reason="needs the real BloodMNIST (SSL_NOISE_DATA)")
def test_the_readme_from_python_block_runs_as_typed(tmp_path) -> None:
    env = {**os.environ, "SSL_NOISE_DATA": str(Path(os.environ["SSL_NOISE_DATA"]).resolve())}
    done = subprocess.run([sys.executable, "-c", _from_python_block()], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"flipped 0\.\d\d, estimated 0\.\d\d \(0\.\d\d-0\.\d\d\)", out)
    assert "random: clean test accuracy" in out and "simclr: clean test accuracy" in out
    assert "given_label" in out and "epoch 1/" not in done.stderr  # the API prints nothing unless asked
