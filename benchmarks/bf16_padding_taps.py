"""Why jigsaw pretrains in fp32: the weight gradient of conv taps that see only padding, bf16 autocast vs fp32.

A stride-2 3x3 conv (padding 1) on a 1x1 or 2x2 map, as ResNet-18's layer3/layer4 see a 7 px jigsaw tile, has
taps that touch only the zero padding: their true gradient is exactly 0. On CPU, the bf16 backward-weights kernel
(oneDNN) has been seen to return uninitialised values for them (up to 4e37, or NaN). Those weights do nothing on a
tile but are used on a whole image, so one such step can poison the encoder. Prints, per shape and precision, the
largest |gradient| over the padding-only taps across repeated backward passes; fp32 must print 0.

    python benchmarks/bf16_padding_taps.py --reps 5
"""

from __future__ import annotations

import argparse

import torch


def padding_taps_max(cin: int, cout: int, batch: int, size: int, *, bf16: bool, reps: int) -> float:
    """Largest |grad| over the taps of a stride-2 3x3 conv that see only padding (NaN if any is NaN)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(batch, cin, size, size).to(memory_format=torch.channels_last)
    worst = 0.0
    for _ in range(reps):
        conv.weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = conv(x)
        y.float().sum().backward()
        g = conv.weight.grad
        taps = torch.cat([g[:, :, 0, :].flatten(), g[:, :, :, 0].flatten()])
        if size == 1:  # a 1x1 map: only the centre tap sees data
            taps = torch.cat([taps, g[:, :, 2, :].flatten(), g[:, :, :, 2].flatten()])
        worst = float("nan") if not torch.isfinite(taps).all() else max(worst, taps.abs().max().item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}; max |grad| of padding-only taps over {args.reps} backward passes (true: 0)")
    shapes = [(64, 64, 2304, 1), (128, 256, 2304, 1), (256, 512, 2304, 1), (256, 512, 2304, 2), (256, 512, 512, 2)]
    for cin, cout, batch, size in shapes:
        bf16 = padding_taps_max(cin, cout, batch, size, bf16=True, reps=args.reps)
        fp32 = padding_taps_max(cin, cout, batch, size, bf16=False, reps=args.reps)
        print(f"conv {cin}->{cout}, batch {batch}, {size}x{size} map: bf16 {bf16:.3g}, fp32 {fp32:.3g}")


if __name__ == "__main__":
    main()
