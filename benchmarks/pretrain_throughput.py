"""SimCLR pretraining throughput: ssl-noise's loop against a reference loop written like lightly's examples.

Both run in this one process, on the same data (BloodMNIST 28 px training split), backbone (ResNet-18, CIFAR
stem), projection head, loss and batch size, one after the other, so the ratio compares like with like on this
machine at this moment:

* reference: fp32, lightly's PIL ``SimCLRTransform`` per image, a torch ``DataLoader`` with worker processes,
  the plain ``z0 = model(x0); z1 = model(x1); loss = criterion(z0, z1)`` step of lightly's examples;
* ssl-noise: ``ssl_noise.pretrain.train_one_epoch`` — uint8 images in memory, batched augmentation on the
  training device, bf16 autocast, ``channels_last``.

With ``--quality-epochs E`` both loops also train E epochs on ``--subset`` images from the same initial weights
and report the k-NN accuracy (validation split, k=200, t=0.1) so a speed-up that costs accuracy is visible. The
k-NN of a short schedule scatters by about a point from seed to seed, so ``--seeds 0 1 2`` repeats the comparison
(new initial weights, subset, shuffles and augmentations per seed) and prints the per-seed gaps with their mean
and standard deviation: the paired gap, not one draw, is what the "within 1 point" target is checked against.

The reference differs from ssl-noise in two ways at once, precision and pipeline (tensor augmentation on the
device, in-memory uint8, weight decay off BatchNorm). ``--fp32-arm`` adds a third loop, ssl-noise's own in
``precision: fp32``, which separates them: it sees exactly the same batches and augmentations as the bf16 loop
(both draw from the same seeded generators), so its gap to the bf16 loop is the cost of bf16 alone, and its
speed against the reference is the pipeline's share of the speed-up.

Every registered method's training step is timed too (``--methods``, default all), in the same process, with the
same backbone, batch size, data and loop (``train_one_epoch``: bf16, ``channels_last``), each method with the
``method_args`` of its BloodMNIST recipe (so its heads have their real sizes; rotation's recipe forwards all four
turns). Samples are images per second, and ``relative_to_simclr`` divides by SimCLR's rate from the same run, so
the ratio survives a busy machine better than the absolute numbers. ``--methods-only`` skips the reference loops.

    python benchmarks/pretrain_throughput.py --steps 20
    python benchmarks/pretrain_throughput.py --methods-only --steps 5 --batch-size 128
    python benchmarks/pretrain_throughput.py --methods-only --methods simclr byol dino --steps 5
    python benchmarks/pretrain_throughput.py --steps 10 --quality-epochs 3 --subset 4096 --seeds 0 1 2
    python benchmarks/pretrain_throughput.py --steps 10 --quality-epochs 3 --subset 4096 --seeds 0 1 --fp32-arm
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch


def build(seed: int, channels: int):
    from ssl_noise.augment import AugmentConfig
    from ssl_noise.backbones import build_backbone
    from ssl_noise.methods import METHODS, InputSpec

    torch.manual_seed(seed)
    backbone, feat_dim = build_backbone("resnet18", stem="cifar", in_channels=channels)
    spec = InputSpec(channels=channels, image_size=28, mean=[0.5] * channels, std=[0.5] * channels,
                     augment=AugmentConfig(min_scale=0.25, cj_bright=0.4, cj_contrast=0.4, cj_sat=0.4, cj_hue=0.1))
    return METHODS["simclr"](backbone, feat_dim, spec, {"temperature": 0.5})


def reference_loader(images: np.ndarray, batch_size: int, workers: int, seed: int):
    """lightly's example pipeline: PIL images, SimCLRTransform per image, DataLoader with workers."""
    from PIL import Image
    from lightly.transforms import SimCLRTransform

    transform = SimCLRTransform(input_size=28, cj_strength=0.5, min_scale=0.25, gaussian_blur=0.0,
                                normalize={"mean": [0.5] * 3, "std": [0.5] * 3})

    class PilDataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(Image.fromarray(images[i]))

    return torch.utils.data.DataLoader(PilDataset(), batch_size=batch_size, shuffle=True, drop_last=True,
                                       num_workers=workers, persistent_workers=workers > 0,
                                       generator=torch.Generator().manual_seed(seed))


def reference_optimizer(method, lr: float) -> torch.optim.Optimizer:
    """lightly's examples: plain SGD over every parameter (weight decay on BatchNorm and biases too)."""
    return torch.optim.SGD(torch.nn.Sequential(method.backbone, method.head).parameters(), lr=lr, momentum=0.9,
                           weight_decay=5e-4)


def reference_steps(method, loader, steps: int | None, opt: torch.optim.Optimizer) -> tuple[float, int]:
    """The lightly-example training step in fp32; returns (seconds, samples) for ``steps`` batches (all if None)."""
    model = torch.nn.Sequential(method.backbone, method.head)  # fp32, default memory format
    criterion = method.criterion
    model.train()
    n, seen, start = 0, 0, None
    for x0, x1 in loader:
        if n == 1:
            start, seen = time.perf_counter(), 0  # the first batch pays for worker start-up: not timed
        loss = criterion(model(x0), model(x1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        n, seen = n + 1, seen + len(x0)
        if steps is not None and n > steps:
            break
    return time.perf_counter() - (start or time.perf_counter()), seen


def ssl_noise_optimizer(method, batch_size: int, lr: float, precision: str = "bf16"):
    """ssl-noise's own optimiser construction (no weight decay on BatchNorm and biases); returns (opt, cfg)."""
    from ssl_noise.config import PretrainConfig
    from ssl_noise.engine import build_optimizer

    cfg = PretrainConfig(batch_size=batch_size, lr=lr, epochs=1, warmup_epochs=0, precision=precision)
    return build_optimizer(method, cfg), cfg


def build_loops(init, args) -> dict:
    """Independent copies of ``init`` with their optimisers, one per loop: name -> (model, optimizer, cfg).

    "reference" has no cfg (it is not ssl-noise's loop); "ssl_noise_fp32" only with ``--fp32-arm``.
    """
    ref = copy.deepcopy(init)
    loops = {"reference": (ref, reference_optimizer(ref, args.lr), None)}
    arms = [("ssl_noise", "bf16")]
    if args.fp32_arm:
        arms.append(("ssl_noise_fp32", "fp32"))
    for name, precision in arms:
        ours = copy.deepcopy(init).to(memory_format=torch.channels_last)
        loops[name] = (ours, *ssl_noise_optimizer(ours, args.batch_size, args.lr, precision))
    return loops


def run_loop(loops: dict, name: str, images: np.ndarray, steps: int | None, args, seed: int) -> tuple[float, int]:
    """``steps`` batches (all if None) of loop ``name`` on ``images``; returns (seconds, samples)."""
    model, opt, cfg = loops[name]
    if cfg is None:
        return reference_steps(model, reference_loader(images, args.batch_size, args.workers, seed), steps, opt)
    return ssl_noise_steps(model, images, steps, opt, cfg, seed)


def ssl_noise_steps(method, images: np.ndarray, steps: int | None, opt, cfg, seed: int):
    """ssl-noise's own epoch function, limited to ``steps`` batches; returns (seconds, samples).

    ``method`` must already be in ``channels_last`` (``train_one_epoch`` converts each batch to it).
    """
    from torch.utils.data import DataLoader, TensorDataset

    from ssl_noise.pretrain import train_one_epoch

    n = len(images) if steps is None else (steps + 1) * cfg.batch_size
    loader = DataLoader(TensorDataset(torch.from_numpy(images[:n])), batch_size=cfg.batch_size, shuffle=True,
                        drop_last=True, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    steps_total = len(loader)
    stats = train_one_epoch(method, loader, opt, method, g, epoch=0, steps_per_epoch=steps_total,
                            total_steps=10**9, warmup_steps=0, cfg=cfg, device="cpu", world=1, show=False)
    return stats["epoch_time_s"], steps_total * cfg.batch_size


def method_throughput(images: np.ndarray, args) -> list:
    """Step samples/s of each method in ``args.methods`` (all registered: ``all``) through ssl-noise's loop.

    SimCLR always runs (first), since every rate is reported relative to it. Returns one dict per method.
    """
    from ssl_noise.backbones import build_backbone
    from ssl_noise.config import load_recipe
    from ssl_noise.methods import METHODS
    from ssl_noise.settings import recipe_path

    simclr = build(args.seed, images.shape[-1])  # the spec every method shares
    names = METHODS.names() if args.methods == ["all"] else list(args.methods)
    for name in names:
        METHODS.get_or_fail(name)  # a typo fails before any timing
    names = ["simclr"] + [n for n in names if n != "simclr"]
    rows = []
    for name in names:
        recipe = recipe_path("pretrain", "bloodmnist", name)
        method_args = dict(load_recipe(recipe).get("method_args") or {}) if recipe else {}
        torch.manual_seed(args.seed)
        backbone, feat_dim = build_backbone("resnet18", stem="cifar", in_channels=images.shape[-1])
        method = METHODS[name](backbone, feat_dim, simclr.spec, method_args).to(memory_format=torch.channels_last)
        opt, cfg = ssl_noise_optimizer(method, args.batch_size, args.lr)
        t, n = ssl_noise_steps(method, images, args.steps, opt, cfg, args.seed)
        rows.append({"method": name, "samples_per_s": round(n / t, 1), "method_args": method_args})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["samples_per_s"]
    for row in rows:
        row["relative_to_simclr"] = round(row["samples_per_s"] / base, 2)
    return rows


def knn_acc(method, data) -> float:
    """The pretraining loop's own k-NN monitor (bf16 features, k=200, t=0.1), the same for every loop."""
    from ssl_noise.config import PretrainConfig
    from ssl_noise.pretrain import knn_monitor

    return knn_monitor(method.backbone, data, method.spec, PretrainConfig(), "cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed batches per loop (after one untimed)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    parser.add_argument("--quality-epochs", type=int, default=0, help="also train this many epochs and compare k-NN")
    parser.add_argument("--subset", type=int, default=4096, help="training images for the quality comparison")
    parser.add_argument("--lr", type=float, default=0.06)
    parser.add_argument("--seed", type=int, default=0, help="seed of the throughput part (and of one quality run)")
    parser.add_argument("--seeds", type=int, nargs="+", help="repeat the quality comparison over these seeds")
    parser.add_argument("--fp32-arm", action="store_true", help="add ssl-noise's loop in fp32 (bf16 vs pipeline)")
    parser.add_argument("--methods", nargs="+", default=["all"],
                        help="methods whose step samples/s to report relative to SimCLR's ('all': every one)")
    parser.add_argument("--methods-only", action="store_true", help="skip the reference-loop comparison")
    args = parser.parse_args()

    from ssl_noise.data import load_dataset

    data = load_dataset("bloodmnist")
    images = data.train.images
    init = build(args.seed, images.shape[-1])
    result = {"device": "cpu", "threads": torch.get_num_threads(), "batch_size": args.batch_size}

    if not args.methods_only:
        loops = build_loops(init, args)
        for name in loops:
            t, n = run_loop(loops, name, images, args.steps, args, args.seed)
            result[f"{name}_samples_per_s"] = round(n / t, 1)
        ref_speed = result["reference_samples_per_s"]
        result["speedup"] = round(result["ssl_noise_samples_per_s"] / ref_speed, 2)
        if "ssl_noise_fp32" in loops:  # the pipeline's share of the speed-up, without bf16
            result["speedup_fp32"] = round(result["ssl_noise_fp32_samples_per_s"] / ref_speed, 2)
        print(json.dumps(result), flush=True)
    rows = method_throughput(images, args)
    print(json.dumps({**result, "steps": args.steps,
                      "relative_to_simclr": {r["method"]: r["relative_to_simclr"] for r in rows},
                      "samples_per_s": {r["method"]: r["samples_per_s"] for r in rows}}), flush=True)

    if args.quality_epochs:
        runs = [quality_run(data, seed, args) for seed in args.seeds or [args.seed]]
        summary = {"seeds": len(runs)}
        for key in [k for k in runs[0] if k.endswith("gap_points")]:
            gaps = [r[key] for r in runs]
            summary.update({f"{key}_mean": round(float(np.mean(gaps)), 2),
                            f"{key}_std": round(float(np.std(gaps, ddof=1)), 2) if len(gaps) > 1 else None,
                            f"{key}_min": round(float(np.min(gaps)), 2)})
        print(json.dumps(summary), flush=True)


def quality_run(data, seed: int, args) -> dict:
    """Every loop for ``--quality-epochs`` epochs from the same initial weights on one seed's subset; prints a line.

    Each loop keeps one optimiser for the whole schedule (constant lr, as in lightly's examples), and every epoch
    seeds every loop's shuffle and augmentations with (seed, epoch), so no epoch repeats the previous one's draws.
    Gaps are in points: ``knn_gap_points`` = bf16 loop − reference (the target), ``bf16_gap_points`` = bf16 loop −
    fp32 loop (``--fp32-arm``; bf16 alone), ``pipeline_gap_points`` = fp32 loop − reference (the pipeline alone).
    """
    from ssl_noise.data import subset_train

    small = subset_train(data, args.subset, seed)
    init = build(seed, small.train.images.shape[-1])
    loops = build_loops(init, args)
    for epoch in range(args.quality_epochs):
        for name in loops:
            run_loop(loops, name, small.train.images, None, args, 1000 * seed + epoch)
    quality = {"seed": seed, "quality_epochs": args.quality_epochs, "subset": args.subset}
    acc = {name: knn_acc(model, small) for name, (model, _, _) in loops.items()}
    quality.update({f"{name}_knn_acc": round(a, 4) for name, a in acc.items()})
    quality["random_init_knn_acc"] = round(knn_acc(init, small), 4)
    quality["knn_gap_points"] = round(100 * (acc["ssl_noise"] - acc["reference"]), 2)
    if "ssl_noise_fp32" in acc:
        quality["bf16_gap_points"] = round(100 * (acc["ssl_noise"] - acc["ssl_noise_fp32"]), 2)
        quality["pipeline_gap_points"] = round(100 * (acc["ssl_noise_fp32"] - acc["reference"]), 2)
    print(json.dumps(quality), flush=True)
    return quality


if __name__ == "__main__":
    main()
