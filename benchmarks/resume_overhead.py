"""What writing the resumable state costs, as a ratio to the CPU epoch it follows.

One fine-tuning run through the real loop (:func:`ssl_noise.finetune.fit` with ``state_dir``), with the state writer
(:func:`ssl_noise.engine.save_training_state`) timed from the inside. Epoch 1 is a warm-up; from epoch 2 on each
epoch's wall time (training, validation and test evaluation, selection, state) is the time between two consecutive
state writes, and the ratio is the write's share of it. The state's size is that of the networks, their optimisers
and the best epoch's copy, independent of the data, while the epoch grows with the data: the ratio measured on a
subset is an upper bound for the full split. The issue's budget is about 3 %.

    python benchmarks/resume_overhead.py                                      # BloodMNIST subset if found, CE
    python benchmarks/resume_overhead.py --method coteaching --subset 2000   # two networks: twice the state
    python benchmarks/resume_overhead.py --dataset synthetic:n_train=2000 --image-size 28
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path


def main() -> None:
    import torch

    from ssl_noise import engine
    from ssl_noise.config import FinetuneConfig, resolve
    from ssl_noise.finetune import fit, prepare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="bloodmnist")
    parser.add_argument("--data-root", default=os.environ.get("SSL_NOISE_DATA", "../shared/data"))
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--subset", type=int, default=2000)
    parser.add_argument("--method", default="ce")
    parser.add_argument("--epochs", type=int, default=3, help="at least 2 (epoch 1 is the warm-up)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    subset = None if args.dataset.startswith("synthetic") else args.subset
    cfg = resolve(FinetuneConfig, {"dataset": args.dataset, "image_size": args.image_size, "subset": subset,
                                   "epochs": max(args.epochs, 2), "method": args.method, "noise_rate": 0.4,
                                   "noise_estimate": "oracle", "precision": "fp32"})
    timings: list = []  # (start, end) of every state write
    save = engine.save_training_state

    def timed(folder, tree, *, epoch, kind):
        start = time.perf_counter()
        path = save(folder, tree, epoch=epoch, kind=kind)
        timings.append((start, time.perf_counter()))
        return path

    engine.save_training_state = timed
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prep = prepare(cfg, data_root=args.data_root, checkpoints=Path(tmp) / "ck")
        fit(prep, show_progress=False, state_dir=Path(tmp) / "state")
        size = sum(p.stat().st_size for p in (Path(tmp) / "state").iterdir())
    ratios = []
    for (_, previous_end), (start, end) in zip(timings, timings[1:]):
        epoch, write = end - previous_end, end - start
        ratios.append(write / (epoch - write))
        print(f"epoch {len(ratios) + 1}: {epoch - write:.2f} s training + evaluation, state write {write:.3f} s "
              f"({size / 1e6:.0f} MB) = {100 * ratios[-1]:.2f} % of the epoch")
    print(f"{args.method} on {args.dataset} ({len(prep.data.train)} training images, {args.image_size} px, "
          f"{torch.get_num_threads()} thread(s)): state write / epoch = {100 * max(ratios):.2f} % (worst epoch); "
          f"budget ~3 %")


if __name__ == "__main__":
    main()
