"""Training from the memory-mapped image cache (ssl_noise/data/cache.py): its speed against RAM, and its memory.

One run prints three measurements on a CSV manifest of 224-px RGB PNGs (``--distinct`` files repeated to
``--images`` rows, so writing the set is quick while decoding and the cache see every row):

* decode: the first load, a cache miss; seconds, images/s and the peak RSS of a fresh process;
* pretrain: the real ``ssl_noise.pretrain.pretrain`` (SimCLR, ResNet-18, batch ``--batch``) for ``--steps`` steps
  from the cache, in a fresh process, against a stated RSS budget smaller than the decoded set; the k-NN monitor
  is skipped (at 224 px on a CPU it would take hours) and so is the rest of the epoch;
* throughput: batch assembly (an index gather of uint8 images) plus the SimCLR augmentation at 224 px, images/s
  from the memory map against the same images copied into RAM (``--throughput-images`` of the train split, page
  cache warm): each batch is timed from both sources back to back (in alternating order, so a busy moment of a
  shared machine hits both), the median over ``--rounds`` rounds, and their ratio (target >= 0.9).

Peak RSS is ``ru_maxrss`` of the child process (resident pages, file-backed ones included).

    PYTHONPATH=. nice python benchmarks/data_throughput.py
    PYTHONPATH=. nice python benchmarks/data_throughput.py --images 2000 --budget-gb 1.5   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GB = 1e9


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # ru_maxrss is in KiB on Linux


def write_set(root: Path, images: int, distinct: int, size: int) -> Path:
    """``distinct`` random smooth RGB PNGs and a manifest of ``images`` rows over them (4 classes, 2 % val and
    2 % test)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "png").mkdir(parents=True, exist_ok=True)
    for i in range(distinct):
        small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR).save(root / "png" / f"{i}.png")
    rows = ["path,label,split"]
    for i in range(images):
        split = "val" if i % 50 == 0 else "test" if i % 50 == 1 else "train"
        rows.append(f"png/{i % distinct}.png,{i % 4},{split}")
    manifest = root / "set.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def child(args) -> dict:
    """One measurement in this (fresh) process; returns what the parent prints."""
    import torch

    from ssl_noise.data import load_dataset

    torch.set_num_threads(args.threads)
    spec = f"csv:{args.manifest}"
    if args.phase == "decode":
        start = time.perf_counter()
        data = load_dataset(spec, size=args.size)
        seconds = time.perf_counter() - start
        n = len(data.train) + len(data.val) + len(data.test)
        return {"seconds": seconds, "images": n, "rss_gb": peak_rss_gb()}
    if args.phase == "pretrain":
        return pretrain_steps(args, spec)
    return throughput(args, spec)


def pretrain_steps(args, spec: str) -> dict:
    """``--steps`` steps of the real pretraining entry point, the k-NN monitor and the rest of the epoch left out."""
    import itertools

    from ssl_noise import pretrain as module
    from ssl_noise.config import PretrainConfig, resolve

    real_epoch = module.train_one_epoch

    def few_steps(model, loader, *a, **kw):
        kw["steps_per_epoch"] = args.steps
        return real_epoch(model, itertools.islice(loader, args.steps), *a, **kw)

    module.train_one_epoch = few_steps
    module.knn_monitor = lambda *a, **kw: float("nan")
    cfg = resolve(PretrainConfig, {"method": "simclr", "dataset": spec, "image_size": args.size, "epochs": 1,
                                   "batch_size": args.batch, "precision": "bf16"})
    start = time.perf_counter()
    entry = module.pretrain(cfg, data_root=None, checkpoints=Path(args.work) / "checkpoints",
                            runs=Path(args.work) / "runs", show_progress=False)
    return {"seconds": time.perf_counter() - start, "entry": entry, "rss_gb": peak_rss_gb()}


def throughput(args, spec: str) -> dict:
    """Assembly (+ augmentation) images/s from the map and from RAM, alternating rounds, page cache warm."""
    import torch

    from ssl_noise.augment import AugmentConfig, augment, to_float
    from ssl_noise.data import load_dataset

    mapped = load_dataset(spec, size=args.size).train.images[:args.throughput_images]
    in_ram = np.array(mapped)  # copying reads every page of the map once: the page cache is warm from here
    sources = {"map": torch.from_numpy(mapped), "ram": torch.from_numpy(in_ram)}
    cfg = AugmentConfig()
    rng = np.random.default_rng(0)
    rates = {(name, aug): [] for name in sources for aug in (False, True)}
    for r in range(args.rounds):
        for aug in (False, True):
            n_batches = args.batches if aug else 20 * args.batches  # a gather alone takes milliseconds
            seconds = {name: 0.0 for name in sources}
            for b in range(n_batches):
                idx = torch.from_numpy(rng.integers(0, len(mapped), args.batch_tp))
                order = list(sources) if (r + b) % 2 == 0 else list(sources)[::-1]  # no source always first
                for name in order:
                    g = torch.Generator().manual_seed(b)
                    start = time.perf_counter()
                    x = sources[name][idx]
                    if aug:
                        x = augment(to_float(x), cfg, g)
                    float(x[0, 0, 0, 0])  # the batch exists
                    seconds[name] += time.perf_counter() - start
            for name in sources:
                rates[(name, aug)].append(n_batches * args.batch_tp / seconds[name])
    return {"rates": {f"{n}/{'aug' if a else 'gather'}": statistics.median(v) for (n, a), v in rates.items()},
            "rounds": {f"{n}/{'aug' if a else 'gather'}": v for (n, a), v in rates.items()},
            "images": len(mapped), "rss_gb": peak_rss_gb()}


def run_child(args, phase: str) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--manifest", str(args.manifest), "--work", str(args.work)]
    for key in ("size", "batch", "steps", "threads", "throughput_images", "batch_tp", "batches", "rounds"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    env = {**os.environ, "SSL_NOISE_CACHE": str(Path(args.work) / "cache")}
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        sys.exit(f"the {phase} step failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=24000, help="rows of the manifest (24,000 x 224 px = 3.6 GB)")
    parser.add_argument("--distinct", type=int, default=64, help="distinct PNG files the rows cycle through")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--budget-gb", type=float, default=2.0, help="the stated RSS budget of the pretraining")
    parser.add_argument("--batch", type=int, default=8, help="pretraining batch size")
    parser.add_argument("--steps", type=int, default=3, help="pretraining steps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each child")
    parser.add_argument("--throughput-images", type=int, default=4096, help="train images in the throughput test")
    parser.add_argument("--batch-tp", type=int, default=32, help="batch size of the throughput test")
    parser.add_argument("--batches", type=int, default=4, help="augmented batches per round of the throughput "
                        "test (20x as many for the gather alone)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of the throughput test")
    parser.add_argument("--work", help="working folder (default: a temporary one, removed at the end)")
    parser.add_argument("--phase", choices=("decode", "pretrain", "throughput"), help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(child(args)))
        return
    keep = args.work is not None
    work = Path(args.work or tempfile.mkdtemp(prefix="ssl-noise-data-throughput-"))
    args.work = work
    try:
        start = time.perf_counter()
        args.manifest = write_set(work, args.images, args.distinct, args.size)
        made = time.perf_counter() - start
        set_gb = args.images * args.size * args.size * 3 / GB
        print(f"data set: {args.images:,} rows over {args.distinct} PNG files, {args.size}x{args.size}x3 uint8 = "
              f"{set_gb:.2f} GB decoded (written in {made:.1f} s); RSS budget {args.budget_gb:.2f} GB "
              f"(the set is {set_gb / args.budget_gb:.1f}x the budget)")
        decode = run_child(args, "decode")
        print(f"decode (cache miss): {decode['seconds']:.1f} s, {decode['images'] / decode['seconds']:.0f} images/s, "
              f"peak RSS {decode['rss_gb']:.2f} GB")
        cached = sorted((work / "cache" / "images").glob("*.npy"))
        print(f"cache: {', '.join(f'{p.name} {p.stat().st_size / GB:.2f} GB' for p in cached)}")
        pre = run_child(args, "pretrain")
        verdict = "within" if pre["rss_gb"] <= args.budget_gb else "OVER"
        print(f"pretrain (SimCLR, ResNet-18, {args.size} px, batch {args.batch}, {args.steps} steps from the map, "
              f"cache hit): {pre['seconds']:.1f} s, peak RSS {pre['rss_gb']:.2f} GB, {verdict} the "
              f"{args.budget_gb:.2f} GB budget for a {set_gb:.2f} GB set")
        tp = run_child(args, "throughput")
        r = tp["rates"]
        print(f"throughput at {args.size} px, batch {args.batch_tp}, {tp['images']:,} train images, warm page cache, "
              f"median of {args.rounds} rounds:")
        for kind, label in (("aug", "assembly + SimCLR augmentation"), ("gather", "assembly alone (index gather)")):
            print(f"  {label:<32} map {r['map/' + kind]:8.0f} images/s, RAM {r['ram/' + kind]:8.0f} images/s, "
                  f"ratio {r['map/' + kind] / r['ram/' + kind]:.3f}")
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
