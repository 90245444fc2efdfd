"""The #35 re-measure's table: Co-teaching and VoG with independent networks (random init) against CE on the same
noisy labels and against the committed shared-start rows of the same seeds (paired on noise seed and training seed),
at the validation-selected epoch and as the last-5 mean; the share of flipped labels memorised (selected / last
epoch); and, per seed, the share of the clean minority class ("normal") each method kept and its detection AUROC / AP
(read from the run folders beside the table).

    python studies/pneumonia_imbalanced_e30/independent.py studies/pneumonia_imbalanced_e30/results_independent.csv \
        --runs runs
"""

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_noise.report import paired_test
from ssl_noise.tables import load_results

HERE = Path(__file__).parent
SHARED = [HERE / f for f in ("results.csv", "results_n2.csv", "results_n3.csv")]  # CE + the shared-start rows
KEY = ["noise_seed", "seed"]


def paired(a: pd.Series, b: pd.Series) -> str:
    """``a - b`` in points over the shared pairs: mean ± sd, pairs won of n, paired t-test p where defined."""
    d = (a - b).dropna() * 100
    if d.empty:
        return "–"
    p, _ = paired_test(d.to_numpy())
    text = f"{d.mean():+.1f}" + (f" ± {d.std():.1f}" if len(d) > 1 else "") + f"; {int((d > 0).sum())}/{len(d)}"
    return text + (f"; p = {p:.2f}" if p is not None else "")


def spread(values: pd.Series, scale: float = 1.0, digits: int = 3) -> str:
    """Mean ± sd of the non-missing values x ``scale`` (sd only where there are two or more)."""
    values = values.dropna() * scale
    text = f"{values.mean():.{digits}f}"
    return text + (f" ± {values.std():.{digits}f}" if len(values) > 1 else "")


def detection(runs: Path, run_id: str) -> dict:
    """The run's ``metrics.json["detection"]`` plus ``wrong_normal_kept``: how many kept samples carry the minority
    label "normal" (0) over a true "pneumonia" ({} when the folder is gone)."""
    folder = runs / run_id
    if not (folder / "metrics.json").is_file():
        return {}
    found = json.loads((folder / "metrics.json").read_text()).get("detection") or {}
    labels = pd.read_csv(folder / "noisy_labels.csv").set_index("index")
    kept = labels.loc[np.load(folder / "kept.npy")]
    wrong_kept = int(((kept["noisy_label"] == 0) & (kept["clean_label"] != 0)).sum())
    wrong = int(((labels["noisy_label"] == 0) & (labels["clean_label"] != 0)).sum())
    return {**found, "wrong_normal_kept": f"{wrong_kept} of {wrong}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the independent-network rows (the sweep's table)")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="where their run folders are")
    args = parser.parse_args()
    new = load_results(args.results)
    old = load_results(SHARED)
    ce = old[old["method"] == "ce"].set_index(KEY)
    print("| method | n | test acc, independent | − CE | − shared start | last-5 mean | − CE | "
          "memorised: selected / last (%) |")
    print("|---" * 8 + "|")
    for method in ("coteaching", "vog"):
        mine = new[new["method"] == method].set_index(KEY).sort_index()
        shared = old[old["method"] == method].set_index(KEY)
        print(f"| {method} | {len(mine)} | {spread(mine['test_acc'])} | {paired(mine['test_acc'], ce['test_acc'])} | "
              f"{paired(mine['test_acc'], shared['test_acc'])} | {spread(mine['test_acc_last5'])} | "
              f"{paired(mine['test_acc_last5'], ce['test_acc_last5'])} | "
              f"{spread(mine['train_memorised'], 100, 1)} / {spread(mine['train_memorised_last'], 100, 1)} |")
    print(f"| ce (committed rows) | {len(ce)} | {spread(ce['test_acc'])} | | | {spread(ce['test_acc_last5'])} | | "
          f"{spread(ce['train_memorised'], 100, 1)} / {spread(ce['train_memorised_last'], 100, 1)} |")
    print("\n| method | noise seed / seed | test acc (CE) | clean minority kept | wrong minority labels kept | "
          "detection AUROC / AP |")
    print("|---" * 6 + "|")
    for (noise_seed, seed), row in new.set_index(KEY).sort_index().iterrows():
        found = detection(args.runs, str(row["run_id"]))
        kept = found.get("clean_kept_per_class", [float("nan")])[0]
        ce_acc = ce.loc[(noise_seed, seed), "test_acc"]
        print(f"| {row['method']} | {noise_seed} / {seed} | {row['test_acc']:.3f} ({ce_acc:.3f}) | "
              f"{100 * kept:.1f} % | {found.get('wrong_normal_kept', '–')} | "
              f"{found.get('auroc', float('nan')):.3f} / {found.get('ap', float('nan')):.3f} |")


if __name__ == "__main__":
    main()
