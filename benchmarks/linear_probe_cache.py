"""What encoding the splits once saves a linear probe, as a ratio to pushing every batch through the frozen encoder.

A linear probe without augmentation (``freeze: true``, ``augmentation: false``) sees every image through the same
fixed function, so :func:`ssl_noise.finetune.encoded_splits` encodes the train, validation and test splits once and
the head trains on the stored features. This script runs :func:`ssl_noise.finetune.fit` twice in one process on
the same prepared run (same init, noisy labels, seeds):

* A, image path: ``encoded_splits`` replaced by the raw images, so each epoch runs the encoder over the training
  batches and the validation and test splits (what a probe costs without the cache);
* B, cached: the shipped path, including the one-off encoding.

It prints both wall times, their ratio, and whether the two runs chose the same epoch with the same test accuracy
(they should, up to bf16 rounding of the features).

    python benchmarks/linear_probe_cache.py --data-root ../shared/data                 # BloodMNIST subset, CPU
    python benchmarks/linear_probe_cache.py --data-root ../shared/data --subset 0 --epochs 10 --device cuda
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml


def main() -> None:
    import ssl_noise.finetune as ft
    from ssl_noise.config import FinetuneConfig, resolve

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="bloodmnist")
    parser.add_argument("--data-root")
    parser.add_argument("--init", default="random", help="random or a registry reference")
    parser.add_argument("--checkpoints", default="checkpoints")
    parser.add_argument("--subset", type=int, default=2000, help="stratified training subset (0: the whole split)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    recipe = yaml.safe_load(open("finetune/bloodmnist/linear_probe.yaml"))
    cfg = resolve(FinetuneConfig, recipe, {
        "init": args.init, "dataset": args.dataset, "subset": args.subset or None, "epochs": args.epochs,
        "noise_rate": 0.4, "noise_seed": 1, "optimizer": "adam", "lr": 0.01, "weight_decay": 0.0,
        "augmentation": False})
    prep = ft.prepare(cfg, data_root=args.data_root, checkpoints=Path(args.checkpoints))
    cached_splits = ft.loop.encoded_splits

    def timed(encode) -> tuple:
        ft.loop.encoded_splits = encode
        ft.ENCODED.clear()
        start = time.perf_counter()
        result = ft.fit(prep, device=args.device, show_progress=False)
        return time.perf_counter() - start, result

    a, plain = timed(lambda prep, *_: (prep.data.train.images, prep.data.val.images, prep.data.test.images))
    b, cached = timed(cached_splits)
    ft.loop.encoded_splits = cached_splits
    n = len(prep.data.train) + len(prep.data.val) + len(prep.data.test)
    print(f"data {prep.data.name} train {len(prep.data.train)}, {n} images in all, {prep.data.image_size}px, init "
          f"{args.init}, {args.epochs} epochs, {cfg.precision}, {args.device}, torch threads {torch.get_num_threads()}")
    for name, seconds, result in (("A, encoder on every batch:", a, plain), ("B, splits encoded once:", b, cached)):
        epochs = ", ".join(f"{r['epoch_time_s']:.2f}" for r in result.log)
        print(f"{name:28s}{seconds:8.2f} s in fit  (training passes per epoch: {epochs} s)")
    print(f"speed-up A/B = {a / b:.1f}x")
    same = plain.best_epoch == cached.best_epoch
    print(f"selected epoch {plain.best_epoch + 1} vs {cached.best_epoch + 1}; test acc "
          f"{plain.test[plain.best_epoch]['acc']:.4f} vs {cached.test[cached.best_epoch]['acc']:.4f}"
          f" ({'same epoch' if same else 'DIFFERENT epoch'})")


if __name__ == "__main__":
    main()
