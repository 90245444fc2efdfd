"""Tests of the data layer: real BloodMNIST, every bad input, the file loaders, downloads (never on the network)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ssl_noise.cli import cli, main
from ssl_noise.data import ImageDataset, catalogue, get_entry, load_dataset, medmnist, stratified_split
from ssl_noise.data.dataset import subset_train
from ssl_noise.data.synthetic import make_synthetic
from ssl_noise.errors import UserError

BLOOD_COUNTS = {"train": [852, 2181, 1085, 2026, 849, 993, 2330, 1643],
                "val": [122, 312, 155, 290, 122, 143, 333, 235],
                "test": [244, 624, 311, 579, 243, 284, 666, 470]}


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No test touches the network or the user's cache: downloads fail loudly, the cache is a temp folder."""
    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(medmnist, "fetch_url", no_network)
    monkeypatch.setattr(medmnist, "fetch_wheel_member", no_network)
    monkeypatch.delenv("SSL_NOISE_DATA", raising=False)
    monkeypatch.setenv("SSL_NOISE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def blood(shared_data) -> ImageDataset:
    return load_dataset("bloodmnist", data_root=str(shared_data), download=False)


def write_npz(path: Path, *, channels: int = 3, num_classes: int = 3, flat_labels: bool = False,
              multilabel: int = 0, seed: int = 0) -> Path:
    """A tiny archive in MedMNIST layout (gray stored N×H×W, labels N×1 unless ``flat_labels``)."""
    data = make_synthetic(n_train=12, n_val=6, n_test=6, num_classes=num_classes, channels=channels, size=8,
                          seed=seed)
    arrays = {}
    for name, split in data.splits.items():
        arrays[f"{name}_images"] = split.images[..., 0] if channels == 1 else split.images
        labels = split.labels.reshape(-1) if flat_labels else split.labels.reshape(-1, 1)
        if multilabel:
            labels = np.random.default_rng(seed).integers(0, 2, size=(len(split), multilabel))
        arrays[f"{name}_labels"] = labels.astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return path


def run_main(args, capsys):
    """Run the real entry point; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


# --- catalogue -------------------------------------------------------------------------------------------------

def test_catalogue_covers_2d_flags_from_medmnist_info():
    entries = catalogue()
    assert len(entries) == 12 and not any(flag.endswith("3d") for flag in entries)
    blood = get_entry("BloodMNIST")
    assert blood.n_channels == 3 and len(blood.class_names) == 8 and blood.class_names[0] == "basophil"
    assert blood.md5s[28] == "7053d0359d879ad8a5505303e11de1dc" and set(blood.urls) == {28, 64, 128, 224}
    assert blood.filename(28) == "bloodmnist.npz" and blood.filename(224) == "bloodmnist_224.npz"
    assert get_entry("chestmnist").multilabel and blood.licence == "CC BY 4.0"


@pytest.mark.parametrize("spec, match", [("nosuchmnist", "unknown dataset 'nosuchmnist'"),
                                         ("organmnist3d", "3D"),
                                         ("synthetic:colour=3", "bad synthetic parameter"),
                                         ("/no/such/file.npz", "no such dataset file")])
def test_bad_specs(spec, match):
    with pytest.raises(UserError, match=match):
        load_dataset(spec)


def test_bad_size():
    with pytest.raises(UserError, match="not a MedMNIST size"):
        load_dataset("bloodmnist", size=32)


# --- real BloodMNIST -------------------------------------------------------------------------------------------

def test_bloodmnist_real(blood, shared_data):
    assert blood.name == "bloodmnist" and blood.md5_status == "OK"
    assert blood.md5 == "7053d0359d879ad8a5505303e11de1dc" and blood.source == shared_data / "bloodmnist.npz"
    assert (blood.channels, blood.image_size, blood.num_classes) == (3, 28, 8)
    for name, split in blood.splits.items():
        assert split.images.dtype == np.uint8 and split.labels.dtype == np.int64
        assert split.images.shape == (sum(BLOOD_COUNTS[name]), 28, 28, 3) and split.labels.shape == (len(split),)
        assert split.class_counts(8).tolist() == BLOOD_COUNTS[name]
    np.testing.assert_array_equal(blood.train_indices, np.arange(11959))


def test_stratified_subset(blood):
    a = subset_train(blood, 800, seed=1)
    assert len(a.train) == 800 and len(a.train_indices) == 800
    counts = a.train.class_counts(8)
    assert (counts > 0).all()
    np.testing.assert_allclose(counts / 800, np.asarray(BLOOD_COUNTS["train"]) / 11959, atol=0.002)
    np.testing.assert_array_equal(a.train.images, blood.train.images[a.train_indices])
    np.testing.assert_array_equal(a.train.labels, blood.train.labels[a.train_indices])
    assert len(a.val) == 1712 and len(a.test) == 3421
    b, c = subset_train(blood, 800, seed=1), subset_train(blood, 800, seed=2)
    np.testing.assert_array_equal(a.train_indices, b.train_indices)
    assert not np.array_equal(a.train_indices, c.train_indices)
    nested = subset_train(a, 100, seed=0)  # indices keep pointing into the full train split
    np.testing.assert_array_equal(nested.train.labels, blood.train.labels[nested.train_indices])


def test_subset_keeps_rare_classes_and_checks_bounds(tiny_synthetic):
    small = subset_train(tiny_synthetic, 4, seed=0)
    assert small.train.class_counts(4).tolist() == [1, 1, 1, 1]
    for n in (3, 65):
        with pytest.raises(UserError, match="subset size"):
            subset_train(tiny_synthetic, n)


def test_npz_path_spec_third_party_variant(shared_data):
    path = shared_data / "pneumoniamnist_trainnormal388.npz"
    if not path.is_file():
        pytest.skip("variant file absent")
    data = load_dataset(str(path))
    assert data.md5_status == "unofficial" and data.class_names == ["normal", "pneumonia"]
    assert data.channels == 1 and data.train.images.shape == (3882, 28, 28, 1)
    assert data.train.class_counts(2).tolist() == [388, 3494]


# --- md5 and corrupt files -------------------------------------------------------------------------------------

def test_truncated_npz_names_the_file(tmp_path, capsys):
    path = write_npz(tmp_path / "bloodmnist.npz")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="bloodmnist.npz is not a readable .npz archive.*ssl-noise data get bloodmnist"):
        load_dataset("bloodmnist", data_root=str(tmp_path))
    code, out, err = run_main(["--data-root", tmp_path, "data", "info", "bloodmnist"], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and str(path) in err


def test_wrong_md5_is_reported_not_refused(tmp_path, capsys):
    write_npz(tmp_path / "breastmnist.npz", channels=1, num_classes=2, flat_labels=True)
    data = load_dataset("breastmnist", data_root=str(tmp_path))
    assert data.md5_status == "MISMATCH" and data.class_names == ["malignant", "normal, benign"]
    assert data.train.images.shape == (12, 8, 8, 1) and data.train.labels.shape == (12,)
    code, out, _ = run_main(["--data-root", tmp_path, "data", "info", "breastmnist"], capsys)
    assert code == 0 and "MISMATCH" in out
    code, _, err = run_main(["--data-root", tmp_path, "data", "get", "breastmnist"], capsys)
    assert code == 2 and "not the official 750601b1f35ba3300ea97c75c52ff8f6" in err


def test_labels_out_of_range(tmp_path):
    write_npz(tmp_path / "breastmnist.npz", channels=1, num_classes=3)  # breastmnist has 2 classes
    with pytest.raises(UserError, match="label 2 is out of range for 2 classes"):
        load_dataset("breastmnist", data_root=str(tmp_path))


def test_unknown_npz_gets_numbered_classes_and_multilabel_loads(tmp_path):
    data = load_dataset(str(write_npz(tmp_path / "mine.npz", num_classes=5)))
    assert data.class_names == ["0", "1", "2", "3", "4"] and data.md5_status == "unofficial"
    chest = load_dataset("chestmnist", data_root=str(write_npz(tmp_path / "chestmnist.npz", channels=1,
                                                               multilabel=14).parent))
    assert chest.multilabel and chest.train.labels.shape == (12, 14) and "positive labels" in chest.describe()
    with pytest.raises(UserError, match="multi-label"):
        subset_train(chest, 5)


# --- finding and downloading -----------------------------------------------------------------------------------

def test_offline_without_copy_says_where_to_put_it(tmp_path, monkeypatch):
    with pytest.raises(UserError) as info:
        load_dataset("dermamnist", data_root=str(tmp_path / "mine"), download=False)
    message = str(info.value)
    assert "dermamnist.npz" in message and str(tmp_path / "mine") in message and str(tmp_path / "cache") in message
    assert "https://zenodo.org/records/10519652/files/dermamnist.npz" in message

    def unreachable(*args, **kwargs):
        raise medmnist.DownloadError("network is unreachable")

    monkeypatch.setattr(medmnist, "fetch_url", unreachable)
    monkeypatch.setattr(medmnist, "fetch_wheel_member", unreachable)
    with pytest.raises(UserError, match=r"bloodmnist.npz .* download failed .*official url: network is unreachable"
                                        r".*PyPI wheel kosmos-core==0.6.2.*save it as bloodmnist.npz"):
        load_dataset("bloodmnist")


def test_download_with_wrong_md5_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(medmnist, "fetch_url", lambda url, dest, **kw: Path(dest).write_bytes(b"not medmnist"))
    with pytest.raises(UserError, match="md5 .* is not the official 750601b1f35ba3300ea97c75c52ff8f6"):
        load_dataset("breastmnist")
    cache = tmp_path / "cache"
    assert cache.is_dir() and list(cache.iterdir()) == []


def test_download_falls_back_to_mirror_and_verifies(tmp_path, monkeypatch, shared_data):
    def unreachable(*args, **kwargs):
        raise medmnist.DownloadError("offline")

    copied = []
    monkeypatch.setattr(medmnist, "fetch_url", unreachable)
    monkeypatch.setattr(medmnist, "fetch_wheel_member",
                        lambda mirror, dest: copied.append(shutil.copyfile(shared_data / "bloodmnist.npz", dest)))
    path = medmnist.fetch("bloodmnist")
    assert path == tmp_path / "cache" / "bloodmnist.npz" and len(copied) == 1
    assert medmnist.md5_status(path, get_entry("bloodmnist").md5s[28])[1] == "OK"
    assert medmnist.fetch("bloodmnist") == path and len(copied) == 1  # second call finds the cached copy
    assert [p.name for p in path.parent.iterdir()] == ["bloodmnist.npz"]


# --- image folders, CSV manifests, Chaoyang --------------------------------------------------------------------

def write_image(path: Path, value: int, mode: str = "RGB", shape=(10, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((*shape, 3) if mode == "RGB" else shape, value, dtype=np.uint8)
    Image.fromarray(pixels, mode=mode).save(path)
    return path


def make_folder(root: Path, per_class: int = 10, mode: str = "L") -> Path:
    for k, name in enumerate(["benign", "malignant"]):
        for i in range(per_class):
            write_image(root / name / f"{i}.png", 40 + 100 * k, mode)
    return root


def test_folder_loader_split_70_10_20(tmp_path):
    data = load_dataset(f"folder:{make_folder(tmp_path / 'set')}", size=16)
    assert data.name == "set" and data.class_names == ["benign", "malignant"] and data.channels == 1
    assert [len(s) for s in data.splits.values()] == [14, 2, 4]
    assert data.train.images.shape == (14, 16, 16, 1) and set(np.unique(data.test.images)) <= {40, 140}
    again = load_dataset(f"folder:{tmp_path / 'set'}", size=16)
    np.testing.assert_array_equal(data.test.images, again.test.images)


def test_folder_with_split_folders_mixed_modes_become_rgb(tmp_path):
    for split, n in (("train", 10), ("test", 3)):
        make_folder(tmp_path / split, per_class=n)
    write_image(tmp_path / "train" / "benign" / "colour.jpg", 90, "RGB")
    data = load_dataset(f"folder:{tmp_path}", size=8)
    assert data.channels == 3 and [len(s) for s in data.splits.values()] == [19, 2, 6]
    assert (data.test.class_counts(2) == 3).all()


def test_empty_folder_and_empty_class(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no class sub-folders"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "empty" / "cats").mkdir()
    with pytest.raises(UserError, match="has no images"):
        load_dataset(f"folder:{tmp_path / 'empty'}")


def test_unreadable_image_names_the_file(tmp_path):
    root = make_folder(tmp_path / "set", per_class=3)
    bad = root / "benign" / "broken.png"
    bad.write_bytes(b"\x89PNG this is not an image")
    with pytest.raises(UserError, match=f"cannot read image {bad}"):
        load_dataset(f"folder:{root}")


def test_csv_manifest_with_names_and_splits(tmp_path):
    rows = ["path,label,split"]
    for i in range(12):
        name = ["tumour", "normal"][i % 2]
        write_image(tmp_path / "img" / f"{i}.png", 10 * i)
        rows.append(f"img/{i}.png,{name},{'test' if i >= 8 else 'train'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = load_dataset(f"csv:{tmp_path / 'm.csv'}", size=8)
    assert data.class_names == ["normal", "tumour"] and data.channels == 3
    assert [len(s) for s in data.splits.values()] == [6, 2, 4] and data.val.class_counts(2).tolist() == [1, 1]


def test_csv_manifest_int_labels_without_split(tmp_path):
    lines = ["path,label"] + [f"{write_image(tmp_path / f'{i}.png', i)},{i % 3}" for i in range(15)]
    (tmp_path / "m.csv").write_text("\n".join(lines))
    data = load_dataset(f"csv:{tmp_path / 'm.csv'}", size=8)
    assert data.class_names == ["0", "1", "2"] and sum(len(s) for s in data.splits.values()) == 15


def test_csv_manifest_missing_columns_and_bad_labels(tmp_path):
    (tmp_path / "m.csv").write_text("file,diagnosis\na.png,1\n")
    with pytest.raises(UserError, match="lacks column\\(s\\) path, label"):
        load_dataset(f"csv:{tmp_path / 'm.csv'}")
    (tmp_path / "n.csv").write_text(f"path,label,split\n{write_image(tmp_path / 'a.png', 1)},-1,train\n"
                                    f"{tmp_path / 'a.png'},0,test\n")
    with pytest.raises(UserError, match="label -1 is out of range"):
        load_dataset(f"csv:{tmp_path / 'n.csv'}", size=8)


def test_chaoyang_json(tmp_path):
    for split, n in (("train", 20), ("test", 8)):
        records = [{"name": f"{split}/{i}.jpg", "label": i % 4} for i in range(n)]
        for r in records:
            write_image(tmp_path / r["name"], 30 * r["label"], "RGB", shape=(32, 32))
        (tmp_path / f"{split}.json").write_text(json.dumps(records))
    data = load_dataset(f"chaoyang:{tmp_path}", size=8)
    assert data.class_names == ["normal", "serrated", "adenocarcinoma", "adenoma"]
    assert [len(s) for s in data.splits.values()] == [16, 4, 8] and (data.val.class_counts(4) == 1).all()
    (tmp_path / "test.json").unlink()
    with pytest.raises(UserError, match="lacks test.json"):
        load_dataset(f"chaoyang:{tmp_path}")


def test_stratified_split_is_seeded_and_complete():
    labels = np.repeat(np.arange(3), [10, 20, 5])
    parts = stratified_split(labels, (0.7, 0.1, 0.2), seed=3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(35))
    assert all(set(labels[p]) == {0, 1, 2} for p in parts)
    assert all(np.array_equal(a, b) for a, b in zip(parts, stratified_split(labels, (0.7, 0.1, 0.2), seed=3)))


# --- synthetic -------------------------------------------------------------------------------------------------

def test_synthetic_is_seeded_and_learnable(tiny_synthetic):
    same = make_synthetic(n_train=64, n_val=16, n_test=32, num_classes=4, seed=0)
    other = make_synthetic(n_train=64, n_val=16, n_test=32, num_classes=4, seed=1)
    np.testing.assert_array_equal(tiny_synthetic.train.images, same.train.images)
    assert not np.array_equal(tiny_synthetic.train.images, other.train.images)
    assert tiny_synthetic.train.images.shape == (64, 28, 28, 3)
    assert tiny_synthetic.train.class_counts(4).tolist() == [16, 16, 16, 16]
    big = make_synthetic(n_train=400, n_test=200, seed=2)  # a nearest-centroid classifier is far above chance
    x, y = big.train.images.reshape(400, -1) / 255.0, big.train.labels
    centroids = np.stack([x[y == k].mean(0) for k in range(4)])
    xt = big.test.images.reshape(200, -1) / 255.0
    accuracy = np.mean(np.argmin(((xt[:, None] - centroids[None]) ** 2).sum(-1), 1) == big.test.labels)
    assert accuracy > 0.6


def test_synthetic_spec_parameters():
    data = load_dataset("synthetic:num_classes=3,n_train=30,channels=1,size=12", subset=9, seed=4)
    assert data.num_classes == 3 and data.train.images.shape == (9, 12, 12, 1)
    assert data.train_indices.max() < 30


# --- CLI -------------------------------------------------------------------------------------------------------

def test_cli_data_list_marks_local_files(tmp_path, shared_data):
    result = CliRunner().invoke(cli, ["--data-root", str(shared_data), "data", "list"])
    assert result.exit_code == 0, result.output
    blood_line = next(line for line in result.output.splitlines() if line.startswith("bloodmnist"))
    assert "11959/1712/3421" in blood_line and blood_line.split()[-4:] == ["yes", "-", "-", "-"]


def test_cli_data_info_bloodmnist(capsys, shared_data):
    code, out, err = run_main(["--data-root", shared_data, "data", "info", "bloodmnist"], capsys)
    assert code == 0, err
    assert "7053d0359d879ad8a5505303e11de1dc  OK" in out and "train 11959 / val 1712 / test 3421" in out
    basophil = next(line for line in out.splitlines() if "basophil" in line)
    assert basophil.split()[-3:] == ["852", "122", "244"]


def test_cli_data_get_offline_exit_2(tmp_path, capsys):
    code, out, err = run_main(["--data-root", tmp_path, "data", "info", "pathmnist"], capsys)
    assert code == 2 and err.startswith("error: pathmnist.npz") and "ssl-noise data get pathmnist" in err
    assert err.count("\n") == 1 and out == ""
