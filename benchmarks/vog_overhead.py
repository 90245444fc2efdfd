"""What VoG's bookkeeping and the per-sample history cost, as a ratio to a plain cross-entropy epoch.

One process, one ResNet-18 (the fine-tuning classifier), the fine-tuning loop's batching and augmentation
(:class:`ssl_noise.finetune.Inputs`), epochs alternated A, B, A, B, ... after one untimed warm-up epoch so drift
(thermal, other jobs on the machine) hits both arms alike; the medians are compared:

* A, CE: forward, cross-entropy, backward, SGD step, and the loop's own per-step loss read-out;
* B, CE + bookkeeping: the same plus what ``vog`` and ``history.npy`` add per step and per epoch: writing the
  label probability into the (N, epochs) history, the closed-form gradient rows ``(p_y - 1) * [h, 1]``
  (:func:`ssl_noise.robust.vog.gradient_rows`) into the float16 rolling window, and the VoG of all N samples at
  the end of the epoch (:class:`ssl_noise.robust.vog.GradientWindow`).

The issue's budget is B / A <= 1.05. Printed separately, because it is compute the method chooses rather than
bookkeeping: the eval-mode pass that ``vog_inputs=eval`` (the default) runs per network after an epoch (forward over
the un-augmented training images plus the same bookkeeping); ``vog_inputs=train`` avoids it.

    python benchmarks/vog_overhead.py                                   # synthetic, 28 px, CPU-sized
    python benchmarks/vog_overhead.py --dataset bloodmnist --data-root ../shared/data --device cuda --pairs 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F


def main() -> None:
    from ssl_noise.backbones import build_backbone, default_stem
    from ssl_noise.config import FinetuneConfig, resolve
    from ssl_noise.data import load_dataset
    from ssl_noise.finetune import Inputs
    from ssl_noise.engine import autocast as engine_autocast
    from ssl_noise.engine import build_optimizer
    from ssl_noise.robust.base import Classifier, label_prob
    from ssl_noise.robust.vog import GradientWindow, gradient_rows

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="synthetic:n_train=512,n_val=8,n_test=8")
    parser.add_argument("--data-root")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--subset", type=int, help="stratified subset of the training split")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=3, help="timed (A, B) epoch pairs")
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load_dataset(args.dataset, data_root=args.data_root, size=args.image_size, subset=args.subset)
    cfg = resolve(FinetuneConfig, {"batch_size": args.batch_size, "precision": args.precision})
    device, N, C = args.device, len(data.train), data.channels
    torch.manual_seed(0)
    encoder, feat_dim = build_backbone("resnet18", stem=default_stem(data.image_size), in_channels=C)
    model = Classifier(encoder, feat_dim, data.num_classes).to(device, memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg)
    inputs = Inputs(cfg, {"mean": [0.5] * C, "std": [0.25] * C}, device)
    images, labels, rows = torch.from_numpy(data.train.images), torch.from_numpy(data.train.labels), torch.arange(N)

    def autocast():
        return engine_autocast(device, args.precision)

    history = np.full((N, 2 * args.pairs + 1), np.nan, dtype=np.float32)
    window = GradientWindow(args.window, N, feat_dim + 1, device)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def epoch(e: int, book: bool) -> float:
        model.train()
        sync()
        start = time.perf_counter()
        for batch in inputs.batches(images, labels, rows, augment=True, shuffle=True, epoch=e):
            with autocast():
                logits, h = model(batch.x, return_features=True)
                loss = F.cross_entropy(logits, batch.y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            float(loss.detach())  # the loop reads the loss every step (both arms)
            if book:
                history[batch.index.cpu().numpy(), e] = label_prob(logits, batch.y).cpu().numpy()
                window.record(e, batch.index, gradient_rows(logits, h, batch.y))
        if book:
            window.vog()
        sync()
        return time.perf_counter() - start

    @torch.no_grad()
    def eval_pass(e: int) -> float:
        model.eval()
        sync()
        start = time.perf_counter()
        with autocast():
            for batch in inputs.batches(images, labels, rows, augment=False, shuffle=False):
                logits, h = model(batch.x, return_features=True)
                window.record(e, batch.index, gradient_rows(logits, h, batch.y))
        sync()
        return time.perf_counter() - start

    epoch(0, True)  # warm-up (allocations, cudnn autotune), not timed
    plain, booked, passes = [], [], []
    for pair in range(args.pairs):
        plain.append(epoch(1 + 2 * pair, False))
        booked.append(epoch(2 + 2 * pair, True))
        passes.append(eval_pass(2 + 2 * pair))
    a, b, c = statistics.median(plain), statistics.median(booked), statistics.median(passes)
    print(f"data {data.name} N={N} {data.image_size}px, ResNet-18, batch {args.batch_size}, {args.precision}, "
          f"{device}, torch threads {torch.get_num_threads()}, {args.pairs} epoch pairs (medians)")
    print(f"CE epoch:                             {a:8.3f} s   {', '.join(f'{t:.3f}' for t in plain)}")
    print(f"CE epoch + history + VoG bookkeeping: {b:8.3f} s   {', '.join(f'{t:.3f}' for t in booked)}")
    print(f"bookkeeping ratio B/A = {b / a:.4f}  (issue budget <= 1.05: {'OK' if b / a <= 1.05 else 'OVER'})")
    print(f"vog_inputs=eval extra pass per network: {c:.3f} s = {100 * c / a:.1f}% of a CE epoch "
          f"(compute, not bookkeeping; vog_inputs=train avoids it)")


if __name__ == "__main__":
    main()
