"""The simulated oracle: the clean labels of the acquired samples, and of nothing else.

Kept apart so the no-leak rule has one place: refinement reaches the run's clean labels only through this call,
for the rows it acquired (the expert oracle is the review sheet, :mod:`ssl_noise.refine.review`).
"""

from __future__ import annotations

import numpy as np

from ssl_noise.refine.run import LNLRun
from ssl_noise.runs import RunFolder


class SimulatedOracle:
    """The clean label of each *asked* training row, read from the run's ``noisy_labels.csv`` on every call.

    Nothing else in refinement reads the clean labels for training: the oracle is the only way in, and it is asked
    about acquired samples only.
    """

    def __init__(self, run: LNLRun):
        self.run = run

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        file = RunFolder(self.run.folder).labels(num_classes=self.run.data.num_classes, indices=self.run.index)
        return file.clean[np.asarray(rows, dtype=np.int64)]
