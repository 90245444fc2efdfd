"""The expert oracle's first half: acquire the next batch and write a review sheet for a person to fill in.

``to_review.csv`` holds one row per sample (answer in its ``label`` column); ``to_review.html`` is a self-contained
contact sheet of the same samples (images inline as PNG, style from ``review.css`` shipped with the package).
The answers come back through :mod:`ssl_noise.refine.answers`. Format: docs/formats.md (refinement session).
"""

from __future__ import annotations

import base64
import html
import io as _io
import json
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


def export_review(run_folder: str | Path, out: str | Path, *, given: Dict[str, Any], name: Optional[str] = None,
                  data_root: Optional[str] = None, device: str = "cpu") -> Session:
    """Acquire the next batch for an expert (or re-export the batch awaiting review) and write
    ``out/to_review.csv`` and ``out/to_review.html``."""
    if given.get("budget") == 0:
        raise UserError("--budget 0 is the control of simulated sessions (refine run); an expert needs samples")
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
    write_review(Path(out), session, pending)
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
    """``to_review.csv`` (fill the ``label`` column; class index or name) and the contact sheet."""
    frame = review_table(session, pending)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "to_review.csv", frame)
    rows = np.asarray(pending["rows"], np.int64)
    images = [session.run.data.train.images[r] for r in rows]
    with io.atomic_path(out / "to_review.html") as tmp:
        tmp.write_text(_sheet(out, session, frame, images))


def review_table(session: Session, pending: Dict[str, list]) -> pd.DataFrame:
    """One row per sample under review: current and predicted label and name, their probabilities, the score."""
    run, names = session.run, session.run.class_names
    rows, probs = np.asarray(pending["rows"], np.int64), np.asarray(pending["probs"], np.float64)
    pred, given = probs.argmax(axis=1), run.given[rows]
    return pd.DataFrame({"index": run.index[rows], "current_label": given,
                         "current_name": [names[k] for k in given], "predicted_label": pred,
                         "predicted_name": [names[k] for k in pred],
                         "p_current": np.round(probs[np.arange(len(rows)), given], 4),
                         "p_predicted": np.round(probs.max(axis=1), 4),
                         "score": np.round(pending["score"], 6), "label": ""})


def _sheet(out: Path, session: Session, frame: pd.DataFrame, images: List[np.ndarray]) -> str:
    """The HTML contact sheet: instructions, the class legend, one captioned image per row of ``frame``."""
    run, names = session.run, session.run.class_names
    cells = []
    for image, row in zip(images, frame.to_dict("records")):
        cells.append(f'<figure><img src="data:image/png;base64,{_png(image)}" '
                     f'alt="index {row["index"]}"><figcaption><b>index {row["index"]}</b><br>current: '
                     f'{html.escape(row["current_name"])} ({row["current_label"]})<br>predicted: '
                     f'{html.escape(row["predicted_name"])} ({row["predicted_label"]}, p={row["p_predicted"]:.2f})'
                     f'<br>score {row["score"]:.4g}</figcaption></figure>')
    legend = ", ".join(f"{k} = {html.escape(n)}" for k, n in enumerate(names))
    title = html.escape(run.folder.name)
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>ssl-noise review: {title}</title>"
            f"<style>{_style()}</style></head><body>\n<h1>{len(frame)} samples to review</h1><p>Run {title}, "
            f"refine session {html.escape(session.name)}, round {session.round + 1}, acquisition "
            f"{session.config.acquisition}. Write the right class in the <code>label</code> column of to_review.csv "
            f"(index or name), then <code>ssl-noise refine import {html.escape(str(run.folder))} "
            f"{html.escape(str(out / 'to_review.csv'))}</code>.</p>"
            f"<p>Classes: {legend}</p>\n<div class=\"grid\">\n" + "\n".join(cells) + "\n</div></body></html>\n")


def _style() -> str:
    """``review.css`` (one rule per line in the package) as the sheet embeds it: on one line.

    >>> _style().startswith("body{") and "\\n" not in _style()
    True
    """
    text = resources.files("ssl_noise.refine").joinpath("review.css").read_text(encoding="utf-8")
    return "".join(line.strip() for line in text.splitlines())


def _png(image: np.ndarray) -> str:
    """A (H, W, C) uint8 image as base64 PNG (grey when C is 1)."""
    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    buf = _io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
