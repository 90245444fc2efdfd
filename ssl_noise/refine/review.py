"""The expert oracle's first half: acquire the next batch and write a review page for a person to answer.

``to_review.csv`` holds one row per sample (answer in its ``label`` column: a class, ``unsure``, or blank);
``review.html`` is the same batch as a self-contained page (no server, images inline as PNG, upscaled to about
200 px so each can be judged): each image with its file path (folder and CSV data) or index, its current and
predicted label, one button or key (1-9) per class, "unsure", a progress count and a button that saves
``answers.csv`` (``index,label``). Style and script (``review.css``, ``review.js``) ship with the package. The
answers come back through :mod:`ssl_noise.refine.answers`. Format: docs/formats.md (refinement session).
"""

from __future__ import annotations

import base64
import html
import io as _io
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd
from PIL import Image

from ssl_noise import io
from ssl_noise.errors import UserError
from ssl_noise.refine.run import LNLRun, load_run
from ssl_noise.refine.session import Session, open_session, write_csv

#: Files of an export (and the answers saved beside them); a folder holding one is refused: an export never
#: overwrites another.
EXPORT_FILES = ("to_review.csv", "review.html", "answers.csv")
DISPLAY_PX = 192   # images smaller than this are upscaled (nearest neighbour, whole multiples) to at least it
UNSURE = "unsure"  # the answer that leaves a sample in the pool


def export_review(run_folder: str | Path, out: str | Path, *, given: Dict[str, Any], name: Optional[str] = None,
                  data_root: Optional[str] = None, device: str = "cpu") -> Session:
    """Acquire the next batch for an expert (or re-export the batch awaiting review) and write
    ``out/to_review.csv`` and ``out/review.html``; a folder holding an earlier export is refused."""
    if given.get("budget") == 0:
        raise UserError("--budget 0 is the control of simulated sessions (refine run); an expert needs samples")
    out = Path(out)
    taken = [f for f in EXPORT_FILES if (out / f).exists()]
    if taken:
        raise UserError(f"{out} already holds an export ({', '.join(taken)}); an export never replaces another: "
                        f"pass another --out")
    run = load_run(run_folder, data_root=data_root)
    name = name or _matching_expert_session(run, given)
    session = open_session(run, name, {**given, "oracle": "expert"}, device=device)
    pending = session.state["pending"]
    if pending is None:
        session.check_budget(1)
        if session.round < 0:
            session.evaluate_lnl()
        picked = session.acquire()
        pending = {"rows": picked["rows"].tolist(), "score": picked["score"].tolist(),
                   "probs": np.round(picked["probs"], 6).tolist()}
    write_review(out, session, pending)
    session.state["pending"] = pending
    session.write_state()
    return session


def _matching_expert_session(run: LNLRun, given: Dict[str, Any]) -> Optional[str]:
    """Without --name, export continues the one expert session whose settings agree with every option given."""
    found = []
    for path in sorted((run.folder / "refine").glob("*/state.json")):
        config = json.loads(path.read_text())["config"]
        if config["oracle"] == "expert" and all(v is None or config[k] == v for k, v in given.items()):
            found.append(path.parent.name)
    if len(found) > 1:
        raise UserError(f"several expert refine sessions match ({', '.join(found)}); pass --name")
    return found[0] if found else None


def write_review(out: Path, session: Session, pending: Dict[str, list]) -> None:
    """``to_review.csv`` (fill the ``label`` column; class index or name, ``unsure`` or blank) and ``review.html``."""
    frame = review_table(session, pending)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "to_review.csv", frame)
    rows = np.asarray(pending["rows"], np.int64)
    images = [session.run.data.train.images[r] for r in rows]
    with io.atomic_path(out / "review.html") as tmp:
        tmp.write_text(review_page(session, frame, images), encoding="utf-8")


def review_table(session: Session, pending: Dict[str, list]) -> pd.DataFrame:
    """One row per sample under review: its file (folder and CSV data), current and predicted label and name,
    their probabilities, the score."""
    run, names = session.run, session.run.class_names
    rows, probs = np.asarray(pending["rows"], np.int64), np.asarray(pending["probs"], np.float64)
    pred, given = probs.argmax(axis=1), run.given[rows]
    frame = pd.DataFrame({"index": run.index[rows], "current_label": given,
                          "current_name": [names[k] for k in given], "predicted_label": pred,
                          "predicted_name": [names[k] for k in pred],
                          "p_current": np.round(probs[np.arange(len(rows)), given], 4),
                          "p_predicted": np.round(probs.max(axis=1), 4),
                          "score": np.round(pending["score"], 6), "label": ""})
    paths = getattr(run.data.train, "paths", None)
    if paths is not None:
        frame.insert(1, "path", [shown_path(paths[r], run.data.source) for r in rows])
    return frame


def shown_path(path: str, source: Optional[Path]) -> str:
    """A file's path relative to the data's folder (a folder spec, or a manifest's folder) when under it.

    >>> shown_path("/d/set/a/1.png", Path("/d/set")), shown_path("/d/x/1.png", Path("/d/set/m.csv"))
    ('a/1.png', '/d/x/1.png')
    """
    if source is None:
        return path
    base = source if source.suffix == "" else source.parent
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return path


def review_page(session: Session, frame: pd.DataFrame, images: List[np.ndarray]) -> str:
    """The refinement round's review page: :func:`page` with the command that imports its answers."""
    run = session.run
    title = f"{run.folder.name} · {session.name} · round {session.round + 1}"
    how = (f"{html.escape(title)}, acquisition {html.escape(session.config.acquisition)}. Unanswered and unsure "
           f"images stay in the pool. Then save <code>answers.csv</code> (into this page's folder) and run "
           f"<code>ssl-noise refine import {html.escape(_quote(str(run.folder.resolve())))} answers.csv --name "
           f"{html.escape(_quote(session.name))}</code> from there.")
    return page(title, how, run.class_names, frame, images,
                storage=f"ssl-noise/{run.folder.name}/{session.name}/r{session.round + 1}")


def page(title: str, how: str, names: List[str], frame: pd.DataFrame, images: List[np.ndarray], *,
         storage: str) -> str:
    """A self-contained review page: instructions (``how``, HTML), one card per row of ``frame`` (``index``,
    ``current_name``, ``predicted_name``, ``p_predicted``, optionally ``path``; ``predicted_name`` may be blank),
    the samples as JSON for the script, which keeps the answers in the browser under ``storage`` and saves them
    as ``answers.csv`` (``index,label``)."""
    keys = "".join(f'<button type="button" data-label="{html.escape(n)}" title="key {k + 1}">'
                   f'{f"<kbd>{k + 1}</kbd> " if k < 9 else ""}{html.escape(n)}</button>' for k, n in enumerate(names))
    keys += (f'<button type="button" data-label="{UNSURE}" class="unsure" title="key 0 or u"><kbd>0</kbd> '
             f'{UNSURE}</button>')
    cards, samples = [], []
    for i, (image, row) in enumerate(zip(images, frame.to_dict("records"))):
        where = row.get("path") or f"index {row['index']}"
        predicted = (f'<span>predicted: <b>{html.escape(row["predicted_name"])}</b> (p={row["p_predicted"]:.2f})'
                     f'</span>' if row.get("predicted_name") else "")
        current = (f'<span>current: <b>{html.escape(row["current_name"])}</b></span>' if row.get("current_name")
                   else "")
        cards.append(f'<figure class="card" id="s{i}" data-i="{i}"><img src="data:image/png;base64,{_png(image)}" '
                     f'alt="{html.escape(where)}"><figcaption><b class="where">{html.escape(where)}</b>'
                     f'<span>index {row["index"]}</span>{current}{predicted}</figcaption>'
                     f'<div class="keys">{keys}</div><div class="answer"></div></figure>')
        samples.append({"index": int(row["index"]), "where": where})
    data = {"classes": list(names), "unsure": UNSURE, "samples": samples, "storage": storage}
    payload = json.dumps(data).replace("</", "<\\/")
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>review: {html.escape(title)}"
            f"</title><style>{_asset('review.css')}</style></head><body>\n<header><h1>{len(frame)} images to review"
            f"</h1><p>Click a class under each image, or press its key (1-9; 0 or u: unsure) for the highlighted one "
            f"(arrows move). {how}</p><p><span id=\"progress\"></span> <button type=\"button\" id=\"save\">save "
            f"answers.csv</button></p></header>\n<main class=\"grid\">\n" + "\n".join(cards) + "\n</main>\n"
            f"<script type=\"application/json\" id=\"review-data\">{payload}</script>\n"
            f"<script>{_asset('review.js')}</script>\n</body></html>\n")


def _quote(text: str) -> str:
    """``text`` as one shell word (what the page and the CLI hint print)."""
    import shlex

    return shlex.quote(text)


def _asset(name: str) -> str:
    """``review.css`` or ``review.js`` as shipped with the package, to inline into the page."""
    return resources.files("ssl_noise.refine").joinpath(name).read_text(encoding="utf-8")


def _png(image: np.ndarray) -> str:
    """A (H, W, C) uint8 image as base64 PNG (grey when C is 1), upscaled by a whole factor (nearest neighbour:
    every pixel stays a sharp square) to at least ``DISPLAY_PX`` on its longer side.

    >>> from PIL import Image as I
    >>> I.open(_io.BytesIO(base64.b64decode(_png(np.zeros((28, 28, 1), np.uint8))))).size
    (196, 196)
    """
    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    factor = max(1, math.ceil(DISPLAY_PX / max(img.size)))
    if factor > 1:
        img = img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)
    buf = _io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
