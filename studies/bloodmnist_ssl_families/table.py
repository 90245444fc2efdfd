"""The study's table: per init, the encoder's k-NN and logistic-regression probe on the test split (encoders.csv,
from `ssl-noise knn --json`), then the linear probe's test accuracy under symmetric noise as the paired gain over
random init on the same noisy labels (points: mean, pairs won, paired t-test p where n >= 2); the random row gives
its accuracy (mean ± sd over noise seeds).

    python studies/bloodmnist_ssl_families/table.py studies/bloodmnist_ssl_families/results.csv \
        studies/bloodmnist_ssl_families/encoders.csv
"""

import sys

import pandas as pd
from scipy import stats

runs, encoders = pd.read_csv(sys.argv[1]), pd.read_csv(sys.argv[2]).set_index("init")
label = {entry: name for name, entry in encoders["encoder"].items()}  # a row per entry: two jigsaw variants
runs["family"] = runs["init"].map(lambda init: "random" if init == "random" else label[init])
rates = sorted(runs["noise_rate"].unique())
random = runs[runs["family"] == "random"].set_index(["noise_rate", "noise_seed"])["test_acc"]
print("| init | k-NN test | logistic probe test | " + " | ".join(f"symmetric {r:g}" for r in rates) + " |")
print("|---" * (len(rates) + 3) + "|")
order = [f for f in encoders.index if f in set(runs["family"])]
for family in order:
    row = encoders.loc[family]
    cells = [family, f"{row['knn_test_acc']:.3f}", f"{row['linear_probe_test_acc']:.3f}"]
    acc = runs[runs["family"] == family].set_index(["noise_rate", "noise_seed"])["test_acc"]
    for rate in rates:
        if family == "random":
            r = acc.xs(rate, level="noise_rate")
            cells.append(f"{r.mean():.3f}" + (f" ± {r.std():.3f}" if len(r) > 1 else ""))
            continue
        d = (acc.xs(rate, level="noise_rate") - random.xs(rate, level="noise_rate")).dropna() * 100
        text = f"{d.mean():+.1f}, {int((d > 0).sum())}/{len(d)}"
        if len(d) >= 2 and d.std() > 0:
            text += f", p = {stats.ttest_1samp(d, 0).pvalue:.2f}"
        cells.append(text)
    print("| " + " | ".join(cells) + " |")
