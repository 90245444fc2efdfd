"""Issue #51, point 2: can the data correct the estimate for neighbourhood impurity, or can a training run's early
losses replace the features? Three candidates, measured on the cells of estimators.py, beside the default:

* ``extrapolated``: class c's anchors ranked by neighbours 11-30; their label agreement with neighbours 1, 2, ..., 10
  fitted by a line in the rank and read at rank 0, where a neighbour would share the anchor's clean class, then
  solved for T̂_cc as ``knn_agreement`` solves it.
* ``consensus3``: second- and third-order label consensus of an anchor and its two nearest neighbours (HOC's
  statistics, Zhu et al. 2021) with one impurity parameter: each neighbour shares the anchor's clean class with
  probability ρ, independently. Under symmetric noise with eigenvalue λ = (Kτ − 1)/(K − 1) and μ = (ρK − 1)/(K − 1):
  A2 = 1/K + (1 − 1/K) λ²μ and A3 = 1/K² + (2/K)(1 − 1/K) λ²μ + (1/K)(1 − 1/K) λ²μ² + S3 λ³μ², two equations in
  (λ, μ). A2 alone fixes only the product λ²μ: no pairwise statistic separates noise from impurity.
* ``warmup``: the high-loss share of a two-component mixture on the losses of a training run's early epochs
  (``mixture_rate`` on −log of history.npy), read from finished run folders of methods that train on every sample.

Run from the repository root (features cached by estimators.py; writes impurity.csv and warmup.csv here):

    SSL_NOISE_DATA=../shared/data python studies/noise_estimates/impurity.py --runs runs
    python studies/noise_estimates/impurity.py --table > studies/noise_estimates/impurity.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from estimators import SEEDS, SETTINGS, features, markdown  # noqa: E402  (the sibling script's cells and cache)

EXTRAP_RANKS = 10       # neighbours 1..10 measured, 11..30 rank the anchors
WARMUP_EPOCHS = (1, 2, 3, 5, 10)
FULL_SAMPLE_METHODS = {"ce", "gce", "sce", "elr"}   # methods whose history holds every sample's loss


def extrapolated(idx: np.ndarray, labels: np.ndarray, K: int) -> float:
    """The rate when each class's anchor agreement is read at neighbour rank 0 of a line through ranks 1-10."""
    from ssl_noise.estimate._anchors import class_anchors, off_diagonal_shape
    from ssl_noise.estimate.base import rate_from_T
    from ssl_noise.estimate.knn_agreement import solve_diagonal

    anchors = class_anchors(idx, labels, K, skip=EXTRAP_RANKS, rank_k=3 * EXTRAP_RANKS, share=0.02)
    T = np.zeros((K, K))
    ranks = np.arange(1, EXTRAP_RANKS + 1)
    for c, rows in enumerate(anchors):
        own = labels[rows]
        agreement = [np.mean(own == labels[idx[rows, m - 1]]) for m in ranks]
        at_zero = np.polyfit(ranks, agreement, 1)[1]
        shape = off_diagonal_shape(own, c, K)
        tau = solve_diagonal(at_zero, shape)
        T[c] = shape * (1 - tau)
        T[c, c] = tau
    return rate_from_T(T, labels)


def consensus3(idx: np.ndarray, labels: np.ndarray, K: int) -> tuple[float, float]:
    """(rate, μ): the symmetric-noise solution of the second- and third-order consensus with impurity μ."""
    from ssl_noise.estimate._anchors import class_anchors

    rows = np.concatenate(class_anchors(idx, labels, K, skip=2, rank_k=20, share=0.02))
    a, n1, n2 = labels[rows], labels[idx[rows, 0]], labels[idx[rows, 1]]
    A2 = np.mean(np.concatenate([a == n1, a == n2]))
    A3 = np.mean((a == n1) & (n1 == n2))
    P = (A2 - 1 / K) / (1 - 1 / K)                       # λ²μ
    if P <= 0:
        return 1 - 1 / K, float("nan")
    S3 = (1 - 1 / K) ** 3 - (K - 1) / K ** 3             # Σ_j v_j³ for v = e_c − 1/K
    R = (A3 - 1 / K ** 2 - (2 / K) * (1 - 1 / K) * P) / P ** 2
    q = (1 / K) * (1 - 1 / K)                            # q x² + S3 x − R = 0 in x = 1/λ
    x = (-S3 + np.sqrt(max(S3 * S3 + 4 * q * R, 0.0))) / (2 * q)
    lam = min(1.0, 1 / x) if x > 0 else 1.0
    return float(1 - (1 / K + lam * (1 - 1 / K))), float(P / lam ** 2)


def measure(cache: Path) -> pd.DataFrame:
    from ssl_noise import estimate, noise
    from ssl_noise.data import load_dataset
    from ssl_noise.estimate._anchors import neighbours

    def cells():
        for spec, settings in SETTINGS.items():
            data, f = features(spec, "pca", None, cache)
            for noise_type, rate in settings:
                for seed in SEEDS:
                    process = noise.build_noise(noise_type, data.num_classes, rate, seed=seed)
                    yield (Path(spec).stem, noise_type, rate, seed, data.num_classes, f,
                           noise.corrupt(data.train.labels, process, rng=np.random.default_rng(seed),
                                         images=data.train.images))
        for size in (1000, 2000):
            for seed in SEEDS:
                data = load_dataset("bloodmnist", subset=size, seed=seed)
                f = estimate.pixel_features(data.train.images, seed=0)
                for rate in (0.2, 0.4, 0.6):
                    yield (f"bloodmnist[{size}]", "symmetric", rate, seed, data.num_classes, f,
                           noise.corrupt(data.train.labels, noise.symmetric(data.num_classes, rate),
                                         rng=np.random.default_rng(seed)))

    rows = []
    for name, noise_type, rate, seed, K, f, noisy in cells():
        idx = neighbours(f, 3 * EXTRAP_RANKS)
        default = estimate.estimate(f, noisy.noisy, K, seed=seed, boot=0).rate
        c3, mu = consensus3(idx, noisy.noisy, K)
        for est, value in (("knn_agreement", default), ("extrapolated", extrapolated(idx, noisy.noisy, K)),
                           ("consensus3", c3)):
            rows.append({"dataset": name, "noise_type": noise_type, "noise_rate": rate, "noise_seed": seed,
                         "realised": noisy.realised_rate, "estimator": est, "estimate": value,
                         "impurity_mu": mu if est == "consensus3" else np.nan})
        print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def warmup(runs: Path) -> pd.DataFrame:
    """The mixture's rate on each early epoch's losses, for every finished run folder that trained on all samples."""
    from ssl_noise.estimate.mixture import mixture_rate

    rows = []
    for folder in sorted(p.parent for p in runs.glob("*/history.npy")):
        metrics = json.loads((folder / "metrics.json").read_text())
        config = yaml.safe_load((folder / "config.yaml").read_text())
        if config["method"] not in FULL_SAMPLE_METHODS or metrics["noise"].get("realised_rate") is None:
            continue
        history = np.load(folder / "history.npy")
        for epoch in WARMUP_EPOCHS:
            p = history[:, epoch - 1]
            rows.append({"run": folder.name, "method": config["method"],
                         "protocol": metrics["training"].get("protocol", "shared"),
                         "augmentation": bool(config.get("augmentation")), "n_train": len(p),
                         "noise_type": metrics["noise"]["type"], "noise_rate": metrics["noise"]["rate"],
                         "realised": metrics["noise"]["realised_rate"],
                         "epoch": epoch, "estimate": mixture_rate(-np.log(np.clip(p, 1e-6, 1.0)))})
    return pd.DataFrame(rows)


def table() -> str:
    frame = pd.read_csv(HERE / "impurity.csv")
    frame["error"] = frame.estimate - frame.realised
    frame["cells"] = np.where(frame.dataset.str.contains(r"\["), "subsets (18)", "full splits (24)")
    summary = frame.groupby(["cells", "estimator"]).error.agg(
        mean="mean", mean_abs=lambda e: np.abs(e).mean(), worst=lambda e: np.abs(e).max()).reset_index()
    per = frame.assign(setting=frame.dataset.str.split("_").str[0] + " " + frame.noise_type.str[:4] + " "
                       + frame.noise_rate.map("{:g}".format))
    per = per.groupby(["setting", "estimator"]).error.agg(["mean", "std"]).reset_index()
    per["cell"] = per.apply(lambda r: f"{r['mean']:+.3f} ± {r['std']:.3f}", axis=1)
    wide = per.pivot_table(index="setting", columns="estimator", values="cell", aggfunc="first").reset_index()
    mu = frame[frame.estimator == "consensus3"].impurity_mu
    out = ["## Summary (estimate − realised; pixel PCA features, noise seeds 1-3)", "", markdown(summary), "",
           f"consensus3's impurity μ: median {mu.median():.2f}, range {mu.min():.2f}-{mu.max():.2f} "
           f"({int((mu > 1).sum())} of {len(mu)} cells above 1, which no purity gives)", "",
           "## Per setting (mean ± sd over 3 noise seeds)", "", markdown(wide)]
    if (HERE / "warmup.csv").is_file():
        w = pd.read_csv(HERE / "warmup.csv")
        w["error"] = w.estimate - w.realised
        w["setting"] = w.noise_type.str[:4] + " " + w.noise_rate.map("{:g}".format) + np.where(w.augmentation,
                                                                                               " augmented", "")
        by = w.groupby(["setting", "method", "epoch"]).agg(runs=("run", "size"), realised=("realised", "mean"),
                                                 estimate_min=("estimate", "min"), estimate_max=("estimate", "max"),
                                                 mean_abs_error=("error", lambda e: np.abs(e).mean())).reset_index()
        out += ["", "## Warm-up losses: the mixture's rate at early epochs (the run folders found; 2,000 images)", "",
                markdown(by)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("runs/noise_estimates/features"))
    parser.add_argument("--runs", type=Path, help="also read the early losses of the run folders here")
    parser.add_argument("--table", action="store_true", help="print the markdown tables of the CSVs")
    args = parser.parse_args()
    if args.table:
        print(table())
        return
    if args.runs is not None:
        warmup(args.runs).to_csv(HERE / "warmup.csv", index=False)
    measure(args.cache).to_csv(HERE / "impurity.csv", index=False)


if __name__ == "__main__":
    main()
