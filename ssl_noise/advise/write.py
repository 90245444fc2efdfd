"""Advise's one page: ``advice.md`` (with ``noise_matrix.png`` and ``pilot.png``), ``advice.json`` with the same
numbers, and the summary printed on the terminal."""

from __future__ import annotations

import json
from typing import Any, Dict, List

import numpy as np

from ssl_noise import io, plots
from ssl_noise.advise.look import SHOWN
from ssl_noise.advise.score import cheapest
from ssl_noise.data import ImageDataset

SHOWN_FILES = 20


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ci(lo: float, hi: float) -> str:
    return f"[{_pct(lo)}, {_pct(hi)}]"


def _points(d: float, lo: float, hi: float) -> str:
    return f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def verdict(advice) -> str:
    """The recommendation in one sentence, as sure as the pilot is and no surer."""
    s = advice.scored
    if s is None:
        return "No pilot run finished; run the same command again (it continues) or raise --time-budget."
    what = "estimated (T̂-corrected) accuracy" if advice.test.is_estimate else "accuracy on the trusted test labels"
    if advice.separable:
        others = [i for i in range(len(s.names)) if i != s.best]
        runner = max(others, key=lambda i: s.acc[i]) if others else None
        gap = f", {_points(-s.diff[runner], -s.diff_hi[runner], -s.diff_lo[runner])} points over the next best " \
              f"({s.names[runner]}; 90 % interval, paired)" if runner is not None else ""
        return f"Train with **{advice.recommended}**: the highest {what}{gap}, ahead of every other candidate."
    tied = [s.names[i] for i in s.tied_with_best() if i != s.best]
    cheap = cheapest(s)
    fallback = (f" {cheap} is the cheapest of them to train." if cheap != advice.recommended else
                " It is also the cheapest of them to train.")
    return (f"**{advice.recommended}** has the highest {what}, but the pilot cannot separate it from "
            f"{', '.join(tied)} (each difference's 90 % interval includes 0): a lean, not a winner.{fallback} More "
            f"seeds, or more test images with trusted labels, would be needed to choose between them.")


def write_advice(advice, data: ImageDataset, *, agreement: Dict[str, Any], effects: List[Dict[str, Any]],
                 entry: str, ssl: str, pairs: List[Dict[str, Any]]) -> str:
    """Write advice.md, advice.json and the figures under ``advice.out``; returns the terminal summary."""
    out, found, seen, s = advice.out, advice.estimate, advice.look, advice.scored
    plots.transition_figure(found.T, data.class_names, out / "noise_matrix.png",
                            title=f"estimated T̂ (rate {found.rate:.3f}, {found.estimator})")
    what = "estimated accuracy (T̂-corrected), %" if advice.test.is_estimate else "test accuracy, %"
    if s is not None:
        plots.intervals_figure(s.names, 100 * s.acc, 100 * s.lo, 100 * s.hi, out / "pilot.png", xlabel=what,
                               highlight=s.names.index(advice.recommended))
    lines = [f"# Advice: {data.name}", "",
             f"Estimated noise rate **{found.rate:.3f}** (90 % interval {found.lo:.3f}-{found.hi:.3f}). "
             + verdict(advice), "",
             f"Wall time {advice.wall_time_s / 60:.1f} min" + ("" if advice.finished else
                                                                "; the budget ran out before the pilot finished: "
                                                                "run the same command again to continue it") + ".",
             "", "## The data", "",
             "| split | images | " + " | ".join(data.class_names) + " |", "|---|---|" + "---|" * data.num_classes]
    for split, counts in seen.counts.items():
        lines.append(f"| {split} | {seen.sizes[split]} | " + " | ".join(map(str, counts)) + " |")
    problems = seen.problems()
    lines += ["", f"{data.image_size} px, {data.channels} channel(s); largest / smallest training class "
                  f"{seen.imbalance:.1f}. Duplicates: {seen.n_exact} exact and {seen.n_near} near pair(s) "
                  f"(near: a mean pixel difference of at most 4 grey levels), {problems['cross_split']} across "
                  f"splits (a test image seen in training) and {problems['label_conflict']} with two different "
                  f"labels."]
    if seen.pairs:
        lines += ["", "| kind | image | other image | labels |", "|---|---|---|---|"]
        lines += [f"| {p['kind']} | {p['path_a'] or p['a']} | {p['path_b'] or p['b']} | {p['label_a']} / "
                  f"{p['label_b']} |" for p in seen.pairs[:SHOWN]]
        if len(seen.pairs) > SHOWN:
            lines.append(f"\n({len(seen.pairs) - SHOWN} more in advice.json)")
    lines += ["", "## How noisy the labels are", "",
              f"`{found.estimator}` on the training images' pixel principal components ({found.seconds:.1f} s): "
              f"rate {found.rate:.3f}, 90 % interval {found.lo:.3f}-{found.hi:.3f}. Measured bias: mean |error| "
              f"0.035 over 24 settings, overshooting by 0.08-0.16 below 500 images a class "
              f"(the ssl-noise repository's studies/noise_estimates).",
              "", "![estimated transition matrix](noise_matrix.png)", ""]
    if pairs:
        lines += ["Most confused (estimated):", "", "| clean class | given as | T̂ | wrong labels expected |",
                  "|---|---|---|---|"]
        lines += [f"| {p['clean']} | {p['given']} | {p['T']:.3f} | {p['expected_wrong']} |" for p in pairs]
    top = advice.suspicious.head(SHOWN_FILES)
    lines += ["", "## Files to check first", "",
              f"Ranked by the mean percentile of the k-NN (k = 20) and cleanlab detectors' scores on the same "
              f"features; their top {agreement['n_top']} files (the estimated share) overlap with Jaccard "
              f"{agreement['jaccard']:.2f}. All files: `suspicious.csv`; the top {min(50, len(advice.suspicious))} "
              f"to relabel in [review/review.html](review/review.html).", "",
              "| rank | file | given | neighbours say | score |", "|---|---|---|---|---|"]
    for row in top.to_dict("records"):
        lines.append(f"| {row['rank']} | {row.get('path') or 'train ' + str(row['index'])} | {row['given_label']} | "
                     f"{row['suggested_label']} ({row['p_suggested']:.2f}) | {row['score']:.3f} |")
    lines += ["", "## The test labels", "", advice.test.note[0].upper() + advice.test.note[1:] + "."]
    if advice.test.is_estimate:
        lines += ["", "The correction assumes the test labels are wrong as the training labels are (the same T̂) "
                      "and independently of what a network predicts, given the true class. To score against labels "
                      "you trust, answer [test_review/review.html](test_review/review.html) and run the same command "
                      "with `--test-answers " + str(out / "test_review" / "answers.csv") + "`."]
    p = advice.plan
    lines += ["", "## The pilot", "", f"{p.describe()}; {ssl} encoder `{entry}`. Random init has the same "
              f"architecture. Every run trains on the labels as given, each method under its authors' recipe "
              f"(`--protocol paper`), methods that need a rate told the estimate; the epoch is picked on the "
              f"(noisy) validation labels.", ""]
    lines += [f"- **{c.method}**: {c.why}" for c in p.methods]
    lines += [f"- {n}" for n in p.notes]
    if s is not None:
        lines += ["", "## Results", "", f"n = {int(s.seeds.min())} seed(s) per candidate, paired (same seeds, same "
                  f"test images); 90 % bootstrap intervals over the {len(advice.test.rows)} test images.", "",
                  f"| candidate | {what} [90 %] | per seed | vs best, points [90 %] | p |", "|---|---|---|---|---|"]
        for i in np.argsort(-s.acc):
            lines.append(f"| {s.names[i]} | {_pct(s.acc[i])} {_ci(s.lo[i], s.hi[i])} | "
                         f"{', '.join(_pct(a) for a in s.per_seed[s.names[i]])} | "
                         + ("best" if i == s.best else f"{_points(s.diff[i], s.diff_lo[i], s.diff_hi[i])}") +
                         f" | {'' if i == s.best else f'{s.p[i]:.3f}'} |")
        lines += ["", "![candidates](pilot.png)"]
        if effects:
            lines += ["", f"Does SSL pretraining help here? {ssl} init − random init, same method:", "",
                      "| method | points [90 %] | p |", "|---|---|---|"]
            lines += [f"| {e['method']} | {_points(e['diff'], e['lo'], e['hi'])} | {e['p']:.3f} |" for e in effects]
    lines += ["", "## Recommendation", "", verdict(advice), ""]
    with io.atomic_path(advice.page) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    record = {"dataset": data.name, "estimate": {**found.record(), "T": np.round(found.T, 4).tolist()},
              "confused_pairs": pairs, "duplicates": seen.pairs, "detector_agreement": agreement,
              "test_labels": {"kind": advice.test.kind, "n": int(len(advice.test.rows)), "note": advice.test.note},
              "plan": {"methods": [c.__dict__ for c in p.methods], "seeds": p.seeds, "epochs": p.epochs,
                       "subset": p.subset, "pretrain_epochs": p.pretrain_epochs, "expected_s": p.expected_s},
              "encoder": entry, "finished": advice.finished, "wall_time_s": round(advice.wall_time_s, 1),
              "recommended": advice.recommended, "separable": advice.separable, "init_effect": effects,
              "candidates": None if s is None else [
                  {"name": n, "acc": float(s.acc[i]), "lo": float(s.lo[i]), "hi": float(s.hi[i]),
                   "per_seed": s.per_seed[n], "diff_to_best": float(s.diff[i]), "diff_lo": float(s.diff_lo[i]),
                   "diff_hi": float(s.diff_hi[i]), "p": float(s.p[i])} for i, n in enumerate(s.names)]}
    with io.atomic_path(out / "advice.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    summary = [f"noise rate  {found.rate:.3f} (90 % interval {found.lo:.3f}-{found.hi:.3f})"
               + (f"; most confused: {pairs[0]['clean']} given as {pairs[0]['given']}" if pairs else ""),
               f"check first {', '.join(str(r.get('path') or r['index']) for r in top.head(3).to_dict('records'))} "
               f"... ({out / 'review' / 'review.html'})",
               f"test labels {advice.test.kind}: {advice.test.note}"]
    if s is not None:
        summary += [f"  {s.names[i]:<28} {_pct(s.acc[i])} {_ci(s.lo[i], s.hi[i])}" for i in np.argsort(-s.acc)]
    summary += [verdict(advice).replace("**", ""), f"advice      {advice.page}"]
    return "\n".join(summary)
