"""Experiment trackers beside the JSON-lines logs: each epoch's record and the final metrics where researchers look
(TensorBoard). The JSON lines stay the source of truth; a tracker only mirrors them, so a resumed run replays the
lines it restored and the event files still cover every epoch.

MLflow and W&B are not built in: MLflow's server stack (Flask, SQLAlchemy, alembic) is a heavy dependency for a
mirror, and both read TensorBoard event files already (``wandb sync --sync-tensorboard``, MLflow's TensorBoard
import), so the one backend serves them too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ssl_noise.errors import UserError

TRACKERS = ("tensorboard",)
TENSORBOARD_DIR = "tensorboard"


def scalars(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested record as ``{"a/b": value}`` (lists, strings and None are left out).

    >>> scalars({"epoch": 1, "loss": 0.5, "test": {"acc": 0.9, "per_class_acc": [1.0]}, "x": None, "ok": True})
    {'epoch': 1.0, 'loss': 0.5, 'test/acc': 0.9}
    """
    out: dict[str, float] = {}
    for key, value in record.items():
        tag = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(scalars(value, f"{tag}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[tag] = float(value)
    return out


class Tracker:
    """The trackers named in ``names`` writing into ``folder`` (``folder/tensorboard/``); none: a no-op."""

    def __init__(self, names: Sequence[str], folder: Path):
        unknown = sorted(set(names) - set(TRACKERS))
        if unknown:
            raise UserError(f"unknown --log {', '.join(unknown)}; choose from: {', '.join(TRACKERS)}")
        self.writer = None
        if "tensorboard" in names:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError('--log tensorboard needs tensorboard: pip install "ssl-noise[tensorboard]"') from None
            self.writer = SummaryWriter(log_dir=str(Path(folder) / TENSORBOARD_DIR))

    def epoch(self, record: Mapping[str, Any]) -> None:
        """One epoch's JSON line as scalars ``epoch/<key>`` at step ``record["epoch"]``."""
        if self.writer is not None:
            step = int(record["epoch"])
            for tag, value in scalars({k: v for k, v in record.items() if k != "epoch"}).items():
                self.writer.add_scalar(f"epoch/{tag}", value, step)

    def final(self, metrics: Mapping[str, Any], step: int) -> None:
        """The run's final metrics as scalars ``final/<path>`` (e.g. ``final/test/best/acc``)."""
        if self.writer is not None:
            for tag, value in scalars(metrics).items():
                self.writer.add_scalar(f"final/{tag}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
