"""Encoder registry: round trip, plain-torchvision strict load, tamper detection, resolution, atomicity, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest
import safetensors.torch
import torch
import torchvision
from torch import nn

from ssl_noise import registry
from ssl_noise.backbones import build_backbone
from ssl_noise.cli import main
from ssl_noise.errors import UserError
from ssl_noise.io import file_digest


def _meta(**overrides: Any) -> Dict[str, Any]:
    meta = {"method": "simclr", "method_config": {"temperature": 0.5}, "backbone": "resnet18", "stem": "cifar",
            "feat_dim": 512, "dataset": "bloodmnist", "image_size": 28, "channels": 3,
            "normalisation": {"mean": [0.5] * 3, "std": [0.5] * 3}, "epochs": 1, "batch_size": 8,
            "optimizer": {"name": "sgd", "lr": 0.1}, "seed": 0, "metrics": {"knn_acc": 0.5}}
    meta.update(overrides)
    return meta


def _encoder(seed: int = 0, channels: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return build_backbone("resnet18", stem="cifar", in_channels=channels)[0]


def _save(root: Path, seed: int = 0, **overrides: Any) -> str:
    meta = _meta(seed=seed, **overrides)
    return registry.save_entry(root, _encoder(seed, meta["channels"]), meta, config={"lr": 0.1})


def _cli(capsys: pytest.CaptureFixture, root: Path, *args: str) -> tuple:
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoints", str(root), *args])
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_round_trip(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 0, "loss": 1.0}\n')
    wrapped = nn.Module()
    wrapped.backbone = _encoder()  # keys "backbone.conv1.weight", ...: the prefix is stripped
    numpy_norm = {"mean": np.full(3, 0.25, dtype=np.float32), "std": np.full(3, 0.5, dtype=np.float32)}
    entry_id = registry.save_entry(tmp_path, wrapped, _meta(normalisation=numpy_norm), config={"lr": 0.1},
                                   train_log_path=log, extra_files={"permutations.json": np.eye(2, dtype=int)})
    folder = tmp_path / entry_id
    meta = json.loads((folder / "meta.json").read_text())
    assert entry_id == f"simclr-resnet18-bloodmnist-e1-s0-{meta['sha256'][:8]}" == meta["id"]
    assert meta["sha256"] == file_digest(folder / "encoder.safetensors")
    assert meta["normalisation"] == {"mean": [0.25] * 3, "std": [0.5] * 3}  # numbers, not "0.25" strings
    assert json.loads((folder / "permutations.json").read_text()) == [[1, 0], [0, 1]]
    assert meta["schema_version"] == 1 and meta["versions"]["torch"] and "created_at" in meta and "git" in meta
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "encoder.safetensors", "meta.json",
                                                        "permutations.json", "train_log.jsonl"]
    assert [m["id"] for m in registry.list_entries(tmp_path)] == [entry_id]
    for ref in (entry_id, entry_id[:20], "simclr"):
        assert registry.resolve(tmp_path, ref) == entry_id
    model, loaded_meta = registry.load_encoder(tmp_path, "simclr")
    assert loaded_meta == meta
    expected = wrapped.backbone.state_dict()
    assert model.state_dict().keys() == expected.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    # Saving the same weights again writes nothing and returns the existing id.
    assert registry.save_entry(tmp_path, wrapped, _meta(), config={}) == entry_id
    assert json.loads((folder / "meta.json").read_text())["created_at"] == meta["created_at"]


def test_plain_torchvision_loads_strictly(tmp_path: Path) -> None:
    """No ssl-noise loader: torchvision + safetensors + the surgery meta.json records."""
    entry_id = _save(tmp_path, channels=1)
    meta = json.loads((tmp_path / entry_id / "meta.json").read_text())
    state = safetensors.torch.load_file(tmp_path / entry_id / "encoder.safetensors")
    plain = torchvision.models.resnet18()
    plain.fc = nn.Identity()
    assert meta["stem"] == "cifar"
    plain.conv1 = nn.Conv2d(meta["channels"], 64, kernel_size=3, stride=1, padding=1, bias=False)
    plain.maxpool = nn.Identity()
    plain.load_state_dict(state, strict=True)
    ours, _ = registry.load_encoder(tmp_path, entry_id)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), ours.eval()(x))


def test_tampered_and_truncated_weights_are_refused(tmp_path: Path) -> None:
    entry_id = _save(tmp_path)
    weights = tmp_path / entry_id / "encoder.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256 mismatch: the file was changed or truncated"):
        registry.load_encoder(tmp_path, entry_id)
    ok, message = registry.verify_entry(tmp_path, entry_id)
    assert not ok and "sha256 mismatch" in message
    weights.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(UserError, match="sha256 mismatch"):
        registry.load_encoder(tmp_path, entry_id)
    with pytest.raises(UserError, match="cannot be read as safetensors"):
        registry.load_encoder(tmp_path, entry_id, verify=False)


def test_resolution_errors_and_filters(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="empty; create one with: ssl-noise pretrain --method simclr"):
        registry.resolve(tmp_path, "simclr")
    old = _save(tmp_path, seed=0, channels=1)
    new = _save(tmp_path, seed=1)
    other = _save(tmp_path, seed=2, method="rotation", dataset="pathmnist")
    assert registry.resolve(tmp_path, "simclr") == new  # newest
    assert registry.resolve(tmp_path, "simclr", channels=1) == old
    assert registry.resolve(tmp_path, "rotation", dataset="pathmnist") == other
    with pytest.raises(UserError, match="ambiguous.*" + old):
        registry.resolve(tmp_path, "simclr-resnet18-bloodmnist-e1-s")
    with pytest.raises(UserError, match=f"no entry matches 'moco'.*{new}.*pretrain --method moco"):
        registry.resolve(tmp_path, "moco")
    with pytest.raises(UserError, match="no simclr encoder .* dataset=pathmnist"):
        registry.resolve(tmp_path, "simclr", dataset="pathmnist")
    with pytest.raises(UserError, match="is a method name"):
        registry.remove_entry(tmp_path, "rotation")
    assert registry.remove_entry(tmp_path, other[:12]) == other
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([old, new])


def test_bad_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing required keys: seed"):
        registry.save_entry(tmp_path, _encoder(), {k: v for k, v in _meta().items() if k != "seed"}, config={})
    with pytest.raises(UserError, match="do not match resnet18"):
        registry.save_entry(tmp_path, _encoder(), _meta(channels=1), config={})
    with_fc = torchvision.models.resnet18()
    with pytest.raises(UserError, match="classifier weights"):
        registry.save_entry(tmp_path, with_fc, _meta(stem="imagenet"), config={})
    with pytest.raises(UserError, match="plain '<name>.json'"):
        registry.save_entry(tmp_path, _encoder(), _meta(), config={}, extra_files={"../x.json": 1})
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_write_json(path, obj):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(registry.entries, "write_json", broken_write_json)
    with pytest.raises(RuntimeError, match="disk on fire"):
        _save(tmp_path)
    assert list(tmp_path.iterdir()) == []  # no entry, no hidden temp folder


def test_export_loads_with_weights_only(tmp_path: Path) -> None:
    root, out = tmp_path / "ckpt", tmp_path / "out" / "encoder.pt"
    entry_id = _save(root)
    registry.export_entry(root, entry_id, out)
    state = torch.load(out, weights_only=True)
    plain = torchvision.models.resnet18()
    plain.fc, plain.maxpool = nn.Identity(), nn.Identity()
    plain.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    plain.load_state_dict(state, strict=True)
    # The printed instructions are runnable as written.
    scope: Dict[str, Any] = {}
    exec(registry.export_instructions(registry.read_meta(root, entry_id), out), scope)
    assert torch.equal(scope["model"].conv1.weight, state["conv1.weight"])
    with pytest.raises(UserError, match="already exists"):
        registry.export_entry(root, entry_id, out)


def test_cli_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "ckpt"
    assert _cli(capsys, root, "registry", "ls")[0] == 0
    a, b = _save(root, seed=0), _save(root, seed=1)

    code, out, _ = _cli(capsys, root, "registry", "ls")
    assert code == 0 and out.splitlines()[0].split() == ["id", "method", "backbone", "stem", "dataset", "epochs",
                                                         "knn_acc", "created"]
    assert out.splitlines()[1].startswith(b) and a in out and "0.5000" in out
    code, out, _ = _cli(capsys, root, "registry", "ls", "--json")
    assert code == 0 and [m["id"] for m in json.loads(out)] == [b, a]

    code, out, err = _cli(capsys, root, "registry", "show", "simclr")
    assert code == 0 and f'"id": "{b}"' in out and f"using {b}" in err
    code, _, err = _cli(capsys, root, "registry", "show", "nope")
    assert code == 2 and err.startswith("error: no entry matches 'nope'") and err.count("\n") == 1

    code, out, _ = _cli(capsys, root, "registry", "export", a, "--out", str(tmp_path / "a.pt"))
    assert code == 0 and "weights_only=True" in out and (tmp_path / "a.pt").exists()

    assert _cli(capsys, root, "registry", "verify")[0] == 0
    weights = root / a / "encoder.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    code, out, err = _cli(capsys, root, "registry", "verify")
    assert code == 2 and f"FAIL {a}: " in out and f"OK   {b}: " in out and "1 of 2" in err
    assert _cli(capsys, root, "registry", "verify", a)[0] == 2
    assert _cli(capsys, root, "registry", "verify", b)[0] == 0

    code, _, err = _cli(capsys, root, "registry", "rm", a)  # pytest's stdin is not a terminal
    assert code == 2 and "without --yes" in err and (root / a).exists()
    code, out, _ = _cli(capsys, root, "registry", "rm", a, "--yes")
    assert code == 0 and out.strip() == f"removed {a}" and not (root / a).exists()


def test_cli_warns_about_a_broken_folder_on_one_line_every_time(tmp_path: Path, capsys) -> None:
    root = tmp_path / "ckpt"
    good = _save(root)
    broken = root / "simclr-resnet18-bloodmnist-e1-s9-deadbeef"
    broken.mkdir()
    (broken / "meta.json").write_text("{not json")
    for _ in range(2):  # our warnings are shown each time, not once per source line
        code, out, err = _cli(capsys, root, "registry", "ls")
        assert code == 0 and good in out and broken.name not in out
        assert err.startswith(f"warning: skipping registry folder {broken}: ") and err.count("\n") == 1
