"""Figures of a results table (``runs/results.csv`` or ``runs/sweeps/<name>.csv``), headless.

:func:`robustness_figure` (metric against noise rate, per init), :func:`detection_figure` (detection quality
against noise rate) and :func:`budget_figure` (active refinement against oracle labels); nothing here trains.
What each shows and how rows are grouped: docs/methods.md#study-figures-and-report-ssl_noisetablespy-plotspy-reportpy
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ssl_noise.errors import UserError
from ssl_noise.io import atomic_path
from ssl_noise.runs import RunFolder
from ssl_noise.tables import DEFAULT_METRIC, load_results, pool_reruns, summarise, tidy

FORMATS = (".png", ".pdf", ".svg")
DETECTION_PREFIXES = ("detect_", "detection_")
METRIC_NAMES = {"acc": "accuracy", "auc": "AUC", "balanced_acc": "balanced accuracy", "macro_f1": "macro-F1",
                "mcc": "MCC"}


def _check_out(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise UserError(f"figure file {out} must end in {', '.join(FORMATS)}")
    return out


def _colours(labels: Sequence[str]) -> dict:
    """A fixed colour per init; the random-init baseline is always black."""
    import matplotlib

    cycle = matplotlib.colormaps["tab10"].colors
    others = [label for label in sorted(labels) if label != "random"]
    colours = {label: cycle[i % len(cycle)] for i, label in enumerate(others)}
    colours["random"] = (0.0, 0.0, 0.0)
    return colours


def _spread(ax, x, y, s, colour) -> None:
    """Draw ± std around a line: a band, or error bars where the line has a single x (a one-rate study, a
    refinement session with only round 0), where a band would have no width and the spread would vanish."""
    if len(x) > 1:
        ax.fill_between(x, y - s, y + s, color=colour, alpha=0.18, lw=0)
    else:
        ax.errorbar(x, y, yerr=s, color=colour, capsize=4, lw=1, ls="none")


def _grid(n_rows: int, n_cols: int, *, sharey: bool = True, extra_width: float = 0.0):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(n_rows, n_cols, figsize=((4.2 + extra_width) * n_cols, 3.4 * n_rows), squeeze=False,
                             sharey=sharey)
    return fig, axes


def _save(fig, out: Path) -> Path:
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=out.suffix[1:].lower(), dpi=150, bbox_inches="tight")
        share(tmp)
    plt.close(fig)
    return out


def share(path: Path) -> None:
    """Give a file written through a private temporary file the permissions of a plain ``open`` (umask)."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def robustness_figure(frame, out: str | Path, *, metric: str = DEFAULT_METRIC) -> Path:
    """Write the robustness curves of ``frame`` (a results table) to ``out`` (.png, .pdf or .svg)."""
    out = _check_out(out)
    rows, left_out = tidy(frame, metric)
    if rows.empty:
        raise UserError(f"no rows with a noise rate and a {metric} value to plot ({left_out} left out)")
    stats = summarise(rows, metric)
    types, methods = sorted(stats["noise_type"].unique()), sorted(stats["method_label"].unique())
    colours = _colours(stats["init_label"].unique())
    crowded = stats.groupby(["noise_type", "method_label"])["init_label"].nunique().max() > 4
    # a crowded legend would cover the high-noise end of the curves: it goes beside the panel, which grows for it
    extra = 0.06 * (max(len(str(label)) for label in stats["init_label"].unique()) + 8) if crowded else 0.0
    fig, axes = _grid(len(types), len(methods), extra_width=extra)
    name = METRIC_NAMES.get(metric.removeprefix("test_"), metric)
    for r, noise_type in enumerate(types):
        for c, method in enumerate(methods):
            ax = axes[r][c]
            panel = stats[(stats["noise_type"] == noise_type) & (stats["method_label"] == method)]
            for label in sorted(panel["init_label"].unique(), key=lambda s: (s != "random", s)):
                line = panel[panel["init_label"] == label].sort_values("noise_rate")
                x, y, s = line["noise_rate"].to_numpy(), line["mean"].to_numpy(), line["std"].to_numpy()
                n = f"n={line['n'].min()}" if line["n"].min() == line["n"].max() else \
                    f"n={line['n'].min()}-{line['n'].max()}"
                ax.plot(x, y, marker="o", color=colours[label], ls="--" if label == "random" else "-",
                        label=f"{label} ({n})")
                _spread(ax, x, y, s, colours[label])
            ax.set_title(f"{noise_type} noise · {method}", fontsize=10)
            ax.set_xlabel("noise rate")
            ax.grid(alpha=0.3)
            if c == 0:
                ax.set_ylabel(f"test {name}\n(validation-selected epoch)")
            if crowded and not panel.empty:
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            elif not panel.empty:
                ax.legend(fontsize=8, loc="best")
    note = "lines: mean over seeds (noise seed × training seed), bands (bars at one rate): ± std, n: runs per point"
    if left_out:
        note += f"; {left_out} run(s) without a noise rate left out"
    fig.text(0.5, 0.0, note, ha="center", va="top", fontsize=7, wrap=True)
    return _save(fig, out)


def detection_columns(frame) -> List[str]:
    """Detection-quality columns: ``detect_*`` / ``detection_*``, numeric, with values, all in [0, 1] (no counts)."""
    def is_rate(column) -> bool:
        values = frame[column].dropna()
        return np.issubdtype(values.dtype, np.number) and not values.empty and values.between(0, 1).all()

    return [c for c in frame.columns if str(c).startswith(DETECTION_PREFIXES) and is_rate(c)]


def detection_figure(frame, out: str | Path) -> Optional[Path]:
    """Detection quality against the noise rate (one panel per noise type x metric); None without such columns."""
    out = _check_out(out)
    columns = detection_columns(frame)
    if not columns:
        return None
    rows, _ = tidy(frame, columns[0])
    rows = rows[rows["noise_rate"] > 0]  # nothing to detect in clean labels
    if rows.empty:
        return None
    types = sorted(rows["noise_type"].unique())
    rows["line"] = rows["method_label"] + " · " + rows["init_label"]
    colours = _colours(rows["line"].unique())
    fig, axes = _grid(len(types), len(columns), sharey=False)
    for r, noise_type in enumerate(types):
        for c, column in enumerate(columns):
            ax = axes[r][c]
            panel = rows[rows["noise_type"] == noise_type]
            stats = panel.groupby(["line", "noise_rate"])[column].agg(["mean", "std", "count"]).reset_index()
            for line in sorted(stats["line"].unique()):
                part = stats[stats["line"] == line].sort_values("noise_rate")
                x, y, s = part["noise_rate"].to_numpy(), part["mean"].to_numpy(), part["std"].fillna(0).to_numpy()
                ax.plot(x, y, marker="o", color=colours[line], label=line)
                _spread(ax, x, y, s, colours[line])
            ax.set_title(f"{noise_type} noise · {column}", fontsize=10)
            ax.set_xlabel("noise rate")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="best")
    fig.text(0.5, 0.0, "detection of the flipped training labels; lines: mean over seeds, bands or bars: ± std",
             ha="center", va="top", fontsize=7)
    return _save(fig, out)


def detection_path(out: str | Path) -> Path:
    """``robustness.png`` -> ``robustness_detection.png``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_detection{out.suffix}")


def plot_results(source, out: str | Path, *, metric: str = DEFAULT_METRIC, pool: bool = False) -> List[Path]:
    """Both figures of a results table (path, paths or DataFrame); returns the files written.

    ``pool``: one line per pretraining command rather than per registry entry (:func:`pool_reruns`).
    """
    frame = load_results(source)
    if pool:
        frame, _ = pool_reruns(frame)
    written = [robustness_figure(frame, out, metric=metric)]
    detection = detection_figure(frame, detection_path(out))
    return written + ([detection] if detection else [])


#: Columns of a refinement session's ``rounds.csv`` (ssl_noise.refine.Session._write_round) the budget curves need.
ROUNDS_REQUIRED = ("round", "budget", "acquisition", "oracle")


def rounds_tables(sources: Sequence[str | Path]) -> List[Path]:
    """The ``rounds.csv`` files behind ``sources``: a rounds CSV itself, a session folder (``RUN/refine/<name>``)
    or an LNL run folder (every session under ``RUN/refine/``)."""
    tables: List[Path] = []
    for source in map(Path, sources):
        if source.is_file():
            tables.append(source)
        elif (source / "rounds.csv").is_file():
            tables.append(source / "rounds.csv")
        elif sessions := sorted((source / "refine").glob("*/rounds.csv")):
            tables.extend(sessions)
        else:
            raise UserError(f"{source} is neither a rounds CSV nor a folder holding refinement sessions "
                            "(ssl-noise refine run RUN writes RUN/refine/<session>/rounds.csv)")
    return tables


def rounds_label(path: Path) -> str:
    """Legend name of one session: ``<LNL method> · <session name without its -s<seed>>`` for a rounds.csv inside
    its run folder (``vog · entropy-b70``), the file name without ``_rounds`` for a copy elsewhere
    (``vog_entropy_rounds.csv`` -> ``vog_entropy``).

    The seed is cut so that sessions differing only in ``--seed`` share a line (mean ± std over seeds), while
    another acquisition, budget or a named (expert) session gets its own.
    """
    run = RunFolder(path.parent.parent.parent)  # RUN/refine/<session>/rounds.csv -> RUN
    if path.name == "rounds.csv" and path.parent.parent.name == "refine" and run.has_config():
        method = run.config().get("method", "?")
        return f"{method} · {re.sub(r'-s[0-9]+$', '', path.parent.name)}"
    return path.stem.removesuffix("_rounds") if path.stem != "rounds" else path.parent.name


def budget_curves(sources: Sequence[str | Path], *, metric: str = DEFAULT_METRIC,
                  labels: Optional[Sequence[str]] = None):
    """Mean, std (ddof 1; 0 for one session) and n of ``metric`` per line and cumulative budget (labels supplied).

    ``sources`` as :func:`rounds_tables`; ``labels``, if given, name the tables in that order (one per table).
    Tables with the same label are pooled: refinement sessions on one LNL run that differ only in ``--seed``.
    Returns a frame with columns ``label, budget, mean, std, n``.
    """
    import pandas as pd

    paths = rounds_tables(sources)
    if labels is not None and len(labels) != len(paths):
        raise UserError(f"{len(labels)} label(s) given for {len(paths)} rounds table(s): give one per table")
    parts = []
    for i, path in enumerate(paths):
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read rounds table {path}: {str(e).strip().splitlines()[0]}") from None
        missing = [c for c in ROUNDS_REQUIRED if c not in frame.columns]
        if missing or frame.empty:
            raise UserError(f"{path} is not a rounds.csv of ssl-noise refine "
                            f"({'no rows' if not missing else 'no column ' + ', '.join(missing)})")
        if metric not in frame.columns:
            choices = [c for c in frame.columns if c.startswith("test_")]
            raise UserError(f"{path} has no column {metric!r}; choose from: {', '.join(choices)}")
        label = labels[i] if labels is not None else rounds_label(path)
        parts.append(frame[["round", "budget", metric]].assign(label=label, control=frame["budget"].max() == 0))
    rows = _align_controls(pd.concat(parts, ignore_index=True))
    out = rows.groupby(["label", "budget", "control"])[metric].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"count": "n"}).fillna({"std": 0.0})


def _align_controls(rows):
    """Place a zero-budget control's round r at the budget the acquisition sessions reach in round r: the control
    has had the same rounds of fine-tuning, so the vertical gap is what the relabelled samples added."""
    sessions = rows[~rows["control"] & (rows["round"] > 0)]
    per_round = (sessions["budget"] / sessions["round"]).round(6).unique()
    if rows["control"].any() and len(per_round) > 1:
        raise UserError("a zero-budget control can only be drawn beside sessions with one budget per round, "
                        f"got {sorted(per_round)}")
    if rows["control"].any() and len(per_round) == 1:
        rows.loc[rows["control"], "budget"] = rows.loc[rows["control"], "round"] * per_round[0]
    return rows


def gains_over_control(curves):
    """Each session line minus the zero-budget control at the same round (``label, budget, gain, n``); empty
    without a control. Refinement is credited only with this gap, not with the extra epochs of its rounds."""
    import pandas as pd

    control = curves[curves["control"]]
    if control["label"].nunique() != 1:
        return pd.DataFrame(columns=["label", "budget", "gain", "n"])
    base = control.set_index("budget")["mean"]
    lines = curves[~curves["control"] & curves["budget"].isin(base.index)]
    return lines.assign(gain=lines["mean"].to_numpy() - base.loc[lines["budget"]].to_numpy())[
        ["label", "budget", "gain", "n"]].reset_index(drop=True)


def parse_references(references: Sequence[str]) -> List[tuple]:
    """``["CE=0.880"]`` -> ``[("CE", 0.88)]``: horizontal lines for :func:`budget_figure`."""
    parsed = []
    for text in references:
        name, sep, value = str(text).rpartition("=")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep or not name.strip() or not np.isfinite(number):
            raise UserError(f"reference {text!r} must be NAME=VALUE with a number, e.g. CE=0.880")
        parsed.append((name.strip(), number))
    return parsed


def budget_figure(curves, out: str | Path, *, metric: str = DEFAULT_METRIC, references: Sequence[tuple] = (),
                  title: str = "active label refinement") -> Path:
    """Write ``metric`` against the number of oracle labels (``curves`` from :func:`budget_curves`) to ``out``."""
    out = _check_out(out)
    colours = _colours(curves["label"].unique())
    fig, axes = _grid(1, 1)
    ax = axes[0][0]
    for label in sorted(curves["label"].unique()):
        line = curves[curves["label"] == label].sort_values("budget")
        x, y, s = line["budget"].to_numpy(), line["mean"].to_numpy(), line["std"].to_numpy()
        n, control = line["n"].max(), bool(line["control"].any()) if "control" in line else False
        ax.plot(x, y, marker="o", color=colours[label], ls="--" if control else "-",
                label=label + (" (no relabelling)" if control else "") + (f" (n={n})" if n > 1 else ""))
        if n > 1:
            _spread(ax, x, y, s, colours[label])
    for i, (name, value) in enumerate(references):
        ax.axhline(value, color="0.35", ls=(0, (4, 2 + 2 * i)), lw=1)
        ax.annotate(f"{name} {value:.3f}", (1.0, value), xycoords=("axes fraction", "data"), ha="right",
                    va="bottom", fontsize=8, color="0.3")
    name = METRIC_NAMES.get(metric.removeprefix("test_"), metric)
    ax.set_xlabel("labels supplied by the oracle (cumulative budget)")
    ax.set_ylabel(f"test {name}\n(each round's validation-selected epoch)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.text(0.5, 0.0, "0 labels: the LNL run's network 1; lines with n > 1: mean over sessions, bands: ± std",
             ha="center", va="top", fontsize=7)
    return _save(fig, out)


def transition_figure(T: np.ndarray, class_names: Sequence[str], out: str | Path, *, title: str = "") -> Path:
    """The estimated transition matrix as a heat map: row = clean class, column = given label, each cell's value."""
    out = _check_out(out)
    K = len(T)
    fig, axes = _grid(1, 1, sharey=False, extra_width=max(0.0, 0.45 * K - 2.5))
    ax = axes[0, 0]
    ax.imshow(T, cmap="Blues", vmin=0, vmax=1)
    for i in range(K):
        for j in range(K):
            ax.text(j, i, f"{T[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if T[i, j] > 0.5 else "black")
    ax.set_xticks(range(K), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(K), class_names, fontsize=8)
    ax.set_xlabel("given label")
    ax.set_ylabel("clean class (estimated)")
    ax.set_title(title, fontsize=9)
    return _save(fig, out)


def intervals_figure(names: Sequence[str], value: np.ndarray, lo: np.ndarray, hi: np.ndarray, out: str | Path, *,
                     xlabel: str, highlight: Optional[int] = None) -> Path:
    """One row per candidate: its value and interval (horizontal), the ``highlight`` row in colour."""
    out = _check_out(out)
    fig, axes = _grid(1, 1, sharey=False, extra_width=1.5)
    ax = axes[0, 0]
    y = np.arange(len(names))[::-1]
    for row, (v, a, b) in enumerate(zip(value, lo, hi)):
        colour = "tab:blue" if row == highlight else "black"
        ax.errorbar([v], [y[row]], xerr=[[v - a], [b - v]], fmt="o", color=colour, capsize=3)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out)
