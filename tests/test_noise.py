"""Tests for ssl_noise.noise and the ``ssl-noise noise`` command (synthetic labels; one real BloodMNIST check)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from ssl_noise import noise
from ssl_noise.cli import main
from ssl_noise.errors import UserError
from ssl_noise.noise import NOISE_TYPES, MajorityNoiseError, NoiseWarning
from ssl_noise.noise.corruption import _corrupt_sampled_loop

K = 8


def build(name: str, K: int, rate: float, **kwargs) -> np.ndarray:
    """Every registered type through one call; asymmetric gets a full class map (i -> i + K//2 mod K)."""
    if name == "asymmetric":
        kwargs.setdefault("class_map", {i: (i + K // 2) % K for i in range(K)})
    return noise.transition_matrix(name, K, rate, **kwargs)


def labels_for(n: int, K: int = K, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, K, size=n)


# ------------------------------------------------------------------------------------------------- builders


@pytest.mark.parametrize("name", NOISE_TYPES.names())
@pytest.mark.parametrize("K_", [2, 3, 8])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.45])
def test_builders_are_row_stochastic(name, K_, rate):
    T = build(name, K_, rate)
    assert T.shape == (K_, K_)
    assert (T >= 0).all()
    np.testing.assert_allclose(T.sum(axis=1), 1, atol=1e-12)


def test_definitions():
    T = noise.symmetric(K, 0.4)  # true class excluded: expected wrong-label rate is the rate itself
    np.testing.assert_allclose(np.diag(T), 0.6)
    np.testing.assert_allclose(T[0, 1:], 0.4 / (K - 1))
    U = noise.uniform(K, 0.4)  # DivideMix-style redraw over all K classes
    np.testing.assert_allclose(np.diag(U), 1 - 0.4 + 0.4 / K)
    assert noise.expected_rate(U, np.arange(K)) == pytest.approx(0.4 * (K - 1) / K)
    P = noise.pairflip(K, 0.3)
    assert P[K - 1, 0] == pytest.approx(0.3) and P[0, 1] == pytest.approx(0.3)
    A = noise.asymmetric(4, 0.3, class_map={1: 3})
    np.testing.assert_allclose(A, [[1, 0, 0, 0], [0, 0.7, 0, 0.3], [0, 0, 1, 0], [0, 0, 0, 1]])


@pytest.mark.parametrize("name", NOISE_TYPES.names())
@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), None, "0.4"])
def test_rate_out_of_range(name, rate):
    with pytest.raises(UserError, match="rate"):
        build(name, K, rate)


def test_unknown_type_lists_choices():
    with pytest.raises(UserError, match="unknown noise type 'gaussian'; choose from: asymmetric, pairflip"):
        noise.transition_matrix("gaussian", K, 0.2)


def test_options_only_for_asymmetric():
    with pytest.raises(UserError, match="only applies to asymmetric"):
        noise.transition_matrix("symmetric", K, 0.2, class_map={0: 1})
    with pytest.raises(UserError, match="exactly one of"):
        noise.transition_matrix("asymmetric", K, 0.2)
    with pytest.raises(UserError, match="do not also give a rate"):
        noise.transition_matrix("asymmetric", 2, 0.2, matrix=np.eye(2))


@pytest.mark.parametrize("class_map, match", [({0: 0}, "other than"), ({0: 9}, "not a class index"),
                                              ({0: [1, 1]}, "distinct"), ({}, "non-empty"), ({0.5: 1}, "index")])
def test_bad_class_map(class_map, match):
    with pytest.raises(UserError, match=match):
        noise.asymmetric(K, 0.2, class_map=class_map)


def test_load_class_map(tmp_path):
    (tmp_path / "m.yaml").write_text("basophil: eosinophil\n2: [3, '4']\n")
    (tmp_path / "m.json").write_text('{"0": 1}')
    names = ["basophil", "eosinophil", "c2", "c3", "c4"]
    assert noise.load_class_map(tmp_path / "m.yaml", names) == {0: [1], 2: [3, 4]}
    assert noise.load_class_map(tmp_path / "m.json") == {0: [1]}
    (tmp_path / "bad.yaml").write_text("monocyte: 1\n")
    with pytest.raises(UserError, match="unknown class 'monocyte'"):
        noise.load_class_map(tmp_path / "bad.yaml", names)


# ------------------------------------------------------------------------------------------ majority check


def test_majority_refused_without_force():
    with pytest.raises(MajorityNoiseError, match="--force"):
        noise.pairflip(K, 0.5)
    with pytest.raises(UserError, match="--force"):  # still a user error (exit 2)
        noise.transition_matrix("symmetric", K, (K - 1) / K)
    with pytest.warns(NoiseWarning, match="majority"):
        T = noise.transition_matrix("pairflip", K, 0.5, force=True)
    np.testing.assert_allclose(T.sum(axis=1), 1)


def test_majority_boundaries():
    noise.pairflip(K, 0.49)
    noise.symmetric(K, (K - 1) / K - 1e-3)
    noise.uniform(K, 0.99)  # the clean class always stays the most likely label
    with pytest.raises(MajorityNoiseError):
        noise.asymmetric(3, 0.6, class_map={0: 1})
    with pytest.raises(MajorityNoiseError):
        noise.asymmetric(2, matrix=np.array([[0.4, 0.6], [0.0, 1.0]]))


# ------------------------------------------------------------------------------------------ matrix validation


@pytest.mark.parametrize("matrix, match", [
    (np.ones((2, 3)) / 3, "square"),
    (np.eye(3), "dataset has 8 classes"),
    (np.full((K, K), np.nan), "NaN"),
    (np.eye(K) * 1.2 - np.roll(np.eye(K), 1, axis=1) * 0.2, "non-negative"),  # rows still sum to 1
    (np.eye(K) * 0.9, "rows must sum to 1"),
])
def test_matrix_validation(matrix, match):
    with pytest.raises(UserError, match=match):
        noise.transition_matrix("asymmetric", K, None, matrix=matrix)


def test_column_stochastic_matrix_gets_a_hint():
    T = np.array([[0.9, 0.5], [0.1, 0.5]])  # cleanlab's P(label | true_label): columns sum to 1
    with pytest.raises(UserError, match="transpose"):
        noise.validate_matrix(T, 2)


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".txt"])
def test_matrix_files(tmp_path, suffix):
    T = noise.pairflip(4, 0.2) * 0.5 + noise.symmetric(4, 0.3) * 0.5
    path = tmp_path / f"T{suffix}"
    if suffix == ".npy":
        np.save(path, T)
    else:
        np.savetxt(path, T, delimiter="," if suffix == ".csv" else " ")
    np.testing.assert_allclose(noise.transition_matrix("asymmetric", 4, None, matrix=str(path)), T)
    with pytest.raises(UserError, match="4x4 but the dataset has 5"):
        noise.asymmetric(5, matrix=path)


def test_matrix_file_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        noise.load_matrix(tmp_path / "missing.npy")
    (tmp_path / "T.json").write_text("[[1]]")
    with pytest.raises(UserError, match=r"\.npy, \.csv or \.txt"):
        noise.load_matrix(tmp_path / "T.json")
    (tmp_path / "T.csv").write_text("0.5,0.5\n0.5,x\n")
    with pytest.raises(UserError, match="cannot read"):
        noise.load_matrix(tmp_path / "T.csv")


# ------------------------------------------------------------------------------------------------ corruption


@pytest.mark.parametrize("name", NOISE_TYPES.names())
def test_sampled_realised_rate(name):
    labels = labels_for(10_000)
    T = build(name, K, 0.3)
    out = noise.corrupt(labels, T, rng=np.random.default_rng(1))
    assert out.realised_rate == pytest.approx(noise.expected_rate(T, labels), abs=0.02)  # ~4.5 sigma
    np.testing.assert_allclose(out.realised_T, T, atol=0.05)


@pytest.mark.parametrize("name", NOISE_TYPES.names())
@pytest.mark.parametrize("mode", ["sampled", "exact"])
def test_seed_determinism(name, mode):
    labels, T = labels_for(2_000), build(name, K, 0.4)

    def run(seed):
        return noise.corrupt(labels, T, rng=np.random.default_rng(seed), mode=mode).noisy

    np.testing.assert_array_equal(run(3), run(3))
    assert (run(3) != run(4)).any()


@pytest.mark.parametrize("name", NOISE_TYPES.names())
def test_exact_mode_hits_counts(name):
    labels = np.repeat(np.arange(K), np.arange(100, 100 + 37 * K, 37))  # unequal class sizes
    T = build(name, K, 0.35)
    out = noise.corrupt(labels, T, rng=np.random.default_rng(0), mode="exact")
    counts = np.zeros((K, K), dtype=int)
    np.add.at(counts, (labels, out.noisy), 1)
    n = np.bincount(labels, minlength=K)
    np.testing.assert_array_equal(counts.sum(axis=1), n)
    assert np.abs(counts - n[:, None] * T).max() < 1  # largest-remainder rounding
    assert (counts[T == 0] == 0).all()
    expected_flips = sum(n[i] - counts[i, i] for i in range(K))
    assert out.flipped.sum() == expected_flips


def test_exact_mode_is_exact_when_divisible():
    labels = np.repeat(np.arange(4), 300)  # 300 * 0.4 / 3 = 40 per off-diagonal pair
    out = noise.corrupt(labels, noise.symmetric(4, 0.4), rng=np.random.default_rng(0), mode="exact")
    assert out.realised_rate == 0.4
    np.testing.assert_allclose(out.realised_T, noise.symmetric(4, 0.4))


@pytest.mark.parametrize("name", NOISE_TYPES.names())
def test_vectorised_matches_loop_reference(name):
    labels, T = labels_for(3_000, seed=5), build(name, K, 0.4)
    rng_a, rng_b = np.random.default_rng(11), np.random.default_rng(11)
    fast = noise.corrupt(labels, T, rng=rng_a).noisy
    slow = _corrupt_sampled_loop(labels, T, rng=rng_b)
    np.testing.assert_array_equal(fast, slow)
    assert rng_a.random() == rng_b.random()  # both consumed the generator identically


def test_loop_reference_on_zero_probability_entries():
    T = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.3, 0.0, 0.7]])
    labels = labels_for(3_000, K=3)
    fast = noise.corrupt(labels, T, rng=np.random.default_rng(2)).noisy
    np.testing.assert_array_equal(fast, _corrupt_sampled_loop(labels, T, rng=np.random.default_rng(2)))
    counts = np.zeros((3, 3), dtype=int)
    np.add.at(counts, (labels, fast), 1)
    assert (counts[T == 0] == 0).all()


@pytest.mark.parametrize("name", NOISE_TYPES.names())
@pytest.mark.parametrize("mode", ["sampled", "exact"])
def test_flipped_mask_and_realised_stats(name, mode):
    labels = labels_for(1_000, K=K - 1)  # class K-1 absent: its realised row is the nominal one
    T = build(name, K, 0.3)
    out = noise.corrupt(labels, T, rng=np.random.default_rng(0), mode=mode)
    np.testing.assert_array_equal(out.flipped, out.noisy != labels)
    assert out.realised_rate == out.flipped.mean()
    np.testing.assert_allclose(out.realised_T.sum(axis=1), 1)
    np.testing.assert_allclose(out.realised_T[K - 1], T[K - 1])
    assert out.noisy.dtype == np.int64 and out.noisy.shape == labels.shape


def test_uniform_self_redraws_are_not_flips():
    labels = labels_for(20_000)
    out = noise.corrupt(labels, noise.uniform(K, 0.4), rng=np.random.default_rng(0), mode="exact")
    assert out.realised_rate == pytest.approx(0.4 * (K - 1) / K, abs=0.002)


def test_corrupt_input_errors():
    T = noise.symmetric(3, 0.2)
    rng = np.random.default_rng(0)
    with pytest.raises(UserError, match="0..2"):
        noise.corrupt(np.array([0, 3]), T, rng=rng)
    with pytest.raises(UserError, match="integer"):
        noise.corrupt(np.array([0.0, 1.0]), T, rng=rng)
    with pytest.raises(UserError, match="unknown noise mode"):
        noise.corrupt(np.array([0, 1]), T, rng=rng, mode="fixed")
    with pytest.raises(TypeError, match="Generator"):
        noise.corrupt(np.array([0, 1]), T, rng=0)
    assert noise.corrupt(np.array([[0], [1]]), T, rng=rng).noisy.shape == (2,)  # MedMNIST's (N, 1)


# ----------------------------------------------------------------------------------------------- noise files


def test_noise_csv_roundtrip(tmp_path):
    clean = labels_for(50)
    noisy = noise.corrupt(clean, noise.symmetric(K, 0.4), rng=np.random.default_rng(0)).noisy
    path = tmp_path / "n.csv"
    noise.write_noise_csv(path, clean, noisy)
    assert path.read_text().splitlines()[0] == "index,clean_label,noisy_label"
    back = noise.read_noise_csv(path, num_samples=50, num_classes=K)
    np.testing.assert_array_equal(back.clean, clean)
    np.testing.assert_array_equal(back.noisy, noisy)
    first = path.read_bytes()
    noise.write_noise_csv(path, clean, noisy)  # overwrite in place, byte-identical
    assert path.read_bytes() == first
    assert [p.name for p in tmp_path.iterdir()] == ["n.csv"]  # no temporary left behind


def test_noise_csv_subset_indices(tmp_path):
    path = tmp_path / "n.csv"
    noise.write_noise_csv(path, np.array([1, 2, 0]), np.array([1, 0, 0]), indices=np.array([40, 7, 19]))
    back = noise.read_noise_csv(path, indices=np.array([7, 19, 40]))
    np.testing.assert_array_equal(back.index, [7, 19, 40])
    np.testing.assert_array_equal(back.clean, [2, 0, 1])
    with pytest.raises(UserError, match="index 40 is not a training sample"):
        noise.read_noise_csv(path, num_samples=20)


@pytest.mark.parametrize("text, kwargs, match", [
    ("index,clean_label\n0,1\n", {}, "lacks column.*noisy_label"),
    ("index,clean_label,noisy_label\n0,1,1.5\n", {}, "noisy_label on data row 1 is '1.5', not an integer"),
    ("index,clean_label,noisy_label\n0,1,\n", {}, "not an integer"),
    ("index,clean_label,noisy_label\n0,1,1\n0,2,2\n", {}, "index 0 appears 2 times"),
    ("index,clean_label,noisy_label\n-1,1,1\n", {}, "negative"),
    ("index,clean_label,noisy_label\n0,1,1\n2,1,1\n", {"num_samples": 3}, "1 of 3 training samples are missing"),
    ("index,clean_label,noisy_label\n0,1,1\n5,1,1\n", {"num_samples": 2}, "index 5 is not a training sample"),
    ("index,clean_label,noisy_label\n0,1,8\n", {"num_classes": 8}, "noisy_label 8 at index 0 is out of range"),
    ("index,clean_label,noisy_label\n0,-1,0\n", {}, "clean_label -1 at index 0 is out of range"),
    ("index,clean_label,noisy_label\n", {}, "no rows"),
    ("", {}, "cannot parse"),
])
def test_read_noise_csv_errors(tmp_path, text, kwargs, match):
    path = tmp_path / "n.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=match):
        noise.read_noise_csv(path, **kwargs)


def test_read_noise_csv_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        noise.read_noise_csv(tmp_path / "none.csv")


# ------------------------------------------------------------------------------------------------------- CLI


def fake_dataset(name, *, data_root=None, size=28, subset=None, seed=0):
    """Stands in for ssl_noise.data.load_dataset: 2,000 train labels over 8 classes."""
    labels = labels_for(2_000)
    indices = np.arange(len(labels))
    if subset:
        indices = np.sort(np.random.default_rng(seed).choice(len(labels), subset, replace=False))
    return types.SimpleNamespace(train=types.SimpleNamespace(labels=labels[indices]), train_indices=indices,
                                 class_names=[f"class{i}" for i in range(K)], multilabel=False)


@pytest.fixture
def fake_data(monkeypatch):
    monkeypatch.setattr("ssl_noise.data.load_dataset", fake_dataset)


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["noise", *map(str, args)])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.parametrize("args, match", [
    (["--type", "gaussian", "--rate", "0.2"], "error: unknown noise type 'gaussian'; choose from: asymmetric"),
    (["--rate", "1.5"], "error: noise rate must be in [0, 1), got 1.5"),
    (["--type", "pairflip", "--rate", "0.5"], "pass --force"),
    (["--type", "asymmetric", "--rate", "0.2"], "exactly one of"),
    (["--mode", "fixed", "--rate", "0.2"], "error: Invalid value for '--mode'"),
])
def test_cli_user_errors_exit_2(tmp_path, capsys, fake_data, args, match):
    out = tmp_path / "n.csv"
    code, _, err = run_cli([*args, "--out", out], capsys)
    assert code == 2
    assert err.startswith("error: ") and match in err and err.count("\n") == 1
    assert not out.exists()


def test_cli_writes_deterministic_file(tmp_path, capsys, fake_data):
    a, b, c = (tmp_path / f"{x}.csv" for x in "abc")
    for path, seed in ((a, 1), (b, 1), (c, 2)):
        code, out, _ = run_cli(["--rate", "0.4", "--seed", seed, "--out", path, "-v"], capsys)
        assert code == 0 and "realised rate" in out and "class7" in out
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    table = noise.read_noise_csv(a, num_samples=2_000, num_classes=K)
    assert np.mean(table.clean != table.noisy) == pytest.approx(0.4, abs=0.04)


def test_cli_force_warns_and_subset_keeps_indices(tmp_path, capsys, fake_data):
    path = tmp_path / "n.csv"
    code, _, err = run_cli(["--type", "pairflip", "--rate", "0.5", "--force", "--subset", 300, "--out", path],
                           capsys)
    assert code == 0 and err.startswith("warning: pairflip noise at rate 0.5")
    table = noise.read_noise_csv(path, num_classes=K)
    np.testing.assert_array_equal(table.index, fake_dataset("x", subset=300).train_indices)


def test_cli_matrix_and_class_map(tmp_path, capsys, fake_data):
    np.save(tmp_path / "T.npy", noise.pairflip(K, 0.3))
    (tmp_path / "map.yaml").write_text("class0: class3\n")
    code, _, _ = run_cli(["--type", "asymmetric", "--matrix", tmp_path / "T.npy", "--out", tmp_path / "m.csv"],
                         capsys)
    assert code == 0
    code, _, _ = run_cli(["--type", "asymmetric", "--class-map", tmp_path / "map.yaml", "--rate", "0.3",
                          "--out", tmp_path / "c.csv"], capsys)
    table = noise.read_noise_csv(tmp_path / "c.csv")
    assert code == 0 and set(table.noisy[table.clean != table.noisy]) == {3}
    np.save(tmp_path / "T3.npy", np.eye(3))
    code, _, err = run_cli(["--type", "asymmetric", "--matrix", tmp_path / "T3.npy", "--out", tmp_path / "x.csv"],
                           capsys)
    assert code == 2 and "3x3 but the dataset has 8 classes" in err


def test_cli_with_the_data_layer(tmp_path, capsys):
    path = tmp_path / "s.csv"
    code, out, err = run_cli(["--dataset", "synthetic:num_classes=4,n_train=200", "--type", "uniform", "--rate", 0.5,
                              "--mode", "exact", "--subset", 100, "--out", path], capsys)
    assert code == 0, err
    table = noise.read_noise_csv(path, num_classes=4)
    assert len(table.index) == 100 and table.index.max() < 200


def test_cli_on_bloodmnist(tmp_path, capsys, monkeypatch, shared_data):
    monkeypatch.setenv("SSL_NOISE_DATA", str(shared_data))
    paths = [tmp_path / f"{i}.csv" for i in range(3)]
    for path, seed in zip(paths, (1, 1, 2)):
        code, _, err = run_cli(["--dataset", "bloodmnist", "--type", "symmetric", "--rate", "0.4", "--seed", seed,
                                "--out", path], capsys)
        assert code == 0, err
    table = noise.read_noise_csv(paths[0], num_samples=11_959, num_classes=8)
    assert np.mean(table.clean != table.noisy) == pytest.approx(0.4, abs=0.01)
    assert paths[0].read_bytes() == paths[1].read_bytes() != paths[2].read_bytes()
