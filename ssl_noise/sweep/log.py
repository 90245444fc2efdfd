"""Progress logging of sweeps: a logger is any ``str -> None`` callable, by default one line on stderr.

Every sweep function that reports progress takes a ``log`` argument of this type, so tests pass a collector and
workers prefix their index. Format: docs/formats.md.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

Log = Callable[[str], None]


def log_stderr(message: str) -> None:
    """The default progress logger of sweeps and the demo: one flushed line on stderr."""
    print(message, file=sys.stderr, flush=True)
