"""Issues #51 and #52: the symmetric 0.6 random-init block re-measured with the new noise-rate estimate and under the
authors' recipes, beside the rows measured before (the old confident-joint estimate and the true rate, both under
the shared SGD recipe). Per method and row kind: test accuracy at the validation-selected epoch and the last-5
mean (mean ± sd over noise seeds), the rate it was told, its paired difference to CE on the same noisy labels and
with the same augmentation (rows without the ``augmentation`` column were all trained without it), and for the new
estimate the share of the oracle gap it closes ((new − old) / (oracle − old), on the seeds that have all three).

    python studies/bloodmnist_fft_methods/remeasure.py studies/bloodmnist_fft_methods/results.csv \
        studies/bloodmnist_fft_methods/results_oracle.csv studies/bloodmnist_fft_methods/results_remeasure.csv
"""

import sys

import numpy as np
import pandas as pd

from ssl_noise.report import paired_test
from ssl_noise.tables import flags

METHODS = ["coteaching", "coteaching_plus", "knn_filter", "jocor", "gce", "sce", "elr", "dividemix", "vog"]


def kind(row: pd.Series) -> str:
    """old auto | new auto | oracle, and the recipe (shared | paper), and ", augmented" when it was."""
    recipe = row.get("method_protocol") if isinstance(row.get("method_protocol"), str) else "shared"
    recipe += ", augmented" if row["augmented"] else ""
    if not isinstance(row["noise_rate_source"], str):
        return f"no rate, {recipe}"   # GCE, SCE: told no rate
    if row["noise_rate_source"] == "oracle":
        return f"oracle, {recipe}"
    new = isinstance(row.get("noise_estimator"), str)  # written since issue #51
    return f"{'new' if new else 'old'} auto, {recipe}"


def fmt(values: pd.Series, scale: float = 1.0) -> str:
    values = values.dropna() * scale
    return "-" if values.empty else f"{values.mean():.3f}" + (f" ± {values.std(ddof=1):.3f}" if len(values) > 1 else "")


def diff(a: pd.Series, b: pd.Series) -> str:
    """Paired a − b in points: mean, pairs above, paired t-test p."""
    both = pd.concat([a, b], axis=1, keys=["a", "b"]).dropna()
    if both.empty:
        return "-"
    d = 100 * (both["a"] - both["b"]).to_numpy()
    p, _ = paired_test(d) if len(d) > 1 else (None, "")
    shown = "" if p is None else ", p < 0.01" if p < 0.01 else f", p = {p:.2f}"
    return f"{d.mean():+.1f}, {int((d > 0).sum())}/{len(d)}{shown}"


def main(paths: list) -> None:
    frame = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    frame = frame[(frame["init"] == "random") & (frame["noise_type"] == "symmetric") & (frame["noise_rate"] == 0.6)
                  & frame["method_args"].isna()]
    augmentation = frame["augmentation"] if "augmentation" in frame.columns else pd.Series(False, index=frame.index)
    frame = frame.assign(augmented=flags(augmentation)[0])
    frame = frame.assign(kind=frame.apply(kind, axis=1)).drop_duplicates(["method", "kind", "noise_seed"], keep="last")
    ces = {aug: part.set_index("noise_seed") for aug, part in frame[frame["method"] == "ce"].groupby("augmented")}
    print("| method | told | n | rate told | test acc (selected) | − CE | last-5 mean | − CE |")
    print("|---|---|---|---|---|---|---|---|")
    for aug, ce in sorted(ces.items()):
        told = "augmented" if aug else "–"
        print(f"| ce | {told} | {len(ce)} | – | {fmt(ce['test_acc'])} | | {fmt(ce['test_acc_last5'])} | |")
    gaps, recipes, versus = [], [], []
    for method in METHODS:
        rows = frame[frame["method"] == method]
        by_kind = {k: part.set_index("noise_seed") for k, part in rows.groupby("kind")}
        for k in sorted(by_kind):
            part = by_kind[k]
            ce = ces.get(k.endswith("augmented"), frame.iloc[:0].set_index("noise_seed"))  # no CE like it: no pair
            print(f"| {method} | {k} | {len(part)} | {fmt(part['noise_rate_estimate'])} | {fmt(part['test_acc'])} | "
                  f"{diff(part['test_acc'], ce['test_acc'])} | {fmt(part['test_acc_last5'])} | "
                  f"{diff(part['test_acc_last5'], ce['test_acc_last5'])} |")
        pair = next(((f"{k}, paper", f"{k}, shared") for k in ("new auto", "no rate")
                     if f"{k}, paper" in by_kind and f"{k}, shared" in by_kind), None)
        if pair:
            paper, shared = by_kind[pair[0]], by_kind[pair[1]]
            recipes.append(f"- {method}: paper − shared recipe, same labels and rate: selected epoch "
                           f"{diff(paper['test_acc'], shared['test_acc'])}; last-5 mean "
                           f"{diff(paper['test_acc_last5'], shared['test_acc_last5'])}")
        elif "old auto, shared" in by_kind and len(by_kind) > 1:   # no pair that differs in the recipe alone
            told = [k for k in by_kind if not k.startswith("oracle")]   # the estimate a user gets, not the oracle
            latest = max(told, key=lambda k: by_kind[k]["created_at"].max())
            now, before = by_kind[latest], by_kind["old auto, shared"]
            if latest != "old auto, shared":
                recipes.append(f"- {method}: {latest} − old auto, shared (every difference in the names at once), "
                               f"same labels: selected epoch {diff(now['test_acc'], before['test_acc'])}; last-5 "
                               f"mean {diff(now['test_acc_last5'], before['test_acc_last5'])}")
        old, new, oracle = (by_kind.get(f"{k}, shared") for k in ("old auto", "new auto", "oracle"))
        if new is not None and oracle is not None:
            versus.append(f"- {method}: new auto − oracle, same labels and recipe: selected epoch "
                          f"{diff(new['test_acc'], oracle['test_acc'])}; last-5 mean "
                          f"{diff(new['test_acc_last5'], oracle['test_acc_last5'])}")
        if old is not None and new is not None and oracle is not None:
            seeds = old.index.intersection(new.index).intersection(oracle.index)
            for s in seeds:
                span = oracle.loc[s, "test_acc"] - old.loc[s, "test_acc"]
                gaps.append((method, s, (new.loc[s, "test_acc"] - old.loc[s, "test_acc"]) / span if span else np.nan))
    if recipes:
        print("\nThe recipe (points, pairs above, paired t-test p):")
        print("\n".join(recipes))
    if versus:
        print("\nThe new estimate against the true rate (points, pairs above, paired t-test p):")
        print("\n".join(versus))
    if gaps:
        print("\nShare of the oracle gap closed by the new estimate ((new − old) / (oracle − old), test acc at the "
              "selected epoch, per noise seed):")
        for method, seed, share in gaps:
            print(f"- {method}, noise seed {seed}: {share:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
