"""The pool (the samples the LNL run rejected) as the current model sees it, and the acquisition call on it.

:class:`PoolView` computes what an acquisition function reads (probabilities, BALD passes, features) on first use,
so each function pays only for what it needs; the functions themselves live in :mod:`ssl_noise.acquisition`.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Dict, Optional

import numpy as np
import torch

from ssl_noise.acquisition import ACQUISITION
from ssl_noise.finetune import Inputs
from ssl_noise.io import derive_seed
from ssl_noise.robust.base import Classifier

if TYPE_CHECKING:  # annotations only: the session module imports this one
    from ssl_noise.refine.session import Session


class PoolView:
    """What the current model says about the pool, computed on first use (see :mod:`ssl_noise.acquisition`)."""

    def __init__(self, session: "Session", model: Classifier, pool_rows: np.ndarray, labelled_rows: np.ndarray):
        self.s, self.model, self.rows, self.labelled = session, model, pool_rows, labelled_rows
        self.size = len(pool_rows)
        self._probs: Optional[np.ndarray] = None

    def _apply(self, fn, rows: np.ndarray) -> np.ndarray:
        self.model.eval()
        with self.s.autocast():
            return self.s.inputs.apply(fn, self.s.run.data.train.images[rows])

    def probs(self) -> np.ndarray:
        if self._probs is None:
            self._probs = torch.from_numpy(self._apply(self.model, self.rows)).softmax(dim=1).numpy()
        return self._probs

    def _features(self, rows: np.ndarray) -> np.ndarray:
        f = self._apply(self.model.encoder, rows)
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)

    def features(self) -> np.ndarray:
        return self._features(self.rows)

    def labelled_features(self) -> np.ndarray:
        return self._features(self.labelled)

    @torch.no_grad()
    def mc_probs(self) -> np.ndarray:
        """(T, P, K): train mode (BatchNorm batch statistics; ResNets have no dropout) on augmented, shuffled
        batches; every parameter and BN running statistic is restored afterwards."""
        s, saved = self.s, copy.deepcopy(self.model.state_dict())
        # the passes' order and augmentation come from the refinement seed and round, not the LNL run's seed
        inputs = Inputs(dataclasses.replace(s.run.cfg, seed=derive_seed(s.config.seed, s.round + 1, 7)),
                        s.run.init["normalisation"], s.device)
        images, rows = torch.from_numpy(s.run.data.train.images), torch.from_numpy(self.rows)
        out = np.zeros((s.config.bald_passes, self.size, s.run.data.num_classes), np.float32)
        self.model.train()
        try:
            for t in range(s.config.bald_passes):
                for batch in inputs.batches(images, torch.zeros(len(images), dtype=torch.int64), rows,
                                            augment=True, shuffle=True, epoch=t):
                    with s.autocast():
                        p = self.model(batch.x).float().softmax(dim=1).cpu().numpy()
                    out[t, np.searchsorted(self.rows, batch.index.cpu().numpy())] = p
        finally:
            self.model.load_state_dict(saved)
            self.model.eval()
        return out


def acquire(view: PoolView, name: str, budget: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """The ``budget`` pool rows acquisition function ``name`` picks, with their scores and the model's
    probabilities (from the view when the function computed them, else on the picked rows only)."""
    picks, scores = ACQUISITION[name](view, budget, rng)
    if view._probs is not None:
        probs = view.probs()[picks]
    else:
        probs = PoolView(view.s, view.model, view.rows[picks], view.rows).probs()
    return {"rows": view.rows[picks], "score": np.asarray(scores, np.float64)[picks], "probs": probs}
