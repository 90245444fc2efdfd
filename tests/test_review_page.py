"""The expert review page and the answers it saves (ssl_noise/refine/review.py, review.js, answers.py): partial and
unsure answers stay in the pool, an export never overwrites another, files are group-readable, the printed import
command runs as printed, and the page itself works in a real headless Chromium (skipped where none is installed)."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import stat
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ssl_noise.cli import main
from ssl_noise.config import FinetuneConfig, resolve
from ssl_noise.finetune import finetune

CLASSES = ("benign", "cyst", "normal", "tumour")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("image-cache")


@pytest.fixture(autouse=True)
def _cache_env(cache, monkeypatch) -> None:
    monkeypatch.setenv("SSL_NOISE_CACHE", str(cache))


@pytest.fixture(scope="module")
def lnl_run(tmp_path_factory, cache) -> Path:
    """A finished Co-teaching run on a folder of 16-px PNGs in four named classes (42 training images)."""
    root = tmp_path_factory.mktemp("review")
    rng = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        (root / "cells" / name).mkdir(parents=True)
        for i in range(15):
            pixels = np.clip(rng.normal(60 * k + 40, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "cells" / name / f"{name}_{i}.png")
    cfg = {"dataset": f"folder:{root / 'cells'}", "image_size": 16, "batch_size": 16, "precision": "fp32",
           "epochs": 2, "noise_rate": 0.4, "method": "coteaching", "method_args": {"num_gradual": 1},
           "noise_estimate": "oracle"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSL_NOISE_CACHE", str(cache))
        folder, _ = finetune(resolve(FinetuneConfig, cfg), data_root=None, checkpoints=root / "ck",
                             runs=root / "runs", show_progress=False)
    return folder


@pytest.fixture
def run(lnl_run, tmp_path) -> Path:
    return Path(shutil.copytree(lnl_run, tmp_path / lnl_run.name))


def cli(capsys, *args: str) -> tuple:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def export(capsys, run: Path, out: Path, *extra: str) -> tuple:
    code, stdout, err = cli(capsys, "refine", "export", str(run), "--out", str(out), "--budget", "4", "--epochs", "1",
                            *extra)
    assert code == 0, err
    return pd.read_csv(out / "to_review.csv", keep_default_na=False), err


def pool_sources(session: Path, r: int) -> pd.Series:
    return pd.read_csv(session / f"labels_r{r}.csv").set_index("index")["source"]


def test_page_shows_paths_classes_and_large_images(run, tmp_path, capsys) -> None:
    sheet, err = export(capsys, run, tmp_path / "review")
    assert list(sheet.columns[:2]) == ["index", "path"] and len(sheet) == 4
    assert all(p.split("/")[0] in CLASSES and p.endswith(".png") for p in sheet["path"])  # relative to the folder
    page = (tmp_path / "review" / "review.html").read_text()
    assert "http" not in page and page.count('src="data:image/png;base64,') == 4
    assert all(f">{p}</b>" in page for p in sheet["path"]) and all(f"<kbd>{k + 1}</kbd> {c}" in page
                                                                      for k, c in enumerate(CLASSES))
    assert "current: <b>" in page and "predicted: <b>" in page and 'id="save"' in page and "unsure" in page
    import base64
    import io

    png = page.split('src="data:image/png;base64,')[1].split('"')[0]
    assert Image.open(io.BytesIO(base64.b64decode(png))).size == (192, 192)  # 16 px shown at 12x


def test_partial_and_unsure_answers_stay_in_the_pool(run, tmp_path, capsys) -> None:
    sheet, _ = export(capsys, run, tmp_path / "review")
    idx = sheet["index"].tolist()
    (tmp_path / "answers.csv").write_text(f"index,label\n{idx[0]},cyst\n{idx[1]},3\n{idx[2]},unsure\n{idx[3]},\n")
    code, out, err = cli(capsys, "refine", "import", str(run), str(tmp_path / "answers.csv"), "--quiet")
    assert code == 0, err
    assert "2 answers merged; 1 unsure and 1 unanswered stay in the pool" in err
    session = Path(out.strip().splitlines()[-1])
    labels = pd.read_csv(session / "labels_r1.csv").set_index("index")
    assert labels.loc[idx[0], "label"] == 1 and labels.loc[idx[1], "label"] == 3
    assert labels.loc[idx[:2], "source"].tolist() == ["oracle", "oracle"]
    assert labels.loc[idx[2:], "source"].tolist() == ["pool", "pool"]
    assert pd.read_csv(session / "rounds.csv")["budget"].tolist() == [0, 2]
    # a sample left out of the file counts as unanswered too
    sheet, _ = export(capsys, run, tmp_path / "next")
    nxt = sheet["index"].tolist()
    (tmp_path / "some.csv").write_text(f"index,label\n{nxt[0]},normal\n")
    code, _, err = cli(capsys, "refine", "import", str(run), str(tmp_path / "some.csv"), "--quiet")
    assert code == 0 and "1 answers merged; 0 unsure and 3 unanswered" in err, err
    assert (pool_sources(session, 2).loc[nxt[1:]] == "pool").all() and pool_sources(session, 2).loc[nxt[0]] == "oracle"


def snapshot(folder: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_export_never_overwrites_another(run, tmp_path, capsys) -> None:
    export(capsys, run, tmp_path / "review")
    before = snapshot(tmp_path)
    code, out, err = cli(capsys, "refine", "export", str(run), "--out", str(tmp_path / "review"))
    assert code == 2 and "already holds an export (to_review.csv, review.html)" in err and "--out" in err
    assert out == "" and snapshot(tmp_path) == before
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "answers.csv").write_text("index,label\n")
    code, _, err = cli(capsys, "refine", "export", str(run), "--out", str(tmp_path / "done"))
    assert code == 2 and "already holds an export (answers.csv)" in err


def test_files_are_group_readable(run, tmp_path, capsys) -> None:
    old = os.umask(0o022)
    try:
        sheet, _ = export(capsys, run, tmp_path / "review")
        (tmp_path / "answers.csv").write_text(f"index,label\n{sheet['index'][0]},benign\n")
        code, out, err = cli(capsys, "refine", "import", str(run), str(tmp_path / "answers.csv"), "--quiet")
        assert code == 0, err
    finally:
        os.umask(old)
    written = [*(tmp_path / "review").iterdir(), *(run / "refine").rglob("*")]
    assert len(written) > 6
    for path in written:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_the_printed_import_command_runs_as_printed(run, tmp_path, capsys) -> None:
    export(capsys, run, tmp_path / "first")  # two expert sessions await answers: the command needs --name
    sheet, err = export(capsys, run, tmp_path / "second", "--acquisition", "margin")
    command = shlex.split(err.strip().splitlines()[-1])
    assert command[:3] == ["ssl-noise", "refine", "import"] and "--name" in command
    answers = Path(command[4])
    assert answers == tmp_path / "second" / "answers.csv"
    answers.write_text(f"index,label\n{sheet['index'][0]},tumour\n")
    code, out, err = cli(capsys, *command[1:], "--quiet")
    assert code == 0, err
    assert Path(out.strip().splitlines()[-1]).name == "expert-margin-b4-s0"


def _browser():
    """A headless Chromium through chromedriver, or skip when either (or selenium) is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no chromium/chromedriver installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    return chromium, driver, webdriver


def test_review_page_in_headless_chromium(run, tmp_path, capsys) -> None:
    chromium, driver_path, webdriver = _browser()
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    sheet, err = export(capsys, run, tmp_path / "review")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        browser.get((tmp_path / "review" / "review.html").as_uri())
        progress = browser.find_element(By.ID, "progress")
        assert progress.text == "0 / 4 answered (0 unsure)"
        cards = browser.find_elements(By.CSS_SELECTOR, ".card")
        assert len(cards) == 4 and "current" in cards[0].get_attribute("class")
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys("2")                                  # image 1 by key: class 2 = cyst; moves on to image 2
        assert "current" in cards[1].get_attribute("class")
        cards[1].find_element(By.CSS_SELECTOR, 'button[data-label="tumour"]').click()   # image 2 by click
        body.send_keys("u")                                  # image 3: unsure; image 4 stays unanswered
        assert progress.text == "3 / 4 answered (1 unsure)"
        assert cards[0].find_element(By.CSS_SELECTOR, ".answer").text == "answer: cyst"
        browser.find_element(By.ID, "save").click()
        saved = downloads / "answers.csv"
        deadline = time.time() + 20
        while not saved.is_file() and time.time() < deadline:
            time.sleep(0.2)
        assert saved.is_file(), list(downloads.iterdir())
    finally:
        browser.quit()
    answers = pd.read_csv(saved, dtype=str, keep_default_na=False)
    idx = sheet["index"].tolist()
    assert answers["index"].astype(int).tolist() == idx
    assert answers["label"].tolist() == ["cyst", "tumour", "unsure", ""]
    code, out, err = cli(capsys, "refine", "import", str(run), str(saved), "--quiet")
    assert code == 0, err
    sources = pool_sources(Path(out.strip().splitlines()[-1]), 1)
    assert sources.loc[idx[:2]].tolist() == ["oracle", "oracle"] and sources.loc[idx[2:]].tolist() == ["pool", "pool"]
