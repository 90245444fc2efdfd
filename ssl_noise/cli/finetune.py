"""``ssl-noise finetune``: fine-tune a classifier on noisy labels and measure it on the clean test split."""

from __future__ import annotations


import click

from ssl_noise.cli.app import cli
from ssl_noise.io import check_writable
from ssl_noise.cli.options import (
    command_line,
    config_flags,
    like_option,
    log_option,
    noise_estimate_option,
    noise_options,
    num,
    pass_settings,
    quiet_option,
    recipe_options,
)

# Heavy imports (torch and the training code) stay inside the command so that ``ssl-noise --help`` stays fast.


@cli.command()
@click.option("--init", help="random (default), imagenet (torchvision weights; cached or downloadable), or a registry "
                             "reference: id, unique prefix, or method name (its newest entry for this dataset).")
@click.option("--dataset", help="MedMNIST flag or data spec (default: the recipe's, else bloodmnist).")
@click.option("--image-size", type=int,
              help="Image size (default: the encoder's, else the data's own: 28 for MedMNIST, the files' size).")
@like_option
@click.option("--subset", type=click.IntRange(min=1), metavar="N",
              help="Stratified subset of N training images, drawn with --noise-seed (as `ssl-noise noise`).")
@click.option("--backbone", help="random/imagenet only: resnet18 (default) | resnet34 | resnet50.")
@click.option("--stem", type=click.Choice(["cifar", "imagenet"]),
              help="random/imagenet only; default cifar below 64 px.")
@click.option("--freeze", is_flag=True, default=None,
              help="Linear probe: freeze the encoder (weights and BN statistics); recipe linear_probe.yaml.")
@click.option("--method", help="Noisy-label method from the ROBUST registry (default ce).")
@click.option("--protocol", type=click.Choice(["paper", "shared"]),
              help="paper (default): a method with a published recipe (coteaching, coteaching_plus, jocor, "
                   "dividemix, elr, sce, gce) trains with its authors' optimiser, schedule and phase starts, scaled "
                   "to --epochs; shared: every method under this config's optimiser and cosine schedule.")
@noise_options
@noise_estimate_option("What methods that need a noise rate are told (coteaching, vog, hsa_nrl, knn_filter): auto "
                       "(default; estimated from the noisy labels, knn_agreement on the pixels), oracle (the "
                       "injected rate: ablations only) or a rate.")
@click.option("--clean-val", is_flag=True, default=None,
              help="Keep validation labels clean (default: noisy like the training labels, as in practice).")
@click.option("--epochs", type=int, help="Training epochs (recipe default).")
@click.option("--batch-size", type=int, help="Batch size (recipe default).")
@click.option("--lr", type=float, help="Peak learning rate.")
@click.option("--seed", type=int, help="Fine-tuning seed: head init, sample order, augmentation (default 0).")
@click.option("--select-metric", type=click.Choice(["acc", "macro_f1"]),
              help="Validation metric that picks the reported epoch (default acc; macro_f1 for imbalanced data).")
@click.option("--test-eval", type=click.Choice(["every", "reported"]),
              help="When the clean test split is scored: every epoch (default), or only at the epochs a result "
                   "reports (each new validation best and the last 5; the same numbers, without the per-epoch test "
                   "curve: on a small training subset the test passes cost more than the training).")
@recipe_options("YAML recipe (default: finetune/<dataset>/default.yaml, or linear_probe.yaml with --freeze).",
                "Override any config key, e.g. --set weight_decay=1e-4 --set augment.min_scale=0.5.")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run with these exact flags from its last finished epoch (its state is "
                   "in <runs>/.work/<run_id>/); without it an interrupted run starts over.")
@log_option("the run folder")
@quiet_option()
@pass_settings
def finetune(settings, recipe, overrides, resume, trackers, quiet, like, **options):
    """Fine-tune a classifier on noisy labels and measure it on the clean test split.

    \b
    Examples:
      ssl-noise finetune --init simclr --noise 0.4
      ssl-noise finetune --init random --noise-file runs/<id>/noisy_labels.csv
      ssl-noise finetune --init simclr --freeze --noise 0.4 --noise-type pairflip
      ssl-noise finetune --init random --like simclr --noise 0.4     # the baseline at the entry's size and stem

    Writes runs/<run_id>/ (config, noisy labels, history.npy, train_log.jsonl, metrics.json) and a row of
    runs/results.csv. An identical finished run is not repeated. The last line on stdout is the run folder.
    """
    from ssl_noise import api
    from ssl_noise.config import FinetuneConfig

    check_writable(settings.runs, "--runs", folder=True)
    run = api.finetune(**config_flags(FinetuneConfig, options), recipe=recipe, sets=overrides, like=like,
                       runs=settings.runs, checkpoints=settings.checkpoints, data_root=settings.data_root,
                       device=settings.device, command=command_line(), show_progress=not quiet, resume=resume,
                       trackers=trackers)
    if run.recipe:  # said after the run: a bad input must leave exactly one line on stderr
        click.echo(f"recipe: {run.recipe}", err=True)
    if not run.trained:
        click.echo(f"an identical run has already finished: {run.folder} (nothing to do)", err=True)
    else:
        click.echo(_summary(run.folder), err=True)
    click.echo(str(run.folder))


def _summary(folder) -> str:
    """One line from the run's metrics.json: the selected epoch's test accuracy, how it was chosen, memorisation."""
    from ssl_noise.runs import RunFolder

    m = RunFolder(folder).metrics()
    best, last5 = m["test"]["best"], m["test"]["last5_mean"] or {}
    return (f"test acc {num(best['acc'])} auc {num(best['auc'])} at epoch {m['selected_epoch']} (chosen on "
            f"{m['val']['labels']} validation {m['select_metric']}); last-5 mean acc {num(last5.get('acc'))}; "
            f"flipped training labels memorised {num(m['train']['best']['memorised'])}")
