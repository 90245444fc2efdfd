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

from pathlib import Path

import click

from ssl_noise import __version__, progress
from ssl_noise.errors import Interrupted, SslNoiseWarning, UserError
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
    if data_root and ctx.get_parameter_source("data_root") is click.core.ParameterSource.COMMANDLINE \
            and not Path(data_root).expanduser().is_dir():  # else the search would silently go on to the cache
        raise UserError(f"--data-root {data_root} is not a folder" + ("" if Path(data_root).exists() else
                        " (it does not exist)"))
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


def one_line(message: str) -> str:
    """A message as one line: the contract is exactly one ``error:`` line, whatever a library's text spans."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return "".join(line + ("" if i + 1 == len(lines) else " " if line.endswith(":") else "; ")
                   for i, line in enumerate(lines)) or "unknown error"


def main(argv=None) -> None:
    """Console-script entry point: run the group and map exceptions to exit codes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", SslNoiseWarning)  # each occurrence, not once per source line
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            cli.main(args=argv, prog_name="ssl-noise", standalone_mode=False)
    except (UserError, click.UsageError, click.BadParameter, FileExistsError, PermissionError) as e:
        message = e.format_message() if isinstance(e, click.ClickException) else str(e)
        click.echo(f"error: {one_line(message)}", err=True)
        sys.exit(2)
    except (Interrupted, click.exceptions.Abort) as e:  # click turns Ctrl-C into Abort (from the original)
        cause = e if isinstance(e, Interrupted) else e.__cause__
        said = str(cause) if isinstance(cause, Interrupted) else ""
        click.echo(f"error: {one_line(said) if said else 'aborted'}", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"error: {one_line(e.format_message())}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except Exception:  # noqa: BLE001  (a bug, not a user error: keep the traceback for the report)
        traceback.print_exc()
        sys.exit(1)
    sys.exit(0)
