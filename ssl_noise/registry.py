"""The encoder registry: pretrained backbones in folders named by content, checked on every load.

Why a registry and not loose ``.pth`` files: a fine-tuning result is only meaningful if we know exactly which
encoder it started from and how that encoder was made. So each entry is a folder (``checkpoints/<id>/``, format in
``checkpoints/README.md`` and DESIGN.md) holding

* ``encoder.safetensors``: the backbone's own ``state_dict`` (keys exactly as in the torchvision ResNet, no
  ``fc``, no ``module.``/``backbone.`` prefix), so it loads with ``strict=True`` into a plain torchvision model;
* ``meta.json``: how it was made (method and its config, data, epochs, seed, versions, git, argv) plus its
  sha256; ``config.yaml``; ``train_log.jsonl``; optional extra JSON files (e.g. jigsaw ``permutations.json``).

The id ``<method>-<backbone>-<dataset>-e<epochs>-s<seed>-<sha8>`` ends with the first 8 hex digits of the
weights' sha256 (timm / torch.hub style). Entries are written atomically (temp folder, then rename), never
overwritten, and every load re-hashes the weights and loads strictly. No pickle: safetensors, JSON and YAML only.

>>> entry_id = save_entry("checkpoints", encoder, meta, config=cfg)   # doctest: +SKIP
>>> model, meta = load_encoder("checkpoints", "simclr")               # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import safetensors
import safetensors.torch
import torch
import yaml
from torch import nn

from ssl_noise import backbones
from ssl_noise.errors import SslNoiseWarning, UserError
from ssl_noise.io import atomic_dir, atomic_path, file_digest, write_json, write_yaml
from ssl_noise.provenance import git_state, versions

log = logging.getLogger(__name__)

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


# ============ saving ============

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
        The entry id. If an entry with this id already exists its weights are byte-identical (the id ends with
        their hash and records method, backbone, dataset, epochs and seed), so nothing is written and the existing
        id is returned; the existing ``meta.json`` (e.g. its ``created_at``) is kept.

    Raises:
        UserError: a required meta key is missing, the weights do not match the declared backbone/stem/channels,
            or an extra file name is not a plain ``*.json`` name.

    >>> model, _ = backbones.build_backbone("resnet18", stem="cifar")
    >>> save_entry("checkpoints", model, meta, config={"lr": 0.1})      # doctest: +SKIP
    'simclr-resnet18-bloodmnist-e100-s0-3f2a9c1d'
    """
    meta = _checked_meta(meta)
    state = encoder_state_dict(encoder)
    _check_architecture(state, meta)
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


def make_id(meta: Mapping[str, Any], sha256: str) -> str:
    """``<method>-<backbone>-<dataset>-e<epochs>-s<seed>-<sha8>``, each part made file-name safe.

    >>> make_id({"method": "simclr", "backbone": "resnet18", "dataset": "bloodmnist", "epochs": 100,
    ...          "seed": 0}, "3f2a9c1d" + "0" * 56)
    'simclr-resnet18-bloodmnist-e100-s0-3f2a9c1d'
    """
    parts = [meta["method"], meta["backbone"], meta["dataset"], f"e{meta['epochs']}", f"s{meta['seed']}"]
    safe = [re.sub(r"[^A-Za-z0-9_.]+", "_", str(p)).strip("._") or "_" for p in parts]
    return "-".join(safe + [sha256[:8]])


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


# ============ listing and resolving ============

def list_entries(root: PathLike) -> List[Dict[str, Any]]:
    """The ``meta.json`` of every readable entry, newest first (unreadable ones are skipped with a warning).

    >>> [m["id"] for m in list_entries("checkpoints")]                # doctest: +SKIP
    ['simclr-resnet18-bloodmnist-e100-s0-3f2a9c1d']
    """
    metas = []
    for path in _entry_dirs(root):
        try:
            metas.append(_read_meta(path))
        except UserError as e:
            warnings.warn(f"skipping registry folder {path}: {e}", SslNoiseWarning, stacklevel=2)
    return sorted(metas, key=lambda m: (str(m.get("created_at", "")), m["id"]), reverse=True)


def resolve(root: PathLike, ref: str, *, dataset: Optional[str] = None, channels: Optional[int] = None) -> str:
    """Turn a reference into an entry id.

    ``ref`` is, in this order: a full id; a method name (``simclr``: the newest entry made by that method,
    restricted to ``dataset``/``channels`` when given, so the pick is compatible with the caller's data); a unique
    id prefix. Explicit ids and prefixes ignore the filters: the user named that entry (pretrained on another
    dataset is a legitimate transfer experiment); the caller checks what must match.

    Raises:
        UserError: empty registry, no match, or an ambiguous prefix (the message lists candidates).

    >>> resolve("checkpoints", "simclr", dataset="bloodmnist")          # doctest: +SKIP
    'simclr-resnet18-bloodmnist-e100-s0-3f2a9c1d'
    """
    ids = [p.name for p in _entry_dirs(root)]
    if not ids:
        raise UserError(f"the encoder registry at {root} is empty; {HOW_TO_CREATE}")
    if ref in ids:
        return ref
    metas = list_entries(root)
    by_method = [m for m in metas if m.get("method") == ref]
    if by_method:
        compatible = [m for m in by_method if _compatible(m, dataset, channels)]
        if not compatible:
            raise UserError(f"no {ref} encoder in {root} matches dataset={dataset} channels={channels}; "
                            f"{ref} entries: {_listing(m['id'] for m in by_method)}; create one with: "
                            f"ssl-noise pretrain --method {ref}" + (f" --dataset {dataset}" if dataset else ""))
        log.info("resolved %r to %s (newest compatible %s entry)", ref, compatible[0]["id"], ref)
        return compatible[0]["id"]
    return _by_prefix(root, ref, ids)


def _by_prefix(root: PathLike, ref: str, ids: List[str]) -> str:
    matches = sorted(i for i in ids if i.startswith(ref))
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UserError(f"{ref!r} is ambiguous in {root}; it matches: {_listing(matches)}")
    if "-" not in ref:  # looks like a method name with no entry yet
        raise UserError(f"no entry matches {ref!r} in {root}; known entries: {_listing(ids)}; "
                        f"to make a {ref} encoder: ssl-noise pretrain --method {ref}")
    raise UserError(f"no entry matches {ref!r} in {root}; known entries: {_listing(ids)}")


def _compatible(meta: Mapping[str, Any], dataset: Optional[str], channels: Optional[int]) -> bool:
    return (dataset is None or meta.get("dataset") == dataset) and \
        (channels is None or int(meta.get("channels", -1)) == int(channels))


def _listing(ids: Any, limit: int = 10) -> str:
    ids = list(ids)
    more = f" ... and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


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


def read_meta(root: PathLike, ref: str) -> Dict[str, Any]:
    """The ``meta.json`` of the entry ``ref`` resolves to (see :func:`resolve`).

    >>> read_meta("checkpoints", "simclr")["sha256"]                   # doctest: +SKIP
    '3f2a9c1d...'
    """
    return _read_meta(Path(root) / resolve(root, ref))


def pretrain_data_spec(root: PathLike, ref: str) -> str:
    """The data spec the entry was pretrained on, as ``pretrain --dataset`` was given it (its ``config.yaml``).

    ``meta.json``'s ``dataset`` is the data set's *name*, which is all a MedMNIST flag needs, but only the stem of a
    file spec (``../data/pneumoniamnist_balanced.npz`` is named ``pneumoniamnist_balanced``): to load the images
    again, callers need the spec itself. Falls back to the name for an entry without a recorded one.
    """
    path = Path(root) / resolve(root, ref)
    config = yaml.safe_load((path / CONFIG_FILE).read_text()) if (path / CONFIG_FILE).is_file() else None
    spec = config.get("dataset") if isinstance(config, dict) else None
    return str(spec) if spec else str(_read_meta(path)["dataset"])


# ============ loading and verifying ============

def load_encoder(root: PathLike, ref: str, *, verify: bool = True, dataset: Optional[str] = None,
                 channels: Optional[int] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """Build the backbone an entry records and load its weights with ``strict=True``.

    Args:
        root: registry root.
        ref: id, unique prefix or method name (see :func:`resolve`; ``dataset``/``channels`` filter the latter).
        verify: re-hash ``encoder.safetensors`` and compare with ``meta["sha256"]`` first (keep it on).

    Returns:
        ``(model, meta)``; the model is on CPU in train mode, ``fc`` is ``Identity``.

    Raises:
        UserError: unknown ref, sha256 mismatch (changed or truncated file), unreadable file, strict-load failure.

    >>> model, meta = load_encoder("checkpoints", "simclr")              # doctest: +SKIP
    >>> model(torch.zeros(2, meta["channels"], 28, 28)).shape             # doctest: +SKIP
    torch.Size([2, 512])
    """
    path = Path(root) / resolve(root, ref, dataset=dataset, channels=channels)
    meta = _read_meta(path)
    return _load_dir(path, meta, verify=verify), meta


def _load_dir(path: Path, meta: Mapping[str, Any], *, verify: bool) -> nn.Module:
    weights = path / WEIGHTS_FILE
    if verify and _sha256(weights) != meta.get("sha256"):
        raise UserError(f"{path.name}: {WEIGHTS_FILE} sha256 mismatch: the file was changed or truncated; "
                        f"re-create or remove it (ssl-noise registry rm {path.name})")
    try:
        state = safetensors.torch.load_file(weights)
    except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{path.name}: {WEIGHTS_FILE} cannot be read as safetensors ({e}); "
                        "re-create or remove the entry") from e
    model, feat_dim = backbones.build_backbone(meta["backbone"], stem=meta["stem"], in_channels=int(meta["channels"]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{path.name}: weights do not load strictly into {meta['backbone']} "
                        f"(stem={meta['stem']}, channels={meta['channels']}): {e}") from e
    if feat_dim != meta.get("feat_dim"):
        raise UserError(f"{path.name}: meta feat_dim {meta.get('feat_dim')} != {meta['backbone']}'s {feat_dim}")
    return model


def _sha256(path: Path) -> Optional[str]:
    try:
        return file_digest(path)
    except OSError:
        return None


def verify_entry(root: PathLike, ref: str) -> Tuple[bool, str]:
    """Check one entry end to end: meta.json, sha256, safetensors parse, strict load into its backbone.

    ``ref`` may be an entry folder name even when its meta.json is broken (so every folder can be checked).

    Returns:
        ``(ok, message)``; a damaged entry gives ``(False, reason)`` rather than an exception.

    Raises:
        UserError: ``ref`` does not resolve to an entry.

    >>> verify_entry("checkpoints", "simclr")                           # doctest: +SKIP
    (True, 'ok: sha256 3f2a9c1d..., 122 tensors, strict load into resnet18 (stem=cifar, channels=3)')
    """
    folders = {p.name: p for p in _entry_dirs(root)}
    return _verify_dir(folders[ref] if ref in folders else Path(root) / resolve(root, ref))


def verify_all(root: PathLike) -> List[Tuple[str, bool, str]]:
    """:func:`verify_entry` for every entry folder: ``[(id, ok, message), ...]`` sorted by id.

    >>> all(ok for _, ok, _ in verify_all("checkpoints"))               # doctest: +SKIP
    True
    """
    return [(p.name, *_verify_dir(p)) for p in _entry_dirs(root)]


def _verify_dir(path: Path) -> Tuple[bool, str]:
    try:
        meta = _read_meta(path)
        model = _load_dir(path, meta, verify=True)
    except UserError as e:
        return False, str(e)
    n = len(model.state_dict())
    return True, (f"ok: sha256 {meta['sha256'][:12]}..., {n} tensors, strict load into {meta['backbone']} "
                  f"(stem={meta['stem']}, channels={meta['channels']})")


# ============ exporting and removing ============

def export_entry(root: PathLike, ref: str, out_path: PathLike) -> Path:
    """Write the entry's weights as a plain ``torch.save`` dict of tensors for use outside ssl-noise.

    The file loads with ``torch.load(path, weights_only=True)`` and then ``load_state_dict(strict=True)`` into the
    torchvision model that :func:`export_instructions` describes. The weights are verified first.

    Raises:
        UserError: unknown ref, damaged entry, or ``out_path`` already exists (nothing is overwritten).

    >>> export_entry("checkpoints", "simclr", "simclr_resnet18.pt")     # doctest: +SKIP
    PosixPath('simclr_resnet18.pt')
    """
    out = Path(out_path)
    if out.exists():
        raise UserError(f"{out} already exists; choose another --out or remove it first")
    model, _ = load_encoder(root, ref)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    return out


def export_instructions(meta: Mapping[str, Any], out_path: PathLike) -> str:
    """Python code that loads an exported file into a plain torchvision model (what ``registry export`` prints).

    >>> print(export_instructions(meta, "simclr.pt"))                   # doctest: +SKIP
    """
    c, stem = int(meta["channels"]), meta["stem"]
    lines = ["import torch, torchvision", f"model = torchvision.models.{meta['backbone']}()"]
    if stem == "cifar":
        lines += [f"model.conv1 = torch.nn.Conv2d({c}, 64, kernel_size=3, stride=1, padding=1, bias=False)",
                  "model.maxpool = torch.nn.Identity()"]
    elif c != 3:
        lines += [f"model.conv1 = torch.nn.Conv2d({c}, 64, kernel_size=7, stride=2, padding=3, bias=False)"]
    norm = meta.get("normalisation", {})
    lines += ["model.fc = torch.nn.Identity()  # forward returns pooled features; put your own head on top",
              f"model.load_state_dict(torch.load({str(out_path)!r}, weights_only=True), strict=True)",
              f"# inputs: {c} channel(s), {meta.get('image_size')} px, normalised with "
              f"mean={norm.get('mean')} std={norm.get('std')}"]
    return "\n".join(lines)


def resolve_id(root: PathLike, ref: str) -> str:
    """Resolve a full id or a unique id prefix, but never a method name (used where a mistake deletes data).

    Raises:
        UserError: empty registry, no match, ambiguous prefix, or ``ref`` is a method name.

    >>> resolve_id("checkpoints", "simclr-resnet18-blood")             # doctest: +SKIP
    'simclr-resnet18-bloodmnist-e100-s0-3f2a9c1d'
    """
    ids = [p.name for p in _entry_dirs(root)]
    if not ids:
        raise UserError(f"the encoder registry at {root} is empty")
    if ref in ids:
        return ref
    if ref in {m.get("method") for m in list_entries(root)}:
        raise UserError(f"{ref!r} is a method name; give an entry id or id prefix: "
                        f"{_listing(i for i in ids if i.startswith(ref))}")
    return _by_prefix(root, ref, ids)


def remove_entry(root: PathLike, ref: str) -> str:
    """Delete an entry given its full id or a unique id prefix (see :func:`resolve_id`); return its id.

    The folder is first renamed to a hidden name, so readers never see half an entry.

    Raises:
        UserError: no such entry, an ambiguous prefix, or a method name.

    >>> remove_entry("checkpoints", "simclr-resnet18-bloodmnist-e100-s0-3f2a9c1d")  # doctest: +SKIP
    'simclr-resnet18-bloodmnist-e100-s0-3f2a9c1d'
    """
    entry_id = resolve_id(root, ref)
    trash = Path(tempfile.mkdtemp(prefix=f".{entry_id}.", suffix=".rm", dir=root))
    os.rename(Path(root) / entry_id, trash / entry_id)
    shutil.rmtree(trash)
    return entry_id
