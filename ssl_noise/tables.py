"""Results tables as the figures and reports read them: loaded, checked, de-duplicated, labelled and summarised.

A table is ``runs/results.csv`` or a sweep's ``runs/sweeps/<name>.csv`` (columns: docs/formats.md); figures
(:mod:`ssl_noise.plots`) and reports (:mod:`ssl_noise.report`) share these steps so they always agree.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from ssl_noise.errors import UserError
from ssl_noise.runs import detection_of, read_results

DEFAULT_METRIC = "test_acc"
#: Keys of ``metrics.json["detection"]`` (ssl_noise.metrics.detection_report) plotted.
DETECTION_KEYS = ("precision", "recall", "f1", "auroc", "ap", "kept_purity", "clean_kept")
#: Columns a results table needs for the curves (all written by ssl_noise.finetune.run.result_row).
REQUIRED = ("run_id", "encoder_id", "method", "protocol", "noise_type", "noise_rate", "noise_seed", "seed")
#: Columns that must match for two runs to differ only in their initialisation (the pairing key of the report).
CONTEXT = ("dataset", "n_train", "image_size", "protocol", "method", "noise_type", "noise_rate", "noise_mode",
           "clean_val", "epochs", "select_metric")
#: The ``-<sha256[:8]>`` that :func:`ssl_noise.registry.make_id` ends an entry id with (matched here rather than
#: imported: the registry module loads torch, which figures and reports do not need).
ENTRY_HASH = re.compile(r"-[0-9a-f]{8}$")


def load_results(source) -> "pd.DataFrame":  # noqa: F821
    """A results table from a path (read under finetune's lock), several paths or a DataFrame; checked and
    de-duplicated by run id.

    Several tables are concatenated: the pieces of one study run where no runs folder is shared (two clusters,
    or a session whose runs folder is gone but whose committed table is not).
    """
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        frame = source.copy()
        _check_columns(frame)
    else:
        paths = [source] if isinstance(source, (str, Path)) else list(source)
        if not paths:
            raise UserError("no results table given")
        frame = pd.concat([_read_table(Path(path)) for path in paths], ignore_index=True, sort=False)
    return frame.drop_duplicates("run_id", keep="last").reset_index(drop=True)


def _read_table(path: Path) -> "pd.DataFrame":  # noqa: F821
    """One results.csv, with the detection columns of the run folders next to it (where there are any)."""
    import pandas as pd

    if not path.is_file():
        raise UserError(f"results table {path} does not exist (ssl-noise finetune/sweep write runs/results.csv)")
    try:
        frame = read_results(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read results table {path}: {str(e).strip().splitlines()[0]}") from None
    _check_columns(frame, path)
    for runs in (path.parent, path.parent.parent):  # runs/results.csv or runs/sweeps/<name>.csv
        if any((runs / str(r)).is_dir() for r in frame["run_id"]):
            return add_detection(frame, runs)
    return frame


def _check_columns(frame, path: Path | None = None) -> None:
    """Exit 2 on a table that is not an ssl-noise results table or is empty, naming the file where there is one."""
    where = f" {path}" if path else ""
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise UserError(f"results table{where} lacks column(s) {', '.join(missing)}; "
                        "is it a results.csv of ssl-noise?")
    if frame.empty:
        raise UserError(f"results table{where} has no rows")


def add_detection(frame, runs: Path):
    """Add ``detect_<key>`` columns from each run's ``metrics.json["detection"]`` (selecting methods write it;
    results.csv does not carry it), unless the table has them already.

    """
    values = {}
    found = detection_of(runs, [str(r) for r in frame["run_id"]])
    for i, run_id in enumerate(frame["run_id"]):
        detection = found[str(run_id)]
        for key in DETECTION_KEYS:
            if isinstance(detection, dict) and isinstance(detection.get(key), (int, float)):
                values.setdefault(f"detect_{key}", {})[i] = float(detection[key])
    frame = frame.copy()
    for column, by_row in values.items():
        if column not in frame.columns:
            frame[column] = frame.index.map(by_row)
    return frame


def init_labels(encoder_ids: Sequence[str]) -> dict:
    """Short legend names: ``simclr-resnet18-bloodmnist-e5-s0-1a2b3c4d`` -> ``simclr`` (full id if ambiguous)."""
    ids = sorted({str(i) for i in encoder_ids})
    short = {i: i.split("-")[0] for i in ids}
    counts = {s: sum(v == s for v in short.values()) for s in short.values()}
    return {i: short[i] if counts[short[i]] == 1 else i for i in ids}


def pool_reruns(frame):
    """Give registry entries that differ only in their content hash one encoder id: the id without the hash.

    ``simclr-resnet18-bloodmnist-e20-s0-5c88f352`` and ``...-0ad3dce3`` (method, backbone, data, epochs and seed
    alike) become ``simclr-resnet18-bloodmnist-e20-s0``. Meant for re-runs of one pretraining command whose
    weights differ (another machine's bf16 kernels, a registry that was lost and rebuilt): pooled, their runs form
    one row and one curve, and the spread over seeds then includes the pretraining run. The id does not show
    method options (``--set method_args...``), so pool only entries you know come from one command.

    Returns ``(frame, pooled)``; ``pooled`` maps each new id that joins two or more entries to their ids.
    """
    ids = frame["encoder_id"].astype(str)
    stem = ids.map(lambda i: ENTRY_HASH.sub("", i))
    pooled = {key: sorted(part.unique()) for key, part in ids.groupby(stem) if part.nunique() > 1}
    return frame.assign(encoder_id=stem), pooled


def method_label(method: str, args: Any, protocol: str) -> str:
    """``knn_filter (mode=relabel)``, ``ce (linear probe)``: a method, its non-default options and the protocol.

    ``args`` is results.csv's ``method_args`` (compact JSON; empty or missing for the defaults and in tables
    written before the column existed).
    """
    try:
        options = json.loads(args) if isinstance(args, str) and args else {}
    except json.JSONDecodeError:
        raise UserError(f"results table: method_args {args!r} of a {method} run is not JSON") from None
    parts = [f"{k}={v}" for k, v in options.items()] + (["linear probe"] if protocol == "linear_probe" else [])
    return str(method) + (f" ({', '.join(parts)})" if parts else "")


def flags(column):
    """(true, false) masks of a boolean column as a CSV gives it back (True/False, 1/0, 1.0/0.0); empty is neither.

    >>> import pandas as pd
    >>> [m.tolist() for m in flags(pd.Series([True, "False", 1.0, None]))]
    [[True, False, True, False], [False, True, False, False]]
    """
    text = column.astype(str).str.lower()
    return text.isin(["true", "1", "1.0"]), text.isin(["false", "0", "0.0"])


def tidy(frame, metric: str = DEFAULT_METRIC):
    """Rows usable for curves: ``init_label``, ``method_label`` added, rate-0 runs lent to noise types without any.

    Returns ``(rows, n_left_out)``; ``n_left_out`` counts rows without a noise rate or a value of ``metric``.
    """
    import pandas as pd

    if metric not in frame.columns:
        numeric = [c for c in frame.columns if c.startswith("test_") and pd.api.types.is_numeric_dtype(frame[c])]
        raise UserError(f"results table has no column {metric!r}; choose from: {', '.join(numeric)}")
    frame = frame.copy()
    frame["init_label"] = frame["encoder_id"].map(init_labels(frame["encoder_id"]))
    args = frame["method_args"] if "method_args" in frame.columns else [""] * len(frame)
    frame["method_label"] = [method_label(*r) for r in zip(frame["method"], args, frame["protocol"])]
    if "method_protocol" in frame.columns:  # a method under its authors' recipe: its own line, never pooled with
        paper = frame["method_protocol"].astype(str).eq("paper")  # the shared recipe's
        frame.loc[paper, "method_label"] = frame.loc[paper, "method_label"] + " [paper recipe]"
    if "augmentation" in frame.columns:  # augmented and plain training of one method: two lines, never pooled
        augmented, plain = flags(frame["augmentation"])   # neither in rows written before the column existed
        if augmented.any() and plain.any():
            frame.loc[augmented, "method_label"] = frame.loc[augmented, "method_label"] + " [augmented]"
    if "method_active" in frame.columns:  # a schedule too short for the method: its own line, never pooled
        inactive = flags(frame["method_active"])[1]
        frame.loc[inactive, "method_label"] = frame.loc[inactive, "method_label"] + " [schedule too short]"
    if "dataset" in frame.columns and frame["dataset"].nunique() > 1:  # never pool two datasets in one panel
        frame["method_label"] = frame["dataset"].astype(str) + " · " + frame["method_label"]
    usable = frame["noise_rate"].notna() & frame[metric].notna() & frame["noise_type"].ne("file")
    rows, left_out = frame[usable].copy(), int((~usable).sum())
    rows["noise_rate"] = rows["noise_rate"].astype(float)
    clean = rows[rows["noise_rate"] == 0]
    borrowed = []
    for noise_type in sorted(rows["noise_type"].unique()):
        if not ((rows["noise_type"] == noise_type) & (rows["noise_rate"] == 0)).any() and not clean.empty:
            borrowed.append(clean.assign(noise_type=noise_type))
    return pd.concat([rows, *borrowed], ignore_index=True), left_out


def summarise(rows, metric: str = DEFAULT_METRIC):
    """Mean, std (ddof 1; 0 for a single run) and n of ``metric`` per noise type, method, init and rate."""
    keys = ["noise_type", "method_label", "init_label", "noise_rate"]
    out = rows.groupby(keys)[metric].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"count": "n"}).fillna({"std": 0.0})
