"""The LNL run a refinement session starts from: its config, data, given labels, clean set and network 1.

Read only through :class:`ssl_noise.runs.RunFolder` (the run-folder contract), and never its clean labels for
training: :class:`ssl_noise.refine.oracle.SimulatedOracle` is the only way to them. Format: docs/formats.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ssl_noise import noise
from ssl_noise.config import FinetuneConfig, resolve
from ssl_noise.data import load_dataset
from ssl_noise.errors import UserError
from ssl_noise.metrics import kept_mask
from ssl_noise.runs import RunFolder


@dataclass
class LNLRun:
    """What refinement needs from a finished run folder (never its clean labels: see ``SimulatedOracle``)."""

    folder: Path
    cfg: FinetuneConfig
    init: Dict[str, Any]
    data: Any                       # ssl_noise.data.ImageDataset (its train labels are only used for metrics)
    index: np.ndarray               # (N,) original training indices (noisy_labels.csv)
    given: np.ndarray               # (N,) given (noisy) labels
    kept: np.ndarray                # (N,) bool, the LNL clean set
    val_noise: Optional[noise.NoisyLabels]
    state: Dict[str, torch.Tensor]  # classifier state (network 1)

    @property
    def class_names(self) -> List[str]:
        return list(self.data.class_names)


def classifier_state(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The first classifier of a method's state dict (``net1.`` for Co-teaching, ``model.`` for CE), unprefixed.

    >>> w = torch.zeros(2, 3)
    >>> sorted(classifier_state({"net2.head.weight": w, "net1.head.weight": w, "net1.encoder.x": w}))
    ['encoder.x', 'head.weight']
    """
    prefixes = sorted(k[:-len("head.weight")] for k in state if k.endswith("head.weight"))
    if not prefixes:
        raise UserError("model.safetensors holds no classifier (no head.weight)")
    return {k[len(prefixes[0]):]: v for k, v in state.items() if k.startswith(prefixes[0])}


def load_run(folder: str | Path, *, data_root: Optional[str] = None) -> LNLRun:
    """Read a run folder and reload its data; raises UserError when it is not a finished run of a selecting method."""
    run = RunFolder(folder)
    run.require("config.yaml", "run.json", "noisy_labels.csv", "metrics.json")
    run.require("kept.npy", "model.safetensors", message="{path} has no {name}: refinement needs a run of a selecting "
                "method (ssl-noise finetune --method coteaching|vog)")
    cfg = resolve(FinetuneConfig, run.config())
    init = run.provenance()["init"]
    data = load_dataset(cfg.dataset, data_root=data_root, size=init["image_size"], subset=cfg.subset,
                        seed=cfg.noise_seed)
    labels = run.labels(num_classes=data.num_classes, indices=data.train_indices)
    if not np.array_equal(labels.clean, data.train.labels):
        raise UserError(f"{cfg.dataset} as loaded here differs from the data of run {run.name}")
    val = run.val_labels(num_samples=len(data.val), num_classes=data.num_classes)
    val_noise = None if val is None else noise.NoisyLabels.from_labels(data.val.labels, val.noisy,
                                                                       np.eye(data.num_classes))
    try:
        kept = kept_mask(run.array("kept"), len(data.train))
    except (ValueError, IndexError) as e:
        raise UserError(f"{run.path / 'kept.npy'} does not describe the {len(data.train)} training samples: "
                        f"{e}") from None
    return LNLRun(run.path, cfg, init, data, labels.index, labels.noisy, kept, val_noise,
                  classifier_state(run.model_state()))
