"""Each noisy-label method's training time per epoch, as a ratio to cross-entropy's, measured in one process.

Every method is set up exactly as ``ssl-noise finetune`` sets it up (the loop's context, the same data, config and
seed) and trained by the loop's own :func:`ssl_noise.finetune.loop.train_one_epoch`. The methods' epochs are
interleaved (epoch e of every method, in an order rotated per epoch, then epoch e + 1), so load from other jobs on
the machine falls on all of them alike. An epoch is timed from the method's ``on_epoch_start`` to the end of its
``on_epoch_end``: what the method costs (DivideMix's mixture division, VoG's gradient pass, the batches, the
optimiser steps), not the validation and test evaluation every method shares. Methods are made active from epoch 1
(ramps and warm-ups of one epoch), epoch 0 is not timed (first-call overheads; DivideMix's warm-up is plain CE), and
the median of the rest is reported.

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


class Run:
    """One method, prepared and set up as ``fit`` does, ready to train epoch by epoch."""

    def __init__(self, name: str, cfg, *, data_root, checkpoints: Path, device: str):
        import dataclasses

        from ssl_noise import engine
        from ssl_noise.finetune import prepare
        from ssl_noise.finetune.inputs import Inputs, encoded_splits
        from ssl_noise.finetune.loop import TrainState, _Loop
        from ssl_noise.robust import ROBUST

        args = ACTIVE_FROM_EPOCH_1.get(name, {})
        prep = prepare(dataclasses.replace(cfg, method=name, method_args=args), data_root=data_root,
                       checkpoints=checkpoints)
        inputs = Inputs(prep.cfg, prep.init["normalisation"], device)
        x_train = encoded_splits(prep, inputs, device, lambda: engine.autocast(device, cfg.precision))[0]
        loop = _Loop(prep, inputs, x_train, device, None, False)
        self.name, self.device, self.ctx = name, device, loop.context()
        self.method = ROBUST[name](self.ctx, args)
        loop.tell_rate(self.method)
        self.method.setup()
        loop.use_training_set(self.method)
        self.state = TrainState.empty(len(prep.data.train), cfg.epochs)
        self.clean = torch.from_numpy(prep.data.train.labels)
        total = self.ctx.steps_per_epoch * cfg.epochs
        self.lr = lambda step: engine.lr_at(step, total, 0, cfg.lr)
        self.times: list = []

    def epoch(self, e: int) -> None:
        from tqdm import tqdm

        from ssl_noise.finetune.loop import train_one_epoch

        self.sync()
        start = time.perf_counter()
        self.method.on_epoch_start(e)
        train_one_epoch(self.method, self.ctx, self.method.epoch_batches(e), self.state, self.clean, e, self.lr,
                        tqdm(disable=True))
        self.method.on_epoch_end(e)
        self.sync()
        self.times.append(time.perf_counter() - start)

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


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
    names = ["ce"] + [m.strip() for m in args.methods.split(",") if m.strip() and m.strip() != "ce"]
    with TemporaryDirectory() as tmp:
        runs = [Run(name, cfg, data_root=args.data_root, checkpoints=Path(tmp), device=args.device) for name in names]
        for e in range(args.epochs):
            for k in range(len(runs)):  # rotated order: no method always runs right after another
                runs[(k + e) % len(runs)].epoch(e)
    median = {run.name: statistics.median(run.times[1:]) for run in runs}
    print(f"{args.dataset} ({args.image_size} px, subset {args.subset}), batch {args.batch_size}, {args.epochs} "
          f"epochs (the first untimed), {args.device}, {args.precision}, {torch.get_num_threads()} thread(s)")
    print(f"{'method':<16}{'s/epoch':>10}{'x CE':>8}   per timed epoch (s)")
    for run in runs:
        print(f"{run.name:<16}{median[run.name]:>10.2f}{median[run.name] / median['ce']:>8.2f}   "
              + " ".join(f"{t:.2f}" for t in run.times[1:]))


if __name__ == "__main__":
    main()
