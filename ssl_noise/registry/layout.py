"""The registry's on-disk layout: file names, meta.json keys, entry ids, and reading an entry's meta.json.

Format: docs/formats.md, "Registry entry" (and checkpoints/README.md).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ssl_noise.errors import UserError

SCHEMA_VERSION = 1
WEIGHTS_FILE = "encoder.safetensors"
META_FILE = "meta.json"
CONFIG_FILE = "config.yaml"
LOG_FILE = "train_log.jsonl"
#: meta.json keys the caller (the pretraining loop) must provide.
REQUIRED_META = ("method", "method_config", "backbone", "stem", "feat_dim", "dataset", "image_size", "channels",
                 "normalisation", "epochs", "batch_size", "optimizer", "seed")
#: meta.json keys the registry fills in itself; a caller passing them is overruled.
FILLED_META = ("schema_version", "id", "sha256", "created_at", "versions", "git")
#: Wrapper prefixes stripped from state_dict keys (DataParallel/DDP, SSL wrappers, torch.compile).
STRIP_PREFIXES = ("module.", "backbone.", "_orig_mod.")
HOW_TO_CREATE = "create one with: ssl-noise pretrain --method simclr"
PathLike = str | os.PathLike


def make_id(meta: Mapping[str, Any], sha256: str) -> str:
    """``<method>-<backbone>-<dataset>-e<epochs>-s<seed>-<sha8>``, each part made file-name safe.

    >>> make_id({"method": "simclr", "backbone": "resnet18", "dataset": "bloodmnist", "epochs": 100,
    ...          "seed": 0}, "3f2a9c1d" + "0" * 56)
    'simclr-resnet18-bloodmnist-e100-s0-3f2a9c1d'
    """
    parts = [meta["method"], meta["backbone"], meta["dataset"], f"e{meta['epochs']}", f"s{meta['seed']}"]
    safe = [re.sub(r"[^A-Za-z0-9_.]+", "_", str(p)).strip("._") or "_" for p in parts]
    return "-".join(safe + [sha256[:8]])


def _plain(obj: Any) -> Any:
    """JSON/YAML-native copy: numpy and torch scalars/arrays become numbers/lists, paths and tuples too.

    Without this, ``json.dumps(default=str)`` would store a numpy mean as the *string* ``"0.5"`` and
    ``yaml.safe_dump`` would refuse it.

    >>> import numpy as np
    >>> _plain({"mean": (np.float32(0.5),), "root": Path("/data")})
    {'mean': [0.5], 'root': '/data'}
    """
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy / torch scalars and arrays
        return _plain(obj.tolist())
    return obj


#: Beyond this magnitude a weight is the trace of a diverged run, not a learned value (a trained ResNet's are O(1);
#: a learning rate of 1e6 left 3e29): BatchNorm's variance then overflows for some inputs though the weights are
#: finite. Saving refuses such weights and ``registry verify`` fails such entries (one rule); loading refuses only
#: non-finite values, so an entry saved before this rule still loads.
DIVERGED_ABS = 1e10


def non_finite(state: Mapping[str, Any], limit: Optional[float] = None) -> Optional[str]:
    """The first floating-point tensor of ``state`` holding NaN or inf (or, with ``limit``, values beyond it), as
    ``"name (n of m values ...)"``, else None: a diverged encoder must never pass for a registry entry."""
    import torch  # here: the layout is read by code that does not need torch

    for name, tensor in state.items():
        if torch.is_floating_point(tensor):
            bad = ~torch.isfinite(tensor) if limit is None else ~torch.isfinite(tensor) | (tensor.abs() > limit)
            if bad.any():
                what = "non-finite" if limit is None else f"non-finite or beyond {limit:g}"
                return f"{name} ({int(bad.sum())} of {tensor.numel()} values {what})"
    return None


def root_problem(root: PathLike) -> Optional[str]:
    """What is wrong with ``root`` as a registry folder (missing, a file), or None: said instead of "no encoders",
    which would send the user looking for entries rather than at a mistyped path."""
    root = Path(root)
    if not root.exists():
        return f"the encoder registry {root} does not exist (--checkpoints / SSL_NOISE_CHECKPOINTS)"
    if not root.is_dir():
        return f"the encoder registry {root} is a file, not a folder (--checkpoints / SSL_NOISE_CHECKPOINTS)"
    return None


def _entry_dirs(root: PathLike) -> List[Path]:
    """Entry folders; hidden ones (``.<id>.*.tmp`` saves in progress, removals) are not entries."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_meta(path: Path) -> Dict[str, Any]:
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path.name}: {META_FILE} is missing or not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("id") != path.name:
        raise UserError(f"{path.name}: {META_FILE} records id {meta.get('id') if isinstance(meta, dict) else None!r}"
                        "; the folder was renamed or the file replaced")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{path.name}: schema_version {meta.get('schema_version')!r} is not {SCHEMA_VERSION}; "
                        "upgrade ssl-noise")
    return meta


def _listing(ids: Any, limit: int = 10) -> str:
    ids = list(ids)
    more = f" ... and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more

