"""The exception type that means "the user asked for something we cannot do", and its milder sibling.

The CLI turns :class:`UserError` (and ``click.UsageError``) into exit status 2 with one line on stderr and no
traceback. Library code raises it for bad input (unknown names, corrupt files, out-of-range values) so that the
same check protects Python callers and command-line users alike. Anything else that escapes is a bug: exit 1.

:class:`SslNoiseWarning` is for settings that run but likely not as meant; the CLI prints each one, every time it
is issued, as one ``warning: ...`` line on stderr.
"""


class UserError(ValueError):
    """Bad user input: a wrong flag, a missing or corrupt file, a value out of range."""


class SslNoiseWarning(UserWarning):
    """A setting that runs but likely not as the user meant; subclassed per topic (noise, NSHE, ...)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during work that can be continued; the message says how (the CLI prints it, exit status 130)."""


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite: the run diverged (almost always a learning rate too high)."""
