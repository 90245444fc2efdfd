"""``ssl-noise demo``: the study in miniature, on real BloodMNIST (or any dataset), in minutes on a 2-core CPU.

Data check, a short SimCLR pretraining, a paired sweep (random vs SimCLR init under symmetric noise), the plot and
the report, all under one folder; ``quick=True`` runs the same path on synthetic data as a smoke test, and
``dataset=SPEC`` on a researcher's own images (from your data to a report in one command).
Steps: docs/methods.md#the-demo-ssl_noisedemopy-ssl-noise-demo
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import yaml

from ssl_noise import plots, registry, report, sweep, tables
from ssl_noise.config import PretrainConfig, load_recipe, resolve, to_dict
from ssl_noise.data import get_entry, load_dataset
from ssl_noise.data.medmnist import fetch, md5_status
from ssl_noise.errors import UserError
from ssl_noise.engine import STATE_JSON
from ssl_noise.pretrain import pretrain, work_dir

PRETRAIN_RECIPE = "pretrain/bloodmnist/demo_simclr.yaml"
SWEEP_SPEC = "finetune/sweeps/demo.yaml"
QUICK_DATA = "synthetic:n_train=64,n_val=32,n_test=64"
QUICK_PRETRAIN = {"dataset": QUICK_DATA, "image_size": 16, "subset": None, "epochs": 1, "batch_size": 32,
                  "knn_k": 10, "precision": "fp32"}
QUICK_BASE = {"dataset": QUICK_DATA, "image_size": 16, "subset": None, "epochs": 1, "batch_size": 16,
              "precision": "fp32"}
QUICK_GRID = {"noise_rate": [0.0, 0.5], "noise_seed": [1]}
DEMO_SUBSET = 4000     # the recipe's training subset; smaller datasets train on all their images
LINEAR_PROBE_BATCH = 128  # finetune/bloodmnist/linear_probe.yaml's batch, cut for a smaller training split

@dataclass
class DemoResult:
    out: Path
    encoder: str
    table: Path
    figures: List[Path]
    report: Path
    summary: str            # the accuracy / gain table printed at the end
    wall_time_s: float


def existing_entry(checkpoints: Path, cfg: PretrainConfig) -> Optional[str]:
    """A registry entry whose recorded config.yaml equals ``cfg`` in every field (never a subset of fields)."""
    wanted = yaml.safe_load(yaml.safe_dump(to_dict(cfg)))
    for meta in registry.list_entries(checkpoints):
        path = Path(checkpoints) / meta["id"] / registry.CONFIG_FILE
        if path.is_file() and yaml.safe_load(path.read_text()) == wanted:
            return meta["id"]
    return None


def _check_data(data_root: Optional[str], log: sweep.Log) -> None:
    """Find or download BloodMNIST (28 px) and insist on the official md5."""
    entry = get_entry("bloodmnist")
    path = fetch(entry.flag, 28, data_root=data_root, download=True)
    md5, status = md5_status(path, entry.md5s[28])
    if status != "OK":
        raise UserError(f"{path} has md5 {md5}, not the official {entry.md5s[28]}; delete it and run the demo again")
    log(f"demo: data {path} (md5 {md5}, official)")


def summary_table(table: Path, metric: str = "test_acc") -> str:
    """The table the demo prints, in the README's form: mean ``metric`` per init and rate, and each SSL init's
    gain over random in points, with every pair's own gain (same noisy labels, only the encoder differs).

    A Markdown table, so it can be pasted next to the README's and compared."""
    frame = tables.load_results(table)
    rows, _ = tables.tidy(frame, metric)
    means = rows.groupby(["noise_rate", "init_label"])[metric].mean().unstack("init_label")
    pairs = rows.pivot_table(index=["noise_rate", "noise_seed", "seed"], columns="init_label", values=metric)
    inits = sorted(means.columns, key=lambda s: (s != "random", s))
    others = [i for i in inits if i != "random"]
    head = ["symmetric noise", *(f"{i} init" for i in inits), *(f"{i} gain (each pair)" for i in others)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for rate, row in means.iterrows():
        cells = [f"{rate:g}", *(f"{row[i]:.3f}" for i in inits)]
        for other in others:
            diffs = 100 * (pairs.loc[rate, other] - pairs.loc[rate, "random"]).dropna() if "random" in pairs else []
            cells.append(f"{diffs.mean():+.1f} points ({', '.join(f'{d:+.1f}' for d in diffs)})" if len(diffs)
                         else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def data_overrides(dataset: str, *, data_root: Optional[str] = None, log: sweep.Log = sweep.log_stderr) -> dict:
    """The fields that point the demo's recipe and sweep at ``dataset``: the data's own image size (28 for MedMNIST
    flags), and the 4,000-image subset only where the training split is larger."""
    data = load_dataset(dataset, data_root=data_root)
    if data.multilabel:
        raise UserError(f"{data.name} is multi-label ({data.task}); the demo needs one class per image")
    subset = DEMO_SUBSET if len(data.train) > DEMO_SUBSET else None
    log(f"demo: data {dataset}: {len(data.train)} training images, {data.num_classes} classes, "
        f"{data.image_size} px, {data.channels} channel(s)" + (f"; a {subset}-image subset" if subset else ""))
    # Below the recipe's 28 px the imagenet stem's stride 4 leaves layer3 and layer4 on 1x1 maps, where a small
    # batch's BatchNorm blows the weights up (4e32 after 10 epochs of 27 images at 16 px): the cifar stem there.
    stem = {"stem": "cifar"} if data.image_size < 28 else {}
    return {"dataset": dataset, "image_size": data.image_size, "subset": subset, "n_train": subset or len(data.train),
            "num_classes": data.num_classes, **stem}


def _rates(grid: dict, num_classes: int, log: sweep.Log) -> dict:
    """The demo's noise rates that keep the clean class the majority label with ``num_classes`` classes (symmetric
    noise at rate r leaves 1 - r on the clean class and r / (K - 1) on each other: r < (K - 1) / K)."""
    rates = [r for r in grid["noise_rate"] if r < (num_classes - 1) / num_classes]
    dropped = [r for r in grid["noise_rate"] if r not in rates]
    if dropped:
        log(f"demo: leaving out noise rate(s) {', '.join(map(str, dropped))}: with {num_classes} classes a wrong "
            f"label would outnumber the clean one")
    return {"noise_rate": rates}


def stage_fields(own: dict, batch_size: int) -> dict:
    """The own-data fields for one stage, with its batch cut to the training split of a small dataset."""
    if not own:
        return {}
    fields = {k: v for k, v in own.items() if k not in ("n_train", "num_classes")}
    return {**fields, **({"batch_size": own["n_train"]} if own["n_train"] < batch_size else {})}


def run_demo(out: str | Path = "demo", *, data_root: Optional[str] = None, device: str = "cpu", jobs: int = 1,
             quick: bool = False, dataset: Optional[str] = None, show_progress: bool = True,
             log: sweep.Log = sweep.log_stderr) -> DemoResult:
    """Data check, SimCLR pretraining, paired sweep, plot and report under ``out`` (on ``dataset`` when given,
    else BloodMNIST).

    Steps: docs/methods.md#the-demo-ssl_noisedemopy-ssl-noise-demo
    """

    start = time.perf_counter()
    out = Path(out)
    checkpoints, runs = out / "checkpoints", out / "runs"
    if quick and dataset:
        raise UserError("--quick runs on synthetic data; drop it or --dataset")
    own = data_overrides(dataset, data_root=data_root, log=log) if dataset else {}
    if not quick and not own:
        _check_data(data_root, log)

    # ---- SimCLR ----
    pre = load_recipe(sweep.find_file(PRETRAIN_RECIPE))
    cfg = resolve(PretrainConfig, {**pre, **(QUICK_PRETRAIN if quick else stage_fields(own, pre["batch_size"]))})
    encoder = existing_entry(checkpoints, cfg)
    state = work_dir(runs, cfg) / STATE_JSON   # a killed demo's pretraining: continued, not restarted
    if encoder:
        log(f"demo: reusing the SimCLR encoder {encoder} (same config)")
    else:
        resume = state.is_file()
        done = json.loads(state.read_text()).get("epoch") if resume else None
        log(f"demo: SimCLR pretraining, {cfg.epochs} epoch(s) on {cfg.subset or 'all'} {cfg.dataset} images"
            + (f", resumed after epoch {done} of an interrupted demo" if resume else ""))
        encoder = pretrain(cfg, data_root=data_root, checkpoints=checkpoints, runs=runs, device=device, resume=resume,
                           command=["ssl-noise", "demo"] + (["--quick"] if quick else []), show_progress=show_progress)
    knn = (json.loads((checkpoints / encoder / "meta.json").read_text())["metrics"] or {}).get("knn_acc")
    log(f"demo: encoder {encoder}" + (f" (k-NN accuracy on validation {knn:.3f})" if knn is not None else ""))

    # ---- the paired sweep: random vs this encoder ----
    spec = sweep.load_spec(sweep.find_file(SWEEP_SPEC))
    rates = _rates(spec.grid, own["num_classes"], log) if own else {}
    spec = dataclasses.replace(spec, grid={**spec.grid, "init": ["random", encoder],
                                           **(QUICK_GRID if quick else rates)},
                               base={**spec.base, **(QUICK_BASE if quick else stage_fields(own, LINEAR_PROBE_BATCH))})
    cells = sweep.expand(spec, checkpoints=checkpoints, log=log)
    log(f"demo: sweep of {len(cells)} cells into {runs}")
    result = sweep.run_sweep(cells, runs=runs, checkpoints=checkpoints, data_root=data_root, device=device, jobs=jobs,
                             command=["ssl-noise", "demo"], show_progress=show_progress and jobs == 1, log=log)
    if result.failed:
        raise UserError(f"demo: {len(result.failed)} sweep cell(s) failed; see {runs / '.failed'}")
    table = sweep.write_table(cells, runs, spec.name)
    if table is None:
        raise UserError(f"demo: no finished cells in {runs}")

    # ---- figures and report ----
    figures = plots.plot_results(table, out / "robustness.png")
    written = report.write_report(table, out / "report.md", figures=figures)
    return DemoResult(out=out, encoder=encoder, table=table, figures=figures, report=written[0],
                      summary=summary_table(table), wall_time_s=time.perf_counter() - start)
