"""``ssl-noise sweep`` (a grid of fine-tuning runs), ``plot`` and ``report`` (its results) and ``demo``."""

from __future__ import annotations

import sys

import click

from ssl_noise.cli.app import cli
from ssl_noise.cli.options import (
    command_line,
    echo_err,
    out_option,
    pass_settings,
    quiet_option,
    set_option,
)
from ssl_noise.errors import UserError
from ssl_noise.io import check_writable, remove_stale_temps

# Heavy imports (torch, pandas, matplotlib) stay inside the commands so that ``ssl-noise --help`` stays fast.


@cli.command("sweep")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True,
              help="Print the cells (id, grid values, status) and exit; runs and writes nothing.")
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
@set_option("Override a base field of the spec, e.g. --set epochs=5 (a grid key cannot be overridden). "
            "Changes the cell ids: a different config is a different run.")
@click.option("--executor", type=click.Choice(["slurm", "local"]),
              help="Run the cells through submitit instead of in this process: slurm submits them as one job array "
                   "(a preempted or timed-out cell is requeued and resumes from its last epoch); local runs the same "
                   "path as processes on this machine. Needs pip install \"ssl-noise[slurm]\".")
@click.option("--partition", help="--executor slurm: the SLURM partition.")
@click.option("--gpus-per-task", type=click.IntRange(min=0), default=0, show_default=True,
              help="--executor: GPUs per cell.")
@click.option("--cpus-per-task", type=click.IntRange(min=1), default=4, show_default=True,
              help="--executor: CPU cores per cell (also its torch threads).")
@click.option("--time-limit", type=click.IntRange(min=1), default=240, show_default=True, metavar="MINUTES",
              help="--executor: time limit of one job; a cell that needs longer is requeued and resumes.")
@click.option("--array-parallelism", type=click.IntRange(min=1), default=16, show_default=True, metavar="N",
              help="--executor slurm: cells running at once.")
@click.option("--wait/--no-wait", default=None,
              help="Wait for the jobs and write the table (default: wait for local, return after submitting to "
                   "slurm; watch with --dry-run, collect with --collect).")
@click.option("-v", "--verbose", is_flag=True, help="With --dry-run: also print every cell's full config (YAML).")
@click.option("--collect", is_flag=True,
              help="Train nothing: write runs/sweeps/<name>.csv from the cells finished so far (a partial table of "
                   "a long or interrupted sweep) and print its path.")
@quiet_option("No progress bars.")
@pass_settings
def sweep(settings, spec, dry_run, jobs, shard, skip_failed, skip_missing, stale_after, overrides, executor, partition,
          gpus_per_task, cpus_per_task, time_limit, array_parallelism, wait, verbose, collect, quiet):
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
      ssl-noise sweep finetune/sweeps/bloodmnist_study.yaml --executor slurm --partition gpu --gpus-per-task 1

    Writes runs/<run_id>/ per cell, rows of runs/results.csv, and runs/sweeps/<name>.csv (this sweep's finished
    rows: the input of `ssl-noise plot` and `ssl-noise report`), whose path is the last line on stdout.
    Exit status 1 when a cell failed in this invocation.
    """
    from ssl_noise import sweep as sweeps
    from ssl_noise.config import parse_overrides

    parsed = sweeps.load_spec(spec)
    where = sweeps.parse_shard(shard) if shard else None  # before anything is expanded, remembered or written
    if not dry_run:
        check_writable(settings.runs, "--runs", folder=True)
        for path in remove_stale_temps(settings.runs):  # a killed cell's half-built run folder
            click.echo(f"removed {path} (left by a killed process)", err=True)
    remembered = False
    if dry_run or collect:  # they follow the last real run; a run itself takes the flags as given
        overrides, remembered = sweeps.remembered_overrides(settings.runs, parsed.name, overrides, save=False)
    if remembered:
        echo_err(f"sweep {parsed.name}: with the --set values of its last run: {' '.join(overrides)}")
    # --collect only reads finished cells, and --dry-run only lists: an init missing from this registry is said
    # and its cells left out, instead of an exit
    cells = sweeps.expand(parsed, checkpoints=settings.checkpoints, overrides=parse_overrides(overrides),
                          skip_missing=skip_missing or collect or dry_run, runs=settings.runs,
                          pin=not (dry_run or collect), log=echo_err)
    if not (dry_run or collect):
        sweeps.remembered_overrides(settings.runs, parsed.name, overrides, save=True)
    if collect:
        return _collect(settings, parsed.name, cells)
    mine = cells
    if where:
        mine = sweeps.shard(cells, *where)
    label = f"sweep {parsed.name}: {len(cells)} cells" + (f", shard {shard}: {len(mine)}" if shard else "")
    if dry_run:
        return _dry_run(settings, label, mine, stale_after=stale_after, verbose=verbose)
    click.echo(label, err=True)
    if executor:
        report = _submit(settings, parsed.name, spec, mine, executor=executor, wait=wait, retry_failed=not skip_failed,
                         stale_after=stale_after, options=sweeps.ClusterOptions(
                             partition=partition, gpus_per_task=gpus_per_task, cpus_per_task=cpus_per_task,
                             time_limit_min=time_limit, array_parallelism=array_parallelism))
        if report is None:
            return
    else:
        report = sweeps.run_sweep(mine, runs=settings.runs, checkpoints=settings.checkpoints,
                                  data_root=settings.data_root, device=settings.torch_device(), jobs=jobs,
                                  threads=settings.threads,
                                  retry_failed=not skip_failed, stale_after=stale_after, command=command_line(),
                                  show_progress=not quiet and jobs == 1, log=echo_err)
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


def _submit(settings, name: str, spec: str, cells, *, executor: str, wait, retry_failed: bool, stale_after: float,
            options):
    """--executor: submit the cells not done or running elsewhere; with waiting, their merged report."""
    import time

    from ssl_noise import sweep as sweeps

    status = {c.cell_id: sweeps.cell_status(settings.runs, c.cell_id, stale_after=stale_after) for c in cells}
    todo = [c for c in cells if status[c.cell_id] not in ("done", "running")
            and (retry_failed or status[c.cell_id] != "failed")]
    skipped = {cid: why for cid, why in status.items() if why != "pending" and all(c.cell_id != cid for c in todo)}
    jobs = sweeps.submit(todo, cluster=executor, name=name, runs=settings.runs, checkpoints=settings.checkpoints,
                         data_root=settings.data_root, device=settings.device, options=options,
                         started_at=time.time(), retry_failed=retry_failed, stale_after=stale_after,
                         command=command_line(), log=echo_err)
    if not (executor == "local" if wait is None else wait):
        click.echo(f"progress: ssl-noise sweep {spec} --dry-run; table: ssl-noise sweep {spec} --collect", err=True)
        return None
    report = sweeps.gather(jobs, log=echo_err)
    report.skipped.update({cid: why for cid, why in skipped.items() if cid not in report.skipped})
    return report


def _collect(settings, name: str, cells) -> None:
    """--collect: the table of the cells finished so far; training nothing."""
    from ssl_noise import sweep as sweeps

    finished = sweeps.collect(cells, settings.runs)
    table = sweeps.save_table(finished, settings.runs, name)
    if table is None:
        raise UserError(f"no cell of sweep {name} has finished in {settings.runs} yet")
    click.echo(f"sweep {name}: {len(finished)} of {len(cells)} cells finished", err=True)
    click.echo(str(table))


def _dry_run(settings, label: str, cells, *, stale_after: float, verbose: bool) -> None:
    """--dry-run: each cell's id, status and grid values (and with -v its config); running and writing nothing."""
    from ssl_noise import sweep as sweeps

    status = {c.cell_id: sweeps.cell_status(settings.runs, c.cell_id, stale_after=stale_after) for c in cells}
    counts = ", ".join(f"{sum(s == k for s in status.values())} {k}" for k in ("done", "running", "failed", "pending"))
    click.echo(f"{label} ({counts}) in {settings.runs}", err=True)
    for c in cells:
        click.echo(f"{c.cell_id}  {status[c.cell_id]:<7}  {c.describe()}")
    if verbose:
        click.echo(sweeps.dump_cells(cells))


POOL_ENCODERS = click.option(
    "--pool-encoders", "pool", is_flag=True,
    help="One row/line per pretraining command: entries whose ids differ only in the hash (re-runs of one command) "
         "are pooled, so the spread includes the pretraining run.")


@cli.command("plot")
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False))
@out_option("Figure file: .png, .pdf or .svg. Detection quality (if any) goes to FILE_detection.<ext>.")
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

    check_writable(out, "--out")
    for path in plot_results(list(results), out, metric=metric, pool=pool):
        click.echo(str(path))


@cli.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False))
@out_option("report.md or report.html; the figures are written next to it.")
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

    check_writable(out, "--out")
    for path in write_report(list(results), out, metric=metric, pool=pool):
        click.echo(str(path))


@cli.command("demo")
@out_option("Folder for everything the demo writes: checkpoints/, runs/, robustness.png, report.md.", metavar="DIR",
            required=False, folder=True, default="demo", show_default=True)
@click.option("--quick", is_flag=True,
              help="Synthetic data at 16 px, one epoch, two rates: the whole path in seconds (no effect to see).")
@click.option("--dataset", metavar="SPEC",
              help="Run the demo on this dataset instead of BloodMNIST: a MedMNIST flag, folder:PATH, csv:PATH, "
                   "a .npz (at the data's own size; time grows with the image size).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, metavar="K",
              help="Sweep cells run at once (see `ssl-noise sweep --jobs`).")
@quiet_option("No progress bars.")
@pass_settings
def demo(settings, out, quick, dataset, jobs, quiet):
    """SimCLR vs random init under label noise on real BloodMNIST, in about 3 minutes on 2 CPU cores.

    Checks (or downloads) BloodMNIST, pretrains SimCLR briefly, runs a paired sweep (random vs SimCLR, linear
    probe, symmetric noise at a few rates, two noise seeds), then writes the robustness plot and the report
    and prints where they are, with the accuracy of both inits and the paired gain at each rate. Re-running
    reuses the encoder and the finished cells. `--dataset folder:/data/my_cells` does the same on your own images.
    """
    from ssl_noise.demo import run_demo

    check_writable(out, "--out", folder=True)
    result = run_demo(out, data_root=settings.data_root, device=settings.torch_device(), jobs=jobs, quick=quick,
                      dataset=dataset, show_progress=not quiet, log=echo_err)
    minutes, seconds = divmod(round(result.wall_time_s), 60)
    click.echo(f"test accuracy (clean test split), mean over seeds:\n{result.summary}")
    click.echo(f"encoder: {result.encoder}")
    click.echo(f"results: {result.table}")
    for figure in result.figures:
        click.echo(f"plot:    {figure}")
    click.echo(f"report:  {result.report}")
    click.echo(f"demo finished in {minutes} min {seconds:02d} s")
