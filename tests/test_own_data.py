"""A researcher's own images (#37): a folder of 64-px PNGs and a CSV manifest over the same files are read at their
own size, named stably, matched with the registry entries of *this* data, compared like for like with a random
baseline, and ranked by a detector with their file paths when there is no ground truth."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ssl_noise import inits
from ssl_noise.cli import main
from ssl_noise.data import dataset_name, load_dataset
from ssl_noise.data.synthetic import make_synthetic
from ssl_noise.errors import UserError

CLASSES = ("basophil", "eosinophil", "lymphocyte")


@pytest.fixture(scope="module")
def own_images(tmp_path_factory) -> Path:
    """``cells/<class>/<i>.png`` (12 per class, 64 px RGB) and ``cells.csv`` (path,label) over the same files."""
    root = tmp_path_factory.mktemp("own")
    data = make_synthetic(n_train=36, n_val=0, n_test=0, num_classes=3, channels=3, size=64, seed=0)
    rows = []
    for i, (image, label) in enumerate(zip(data.train.images, data.train.labels)):
        path = root / "cells" / CLASSES[label] / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        rows.append({"path": f"cells/{CLASSES[label]}/{i:03d}.png", "label": CLASSES[label]})
    pd.DataFrame(rows).to_csv(root / "cells.csv", index=False)
    return root


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["--device", "cpu", *args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_images_are_read_at_their_own_size(own_images, capsys) -> None:
    folder = load_dataset(f"folder:{own_images / 'cells'}")
    manifest = load_dataset(f"csv:{own_images / 'cells.csv'}")
    assert folder.image_size == manifest.image_size == 64  # not silently shrunk to 28
    assert load_dataset(f"folder:{own_images / 'cells'}", size=32).image_size == 32  # unless asked
    np.testing.assert_array_equal(np.sort(folder.train.images.reshape(len(folder.train), -1).sum(1)),
                                  np.sort(manifest.train.images.reshape(len(manifest.train), -1).sum(1)))
    code, out, _ = _cli(capsys, "data", "info", f"folder:{own_images / 'cells'}")
    assert code == 0 and "64x64 px" in out
    code, out, _ = _cli(capsys, "data", "info", f"folder:{own_images / 'cells'}", "--image-size", "32")
    assert code == 0 and "32x32 px" in out


def test_files_of_several_sizes_need_an_image_size(own_images, tmp_path) -> None:
    mixed = tmp_path / "mixed"
    for k, size in enumerate((64, 64, 48)):
        (mixed / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), (k * 40, 0, 0)).save(mixed / f"c{k % 2}" / f"{k}.png")
    with pytest.raises(UserError, match="different sizes.*--image-size"):
        load_dataset(f"folder:{mixed}")
    assert load_dataset(f"folder:{mixed}", size=32).image_size == 32


def test_paths_follow_rows_and_subsets(own_images) -> None:
    data = load_dataset(f"folder:{own_images / 'cells'}", subset=10, seed=3)
    paths = data.train.paths
    assert len(paths) == len(data.train) == 10
    for path, label, image in zip(paths, data.train.labels, data.train.images):
        assert Path(path).parent.name == data.class_names[label]
        np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), image)


def test_names_are_stable_and_known_before_reading(own_images, shared_data) -> None:
    for spec in (f"folder:{own_images / 'cells'}", f"folder:{own_images / 'cells'}/", f"csv:{own_images / 'cells.csv'}",
                 str(shared_data / "bloodmnist.npz"), str(shared_data / "pneumoniamnist_trainnormal388.npz")):
        assert dataset_name(spec) == load_dataset(spec).name, spec
    assert dataset_name("bloodmnist") == "bloodmnist"


@pytest.mark.parametrize("given, kind", [("cells", "folder"), ("cells.csv", "csv")])
def test_a_missing_prefix_names_the_spec_that_works(own_images, monkeypatch, given, kind) -> None:
    monkeypatch.chdir(own_images)
    with pytest.raises(UserError) as e:
        load_dataset(given)
    assert f"--dataset {kind}:{given}" in str(e.value) and "delete" not in str(e.value)
    assert load_dataset(f"{kind}:{given}").name  # the suggested spec reads


def test_a_method_name_picks_the_entry_of_this_data(own_images, make_entry, tmp_path) -> None:
    ck = tmp_path / "ck"
    mine = make_entry(ck, image_size=64, dataset="cells", stem="imagenet", seed=1)
    time.sleep(1.1)  # created_at has second resolution: the other dataset's entry is strictly newer
    make_entry(ck, image_size=28, dataset="bloodmnist", seed=2)
    spec = f"folder:{own_images / 'cells'}"
    assert inits.image_size("simclr", spec, checkpoints=ck) == 64
    data = load_dataset(spec)
    assert inits.resolve("simclr", data, checkpoints=ck).id == mine
    # the random baseline built like that entry: its size, stem and backbone
    like = inits.like("random", "simclr", dataset=spec, checkpoints=ck, given={})
    assert like == {"image_size": 64, "stem": "imagenet", "backbone": "resnet18"}
    with pytest.raises(UserError, match="contradicts"):
        inits.like("random", "simclr", dataset=spec, checkpoints=ck, given={"stem": "cifar"})
    with pytest.raises(UserError, match="random or imagenet"):
        inits.like(mine, "simclr", dataset=spec, checkpoints=ck, given={})


def test_finetune_like_builds_the_baseline_as_the_entry(own_images, make_entry, tmp_path, capsys) -> None:
    ck = tmp_path / "ck"
    make_entry(ck, image_size=32, dataset="cells", stem="imagenet")
    code, out, err = _cli(capsys, "--checkpoints", str(ck), "--runs", str(tmp_path / "runs"), "finetune",
                          "--init", "random", "--like", "simclr", "--dataset", f"folder:{own_images / 'cells'}",
                          "--epochs", "1", "--batch-size", "8", "--set", "precision=fp32", "--quiet")
    assert code == 0, err
    metrics = json.loads((Path(out.strip().splitlines()[-1]) / "metrics.json").read_text())
    assert metrics["init"]["stem"] == "imagenet" and metrics["init"]["image_size"] == 32


def test_detect_without_ground_truth_ranks_files(own_images, make_entry, tmp_path, capsys) -> None:
    ck = tmp_path / "ck"
    make_entry(ck, image_size=64, dataset="cells")
    code, out, err = _cli(capsys, "--checkpoints", str(ck), "--runs", str(tmp_path / "runs"), "detect",
                          "--init", "simclr", "--dataset", f"folder:{own_images / 'cells'}", "--k", "5",
                          "--noise-estimate", "0.25", "--top", "3")
    assert code == 0, err
    assert "no ground truth: scores only" in out and "precision" not in out
    folder = Path(out.strip().splitlines()[-1])
    scores = pd.read_csv(folder / "scores.csv")
    assert list(scores.columns) == ["index", "path", "given_label", "suggested_label", "score", "rank", "flagged"]
    assert set(scores["given_label"]) == set(CLASSES) and set(scores["suggested_label"]) <= set(CLASSES)
    assert all(Path(p).is_file() and Path(p).parent.name == g for p, g in zip(scores["path"], scores["given_label"]))
    assert scores["rank"].tolist() == list(range(1, len(scores) + 1))
    top = [line for line in out.splitlines() if line.strip().startswith(("1 ", "2 ", "3 "))]
    assert len(top) == 3 and scores["path"][0] in top[0]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["ground_truth"] is False and metrics["realised_rate"] is None
    assert metrics["detection"]["n_flagged"] == round(0.25 * len(scores))


@pytest.mark.slow
def test_demo_runs_on_your_own_folder(own_images, tmp_path, capsys) -> None:
    """From your data to a report in one command: SimCLR, the paired random-vs-SimCLR sweep, plot and report."""
    small = tmp_path / "small"
    for path in (own_images / "cells").rglob("*.png"):
        target = small / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).resize((16, 16)).save(target)
    out_dir = tmp_path / "demo"
    code, out, err = _cli(capsys, "demo", "--dataset", f"folder:{small}", "--out", str(out_dir), "--quiet")
    assert code == 0, err
    assert "16 px" in err and "gain (each pair) |" in out
    frame = pd.read_csv(out_dir / "runs" / "sweeps" / "demo.csv")
    assert set(frame["dataset"]) == {"small"} and set(frame["image_size"]) == {16}
    assert set(frame["init"].str.split("-").str[0]) == {"random", "simclr"} and (out_dir / "report.md").is_file()


def test_a_subset_runs_noise_file_is_reused_without_repeating_subset(tmp_path) -> None:
    """README: `finetune --init random --noise-file runs/<run>/noisy_labels.csv` after a `--subset` run."""
    from ssl_noise.config import FinetuneConfig, resolve
    from ssl_noise.finetune import prepare

    base = dict(dataset="synthetic:n_train=64,n_val=16,n_test=16", image_size=16, epochs=1, batch_size=8,
                precision="fp32")
    first = prepare(resolve(FinetuneConfig, base, {"subset": 24, "noise_rate": 0.3, "noise_seed": 5}),
                    data_root=None, checkpoints=tmp_path)
    path = tmp_path / "noisy_labels.csv"
    from ssl_noise.noise import write_noise_csv

    write_noise_csv(path, first.data.train.labels, first.train_noise.noisy, indices=first.data.train_indices)
    again = prepare(resolve(FinetuneConfig, base, {"noise_file": str(path), "noise_seed": 5}), data_root=None,
                    checkpoints=tmp_path)
    np.testing.assert_array_equal(again.data.train_indices, first.data.train_indices)
    np.testing.assert_array_equal(again.train_noise.noisy, first.train_noise.noisy)
    np.testing.assert_array_equal(again.data.train.images, first.data.train.images)


def test_the_pretrain_command_an_error_suggests_runs_as_printed(own_images, make_entry, tmp_path) -> None:
    """The hint names the data spec (csv:PATH), not the data's name, which is not a spec."""
    make_entry(tmp_path / "ck", dataset="bloodmnist")
    spec = f"csv:{own_images / 'cells.csv'}"
    with pytest.raises(UserError) as e:
        inits.image_size("simclr", spec, checkpoints=tmp_path / "ck")
    assert f"ssl-noise pretrain --method simclr --dataset {spec}" in str(e.value)


def test_a_manifest_can_name_its_data(own_images, tmp_path) -> None:
    """`# name: cells` above the header: the CSV view of the folder's files shares the folder's name (and so its
    registry entries); a name that would make a path is refused."""
    text = (own_images / "cells.csv").read_text()
    named = own_images / "named.csv"
    named.write_text("# name: cells\n# exported from the lab's LIMS\n" + text)
    assert dataset_name(f"csv:{named}") == load_dataset(f"csv:{named}").name == "cells"
    assert len(load_dataset(f"csv:{named}").train) == len(load_dataset(f"csv:{own_images / 'cells.csv'}").train)
    bad = own_images / "bad.csv"
    bad.write_text("# name: ../escape\n" + text)
    with pytest.raises(UserError, match="plain name"):
        load_dataset(f"csv:{bad}")
