"""Option groups shared by several commands, declared once, and the helpers every command uses.

A group is a decorator; its help texts are the user's documentation, so a command passes its own wording only where
the option really means something different for it (which recipe ``--recipe`` defaults to, what ``--set`` may set).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping
from typing import Any

import click

from ssl_noise import progress
from ssl_noise.settings import Settings

pass_settings = click.make_pass_decorator(Settings)


def stack(*decorators: Callable) -> Callable:
    """Apply ``decorators`` as if written one above the other in this order (so --help lists them so)."""
    def apply(fn: Callable) -> Callable:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn
    return apply


def quiet_option(help: str = "No progress bar (as the global `ssl-noise --quiet`).") -> Callable:
    """A command's own ``--quiet``: the same switch as the global one, accepted after the command too."""
    def switch(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        if value:
            progress.set_quiet(True)
        return value or progress.is_quiet()
    return click.option("--quiet", is_flag=True, help=help, callback=switch)


def log_option(where: str) -> Callable:
    """``--log tensorboard`` (repeatable): trackers mirroring every epoch's JSON line and the final metrics."""
    return click.option("--log", "trackers", multiple=True, type=click.Choice(["tensorboard"]),
                        help=f"Also log each epoch and the final metrics for TensorBoard, in {where}/tensorboard/ "
                             "(pip install \"ssl-noise[tensorboard]\"); train_log.jsonl stays the record.")


def out_option(help: str, *, metavar: str = "FILE", required: bool = True, folder: bool = False,
               **kwargs: Any) -> Callable:
    """``--out``: the file (or, with ``folder``, the folder) a command writes."""
    path = click.Path(file_okay=False) if folder else click.Path(dir_okay=False)
    return click.option("--out", required=required, type=path, metavar=metavar, help=help, **kwargs)


def set_option(help: str) -> Callable:
    """``--set KEY=VALUE`` (repeatable), collected as ``overrides``."""
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=help)


def recipe_options(recipe_help: str, set_help: str) -> Callable:
    """``--recipe FILE`` and ``--set KEY=VALUE``: the two layers a run's config is built from on top of its flags."""
    return stack(click.option("--recipe", type=click.Path(dir_okay=False), help=recipe_help), set_option(set_help))


#: The label-noise options of ``finetune`` and ``detect``: both draw exactly the same noisy labels from them.
noise_options = stack(
    click.option("--noise", "noise_rate", type=float, metavar="RATE",
                 help="Label-noise rate in [0, 1) (default: clean)."),
    click.option("--noise-type", metavar="TYPE",
                 help="symmetric (default; flips to one of the OTHER classes), uniform (redraw over all K), pairflip "
                      "(i -> i+1 mod K), asymmetric (needs --class-map or --noise-matrix), instance (image-dependent, "
                      "Xia et al. 2020)."),
    click.option("--class-map", type=click.Path(dir_okay=False), metavar="FILE",
                 help="asymmetric: YAML/JSON {clean: noisy} by class index or name."),
    click.option("--noise-matrix", type=click.Path(dir_okay=False), metavar="FILE",
                 help="asymmetric: KxK matrix, T[i,j] = P(noisy=j | clean=i) (no --noise then)."),
    click.option("--noise-mode", type=click.Choice(["sampled", "exact"]),
                 help="sampled (default): each label drawn from its row; exact: fixed counts per class pair."),
    click.option("--noise-seed", type=int, help="Seed of the label noise (and of --subset); default 0."),
    click.option("--noise-file", type=click.Path(dir_okay=False), metavar="CSV",
                 help="Reuse exactly these training labels (index,clean_label,noisy_label, as `ssl-noise noise` or a "
                      "run's noisy_labels.csv): the same noise across inits."),
    click.option("--label-column", metavar="NAME|majority",
                 help="csv:PATH data: train on this manifest column (e.g. one annotator's), or the majority of its "
                      "annotator*/rater* columns; a clean_label column then scores the real noise."),
    click.option("--force-noise", "noise_force", is_flag=True, default=None,
                 help="Accept noise under which a wrong class is as likely as the clean one."),
)


#: ``--like ENTRY``: a random or ImageNet baseline built with a registry entry's image size, stem and backbone.
like_option = click.option(
    "--like", metavar="ENTRY",
    help="random/imagenet: take this registry entry's image size, stem and backbone, so the baseline is compared "
         "like for like with it.")


def noise_estimate_option(help: str) -> Callable:
    """``--noise-estimate auto|oracle|RATE``: the noise rate a method or detector is told (checked by the config)."""
    return click.option("--noise-estimate", metavar="auto|oracle|RATE", help=help)


def config_flags(cls: type, options: Mapping[str, Any]) -> dict[str, Any]:
    """The command's options that are fields of the config dataclass ``cls`` (None: not given), so no field is
    copied by hand; the others (``--recipe``, ``--quiet``, ...) are left out."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {key: value for key, value in options.items() if key in names}


def command_line() -> list[str]:
    """The command as typed, recorded with every artefact it writes."""
    return ["ssl-noise", *sys.argv[1:]]


def num(value) -> str:
    """A metric as printed in summaries: four decimals, n/a when missing."""
    return "n/a" if value is None else f"{value:.4f}"


def echo_err(message: str) -> None:
    """The ``log`` callback of library functions: progress notes go to stderr, results to stdout."""
    click.echo(message, err=True)
