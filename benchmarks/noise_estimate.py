"""The default noise-rate estimate against the confident joint (the `auto` before issue #51) on the same features,
in one run: wall time of each estimator, the ratio, and each one's estimate beside the realised rate.

Features: what `ssl-noise finetune --init random` estimated from before, a random ResNet-18's L2-normalised
embedding of the full BloodMNIST training split (extracting it is not timed: both estimators take it as given).
Then, once, what finetune's `auto` now runs end to end: the PCA of the pixels and the default estimator. Target
of issue #51: the default takes at most 1/10 of the confident joint's time on the same features.

    SSL_NOISE_DATA=../shared/data python benchmarks/noise_estimate.py --noise 0.4 --reps 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="bloodmnist")
    parser.add_argument("--noise", type=float, default=0.4, help="symmetric noise rate")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions of each estimator (the median)")
    parser.add_argument("--threads", type=int, default=None, help="torch / faiss / BLAS threads (default: all)")
    args = parser.parse_args()

    import torch

    from ssl_noise import estimate, inits, knn, noise
    from ssl_noise.data import load_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    init = inits.resolve("random", data)
    features = knn.extract_features(init.encoder, data.train.images, **init.normalisation)
    noisy = noise.corrupt(data.train.labels, noise.symmetric(data.num_classes, args.noise),
                          rng=np.random.default_rng(1))
    print(f"{data.name}: {len(features)} x {features.shape[1]} random-init features, symmetric {args.noise:g} "
          f"(realised {noisy.realised_rate:.3f}), {torch.get_num_threads()} thread(s)")
    times = {}
    for name in ("confident_joint", estimate.DEFAULT):
        runs = []
        for _ in range(args.reps):
            start = time.perf_counter()
            found = estimate.estimate(features, noisy.noisy, data.num_classes, estimator=name, seed=0)
            runs.append(time.perf_counter() - start)
        times[name] = float(np.median(runs))
        print(f"{name:16s} {times[name]:7.2f} s (median of {args.reps}: "
              f"{', '.join(f'{t:.2f}' for t in runs)})  estimate {found.rate:.3f} [{found.lo:.3f}, {found.hi:.3f}]")
    start = time.perf_counter()
    found = estimate.estimate(estimate.pixel_features(data.train.images), noisy.noisy, data.num_classes)
    times["finetune auto"] = time.perf_counter() - start
    print(f"{'finetune auto':16s} {times['finetune auto']:7.2f} s (pixel PCA-128 + {estimate.DEFAULT}, once)  "
          f"estimate {found.rate:.3f} [{found.lo:.3f}, {found.hi:.3f}]")
    for name in (estimate.DEFAULT, "finetune auto"):
        print(f"ratio {name} / confident_joint = {times[name] / times['confident_joint']:.3f} (target <= 0.1)")


if __name__ == "__main__":
    main()
