"""The root ``ssl-noise`` group, its global options, and :func:`main`, which maps exceptions to exit codes.

Exit codes: 0 success; 2 user error (one ``error: ...`` line on stderr, no traceback, nothing half-written);
1 internal failure (a bug: the traceback is printed so it can be reported). Library code signals user errors by
raising :class:`ssl_noise.errors.UserError`.
"""

from __future__ import annotations

import sys
import traceback
import warnings
from collections.abc import Callable

import click

from ssl_noise import __version__, progress
from ssl_noise.errors import SslNoiseWarning, UserError
from ssl_noise.settings import Settings, checkpoints_root, runs_root


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="ssl-noise")
@click.option("--data-root", envvar="SSL_NOISE_DATA", metavar="DIR",
              help="Folder holding dataset files (searched before ~/.cache/ssl-noise). Env: SSL_NOISE_DATA.")
@click.option("--checkpoints", metavar="DIR",
              help="Encoder registry root. Env: SSL_NOISE_CHECKPOINTS; default ./checkpoints.")
@click.option("--runs", metavar="DIR", help="Fine-tune/sweep output root. Env: SSL_NOISE_RUNS; default ./runs.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to train; auto picks CUDA when available.")
@click.option("--threads", type=click.IntRange(min=1), metavar="N",
              help="CPU threads for torch (default: torch's choice, usually all cores).")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress bars or epoch lines (results, warnings and errors still print). Bars are also "
                   "off whenever stderr is not a terminal.")
@click.pass_context
def cli(ctx: click.Context, data_root, checkpoints, runs, device, threads, quiet) -> None:
    """Self-supervised pretraining vs. noisy labels for medical image classification.

    \b
    Typical session:
      ssl-noise data info bloodmnist
      ssl-noise pretrain --method simclr
      ssl-noise finetune --init simclr --noise 0.4
    """
    progress.set_quiet(quiet)
    if threads:
        import torch  # here, not at the top: --help must not pay for importing torch

        torch.set_num_threads(threads)
    ctx.obj = Settings(data_root=data_root, checkpoints=checkpoints_root(checkpoints), runs=runs_root(runs),
                       device=device, threads=threads)


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
    except Exception:  # noqa: BLE001  (a bug, not a user error: keep the traceback for the report)
        traceback.print_exc()
        sys.exit(1)
    sys.exit(0)
