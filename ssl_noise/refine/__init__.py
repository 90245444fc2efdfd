"""Active label refinement (ALR): relabel, round by round, the samples an LNL run of a selecting method rejected.

``run`` reads the LNL run, ``oracle`` is the simulated oracle, ``pool`` scores the rejected samples and calls the
acquisition function, ``session`` holds a session's state and rounds (and :func:`refine_run`), ``review`` and
``answers`` are the expert oracle's export and import. Method and deviations from ALR: docs/methods.md.
Format: docs/formats.md (refinement session).
"""

from ssl_noise.refine.answers import import_review, read_answers
from ssl_noise.refine.oracle import SimulatedOracle
from ssl_noise.refine.pool import PoolView, acquire
from ssl_noise.refine.review import export_review, review_table, write_review
from ssl_noise.refine.run import LNLRun, classifier_state, load_run
from ssl_noise.refine.session import (
    KEPT,
    ORACLE,
    POOL,
    SCHEMA_VERSION,
    SOURCES,
    RefineConfig,
    Session,
    open_session,
    refine_run,
)

__all__ = [
    "KEPT", "ORACLE", "POOL", "SCHEMA_VERSION", "SOURCES", "LNLRun", "PoolView", "RefineConfig", "Session",
    "SimulatedOracle", "acquire", "classifier_state", "export_review", "import_review", "load_run", "open_session",
    "read_answers", "refine_run", "review_table", "write_review",
]
