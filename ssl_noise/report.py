"""A study report from a results table: what each initialisation scored, and what SSL gained over random init.

``write_report(results, "report.md")`` (or ``.html``) writes score and memorisation tables, the paired gains of
each init over random init and of each method over ``ce`` (t-test or sign test), and links the figures.
How runs are paired and tested: docs/methods.md#study-figures-and-report-ssl_noisetablespy-plotspy-reportpy
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np

from ssl_noise import plots, tables
from ssl_noise.errors import UserError
from ssl_noise.io import atomic_path

FORMATS = (".md", ".html")
BASELINE = "random"
METHOD_BASELINE = "ce"
MIN_PAIRS_FOR_EVIDENCE = 5


# ============ statistics ============

def paired_test(diffs: np.ndarray) -> Tuple[Optional[float], str]:
    """Two-sided p-value of "mean difference = 0" and the test's name; (None, reason) when undefined.

    >>> paired_test(np.array([0.1, 0.2, 0.15]))[1]
    'paired t-test'
    """
    diffs = np.asarray(diffs, dtype=float)
    if len(diffs) < 2:
        return None, "needs 2 pairs"
    try:
        from scipy import stats
    except ImportError:
        return sign_test(diffs), "sign test"
    if np.allclose(diffs, diffs[0]):  # zero spread: typically duplicate runs (e.g. rate 0 under two noise seeds)
        return None, "identical differences"
    return float(stats.ttest_1samp(diffs, 0.0).pvalue), "paired t-test"


def test_name() -> str:
    """The test :func:`paired_test` uses here: a paired t-test with scipy, else an exact sign test."""
    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        return "sign test"
    return "paired t-test"


test_name.__test__ = False  # a helper, not a pytest test (pytest collects this file when it is named explicitly)


def sign_test(diffs: np.ndarray) -> Optional[float]:
    """Exact two-sided sign test (ties dropped): P(a split at least this uneven | fair coin).

    >>> round(sign_test(np.array([1, 1, 1, 1, 1.0])), 4)
    0.0625
    """
    wins, losses = int(np.sum(diffs > 0)), int(np.sum(diffs < 0))
    n = wins + losses
    if n == 0:
        return None
    k = min(wins, losses)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def paired_gains(frame, metric: str = tables.DEFAULT_METRIC, baseline: str = BASELINE):
    """Per noise type, method, init (not the baseline) and rate: the paired difference init - baseline.

    Pairs match on :data:`ssl_noise.tables.CONTEXT` plus (noise_seed, seed). Runs that repeat a key are averaged
    first (their number is in ``n_runs``). Returns an empty frame when there is no baseline.
    """
    rows, _ = tables.tidy(frame, metric)
    return _paired(rows, metric, vary="init_label", fixed="method_label",
                   is_base=rows["init_label"] == baseline)


def method_gains(frame, metric: str = tables.DEFAULT_METRIC, baseline: str = METHOD_BASELINE):
    """Per noise type, init, method (not the baseline) and rate: the paired difference method - baseline method.

    What a noise-robust method adds on top of an initialisation: pairs share the init, the protocol, the rest of
    :data:`ssl_noise.tables.CONTEXT` and (noise_seed, seed), so the same noisy labels; the baseline is ``ce`` with its
    default options. Empty when no run of another method has such a partner.
    """
    rows, _ = tables.tidy(frame, metric)
    args = rows["method_args"].fillna("").astype(str) if "method_args" in rows.columns else ""
    return _paired(rows, metric, vary="method_label", fixed="init_label",
                   is_base=rows["method"].astype(str).eq(baseline) & (args == ""))


def _paired(rows, metric: str, *, vary: str, fixed: str, is_base):
    """Paired differences along ``vary`` (init or method) against the rows ``is_base`` marks, within ``fixed``.

    Columns: noise_type, ``fixed``, ``vary``, noise_rate, n (pairs), mean_diff, std_diff, wins, p_value, test,
    n_runs.
    """
    import pandas as pd

    context = [c for c in tables.CONTEXT if c in rows.columns and c not in ("noise_type", "noise_rate", "method")]
    if vary == "init_label":  # the method label already names the protocol
        context.remove("protocol")
    keys = ["noise_type", fixed, "noise_rate", *context, "noise_seed", "seed"]
    rows = rows.assign(_base=np.asarray(is_base, dtype=bool), **{c: rows[c].astype(str) for c in context})
    per_key = rows.groupby([*keys, vary, "_base"], dropna=False)[metric].agg(["mean", "count"]).reset_index()
    base = per_key[per_key["_base"]].rename(columns={"mean": "base", "count": "base_n"})
    others = per_key[~per_key["_base"]].merge(base.drop(columns=[vary, "_base"]), on=keys)
    if others.empty:
        return pd.DataFrame()
    others["diff"] = others["mean"] - others["base"]
    out = []
    for (noise_type, fixed_value, value, rate), part in others.groupby(["noise_type", fixed, vary, "noise_rate"]):
        d = part["diff"].to_numpy()
        p, test = paired_test(d)
        out.append({"noise_type": noise_type, fixed: fixed_value, vary: value, "noise_rate": rate,
                    "n": len(d), "mean_diff": float(d.mean()), "std_diff": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
                    "wins": int((d > 0).sum()), "p_value": p, "test": test,
                    "n_runs": int(part["count"].sum() + part["base_n"].sum())})
    return pd.DataFrame(out)


# ============ document blocks ============

def _fmt(mean: float, std: float, n: int) -> str:
    """``mean ± std (n)``; a single run has no spread to show, so no ``± 0``."""
    return f"{mean:.4f} (n=1)" if n == 1 else f"{mean:.4f} ± {std:.4f} (n={n})"


def _pivot(stats, value: str, index: str = "init_label"):
    """One row per init (or method), one column per noise rate; the baseline init first."""
    table = stats.pivot(index=index, columns="noise_rate", values=value)
    table.columns = [f"rate {c:g}" for c in table.columns]
    order = sorted(table.index, key=lambda s: (s != BASELINE, s))
    return table.loc[order].fillna("–").rename_axis(index.removesuffix("_label")).reset_index()


def _score_tables(rows, metric: str) -> List[Tuple[str, Any]]:
    stats = tables.summarise(rows, metric)
    stats["cell"] = [_fmt(m, s, n) for m, s, n in zip(stats["mean"], stats["std"], stats["n"])]
    return [(f"{noise_type} noise · {method}", _pivot(part, "cell"))
            for (noise_type, method), part in stats.groupby(["noise_type", "method_label"])]


def _gain_cells(gains):
    def cell(r) -> str:
        missing = r.p_value is None or (isinstance(r.p_value, float) and math.isnan(r.p_value))
        p = "–" if missing else f"{r.p_value:.3g}"
        spread = f" ± {r.std_diff:.4f}" if r.n > 1 else ""
        return f"{r.mean_diff:+.4f}{spread}; wins {r.wins}/{r.n}; p={p}"

    return gains.assign(cell=[cell(r) for r in gains.itertuples()])


def _gain_tables(gains) -> List[Tuple[str, Any]]:
    return [(f"{noise_type} noise · {method}: init − {BASELINE}", _pivot(part, "cell"))
            for (noise_type, method), part in _gain_cells(gains).groupby(["noise_type", "method_label"])]


def _method_gain_tables(gains) -> List[Tuple[str, Any]]:
    return [(f"{noise_type} noise · {init} init: method − {METHOD_BASELINE}", _pivot(part, "cell", "method_label"))
            for (noise_type, init), part in _gain_cells(gains).groupby(["noise_type", "init_label"])]


def _small_n_note(gains) -> str:
    n = int(gains["n"].max())
    return (f"**n = {n} pair(s) per rate at most: the p-values cannot support a claim at this n; the consistency of "
            f"the sign across rates and the size of the difference are what this shows.**"
            if n < MIN_PAIRS_FOR_EVIDENCE else "")


def describe_source(source) -> str:
    """How the report names its input: a path, the paths joined, or "DataFrame"."""
    if hasattr(source, "columns"):
        return "DataFrame"
    if isinstance(source, (str, Path)):
        return str(source)
    return "`, `".join(str(path) for path in source)


def build(frame, *, metric: str, figures: List[Path], out: Path, source: str,
          pooled: Optional[dict] = None) -> List[Tuple[str, Any]]:
    """The report as blocks: ``("h1"|"h2"|"h3"|"p"|"img", text)`` and ``("table", DataFrame)``.

    ``pooled``: the groups of :func:`ssl_noise.tables.pool_reruns` when the frame's entries were pooled.
    """
    rows, left_out = tables.tidy(frame, metric)
    gains = paired_gains(frame, metric)
    seeds = rows.groupby(["noise_seed", "seed"]).ngroups
    blocks: List[Tuple[str, Any]] = [
        ("h1", "ssl-noise report"),
        ("p", f"Source: `{source}` — {len(frame)} run(s); {len(rows)} used (with rate-0 runs counted once per noise "
              f"type panel), {left_out} without a noise rate or a {metric} value left out. Datasets: "
              f"{', '.join(map(str, sorted(frame['dataset'].astype(str).unique())))}; inits: "
              f"{', '.join(sorted(rows['init_label'].unique()))}; {seeds} (noise seed, training seed) pair(s)."),
        ("p", f"Metric: `{metric}` on the clean test split at the epoch chosen on the (noisy, unless `clean_val`) "
              "validation split. Cells: mean ± std over seeds (n runs)."),
        *_pooling_note(rows),
        *_contract_note(rows),
        *_reruns_note(pooled or {}),
        ("h2", "Figures")]
    blocks += [("img", Path(f).relative_to(out.parent).as_posix() if Path(f).is_relative_to(out.parent) else str(f))
               for f in figures]
    blocks.append(("h2", f"{metric}: mean ± std per init and noise rate"))
    for title, table in _score_tables(rows, metric):
        blocks += [("h3", title), ("table", table)]
    if "train_memorised" in rows.columns and rows["train_memorised"].notna().any():
        memorised = rows[rows["noise_rate"] > 0].dropna(subset=["train_memorised"])
        blocks += [("h2", "Flipped training labels memorised (train_memorised, lower is more robust)")]
        for title, table in _score_tables(memorised, "train_memorised"):
            blocks += [("h3", title), ("table", table)]
    blocks.append(("h2", f"Gain over {BASELINE} init (paired over noise seed × training seed)"))
    if gains.empty:
        blocks.append(("p", f"No {BASELINE}-init runs to compare with: add `{BASELINE}` to the sweep's inits."))
    else:
        blocks.append(("p", f"Each pair: same data, noisy labels, method, protocol and seeds; only the init differs. "
                            f"Cells: mean ± std of (init − {BASELINE}), pairs won by the init, two-sided "
                            f"{test_name()} p-value (– below 2 pairs). " + _small_n_note(gains)))
        for title, table in _gain_tables(gains):
            blocks += [("h3", title), ("table", table)]
    by_method = method_gains(frame, metric)
    if not by_method.empty:  # a study of noise-robust methods: what each adds on top of its init
        blocks += [("h2", f"Gain over {METHOD_BASELINE} with the same init (paired over noise seed × training seed)"),
                   ("p", f"Each pair: same data, init, noisy labels, protocol and seeds; only the method differs. "
                         f"Cells: mean ± std of (method − {METHOD_BASELINE}), pairs won by the method, two-sided "
                         f"{test_name()} p-value (– below 2 pairs). " + _small_n_note(by_method))]
        for title, table in _method_gain_tables(by_method):
            blocks += [("h3", title), ("table", table)]
    return blocks


def _pooling_note(rows) -> List[Tuple[str, Any]]:
    """Say so when runs that differ in more than init and seeds share a table cell (a mixed results.csv)."""
    varied = [c for c in ("epochs", "n_train", "image_size", "noise_mode", "clean_val", "select_metric")
              if c in rows.columns and rows[c].astype(str).nunique() > 1]
    if not varied:
        return []
    values = "; ".join(f"{c}: {', '.join(sorted(rows[c].astype(str).unique()))}" for c in varied)
    return [("p", f"**Note:** these runs also differ in {values}; they are pooled in the tables below. Report on a "
                  "sweep's own table (`runs/sweeps/<name>.csv`) to compare like with like.")]


def _contract_note(rows) -> List[Tuple[str, Any]]:
    """Warn when the inits compared in pairs take different inputs (image size, stem): their gap then measures the
    input contract as well as the pretraining (``--like ENTRY`` builds a random baseline like an encoder)."""
    cols = [c for c in ("image_size", "stem") if c in rows.columns]
    if not cols or rows.empty:
        return []
    per_init = rows.groupby("init_label")[cols].agg(lambda v: "/".join(sorted(v.astype(str).unique())))
    if len(per_init.drop_duplicates()) <= 1:
        return []
    listing = "; ".join(f"{init}: " + ", ".join(f"{c} {r[c]}" for c in cols) for init, r in per_init.iterrows())
    return [("p", f"**Warning: the paired inits differ in their input** ({listing}); their gaps mix the pretraining "
                  "with the image size or stem. Build the baseline like the encoder (`finetune --init random "
                  "--like ENTRY`; sweeps do it by themselves when their encoders share one contract).")]


def _reruns_note(pooled: dict) -> List[Tuple[str, Any]]:
    """Name the registry entries that share a row, so that nobody reads a pooled spread as seeds alone."""
    if not pooled:
        return []
    groups = "; ".join(f"`{key}` = " + ", ".join(f"`{i.rsplit('-', 1)[-1]}`" for i in ids)
                       for key, ids in sorted(pooled.items()))
    return [("p", f"**Pooled re-runs** (`--pool-encoders`): the entries of one pretraining command share a row, so "
                  f"its spread includes the pretraining run as well as the seeds: {groups}.")]


# ============ rendering ============

def _md_table(frame) -> str:
    def esc(value: Any) -> str:
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(map(esc, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(esc(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def render_markdown(blocks) -> str:
    out = []
    for kind, value in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + value)
        elif kind == "p":
            out.append(value)
        elif kind == "img":
            out.append(f"![{Path(value).stem}]({value})")
        elif kind == "table":
            out.append(_md_table(value))
    return "\n\n".join(out) + "\n"


def render_html(blocks) -> str:
    import re

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

    body = []
    for kind, value in blocks:
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{html.escape(value)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{inline(value)}</p>")
        elif kind == "img":
            body.append(f'<p><img src="{html.escape(value)}" alt="{html.escape(Path(value).stem)}" '
                        f'style="max-width:100%"></p>')
        elif kind == "table":
            body.append(value.to_html(index=False, border=0, classes="results"))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left;white-space:nowrap}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>ssl-noise report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(source, out: str | Path, *, metric: str = tables.DEFAULT_METRIC,
                 figures: Optional[List[Path]] = None, pool: bool = False) -> List[Path]:
    """Write the report (``.md`` or ``.html``); returns [report, *figures].

    Args:
        source: a results table (path, several paths read as one, or DataFrame).
        out: the report file.
        metric: a results column (default ``test_acc``).
        figures: figures to link; by default :func:`ssl_noise.plots.plot_results` writes
            ``<out stem>_robustness.png`` (and ``..._detection.png``) next to the report.
        pool: one row per pretraining command rather than per registry entry (:func:`ssl_noise.tables.pool_reruns`).
    """

    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise UserError(f"report file {out} must end in {' or '.join(FORMATS)}")
    frame = tables.load_results(source)
    frame, pooled = tables.pool_reruns(frame) if pool else (frame, {})
    if figures is None:
        figures = plots.plot_results(frame, out.with_name(f"{out.stem}_robustness.png"), metric=metric)
    blocks = build(frame, metric=metric, figures=figures, out=out, source=describe_source(source), pooled=pooled)
    text = render_html(blocks) if out.suffix.lower() == ".html" else render_markdown(blocks)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
        plots.share(tmp)
    return [out, *figures]
