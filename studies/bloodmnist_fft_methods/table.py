"""The study's table: per init and noise setting, CE's test accuracy at the validation-selected epoch and its
last-5 mean (mean ± sd over noise seeds), then every other method as its paired gain over CE on the same noisy labels
(points: mean, pairs won, paired t-test p where n >= 2), the share of flipped labels it memorised (at the selected /
the last epoch), and for a method that selects samples the detection AUROC and average precision of what it kept.
Cells that failed (no row) are listed as "not run". Where a setting has both inits, a last table per setting gives
each method's paired gain from the SSL init (the other init − random, on the same noisy labels). Rows of the oracle
ablation (bloodmnist_fft_methods_oracle.yaml) given in the same table are their own rows, named by what differs from
the main spec's cell (the rate told, other method arguments), and paired with the main sweep's CE.

    python studies/bloodmnist_fft_methods/table.py runs/sweeps/bloodmnist_fft_methods.csv > table.md
    python studies/bloodmnist_fft_methods/table.py studies/bloodmnist_fft_methods/results.csv \
        runs/sweeps/bloodmnist_fft_methods_oracle.csv                  # with the oracle rows
"""

import json
import sys
from pathlib import Path

import pandas as pd
import yaml

from ssl_noise.report import paired_test
from ssl_noise.tables import load_results

KEY = ["noise_seed", "seed"]
SPEC = Path(__file__).resolve().parents[2] / "finetune" / "sweeps" / "bloodmnist_fft_methods.yaml"


def spec_cells() -> list:
    """The spec's ``[method, method_args]`` pairs in its order (HSA-NRL's, whose cells all failed, included)."""
    return yaml.safe_load(SPEC.read_text())["grid"]["method+method_args"]


def variant(row: pd.Series, spec_args: dict) -> str:
    """The row's method, plus what differs from the main spec's cell of it: ``jocor, oracle rate, co_lambda=0.65``."""
    args = json.loads(row["method_args"]) if isinstance(row["method_args"], str) else {}
    extra = [f"{k}={v}" for k, v in args.items() if spec_args.get(row["method"], {}).get(k) != v]
    told = ["oracle rate"] if row.get("noise_rate_source") == "oracle" else []
    return ", ".join([row["method"], *told, *extra])


def paired(a: pd.Series, b: pd.Series) -> str:
    """``a - b`` in points over the shared pairs: mean, pairs won of n, paired t-test p where n >= 2."""
    d = (a - b).dropna() * 100
    if d.empty:
        return "–"
    p, _ = paired_test(d.to_numpy())  # the report's test: None under 2 pairs or with no spread
    return f"{d.mean():+.1f}, {int((d > 0).sum())}/{len(d)}" + (f", p = {p:.2f}" if p is not None else "")


def spread(values: pd.Series, scale: float = 1.0, digits: int = 3) -> str:
    """Mean ± sd of the non-missing values (sd only where there are two or more)."""
    values = values.dropna() * scale
    if values.empty:
        return "–"
    text = f"{values.mean():.{digits}f}"
    return text + (f" ± {values.std():.{digits}f}" if len(values) > 1 else "")


def table(rows: pd.DataFrame, methods: list) -> None:
    ce = rows[rows["method"] == "ce"].set_index(KEY)
    print("| method | n | test acc (selected) | − CE | last-5 mean | − CE | memorised: selected / last (%) "
          "| detection AUROC / AP |")
    print("|---" * 8 + "|")
    for method in methods:
        mine = rows[rows["method"] == method].set_index(KEY)
        if mine.empty:
            print(f"| {method} | 0 | not run | | | | | |")
            continue
        detection = "–"
        if "detect_auroc" in mine and mine["detect_auroc"].notna().any():
            detection = f"{spread(mine['detect_auroc'])} / {spread(mine.get('detect_ap', pd.Series(dtype=float)))}"
        is_ce = method == "ce"
        print(f"| {method} | {len(mine)} | {spread(mine['test_acc'])} | "
              f"{'' if is_ce else paired(mine['test_acc'], ce['test_acc'])} | {spread(mine['test_acc_last5'])} | "
              f"{'' if is_ce else paired(mine['test_acc_last5'], ce['test_acc_last5'])} | "
              f"{spread(mine['train_memorised'], 100, 1)} / {spread(mine['train_memorised_last'], 100, 1)} | "
              f"{detection} |")


def init_gain(setting: pd.DataFrame, methods: list) -> None:
    """Per method, each pretrained init's test accuracy minus random init's on the same noisy labels (points)."""
    from_random = setting[setting["init"] == "random"]
    print("| method | init | − random: selected | − random: last-5 mean |")
    print("|---" * 4 + "|")
    for method in methods:
        base = from_random[from_random["method"] == method].set_index(KEY)
        for init, rows in setting[(setting["init"] != "random") & (setting["method"] == method)].groupby("init"):
            mine = rows.set_index(KEY)
            print(f"| {method} | {init.split('-')[0]} | {paired(mine['test_acc'], base['test_acc'])} | "
                  f"{paired(mine['test_acc_last5'], base['test_acc_last5'])} |")


def main(paths: list) -> None:
    # with the detection columns of the run folders beside each table
    runs = pd.concat([load_results(path) for path in paths], ignore_index=True)
    cells = spec_cells()
    runs["method"] = runs.apply(variant, axis=1, spec_args=dict(cells))
    methods = list(dict.fromkeys(["ce", *(method for method, _ in cells), *runs["method"]]))
    for (noise_type, rate), setting in runs.groupby(["noise_type", "noise_rate"], sort=False):
        for init, rows in setting.groupby("init", sort=False):
            name = "random" if init == "random" else init
            print(f"\n### {noise_type} {rate:g}, init {name}\n")
            table(rows, methods)
        if setting["init"].nunique() > 1 and (setting["init"] == "random").any():
            print(f"\n### {noise_type} {rate:g}, pretrained init − random init\n")
            init_gain(setting, methods)


if __name__ == "__main__":
    main(sys.argv[1:])
