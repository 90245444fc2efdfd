"""Writing entries: save an encoder with its provenance (atomically, never overwriting), and remove one."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import safetensors.torch
import torch
from torch import nn

from ssl_noise import backbones
from ssl_noise.errors import NonFiniteLoss, UserError
from ssl_noise.io import atomic_dir, file_digest, write_json, write_yaml
from ssl_noise.provenance import git_state, versions
from ssl_noise.registry.layout import (CONFIG_FILE, FILLED_META, LOG_FILE, META_FILE, REQUIRED_META, SCHEMA_VERSION,
                                       STRIP_PREFIXES, WEIGHTS_FILE, PathLike, _plain, make_id,
                                       DIVERGED_ABS, non_finite)
from ssl_noise.registry.load import _verify_dir
from ssl_noise.registry.lookup import resolve_id

log = logging.getLogger(__name__)


def save_entry(root: PathLike, encoder: nn.Module, meta: Mapping[str, Any], *, config: Mapping[str, Any],
               train_log_path: Optional[PathLike] = None,
               extra_files: Optional[Mapping[str, Any]] = None) -> str:
    """Write ``encoder`` and its provenance as a new registry entry.

    Args:
        root: registry root (``Settings.checkpoints``).
        encoder: the backbone as built by :func:`ssl_noise.backbones.build_backbone` (``fc`` is ``Identity``).
            A leading ``module.``/``backbone.``/``_orig_mod.`` key prefix is stripped.
        meta: at least :data:`REQUIRED_META`; ``metrics`` (e.g. ``{"knn_acc": 0.81}``) and ``command`` (argv,
            default ``sys.argv``) are optional. The registry adds :data:`FILLED_META`.
        config: the resolved pretraining config, written as ``config.yaml``.
        train_log_path: a JSON-lines log to copy in as ``train_log.jsonl``.
        extra_files: ``{"permutations.json": obj}``: more JSON files for the entry (names must end in ``.json``).

    Returns:
        The entry id. An existing entry with this id holds byte-identical weights (the id ends with their hash), so
        then nothing is written and its ``meta.json`` is kept.

    Raises:
        UserError: a required meta key is missing, the weights do not fit the declared backbone/stem/channels, or
            an extra file name is not a plain ``*.json`` name.

    >>> import tempfile; from ssl_noise.registry import load_encoder
    >>> model, feat_dim = backbones.build_backbone("resnet18", stem="cifar", in_channels=1)
    >>> meta = dict(method="simclr", method_config={}, backbone="resnet18", stem="cifar", feat_dim=feat_dim,
    ...             dataset="pneumoniamnist", image_size=28, channels=1, normalisation={"mean": [0.5], "std": [0.5]},
    ...             epochs=1, batch_size=32, optimizer={"name": "sgd", "lr": 0.1}, seed=0)
    >>> root = tempfile.mkdtemp()
    >>> entry_id = save_entry(root, model, meta, config={"lr": 0.1}); entry_id  # doctest: +ELLIPSIS
    'simclr-resnet18-pneumoniamnist-e1-s0-...'
    >>> load_encoder(root, "simclr")[0](torch.zeros(2, 1, 28, 28)).shape  # newest simclr entry, sha256 checked
    torch.Size([2, 512])
    """
    meta = _checked_meta(meta)
    state = encoder_state_dict(encoder)
    _check_architecture(state, meta)
    bad = non_finite(state, DIVERGED_ABS)  # the rule `registry verify` applies
    if bad:
        raise NonFiniteLoss(f"refusing to register diverged weights, {bad}; lower the learning rate (--lr) "
                            f"and run again")
    blob = safetensors.torch.save(state, metadata={"format": "pt"})
    sha256 = hashlib.sha256(blob).hexdigest()
    entry_id = make_id(meta, sha256)
    meta.update(_provenance(entry_id, sha256))
    extras = _plain(_checked_extras(extra_files or {}))
    meta["extra_files"] = sorted(extras)
    path = Path(root) / entry_id
    if path.exists():
        return _existing(path)
    try:
        with atomic_dir(path) as tmp:
            (tmp / WEIGHTS_FILE).write_bytes(blob)
            if file_digest(tmp / WEIGHTS_FILE) != sha256:  # a full disk can truncate silently
                raise OSError(f"{WEIGHTS_FILE} was not written completely")
            write_yaml(tmp / CONFIG_FILE, _plain(config))
            if train_log_path is not None:
                shutil.copyfile(train_log_path, tmp / LOG_FILE)
            for name, obj in extras.items():
                write_json(tmp / name, obj)
            write_json(tmp / META_FILE, meta)  # last: a folder with meta.json is complete
    except OSError:  # FileExistsError or a failed rename: another process saved the same weights meanwhile?
        if (path / META_FILE).exists():
            return _existing(path)
        raise
    log.info("saved encoder %s", entry_id)
    return entry_id


def encoder_state_dict(encoder: nn.Module) -> Dict[str, torch.Tensor]:
    """The encoder's weights as saved: CPU, contiguous, wrapper prefixes stripped with ``startswith``.

    Raises:
        UserError: the state_dict still has classifier keys (``fc.*``).

    >>> sorted(encoder_state_dict(backbones.build_backbone("resnet18")[0]))[:2]
    ['bn1.bias', 'bn1.num_batches_tracked']
    """
    state = {}
    for key, tensor in encoder.state_dict().items():
        stripped = True
        while stripped:  # "module.backbone.conv1.weight" -> "conv1.weight"; never touches the middle of a key
            stripped = False
            for prefix in STRIP_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        state[key] = tensor.detach().to("cpu").contiguous()
    fc_keys = sorted(k for k in state if k.startswith("fc."))
    if fc_keys:
        raise UserError(f"the encoder still has classifier weights {fc_keys}; save the backbone with "
                        "fc = nn.Identity() (as build_backbone returns it)")
    return state


def _checked_meta(meta: Mapping[str, Any]) -> Dict[str, Any]:
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise UserError(f"registry meta is missing required keys: {', '.join(missing)}")
    backbones.BACKBONES.get_or_fail(meta["backbone"])
    backbones.check_stem(meta["stem"])
    norm = meta["normalisation"]
    if not isinstance(norm, Mapping) or set(norm) != {"mean", "std"}:
        raise UserError(f"meta['normalisation'] must be {{'mean': [...], 'std': [...]}}, got {norm!r}")
    out = {k: _plain(v) for k, v in meta.items() if k not in FILLED_META}
    out.setdefault("metrics", {})
    out.setdefault("command", list(sys.argv))
    return out


def _check_architecture(state: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Refuse to save weights that would not load strictly into the backbone that meta.json declares."""
    reference, feat_dim = backbones.build_backbone(meta["backbone"], stem=meta["stem"],
                                                   in_channels=int(meta["channels"]))
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        shapes = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        raise UserError(f"encoder weights do not match {meta['backbone']} (stem={meta['stem']}, "
                        f"channels={meta['channels']}): missing {missing[:5]}, unexpected {unexpected[:5]}, "
                        f"wrong shape {shapes[:5]}")
    if int(meta["feat_dim"]) != feat_dim:
        raise UserError(f"meta feat_dim={meta['feat_dim']} but {meta['backbone']} has {feat_dim} features")


def _checked_extras(extras: Mapping[str, Any]) -> Dict[str, Any]:
    reserved = {WEIGHTS_FILE, META_FILE, CONFIG_FILE, LOG_FILE}
    for name in extras:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.json", name) or name in reserved:
            raise UserError(f"extra registry file name {name!r} must be a plain '<name>.json' file name "
                            f"other than {sorted(reserved)}")
    return dict(extras)


def _provenance(entry_id: str, sha256: str) -> Dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "id": entry_id, "sha256": sha256,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "versions": versions(), "git": git_state()}


def _existing(path: Path) -> str:
    """An entry with this id exists: same weights by construction. Return its id unless it was damaged."""
    ok, message = _verify_dir(path)
    if not ok:
        raise UserError(f"{path.name} already exists but is damaged ({message}); remove it with "
                        f"'ssl-noise registry rm {path.name}' and save again")
    log.info("encoder %s already in the registry; kept the existing entry", path.name)
    return path.name


def remove_entry(root: PathLike, ref: str) -> str:
    """Delete an entry given its full id or a unique id prefix (see :func:`resolve_id`); return its id.

    The folder is first renamed to a hidden name, so readers never see half an entry.

    Raises:
        UserError: no such entry, an ambiguous prefix, or a method name.
    """
    entry_id = resolve_id(root, ref)
    trash = Path(tempfile.mkdtemp(prefix=f".{entry_id}.", suffix=".rm", dir=root))
    os.rename(Path(root) / entry_id, trash / entry_id)
    shutil.rmtree(trash)
    return entry_id

