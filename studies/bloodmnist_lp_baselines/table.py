"""The study's table: per noise rate, CE's test accuracy (mean ± sd over noise seeds) and each method's paired
difference from CE on the same noisy labels (mean points, pairs won, paired t-test p where n >= 2).

    python studies/bloodmnist_lp_baselines/table.py studies/bloodmnist_lp_baselines/results.csv
"""

import sys

import pandas as pd
from scipy import stats

frame = pd.read_csv(sys.argv[1])
methods = [m for m in ["gce", "sce", "elr", "coteaching", "coteaching_plus", "jocor", "dividemix"]
           if m in set(frame["method"])]
print("| symmetric rate | CE | " + " | ".join(methods) + " |")
print("|---" * (len(methods) + 2) + "|")
for rate, group in frame.groupby("noise_rate"):
    ce = group[group["method"] == "ce"].set_index("noise_seed")["test_acc"]
    cells = [f"{ce.mean():.3f} ± {ce.std():.3f} (n = {len(ce)})" if len(ce) > 1 else f"{ce.mean():.3f} (n = 1)"]
    for m in methods:
        other = group[group["method"] == m].set_index("noise_seed")["test_acc"]
        d = (other - ce).dropna() * 100
        if d.empty:
            cells.append("—")
            continue
        text = f"{d.mean():+.1f}, {int((d > 0).sum())}/{len(d)}"
        if len(d) >= 2 and d.std() > 0:
            text += f", p = {stats.ttest_1samp(d, 0).pvalue:.2f}"
        cells.append(text)
    print(f"| {rate:g} | " + " | ".join(cells) + " |")
