"""``ssl-noise pretrain`` (learn an encoder, add it to the registry) and ``ssl-noise knn`` (evaluate one)."""

from __future__ import annotations

import click

from ssl_noise.cli.app import cli
from ssl_noise.cli.options import (
    command_line,
    config_flags,
    pass_settings,
    quiet_option,
    recipe_options,
)

# Heavy imports (torch and the training code) stay inside the commands so that ``ssl-noise --help`` stays fast.


@cli.command()
@click.option("--method", default="simclr", show_default=True,
              help="SSL method: simclr, moco, byol, simsiam, barlowtwins, vicreg, dino, rotation, jigsaw.")
@click.option("--dataset", default="bloodmnist", show_default=True, help="MedMNIST flag or data spec.")
@click.option("--image-size", type=int, help="Image size (MedMNIST: 28, 64, 128, 224). Recipe default: 28.")
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
@quiet_option()
@pass_settings
def pretrain(settings, recipe, overrides, resume, quiet, **options):
    """Learn an encoder from the images alone and add it to the registry.

    The last line on stdout is the new registry id (use it with `finetune --init`).
    """
    from ssl_noise.config import PretrainConfig
    from ssl_noise.pretrain import pretrain as run_pretrain
    from ssl_noise.pretrain import resolve_config

    cfg, recipe_file = resolve_config(config_flags(PretrainConfig, options), recipe=recipe, overrides=overrides)
    if recipe_file:
        click.echo(f"recipe: {recipe_file}", err=True)
    entry = run_pretrain(cfg, data_root=settings.data_root, checkpoints=settings.checkpoints, runs=settings.runs,
                         device=settings.torch_device(), resume=resume, command=command_line(),
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

    from ssl_noise.evaluate import evaluate_encoder

    result = evaluate_encoder(ref, dataset=dataset, seed=seed, k=k, t=t, data_root=settings.data_root,
                              checkpoints=settings.checkpoints, device=settings.torch_device())
    click.echo(f"encoder: {result['encoder']}", err=True)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            click.echo(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
