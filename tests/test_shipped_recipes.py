"""A non-editable install finds the repository's recipes and sweep specs from any folder.

Before the recipes shipped with the package, ``pip install .`` run from an empty folder silently trained with the
dataclass defaults instead of ``pretrain/<dataset>/<method>.yaml`` and ``finetune/<dataset>/default.yaml``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RESOLVE = """
import json, ssl_noise
from ssl_noise.config import to_dict
from ssl_noise.finetune import resolve_config as finetune_config
from ssl_noise.pretrain import resolve_config as pretrain_config
from ssl_noise.settings import shipped_file
from ssl_noise import demo, sweep
pre, pre_file = pretrain_config({"method": "simclr", "dataset": "bloodmnist"})
fine, fine_file = finetune_config({"dataset": "bloodmnist"})
probe, _ = finetune_config({"dataset": "bloodmnist", "freeze": True})
print(json.dumps({"package": ssl_noise.__file__, "pretrain": to_dict(pre), "finetune": to_dict(fine),
                  "probe": to_dict(probe), "recipes": [str(pre_file), str(fine_file)],
                  "sweep": str(shipped_file("finetune/sweeps/demo.yaml")),
                  "found": [str(sweep.find_file(name)) for name in (demo.PRETRAIN_RECIPE, demo.SWEEP_SPEC,
                                                                     "finetune/bloodmnist/linear_probe.yaml")]}))
"""


def _copy_checkout(dest: Path) -> None:
    """What a build reads: metadata, the package (its _shipped links kept as links) and the recipe folders."""
    ignore = shutil.ignore_patterns("__pycache__", "studies", "*.egg-info", "build")
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        dest.mkdir(exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    for name in ("ssl_noise", "pretrain", "finetune"):
        shutil.copytree(ROOT / name, dest / name, symlinks=True, ignore=ignore)


def _resolve(cwd: Path, pythonpath: str) -> dict:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    out = subprocess.run([sys.executable, "-c", RESOLVE], cwd=cwd, env=env, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_recipe_lookup_prefers_the_working_folder(tmp_path, monkeypatch):
    from ssl_noise.settings import recipe_path, shipped_file

    assert recipe_path("pretrain", "bloodmnist", "simclr").read_text() == \
        (ROOT / "pretrain/bloodmnist/simclr.yaml").read_text()
    assert shipped_file("finetune/sweeps/demo.yaml") is not None
    assert recipe_path("pretrain", "nosuchdata", "simclr") is None
    own = tmp_path / "pretrain" / "bloodmnist" / "simclr.yaml"
    own.parent.mkdir(parents=True)
    own.write_text("epochs: 3\n")
    monkeypatch.chdir(tmp_path)
    assert recipe_path("pretrain", "bloodmnist", "simclr") == own


@pytest.mark.slow
def test_installed_package_resolves_the_checkouts_recipes(tmp_path):
    target, empty, source = tmp_path / "site", tmp_path / "empty", tmp_path / "source"
    empty.mkdir()
    _copy_checkout(source)  # setuptools builds in the source tree: keep build/ and *.egg-info out of the checkout
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "--target", str(target), str(source)], check=True, cwd=tmp_path, capture_output=True)
    installed = _resolve(empty, str(target))
    assert Path(installed["package"]).resolve().is_relative_to(target.resolve())
    assert all(str(target) in path for path in installed["recipes"] + [installed["sweep"]] + installed["found"])
    checkout = _resolve(ROOT, str(ROOT))
    for key in ("pretrain", "finetune", "probe"):
        assert installed[key] == checkout[key], key
