"""The tables of studies/noise_estimates/README.md from detections.csv (written by run.sh): mean ± sd over the
noise seeds of each setting. Run from the repository root: python studies/noise_estimates/summarise.py"""

from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent


def fmt(values) -> str:
    values = pd.Series(values, dtype=float).dropna()
    if values.empty:
        return "-"
    return f"{values.mean():.3f}" + (f" ± {values.std(ddof=1):.3f}" if len(values) > 1 else "")


def main() -> None:
    frame = pd.read_csv(HERE / "detections.csv")
    frame["init"] = frame["init"].str.split("-").str[0]
    frame["setting"] = frame["noise_type"].str.replace("symmetric", "sym").str.replace("pairflip", "pair") + " " + \
        frame["noise_rate"].map("{:g}".format)
    frame["error"] = frame["noise_rate_estimate"] - frame["realised_rate"]
    keys = ["dataset", "init", "setting", "detector"]
    rows = []
    for key, part in frame.groupby(keys, sort=True):
        rows.append({**dict(zip(keys, key)), "n": len(part), "realised": fmt(part["realised_rate"]),
                     "estimate": fmt(part["noise_rate_estimate"]), "estimate − realised": fmt(part["error"]),
                     "F1": fmt(part["f1"]), "AUROC": fmt(part["auroc"]), "AP": fmt(part["ap"]),
                     "wall s": fmt(part["wall_time_s"])})
    table = pd.DataFrame(rows)
    print("| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main()
