"""The expert oracle's second half: read the answers (``answers.csv`` of the review page, or a filled-in
``to_review.csv``) and run the round they complete.

Experts answer in batches: a sample answered ``unsure`` or left blank (or left out) stays in the pool, to be
acquired again later; the round merges the others. The file is checked in full before anything is written (known
indices under review, each at most once, a known class index or name), so a bad file changes nothing.
Format: docs/formats.md (refinement session).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from ssl_noise.errors import UserError
from ssl_noise.io import read_csv_strict
from ssl_noise.refine.review import UNSURE
from ssl_noise.refine.run import load_run
from ssl_noise.refine.session import Session, open_session

BLANK, NOT_SURE = -1, -2  # read_answers' codes of the samples that stay in the pool


def read_answers(path: str | Path, session: Session) -> np.ndarray:
    """The expert's label of each sample awaiting review, in their order: a class, ``BLANK`` (-1, unanswered) or
    ``NOT_SURE`` (-2); both of those stay in the pool. UserError on any problem, or when nothing is answered."""
    path, run = Path(path), session.run
    frame = read_csv_strict(path, what="answer file", columns=("index", "label"))
    rows = np.asarray(session.state["pending"]["rows"], np.int64)
    wanted = {int(i): k for k, i in enumerate(run.index[rows])}
    out, seen = np.full(len(rows), BLANK, np.int64), set()
    for line, (raw_index, raw_label) in enumerate(zip(frame["index"].str.strip(), frame["label"].str.strip()), 2):
        if not raw_index.lstrip("+-").isdigit():
            raise UserError(f"{path} line {line}: index {raw_index!r} is not an integer")
        index = int(raw_index)
        if index not in wanted:
            where = ("a training sample of this run" if index not in set(run.index.tolist())
                     else "among the samples under review")
            raise UserError(f"{path} line {line}: index {index} is not {where}")
        if index in seen:
            raise UserError(f"{path} line {line}: index {index} is answered twice")
        seen.add(index)
        if raw_label.lower() == UNSURE and raw_label not in run.class_names:
            out[wanted[index]] = NOT_SURE
            continue
        if raw_label == "":
            continue
        out[wanted[index]] = parse_label(raw_label, run.class_names, run.data.num_classes, f"{path} line {line}", index)
    if (out < 0).all():
        raise UserError(f"{path} answers none of the {len(rows)} samples under review (blank or {UNSURE}); "
                        f"answer at least one with a class index or name")
    return out


def parse_label(raw: str, class_names: List[str], num_classes: int, where: str, index: int) -> int:
    """A class given by name or index (``where`` and ``index`` place the error).

    >>> parse_label("b", ["a", "b"], 2, "f line 2", 7), parse_label("0", ["a", "b"], 2, "f line 2", 7)
    (1, 0)
    """
    names = {n: k for k, n in enumerate(class_names)}
    if raw in names:
        return names[raw]
    if raw.lstrip("+-").isdigit() and 0 <= int(raw) < num_classes:
        return int(raw)
    raise UserError(f"{where}: label {raw!r} of index {index} is not a class "
                    f"(0..{num_classes - 1} or a name: {', '.join(class_names)}; {UNSURE} or blank to skip it)")


def import_review(run_folder: str | Path, answers: str | Path, *, name: Optional[str] = None,
                  data_root: Optional[str] = None, device: str = "cpu", show_progress: bool = True,
                  announce: Callable[[str], None] = lambda message: None) -> tuple:
    """Merge an expert's answers into the session awaiting them and run that round (a fine-tuning of the
    session's ``epochs``, said through ``announce`` before it starts).

    Returns ``(session folder, the round's rounds.csv row, samples left in the pool as unsure, left
    unanswered)``; raises UserError (nothing changed) on a bad file.
    """
    folder = Path(run_folder)
    waiting = sorted(p.parent.name for p in (folder / "refine").glob("*/state.json")
                     if json.loads(p.read_text()).get("pending") and (name is None or p.parent.name == name))
    if not waiting:
        raise UserError(f"no refine session of {folder} awaits answers"
                        f"{f' under the name {name}' if name else ''}; run `ssl-noise refine export` first")
    if len(waiting) > 1:
        raise UserError(f"several refine sessions await answers ({', '.join(waiting)}); pass --name")
    run = load_run(folder, data_root=data_root)
    session = open_session(run, waiting[0], {}, device=device)
    labels = read_answers(answers, session)
    pending, answered = session.state["pending"], labels >= 0
    announce(f"merging {int(answered.sum())} answer(s), then round {session.round + 1} of session {session.name}: "
             f"fine-tuning {session.config.epochs} epoch(s) on the refined labels (the session's --epochs, set by "
             f"`refine export`/`refine run`)")
    row = session.complete_round(np.asarray(pending["rows"], np.int64)[answered],
                                 np.asarray(pending["score"])[answered], labels[answered],
                                 show_progress=show_progress)
    return session.folder, row, int((labels == NOT_SURE).sum()), int((labels == BLANK).sum())

