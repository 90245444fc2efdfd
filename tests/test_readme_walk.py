"""The README's "Your own data" walk runs as typed, top to bottom, in a fresh folder: every command of the block
between the ``own-data-walk`` marker and its closing fence goes through bash and the installed ``ssl-noise``, on a
folder of small PNGs (the only substitutions: where the data lives, and the expert's clicks, which write a partial
answers file as the review page's save button would)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"
EXPERT = ("# ... answer some images",
          f"{sys.executable} -c \"import pandas as pd; t = pd.read_csv('review/to_review.csv'); "
          "pd.DataFrame({'index': t['index'][:4], 'label': ['unsure', '', 0, 1]})"
          ".to_csv('review/answers.csv', index=False)\"")


def walk_block(marker: str = "own-data-walk") -> str:
    """The commands of the README block after the ``marker`` comment."""
    text = README.read_text()
    start = text.index(f"<!-- {marker}")
    match = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    assert match, "the own-data walk block is missing from the README"
    return match.group(1)


def _folder(root: Path, per_class: int = 100, size: int = 16) -> Path:
    """Three classes of ``size``-px PNGs whose colour says the class (plus noise): a set SimCLR can learn a bit."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(("basophil", "eosinophil", "lymphocyte")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3)) + 60
            base[..., k] += 120
            image = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / name / f"{i:03d}.png")
    return root


def run_walk(tmp_path: Path, marker: str, expert: tuple) -> subprocess.CompletedProcess:
    """The README block after ``marker`` through bash in ``tmp_path``, on a fresh PNG folder, with the expert's
    clicks (the line starting ``expert[0]``) replaced by ``expert[1]``; asserts it exits 0."""
    data = _folder(tmp_path / "my_cells")
    script = walk_block(marker).replace("DATA=folder:/data/my_cells", f"DATA=folder:{data}")
    lines = [expert[1] if line.startswith(expert[0]) else line for line in script.splitlines()]
    assert any(line == expert[1] for line in lines), f"the expert step of the {marker} block moved"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSL_NOISE_")}
    env.update(SSL_NOISE_CACHE=str(tmp_path / "cache"), PYTHONWARNINGS="ignore")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ssl-noise") is None, reason="needs the installed ssl-noise command")
def test_the_own_data_walk_runs_as_typed(tmp_path) -> None:
    done = run_walk(tmp_path, "own-data-walk", EXPERT)
    assert "16x16 px" in done.stdout and "no ground truth: scores only" in done.stdout
    assert "answers merged" in done.stdout + done.stderr
    assert (tmp_path / "review" / "review.html").is_file() and (tmp_path / "my_demo" / "report.md").is_file()


TEST_EXPERT = ("# ... label the test sample",
               f"{sys.executable} -c \"import pandas as pd; t = pd.read_csv('advice/test_review/to_review.csv'); "
               "pd.DataFrame({'index': t['index'], 'label': t['path'].str.split('/').str[0]})"
               ".to_csv('advice/test_review/answers.csv', index=False)\"")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ssl-noise") is None, reason="needs the installed ssl-noise command")
def test_the_advise_walk_runs_as_typed(tmp_path) -> None:
    """The expert labels each test image by its folder (these PNGs' labels are right): the rescored page then
    says the pilot was scored on the expert's answers."""
    done = run_walk(tmp_path, "advise-walk", TEST_EXPERT)
    assert done.stdout.count("advise finished in") == 2
    assert "test labels answers" in done.stdout
    page = (tmp_path / "advice" / "advice.md").read_text()
    assert "## Recommendation" in page and "relabelled by an expert" in page
