"""The sweep's results tables: the results.csv rows of its finished cells, one per cell, with the cell id.

``<runs>/sweeps/<name>.csv`` is written atomically from the cells' done records and ``<runs>/results.csv``
(read through :mod:`ssl_noise.runs`). Format: docs/formats.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ssl_noise.config import method_args_text
from ssl_noise.io import atomic_path
from ssl_noise.runs import read_results, results_path
from ssl_noise.sweep.cells import Cell
from ssl_noise.sweep.queue import done_record

# Function-level imports of pandas keep ``ssl-noise --help`` fast.


def collect(cells: Sequence[Cell], runs: Path):
    """The results.csv rows of the finished cells (one per cell, with its ``cell_id``)."""
    import pandas as pd

    records = {c.cell_id: done_record(runs, c.cell_id) for c in cells}
    by_run = {r["run_id"]: cid for cid, r in records.items() if r}
    frame = read_results(results_path(runs))
    if frame.empty or not by_run:
        return pd.DataFrame()
    frame = frame[frame["run_id"].isin(by_run)].drop_duplicates("run_id", keep="last").copy()
    frame.insert(0, "cell_id", frame["run_id"].map(by_run))
    # From the cells, not the rows: rows written before results.csv had the column lack it, and the cell's
    # config is what ran (its id hashes the arguments).
    args = frame["cell_id"].map({c.cell_id: method_args_text(c.config.method_args) for c in cells})
    if "method_args" in frame.columns:
        frame["method_args"] = args
    else:
        frame.insert(frame.columns.get_loc("method") + 1, "method_args", args)
    return frame.reset_index(drop=True)


def write_table(cells: Sequence[Cell], runs: Path, name: str) -> Path | None:
    """Write ``<runs>/sweeps/<name>.csv`` (the finished cells' rows, atomically); None when nothing finished."""
    return save_table(collect(cells, runs), runs, name)


def save_table(frame, runs: Path, name: str) -> Path | None:
    """Write the rows :func:`collect` returned to ``<runs>/sweeps/<name>.csv`` (atomically); None when empty."""
    if frame.empty:
        return None
    path = Path(runs) / "sweeps" / f"{name}.csv"
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path
