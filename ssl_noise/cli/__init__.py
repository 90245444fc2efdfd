"""The ``ssl-noise`` command line: a thin click layer over the library, one module per command family.

:mod:`.app` holds the root group and :func:`main` (exit codes), :mod:`.options` the option groups shared by
several commands; each other module adds one family of commands to the group when imported here. Commands parse
options, call one library function and print; heavy imports (torch, pandas) happen inside them so ``--help``
stays fast.
"""

from ssl_noise.cli import (  # noqa: F401  (register)
    advise,
    data,
    detect,
    finetune,
    noise,
    pretrain,
    refine,
    registry,
    sweep,
)
from ssl_noise.cli.app import cli, main

__all__ = ["cli", "main"]
