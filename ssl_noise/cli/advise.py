"""``ssl-noise advise``: how noisy a dataset's own labels are, which files to check, which init and method to use."""

from __future__ import annotations

import click

from ssl_noise.cli.app import cli
from ssl_noise.cli.options import echo_err, out_option, pass_settings, quiet_option
from ssl_noise.io import check_writable

@cli.command("advise")
@click.option("--dataset", required=True, metavar="SPEC",
              help="Your data: folder:PATH, csv:PATH (a clean_label column is used as trusted test labels), a .npz "
                   "or a MedMNIST flag. The labels are taken as given: nothing is injected.")
@click.option("--time-budget", default="2h", show_default=True, metavar="DURATION",
              help="Wall time for everything (45m, 2h): pretraining and the pilot are sized to fit it.")
@out_option("Folder for advice.md and everything advise writes; a rerun with the same settings continues there.",
            metavar="DIR", required=False, folder=True, default="advice", show_default=True)
@click.option("--test-answers", type=click.Path(dir_okay=False, exists=True), metavar="FILE",
              help="An expert's labels for test images (the answers.csv of advise's test_review page): the pilot "
                   "is scored against them instead of T̂-corrected estimates. Nothing is trained again.")
@click.option("--encoder", metavar="ENTRY",
              help="Use this registry entry (from --checkpoints) as the SSL init instead of pretraining SimCLR.")
@click.option("--methods", metavar="M1,M2",
              help="Pilot these methods beside CE instead of the ones advise picks from the estimated noise.")
@click.option("--seeds", type=click.IntRange(min=2), default=2, show_default=True, help="Seeds per pilot setting.")
@click.option("--epochs", type=click.IntRange(min=1), help="Pilot epochs (default: 30, fewer if the budget needs).")
@click.option("--pretrain-epochs", type=click.IntRange(min=1),
              help="SimCLR epochs (default: what 30 % of the budget allows, at most 50).")
@click.option("--subset", type=click.IntRange(min=1), metavar="N",
              help="Pilot on a stratified subset of N training images (default: all, fewer if the budget needs).")
@click.option("--image-size", type=click.IntRange(min=8), metavar="N", help="Resize images to N x N.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, metavar="K",
              help="Pilot runs at once (see `ssl-noise sweep --jobs`).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the estimate, the detectors and the test sample (the pilot's seeds are 0..N-1).")
@quiet_option("No progress bars.")
@pass_settings
def advise(settings, dataset, time_budget, out, test_answers, encoder, methods, seeds, epochs, pretrain_epochs,
           subset, image_size, jobs, seed, quiet):
    """On your own labels: how noisy are they, which files to check first, and which init and method to train.

    \b
    Looks at the data (sizes, balance, duplicates across splits or labels), estimates the noise rate and the
    transition matrix T̂, ranks the most suspicious files (review/review.html), picks a test set it can trust
    (clean labels, an expert's answers, else T̂-corrected estimates), runs a paired pilot within the budget
    (random vs SimCLR init x CE and the methods the noise calls for x seeds) and writes advice.md.
    """
    from ssl_noise.advise import run_advise
    from ssl_noise.advise.plan import parse_duration

    budget = parse_duration(time_budget)
    check_writable(out, "--out", folder=True)
    result = run_advise(dataset, out, time_budget_s=budget, data_root=settings.data_root,
                        checkpoints=settings.checkpoints, device=settings.torch_device(), jobs=jobs,
                        encoder=encoder, methods=[m.strip() for m in methods.split(",")] if methods else (),
                        seeds=seeds, epochs=epochs, pretrain_epochs=pretrain_epochs, subset=subset,
                        test_answers=test_answers, image_size=image_size, seed=seed, show_progress=not quiet,
                        log=echo_err)
    click.echo(result.summary)
    minutes, seconds = divmod(round(result.wall_time_s), 60)
    click.echo(f"advise finished in {minutes} min {seconds:02d} s")
