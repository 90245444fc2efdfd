"""Every registered noise-rate estimator (ssl_noise.estimate.ESTIMATORS) on every setting of issue #51, from three
kinds of features, three noise seeds: estimate, 90 % interval, realised rate and wall time per cell.

Run from the repository root (writes estimators.csv beside this file; features are cached under --cache):

    SSL_NOISE_DATA=../shared/data python studies/noise_estimates/estimators.py \
        --entry bloodmnist=<simclr id> --entry pneumoniamnist_balanced=<id> --entry breastmnist_resaved=<id>
    python studies/noise_estimates/estimators.py --table > studies/noise_estimates/estimators.md
    SSL_NOISE_DATA=../shared/data python studies/noise_estimates/estimators.py --subsets   # estimators_subsets.csv

Features: ``pca`` (128 principal components of the pixels), ``random`` (ResNet-18 with random weights, the
resolution's default stem) and ``simclr`` (the registry entry given with --entry). The labels are corrupted as
``ssl-noise finetune`` corrupts them (``default_rng(noise_seed)``; instance noise's weights from the same seed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).parent
SETTINGS = {"bloodmnist": [("symmetric", .2), ("symmetric", .4), ("symmetric", .6), ("pairflip", .3),
                           ("instance", .4)],
            "../shared/data/pneumoniamnist_balanced.npz": [("symmetric", .2), ("symmetric", .4)],
            "../shared/data/breastmnist_resaved.npz": [("symmetric", .2)]}
SEEDS = (1, 2, 3)
#: cleanlab's joint needs a 5-fold logistic regression per cell (minutes on 512-d features): PCA features only,
#: plus one cell per other feature kind for the wall-time comparison.
SLOW = {"confident_joint"}


def features(spec: str, kind: str, entry: str | None, cache: Path):
    from ssl_noise import inits, knn
    from ssl_noise.data import load_dataset

    data = load_dataset(spec)
    path = cache / f"{Path(spec).stem}_{kind}.npy"
    if path.is_file():
        return data, np.load(path)
    start = time.perf_counter()
    if kind == "pca":
        from sklearn.decomposition import PCA
        flat = data.train.images.reshape(len(data.train), -1).astype(np.float32) / 255.0
        f = PCA(128, random_state=0).fit_transform(flat - flat.mean(axis=0))
        f /= np.linalg.norm(f, axis=1, keepdims=True)   # unit rows, as the encoders' features
    else:
        init = inits.resolve("random" if kind == "random" else entry, data, checkpoints=Path("checkpoints"))
        f = knn.extract_features(init.encoder, data.train.images, **init.normalisation)
    print(f"{spec} {kind}: features in {time.perf_counter() - start:.1f} s", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, f.astype(np.float32))
    return data, f.astype(np.float32)


def measure(entries: dict, cache: Path) -> pd.DataFrame:
    from ssl_noise import estimate, noise

    rows = []
    for spec, settings in SETTINGS.items():
        name = Path(spec).stem
        for kind in ("pca", "random", "simclr"):
            if kind == "simclr" and name not in entries:
                continue
            data, f = features(spec, kind, entries.get(name), cache)
            for noise_type, rate in settings:
                for seed in SEEDS:
                    process = noise.build_noise(noise_type, data.num_classes, rate, seed=seed)
                    noisy = noise.corrupt(data.train.labels, process, rng=np.random.default_rng(seed),
                                          images=data.train.images)
                    for est in estimate.ESTIMATORS.names():
                        if est in SLOW and kind != "pca" and (seed != 1 or noise_type != "symmetric"):
                            continue
                        found = estimate.estimate(f, noisy.noisy, data.num_classes, estimator=est, seed=seed)
                        rows.append({"dataset": name, "features": kind, "noise_type": noise_type, "noise_rate": rate,
                                     "noise_seed": seed, "realised": noisy.realised_rate, "estimator": est,
                                     "estimate": found.rate, "lo": found.lo, "hi": found.hi,
                                     "wall_s": round(found.seconds, 2)})
                        print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub table (pandas' to_markdown needs tabulate, which the project does not install)."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)]
    return "\n".join(["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
                     + ["| " + " | ".join(row) + " |" for row in cells])


def measure_subsets(sizes=(1000, 2000), rates=(0.2, 0.4, 0.6)) -> pd.DataFrame:
    """Small training sets, as the CPU studies fine-tune on (BloodMNIST subsets drawn with the noise seed, as
    ``finetune --subset N`` draws them), pixel PCA features (what finetune's auto uses), symmetric noise."""
    from ssl_noise import estimate, noise
    from ssl_noise.data import load_dataset

    rows = []
    for size in sizes:
        for seed in SEEDS:
            data = load_dataset("bloodmnist", subset=size, seed=seed)
            f = estimate.pixel_features(data.train.images, seed=0)
            for rate in rates:
                noisy = noise.corrupt(data.train.labels, noise.symmetric(data.num_classes, rate),
                                      rng=np.random.default_rng(seed))
                for est in estimate.ESTIMATORS.names():
                    found = estimate.estimate(f, noisy.noisy, data.num_classes, estimator=est, seed=seed)
                    rows.append({"dataset": f"bloodmnist[{size}]", "features": "pca", "noise_type": "symmetric",
                                 "noise_rate": rate, "noise_seed": seed, "realised": noisy.realised_rate,
                                 "estimator": est, "estimate": found.rate, "lo": found.lo, "hi": found.hi,
                                 "wall_s": round(found.seconds, 2)})
    return pd.DataFrame(rows)


def table(frame: pd.DataFrame) -> str:
    frame = frame.assign(error=frame.estimate - frame.realised,
                         covered=(frame.lo <= frame.realised) & (frame.realised <= frame.hi),
                         setting=frame.dataset.str.split("_").str[0] + " " + frame.noise_type.str[:4] + " "
                         + frame.noise_rate.map("{:g}".format))
    out = ["## Mean estimate − realised per setting (n = noise seeds)", ""]
    wide = frame.groupby(["setting", "features", "estimator"]).error.agg(["mean", "std", "count"]).reset_index()
    wide["cell"] = wide.apply(lambda r: f"{r['mean']:+.3f} ± {0 if np.isnan(r['std']) else r['std']:.3f} "
                              f"(n={r['count']})", axis=1)
    pivot = wide.pivot_table(index=["setting", "features"], columns="estimator", values="cell", aggfunc="first")
    out += [markdown(pivot.fillna("-").reset_index()), "", "## Summary over cells", ""]
    summary = frame.groupby(["estimator", "features"]).agg(
        cells=("error", "size"), mean_abs_error=("error", lambda e: np.abs(e).mean()),
        worst_abs_error=("error", lambda e: np.abs(e).max()), coverage=("covered", "mean"),
        median_wall_s=("wall_s", "median")).reset_index()
    out += [markdown(summary)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entry", action="append", default=[], help="DATASET=REGISTRY_ID for the simclr features")
    parser.add_argument("--cache", type=Path, default=Path("runs/noise_estimates/features"))
    parser.add_argument("--table", action="store_true", help="print the markdown tables of estimators.csv")
    parser.add_argument("--subsets", action="store_true", help="measure 1,000- and 2,000-image subsets instead")
    args = parser.parse_args()
    if args.table:
        print(table(pd.read_csv(HERE / "estimators.csv")))
        if (HERE / "estimators_subsets.csv").is_file():
            print("\n# Subsets of BloodMNIST (pixel PCA features)\n")
            print(table(pd.read_csv(HERE / "estimators_subsets.csv")))
        return
    if args.subsets:
        measure_subsets().to_csv(HERE / "estimators_subsets.csv", index=False)
        return
    frame = measure(dict(e.split("=", 1) for e in args.entry), args.cache)
    frame.to_csv(HERE / "estimators.csv", index=False)


if __name__ == "__main__":
    main()
