"""Score an advise run against the hidden clean labels (truth.csv): the estimate, the top files, and every pilot
candidate's clean test accuracy beside what advise saw (T̂-corrected estimates, or the expert's sample), and where
its recommendation lands. Prints Markdown.

    python studies/advise_pneumonia/score.py runs/advise_pneumonia/truth.csv runs/advise_pneumonia/advice
"""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from ssl_noise.advise.score import TestLabels, paired, score
from ssl_noise.data import load_dataset
from ssl_noise.runs import RunFolder


def main(truth_csv: str, advice_dir: str) -> None:
    truth = pd.read_csv(truth_csv).set_index("path")
    out = Path(advice_dir)
    record = json.loads((out / "advice.json").read_text())
    data_dir = Path(truth_csv).parent / "data"
    data = load_dataset(f"folder:{data_dir}")

    def rel(paths):
        """Paths relative to the data folder, as truth.csv holds them (advise prints them relative to it)."""
        return [p if (data_dir / p).is_file() else str(Path(p).resolve().relative_to(data_dir.resolve()))
                for p in paths]

    train, test = truth.loc[rel(data.train.paths)], truth.loc[rel(data.test.paths)]
    names = list(data.class_names)
    clean_test = np.array([names.index(c) for c in test["clean"]])
    given_test = np.array([names.index(c) for c in test["given"]])

    # ---- the estimate ----
    wrong = (train["given"] != train["clean"]).to_numpy()
    est = record["estimate"]
    T = np.zeros((2, 2))
    for i, a in enumerate(names):
        rows = train["clean"] == a
        for j, b in enumerate(names):
            T[i, j] = np.mean(train.loc[rows, "given"] == b)
    print("## The estimate\n")
    print("| | realised (training split) | advise |\n|---|---|---|")
    print(f"| noise rate | {wrong.mean():.3f} | {est['noise_rate_estimate']:.3f} "
          f"[{est['noise_rate_estimate_lo']:.3f}, {est['noise_rate_estimate_hi']:.3f}] |")
    That = np.array(est["T"])
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i != j:
                print(f"| T[{a} → {b}] | {T[i, j]:.3f} | {That[i, j]:.3f} |")

    # ---- the top files ----
    sus = pd.read_csv(out / "suspicious.csv")
    paths = rel(sus["path"])
    flipped = (truth.loc[paths, "given"] != truth.loc[paths, "clean"]).to_numpy()
    n_share = int(round(est["noise_rate_estimate"] * len(sus)))
    print("\n## The top files\n")
    print(f"Base rate of wrong labels {flipped.mean():.3f}; AUROC of the combined score "
          f"{roc_auc_score(flipped, sus['score']):.3f} (k-NN alone {roc_auc_score(flipped, sus['knn_score']):.3f}, "
          f"cleanlab alone {roc_auc_score(flipped, sus['cleanlab_score']):.3f}).\n")
    print("| top | wrong labels among them | precision | × base rate |\n|---|---|---|---|")
    for k in (20, 50, 100, n_share):
        print(f"| {k}{' (estimated share)' if k == n_share else ''} | {flipped[:k].sum()} | {flipped[:k].mean():.3f} "
              f"| {flipped[:k].mean() / flipped.mean():.1f} |")

    # ---- the candidates ----
    runs = out / "runs"
    results = pd.read_csv(runs / "results.csv")
    preds = {}
    for row in results.itertuples():
        name = f"{'random' if row.init == 'random' else 'SimCLR'} init + {row.method}"
        preds.setdefault(name, []).append(RunFolder(runs / row.run_id).array("test_probs").argmax(1))
    clean = TestLabels("clean", np.arange(len(clean_test)), clean_test, given_test)
    noisy = TestLabels("clean", np.arange(len(clean_test)), given_test, given_test)
    on_clean, on_noisy = score(preds, clean), score(preds, noisy)
    seen = {c["name"]: c for c in record["candidates"]}
    print(f"\n## The candidates against the hidden clean test labels ({len(clean_test)} images, "
          f"{np.mean(clean_test != given_test):.3f} of their given labels wrong)\n")
    print(f"advise scored with: {record['test_labels']['kind']} ({record['test_labels']['note']}).\n")
    print("| candidate | clean test acc [90 %] | per seed | advise saw [90 %] | noisy test acc |")
    print("|---|---|---|---|---|")
    for i in np.argsort(-on_clean.acc):
        n = on_clean.names[i]
        j = on_noisy.names.index(n)
        print(f"| {n} | {100 * on_clean.acc[i]:.1f} [{100 * on_clean.lo[i]:.1f}, {100 * on_clean.hi[i]:.1f}] | "
              f"{', '.join(f'{100 * a:.1f}' for a in on_clean.per_seed[n])} | {100 * seen[n]['acc']:.1f} "
              f"[{100 * seen[n]['lo']:.1f}, {100 * seen[n]['hi']:.1f}] | {100 * on_noisy.acc[j]:.1f} |")
    best = on_clean.names[on_clean.best]
    rec = record["recommended"]
    d = paired(preds[rec], preds[best], clean)
    print(f"\nRecommended: **{rec}** ({'separable' if record['separable'] else 'not separable from'} "
          f"{'' if record['separable'] else 'others'}). Best on the clean labels: **{best}**. Recommended − best: "
          f"{100 * d['diff']:+.1f} points [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] (paired bootstrap, "
          f"p = {d['p']:.3f}).")
    rank_seen = [c["name"] for c in sorted(record["candidates"], key=lambda c: -c["acc"])]
    rank_clean = [on_clean.names[i] for i in np.argsort(-on_clean.acc)]
    rank_noisy = [on_noisy.names[i] for i in np.argsort(-on_noisy.acc)]
    agree = [spearmanr([rank_clean.index(n) for n in ranking], range(len(ranking)))[0]
             for ranking in (rank_seen, rank_noisy)]
    print(f"Rank agreement with the clean ranking (Spearman): advise {agree[0]:.2f}, noisy test labels "
          f"{agree[1]:.2f}.")
    print(f"\nWall time of this advise run: {record['wall_time_s'] / 60:.1f} min (plan: "
          f"{sum(record['plan']['expected_s'].values()) / 60:.0f} min).")


if __name__ == "__main__":
    main(*sys.argv[1:3])
