"""Each noisy-label method's training time per epoch, as a ratio to cross-entropy's, measured in one process.

Every method runs through the real fine-tuning loop (:func:`ssl_noise.finetune.fit`) on the same data, config and
seed. An epoch is timed from the method's ``on_epoch_start`` to the end of its ``on_epoch_end``: what the method
costs (DivideMix's mixture division, VoG's gradient pass, the batches, the optimiser steps), not the validation and
test evaluation every method shares. Methods are made active from epoch 1 (ramps and warm-ups of one epoch), epoch 0
is dropped (first-call overheads, and DivideMix's warm-up is plain CE), and the median of the rest is reported. CE
runs first and last; the spread of its two medians shows the machine's drift.

    python benchmarks/method_time.py                          # synthetic, 16 px, 256 images: CPU-sized
    python benchmarks/method_time.py --dataset bloodmnist --data-root ../shared/data --image-size 28 \\
        --subset 2048 --device cuda --epochs 4
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

#: Method arguments that make each method do its full per-epoch work from epoch 1 (ramp, warm-up, init epoch 1).
ACTIVE_FROM_EPOCH_1 = {"coteaching": {"num_gradual": 1}, "coteaching_plus": {"num_gradual": 1, "init_epoch": 1},
                       "jocor": {"num_gradual": 1}, "vog": {"num_gradual": 1, "warmup": 1},
                       "dividemix": {"warmup": 1, "lambda_u": 25}}
DEFAULT_METHODS = ("ce", "gce", "sce", "elr", "coteaching", "coteaching_plus", "jocor", "dividemix")


def epoch_times(name: str, cfg, *, data_root, checkpoints: Path, device: str) -> list:
    """Seconds per epoch (on_epoch_start .. on_epoch_end) of one run of method ``name``."""
    import dataclasses

    from ssl_noise.finetune import fit, prepare
    from ssl_noise.robust import ROBUST

    times: list = []

    class Timed(ROBUST[name]):  # the method itself, with a stopwatch around each epoch's hooks
        def on_epoch_start(self, epoch: int) -> None:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            self._start = time.perf_counter()
            super().on_epoch_start(epoch)

        def on_epoch_end(self, epoch: int):
            out = super().on_epoch_end(epoch)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self._start)
            return out

    args = ACTIVE_FROM_EPOCH_1.get(name, {})
    run_cfg = dataclasses.replace(cfg, method=name, method_args=args)
    prep = prepare(run_cfg, data_root=data_root, checkpoints=checkpoints)
    fit(prep, device=device, show_progress=False, make_method=lambda ctx: Timed(ctx, args))
    return times


def main() -> None:
    from ssl_noise.config import FinetuneConfig, resolve

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="synthetic:n_train=256,n_val=16,n_test=16")
    parser.add_argument("--data-root")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--subset", type=int, help="stratified subset of the training split")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="per method; the first is not timed")
    parser.add_argument("--noise", type=float, default=0.4)
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="fp32")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is not timed)")

    cfg = resolve(FinetuneConfig, {"dataset": args.dataset, "image_size": args.image_size, "subset": args.subset,
                                   "batch_size": args.batch_size, "epochs": args.epochs, "noise_rate": args.noise,
                                   "precision": args.precision, "noise_estimate": "oracle"})
    methods = [m.strip() for m in args.methods.split(",") if m.strip() and m.strip() != "ce"]
    medians = {}
    with TemporaryDirectory() as tmp:
        for name in ["ce", *methods, "ce"]:
            times = epoch_times(name, cfg, data_root=args.data_root, checkpoints=Path(tmp), device=args.device)
            medians.setdefault(name, []).append(statistics.median(times[1:]))
    ce = statistics.mean(medians["ce"])
    print(f"{args.dataset} ({args.image_size} px, subset {args.subset}), batch {args.batch_size}, {args.epochs} "
          f"epochs (epoch 1 untimed), {args.device}, {args.precision}, {torch.get_num_threads()} thread(s)")
    print(f"CE: {' / '.join(f'{t:.2f}' for t in medians['ce'])} s per epoch (first / last run: drift)")
    print(f"{'method':<16}{'s/epoch':>10}{'x CE':>8}")
    for name in ["ce", *methods]:
        t = statistics.mean(medians[name])
        print(f"{name:<16}{t:>10.2f}{t / ce:>8.2f}")


if __name__ == "__main__":
    main()
