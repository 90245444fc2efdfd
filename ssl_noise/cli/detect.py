"""``ssl-noise detect`` (find the wrong training labels) and ``ssl-noise detections`` (compare findings)."""

from __future__ import annotations

import click

from ssl_noise.cli.app import cli
from ssl_noise.errors import UserError
from ssl_noise.io import check_writable
from ssl_noise.cli.options import (
    command_line,
    config_flags,
    like_option,
    noise_estimate_option,
    noise_options,
    num,
    out_option,
    pass_settings,
)

# Heavy imports (torch, pandas, the detectors) stay inside the commands so that ``ssl-noise --help`` stays fast.


@cli.command("detect")
@click.option("--detector", default="knn", show_default=True,
              help="knn (frozen-feature neighbours, no training), cleanlab (find_label_issues on out-of-fold "
                   "probabilities), loss (small loss of a CE run's history), ehn (an hsa_nrl run's EHN verdicts).")
@click.option("--init", help="knn/cleanlab: the encoder whose frozen features are used: registry reference (id, "
                             "unique prefix, method name), random or imagenet.")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), metavar="RUN",
              help="loss: a `finetune --method ce` run folder; ehn: a `finetune --method hsa_nrl` run folder.")
@click.option("--dataset", default="bloodmnist", show_default=True, help="MedMNIST flag or data spec (knn/cleanlab).")
@click.option("--image-size", type=int,
              help="Image size (default: the encoder's, else the data's own: 28 for MedMNIST, the files' size).")
@like_option
@click.option("--subset", type=click.IntRange(min=1), metavar="N", help="Stratified training subset, as finetune.")
@noise_options
@noise_estimate_option("knn/loss flag the top share by score: auto (default; knn: the default estimator, "
                       "knn_agreement, on the frozen features, loss: a two-component mixture on the losses), oracle "
                       "(the injected rate: ablations only) or a rate in [0, 1).")
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
@click.option("--top", type=click.IntRange(min=0), default=0, metavar="N",
              help="Also print the N most suspicious training images (file, given and suggested label, score).")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json instead of the summary line.")
@pass_settings
def detect_cmd(settings, detector, run_dir, noise_estimate, k, t, folds, cv_model, skip, top, as_json, like,
               **options):
    """Find the wrong training labels and score the finding against the known flips.

    \b
    Examples:
      ssl-noise detect --init simclr --noise 0.4 --detector knn
      ssl-noise detect --init simclr --noise 0.3 --noise-type pairflip --detector cleanlab
      ssl-noise detect --run runs/<ce run> --detector loss
      ssl-noise detect --run runs/<hsa_nrl run> --detector ehn
      ssl-noise detect --init simclr --dataset folder:/data/my_cells --top 20    # your own labels: scores only

    Prints precision, recall, F1, AUROC, wall time and the share of the truly clean samples each class keeps
    (where a detector can empty a minority class while its F1 looks fine). Without injected noise or clean labels
    there is no ground truth: it ranks the labels and says so. Writes <runs>/detect/<id>/ (scores.csv, most
    suspicious first: index, path, given_label, suggested_label, [clean_label], score, rank, flagged;
    metrics.json; run.json). The last line on stdout is that folder.
    """
    import json

    from ssl_noise import detect, inits
    from ssl_noise.config import FinetuneConfig
    from ssl_noise.runs import RunFolder

    check_writable(settings.runs, "--runs", folder=True)
    if options["init"] is not None:
        options.update(inits.like(options["init"], like, dataset=options["dataset"],
                                  checkpoints=settings.checkpoints, given=options))
    elif like:
        raise UserError("--like needs --init random or --init imagenet")
    opts = detect.DetectOptions(k=k, t=t, folds=folds, cv_model=cv_model, seed=options["seed"] or 0, skip=skip,
                                noise_estimate=noise_estimate or "auto")
    source = detect.source_for(detector, run=run_dir, flags=config_flags(FinetuneConfig, options),
                               data_root=settings.data_root, checkpoints=settings.checkpoints,
                               device=settings.torch_device())
    folder, metrics, computed = detect.run_detector(detector, source, opts, runs=settings.runs,
                                                    command=command_line())
    if not computed:
        click.echo(f"an identical detection has already finished: {folder}", err=True)
    if as_json:
        click.echo(json.dumps(metrics, indent=2, sort_keys=True))
    else:
        _echo_summary(detector, metrics, RunFolder(folder).provenance())
    if top:
        _echo_top(RunFolder(folder), top)
    click.echo(str(folder))


def _echo_top(folder, n: int) -> None:
    """The ``n`` most suspicious images, one line each: rank, file (or index), given -> suggested label, score."""
    table = folder.scores().head(n)
    click.echo(f"the {len(table)} most suspicious training labels (rank, file, given -> suggested, score):")
    for row in table.itertuples(index=False):
        where = getattr(row, "path", None) or f"index {row.index}"
        suggested = row.suggested_label if isinstance(row.suggested_label, str) and row.suggested_label else "?"
        click.echo(f"{row.rank:>6}  {where}  {row.given_label} -> {suggested}  {row.score:.4f}")


def _echo_summary(detector: str, metrics: dict, run: dict) -> None:
    """Detection quality, what it cost, the clean samples kept per class and (ehn) the label correction."""
    d = metrics["detection"]
    timing = sorted(run["timing"].items(), key=lambda kv: kv[0] == "detector_s")  # inputs first, detector last
    costs = " + ".join(f"{key[:-2].replace('_', ' ')} {value:.1f} s" for key, value in timing)
    if not metrics.get("ground_truth", True):
        click.echo(f"{detector} on {metrics['source']['id']}: no ground truth: scores only (labels as given, no "
                   f"injected noise, no clean labels). Flagged {d['n_flagged']} of {metrics['n']} "
                   f"({metrics['flag_rule']}); ranked in scores.csv; wall time {run['wall_time_s']:.1f} s ({costs})")
        _echo_borderline(d)
        return
    click.echo(f"{detector} on {metrics['source']['id']}: precision {num(d['precision'])} recall "
               f"{num(d['recall'])} f1 {num(d['f1'])} auroc {num(d['auroc'])} ap {num(d.get('ap'))} "
               f"(flagged {d['n_flagged']}, "
               f"noisy {d['n_noisy']} of {metrics['n']}; {metrics['flag_rule']}); wall time "
               f"{run['wall_time_s']:.1f} s ({costs})")
    _echo_borderline(d)
    if d.get("clean_kept_per_class"):  # absent from detections written before it was recorded
        click.echo(f"kept {d['n_kept']} (purity {num(d['kept_purity'])}); clean kept per class: "
                   + " / ".join(num(v) for v in d["clean_kept_per_class"]))
    if "correction" in metrics:
        c = metrics["correction"]
        click.echo(f"label correction: {c['n_relabelled']} relabelled (accuracy {num(c['relabel_acc'])}), "
                   f"{c['n_dropped']} dropped ({num(c['dropped_noisy'])} of them noisy); noise "
                   f"{num(c['given_noise_rate'])} given -> {num(c['kept_noise_rate'])} in the kept set")


def _echo_borderline(d: dict) -> None:
    """The samples whose flag depends on where in the rate's interval the cut falls (knn with ``auto``)."""
    if d.get("n_borderline"):
        share = f"; {num(d['borderline_noisy'])} of them noisy" if d.get("borderline_noisy") is not None else ""
        click.echo(f"borderline {d['n_borderline']}: flagged at the rate interval's upper end, not at its lower "
                   f"(scores.csv column borderline){share}")


@cli.command("detections")
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False), metavar="FOLDER...")
@out_option("Also write the whole table here.", metavar="CSV", required=False)
def detections_cmd(folders, out):
    """Put detections side by side: every `detect` folder and every selecting run, one row each.

    \b
    Examples:
      ssl-noise detections runs/                                   # all of a runs folder
      ssl-noise detections runs/detect/*-sym0.4n0-* runs/*-sym0.4n0-vog-* --out detection.csv

    FOLDER: a `ssl-noise detect` folder, a fine-tuning run (a coteaching, vog or knn_filter run's selection is a
    detector too; ce runs have none and are left out, an hsa_nrl run's verdicts are `detect --detector ehn`) or a
    folder holding them (a runs folder: its runs and detect/*). Prints precision, recall, F1, AUROC, the share of
    the truly clean samples each class keeps and the wall times; --out writes every column, including the labels'
    sha256 (equal: the same noisy labels) and, for EHN, the label-correction accuracy.
    """
    import pandas as pd

    from ssl_noise import detect, io

    if out:
        io.check_writable(out, "--out")
    frame = detect.collect(folders)
    shown = ["detector", "options", "init", "dataset", "noise_type", "noise_rate", "noise_seed", "realised_rate",
             "noise_rate_estimate", "precision", "recall", "f1", "auroc", "ap",
             *[c for c in frame.columns if c.startswith("clean_kept_")], "wall_time_s"]
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.max_colwidth", 40):
        click.echo(frame[shown].to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
    if out:
        with io.atomic_path(out) as tmp:
            frame.to_csv(tmp, index=False, float_format="%.6g")
        click.echo(out)
