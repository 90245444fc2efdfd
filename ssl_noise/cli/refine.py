"""``ssl-noise refine``: active label refinement of the samples an LNL run rejected (ssl_noise/refine/)."""

from __future__ import annotations

import math

import click

from ssl_noise.cli.app import cli
from ssl_noise.cli.options import echo_err, out_option, pass_settings, quiet_option, stack
from ssl_noise.io import check_name, check_writable
from ssl_noise.settings import Settings

# Heavy imports (torch and the training code) stay inside the commands so that ``ssl-noise --help`` stays fast.


#: The settings of a refinement session, shared by `refine run` and `refine export`.
refine_options = stack(
    click.option("--budget", type=int, metavar="B",
                 help="Samples relabelled per round (default 70, ALR's README); 0 is the control: the same rounds of "
                      "fine-tuning with nothing relabelled."),
    click.option("--acquisition", metavar="NAME",
                 help="entropy (default), least_confidence, margin, bald, coreset or random."),
    click.option("--epochs", type=int, help="Fine-tuning epochs per round (default 10; ALR used 25)."),
    click.option("--lr", type=float, help="Peak learning rate per round (default 0.01, ALR's lr_AL)."),
    click.option("--seed", type=int, help="Acquisition and fine-tuning seed (default 0)."),
    click.option("--name", metavar="NAME",
                 help="Session folder under RUN/refine/ (default <acquisition>-b<budget>-s<seed>, expert-... for "
                      "the expert oracle). An existing session is resumed; its settings cannot change."),
)


def _check_session(run: str, name: str | None) -> None:
    """Before any work: the session name is a plain name (it becomes RUN/refine/<name>) and RUN is writable."""
    from pathlib import Path

    if name is not None:
        check_name(name, "--name")
    if Path(run).is_dir():  # a missing run folder is reported by the library, with what it expected
        check_writable(Path(run) / "refine", "the run folder", folder=True)


def _echo_round(row: dict) -> None:
    def num(value) -> str:
        return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"

    click.echo(f"round {row['round']}: {row['budget']} relabelled ({row['n_changed']} changed), {row['n_train']} "
               f"training samples; test acc {num(row['test_acc'])} balanced acc {num(row['test_balanced_acc'])} "
               f"macro-F1 {num(row['test_macro_f1'])}", err=True)


@cli.group("refine")
def refine_group() -> None:
    """Active label refinement of the samples an LNL run rejected (ALR, arXiv 2407.05973).

    \b
    RUN is a run folder of a selecting method (ssl-noise finetune --method coteaching|vog):
      ssl-noise refine run RUN --rounds 8 --budget 70 --acquisition entropy     # simulated oracle
      ssl-noise refine run RUN --rounds 8 --budget 0                            # its extra-training control
      ssl-noise refine export RUN --out review/      # expert: review/review.html (+ to_review.csv)
      ssl-noise refine import RUN answers.csv --name NAME   # the page's answers (as printed by export)
      ssl-noise refine plot RUN --out budget.png --reference CE=0.880           # accuracy against budget
    Results: RUN/refine/<session>/rounds.csv (budget vs. metrics), labels_r<r>.csv, acquired_r<r>.csv.
    """


@refine_group.command("run")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--rounds", type=int, default=8, show_default=True,
              help="Acquisition rounds in total (round 0 only evaluates the LNL model); a session with fewer "
                   "finished rounds is continued.")
@refine_options
@quiet_option()
@pass_settings
def refine_run_cmd(settings: Settings, run, rounds, budget, acquisition, epochs, lr, seed, name, quiet) -> None:
    """Refine with the simulated oracle (the clean labels of the acquired samples only).

    Each round acquires B rejected samples, gives them their clean label from RUN/noisy_labels.csv, fine-tunes on
    kept + refined samples and evaluates on the clean test split. The last line on stdout is the session folder.
    """
    from ssl_noise.refine import refine_run

    _check_session(run, name)
    given = {"acquisition": acquisition, "budget": budget, "epochs": epochs, "lr": lr, "seed": seed}
    folder = refine_run(run, rounds=rounds, given=given, name=name, data_root=settings.data_root,
                        device=settings.torch_device(), show_progress=not quiet, on_round=_echo_round)
    click.echo(str(folder))


@refine_group.command("export")
@click.argument("run", type=click.Path(file_okay=False))
@out_option("Folder for review.html and to_review.csv (created if needed; one holding an earlier export is "
            "refused).", metavar="DIR", folder=True)
@refine_options
@pass_settings
def refine_export_cmd(settings: Settings, run, out, budget, acquisition, epochs, lr, seed, name) -> None:
    """Acquire the next samples for an expert to relabel.

    Writes DIR/review.html, a self-contained page (open it in any browser, no server): each image with its file
    path or index and its current and predicted label, one click or key (1-9) per class, "unsure", progress, and a
    button that saves answers.csv. DIR/to_review.csv is the same batch as a table (fill its label column instead,
    if you prefer). Exporting again before the answers are imported writes the same samples (into another DIR).
    Prints the import command to run with the saved file.
    """
    import shlex
    from pathlib import Path

    from ssl_noise.refine import export_review

    _check_session(run, name)
    check_writable(out, "--out", folder=True)
    given = {"acquisition": acquisition, "budget": budget, "epochs": epochs, "lr": lr, "seed": seed}
    session = export_review(run, out, given=given, name=name, data_root=settings.data_root,
                            device=settings.torch_device())
    page, answers = Path(out) / "review.html", Path(out) / "answers.csv"
    click.echo(f"{len(session.state['pending']['rows'])} samples to review for round {session.round + 1} of "
               f"session {session.name}: open {page}, answer, save answers.csv into {out} (or fill the label column "
               f"of {Path(out) / 'to_review.csv'} and import that), then:\n"
               f"  ssl-noise refine import {shlex.quote(str(run))} {shlex.quote(str(answers))} "
               f"--name {shlex.quote(session.name)}", err=True)
    click.echo(str(page))


@refine_group.command("import")
@click.argument("run", type=click.Path(file_okay=False))
@click.argument("answers", type=click.Path(dir_okay=False), metavar="FILE")
@click.option("--name", metavar="NAME", help="The session awaiting these answers (default: the only one).")
@quiet_option()
@pass_settings
def refine_import_cmd(settings: Settings, run, answers, name, quiet) -> None:
    """Merge an expert's labels (CSV with columns index,label: answers.csv of the review page, or to_review.csv
    filled in) and run that round: a fine-tuning of the session's --epochs (10 by default; set on `refine export`,
    fixed for the session so its rounds compare), which it says before it starts.

    A label is a class index or name; "unsure" or a blank (or a sample left out) leaves the sample in the pool, to
    be acquired again later. At least one answer is needed. An unknown index or class exits 2 and changes nothing.
    """
    from ssl_noise.refine import import_review

    _check_session(run, name)
    folder, row, unsure, blank = import_review(run, answers, name=name, data_root=settings.data_root,
                                               device=settings.torch_device(), show_progress=not quiet,
                                               announce=(lambda message: None) if quiet else echo_err)
    if unsure or blank:
        click.echo(f"{row['acquired']} answers merged; {unsure} unsure and {blank} unanswered stay in the pool",
                   err=True)
    _echo_round(row)
    click.echo(str(folder))


@refine_group.command("plot")
@click.argument("sources", nargs=-1, required=True, type=click.Path(), metavar="SOURCE...")
@out_option("Figure file: .png, .pdf or .svg.")
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
    from ssl_noise.plots import budget_curves, budget_figure, gains_over_control, parse_references

    check_writable(out, "--out")
    lines = parse_references(references)
    curves = budget_curves(sources, metric=metric, labels=list(labels) or None)
    for gain in gains_over_control(curves).itertuples():  # what relabelling added over the same extra training
        click.echo(f"{gain.label} at {gain.budget:g} labels: {gain.gain:+.4f} over the zero-budget control "
                   f"(n={gain.n})", err=True)
    click.echo(str(budget_figure(curves, out, metric=metric, references=lines, title=title)))
