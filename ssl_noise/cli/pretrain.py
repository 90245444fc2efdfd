"""``ssl-noise pretrain`` (learn an encoder, add it to the registry) and ``ssl-noise knn`` (evaluate one)."""

from __future__ import annotations

import contextlib
import shutil

import click

from ssl_noise.cli.app import cli
from ssl_noise.errors import Interrupted, NonFiniteLoss, UserError
from ssl_noise.io import check_writable
from ssl_noise.cli.options import (
    command_line,
    config_flags,
    like_option,
    log_option,
    pass_settings,
    quiet_option,
    recipe_options,
)

# Heavy imports (torch and the training code) stay inside the commands so that ``ssl-noise --help`` stays fast.


@cli.command()
@click.option("--method", help="SSL method (default simclr, or the recipe's): simclr, moco, byol, simsiam, "
                               "barlowtwins, vicreg, dino, rotation, jigsaw.")
@click.option("--dataset", help="MedMNIST flag or data spec (default: the recipe's, else bloodmnist).")
@click.option("--image-size", type=int,
              help="Image size (MedMNIST: 28, 64, 128, 224; default 28). Image files: their own size by default.")
@click.option("--backbone", help="resnet18 | resnet34 | resnet50 (default resnet18).")
@click.option("--stem", type=click.Choice(["cifar", "imagenet"]), help="Default: cifar below 64 px.")
@click.option("--epochs", type=int, help="Training epochs (recipe default).")
@click.option("--batch-size", type=int, help="Per-process batch size (recipe default 256).")
@click.option("--lr", type=float, help="Peak learning rate after warm-up.")
@click.option("--subset", type=int, help="Train on a stratified subset of N training images (quick pilots).")
@click.option("--seed", type=int, help="Pretraining seed (default 0): weights, sample order, augmentations.")
@recipe_options("YAML recipe (default: pretrain/<dataset>/<method>.yaml).",
                "Override any config key, e.g. --set method_args.temperature=0.07 --set optimizer=lars.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run with this exact configuration.")
@log_option("the work folder <runs>/pretrain/<method>-<data>-s<seed>-<hash>")
@quiet_option()
@pass_settings
def pretrain(settings, recipe, overrides, resume, trackers, quiet, **options):
    """Learn an encoder from the images alone and add it to the registry.

    The last line on stdout is the new registry id (use it with `finetune --init`).
    """
    from ssl_noise.config import PretrainConfig
    from ssl_noise.pretrain import pretrain as run_pretrain
    from ssl_noise.pretrain import resolve_config, work_dir

    cfg, recipe_file = resolve_config(config_flags(PretrainConfig, options), recipe=recipe, overrides=overrides)
    check_writable(settings.checkpoints, "--checkpoints", folder=True)
    check_writable(settings.runs, "--runs (where the resumable state is kept)", folder=True)
    work = work_dir(settings.runs, cfg)
    created = [p for p in (work, *work.parents) if not p.exists()]  # deepest first
    if recipe_file:
        click.echo(f"recipe: {recipe_file}", err=True)
    try:
        entry = run_pretrain(cfg, data_root=settings.data_root, checkpoints=settings.checkpoints, runs=settings.runs,
                             device=settings.torch_device(), resume=resume, command=command_line(),
                             show_progress=not quiet, log=trackers)
    except NonFiniteLoss:
        if work in created:  # a diverged run's state is no use to resume: the same config diverges again
            shutil.rmtree(work, ignore_errors=True)
            for folder in created[1:]:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if empty
        raise
    except KeyboardInterrupt:
        raise Interrupted(_resume_hint(work)) from None
    if entry:
        click.echo(entry)


def _resume_hint(work) -> str:
    """What Ctrl-C says: the exact command that continues from the last finished epoch, if one finished."""
    import shlex

    from ssl_noise.engine import STATE_JSON

    if not (work / STATE_JSON).is_file():
        return "interrupted before the first epoch finished; nothing to resume (run the same command again)"
    argv = command_line()
    return (f"interrupted; the last finished epoch is saved in {work}; continue with: "
            f"{shlex.join(argv if '--resume' in argv else [*argv, '--resume'])}")


@cli.command()
@click.option("--init", "ref", required=True,
              help="Registry reference (id, unique prefix, or method name), or 'random' for the random-init baseline.")
@click.option("--dataset", help="Dataset to evaluate on (default: the one the encoder was trained on).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random-init baseline.")
@click.option("--k", "k", type=int, default=200, show_default=True, help="Neighbours in the weighted vote.")
@click.option("--t", "t", type=float, default=0.1, show_default=True, help="Vote temperature.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@like_option
@pass_settings
def knn(settings, ref, dataset, seed, k, t, as_json, like):
    """Evaluate a registry entry by weighted k-NN and by a linear probe on frozen features (test split)."""
    import json

    from ssl_noise.evaluate import evaluate_encoder

    if like and ref != "random":
        raise UserError(f"--like builds the random baseline like an entry; --init {ref} has its own input")

    result = evaluate_encoder(ref, dataset=dataset, seed=seed, k=k, t=t, data_root=settings.data_root,
                              checkpoints=settings.checkpoints, device=settings.torch_device(), like=like)
    if as_json:  # the JSON on stdout stays parseable; the encoder is one of its keys
        click.echo(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            click.echo(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
