"""faiss k-NN against a brute-force numpy reference, and the ``ssl-noise knn`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ssl_noise.cli import main
from ssl_noise.errors import UserError
from ssl_noise.knn import knn_classify, search, vote


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_matches_brute_force():
    rng = np.random.default_rng(0)
    bank, queries = _unit(rng, 300, 32), _unit(rng, 50, 32)
    sims, idx = search(bank, queries, 7)
    ref = queries @ bank.T
    ref_idx = np.argsort(-ref, axis=1)[:, :7]
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, np.take_along_axis(ref, ref_idx, 1), rtol=1e-5, atol=1e-6)


def test_exclude_self_drops_own_index():
    rng = np.random.default_rng(1)
    feats = _unit(rng, 100, 8)
    _, idx = search(feats, feats, 5, exclude_self=True)
    assert idx.shape == (100, 5) and not (idx == np.arange(100)[:, None]).any()


def test_weighted_vote_matches_loop_reference():
    rng = np.random.default_rng(2)
    bank, queries = _unit(rng, 200, 16), _unit(rng, 20, 16)
    labels = rng.integers(0, 3, 200)
    scores = knn_classify(bank, labels, queries, 3, k=15, t=0.1)
    sims = queries @ bank.T
    for q in range(20):
        nn = np.argsort(-sims[q])[:15]
        ref = np.zeros(3)
        for j in nn:
            ref[labels[j]] += np.exp(sims[q, j] / 0.1)
        np.testing.assert_allclose(scores[q], ref / ref.sum(), rtol=1e-4)


def test_k_larger_than_bank_is_a_user_error():
    feats = _unit(np.random.default_rng(3), 10, 4)
    with pytest.raises(UserError, match="only 9 samples"):
        search(feats, feats, 10, exclude_self=True)
    assert vote(np.zeros((1, 2)), np.array([[0, 1]]), 2).sum() == pytest.approx(1.0)


@pytest.mark.slow
def test_knn_command_on_random_init_and_a_registry_entry(tmp_path, capsys):
    from ssl_noise.config import PretrainConfig, resolve
    from ssl_noise.pretrain import pretrain

    cfg = resolve(PretrainConfig, dict(dataset="synthetic", image_size=16, epochs=1, batch_size=32, knn_k=10))
    pretrain(cfg, data_root=None, checkpoints=tmp_path, runs=tmp_path.parent / f"{tmp_path.name}-runs",
             show_progress=False)
    for init in ("random", "simclr"):
        with pytest.raises(SystemExit) as e:
            main(["--checkpoints", str(tmp_path), "knn", "--init", init, "--dataset", "synthetic", "--k", "10",
                  "--json"])
        assert e.value.code == 0
        result = json.loads(capsys.readouterr().out)
        assert 0.0 <= result["knn_test_acc"] <= 1.0 and 0.0 <= result["linear_probe_test_acc"] <= 1.0


def test_knn_command_finds_the_file_an_entry_was_pretrained_on(tmp_path, capsys):
    """An entry pretrained on an ``.npz`` path is named after the file's stem (``tiny_gray``), which is no loadable
    spec; without ``--dataset`` the command must evaluate on the file the encoder was trained on."""
    from ssl_noise.config import PretrainConfig, resolve
    from ssl_noise.data.synthetic import make_synthetic
    from ssl_noise.pretrain import pretrain

    data = make_synthetic(n_train=64, n_val=16, n_test=16, num_classes=3, channels=1, size=16, seed=0)
    npz = tmp_path / "tiny_gray.npz"
    np.savez(npz, **{f"{name}_{part}": getattr(split, part) for name, split in data.splits.items()
                     for part in ("images", "labels")})
    cfg = resolve(PretrainConfig, dict(method="rotation", dataset=str(npz), image_size=16, epochs=1, batch_size=32,
                                       knn_k=10))
    root = tmp_path / "checkpoints"
    entry = pretrain(cfg, data_root=None, checkpoints=root, runs=tmp_path / "runs", show_progress=False)
    assert entry.startswith("rotation-resnet18-tiny_gray-")
    with pytest.raises(SystemExit) as e:
        main(["--checkpoints", str(root), "knn", "--init", entry, "--k", "10", "--json"])
    assert e.value.code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dataset"] == "tiny_gray" and 0.0 <= result["knn_test_acc"] <= 1.0
