"""Finding entries: list them, and resolve a full id, a method name or an id prefix to one entry."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import yaml

from ssl_noise.errors import SslNoiseWarning, UserError
from ssl_noise.registry.layout import (CONFIG_FILE, HOW_TO_CREATE, PathLike, _entry_dirs, _listing, _read_meta,
                                       root_problem)

log = logging.getLogger(__name__)


def list_entries(root: PathLike) -> List[Dict[str, Any]]:
    """The ``meta.json`` of every readable entry, newest first (unreadable ones are skipped with a warning).
    """
    metas = []
    for path in _entry_dirs(root):
        try:
            metas.append(_read_meta(path))
        except UserError as e:
            warnings.warn(f"skipping registry folder {path}: {e}", SslNoiseWarning, stacklevel=2)
    return sorted(metas, key=lambda m: (str(m.get("created_at", "")), m["id"]), reverse=True)


def resolve(root: PathLike, ref: str, *, dataset: Optional[str] = None, channels: Optional[int] = None,
            spec: Optional[str] = None) -> str:
    """Turn a reference into an entry id.

    ``ref`` is, in this order: a full id; a method name (``simclr``: the newest entry made by that method,
    restricted to ``dataset``/``channels`` when given, so the pick is compatible with the caller's data); a unique
    id prefix. Explicit ids and prefixes ignore the filters: the user named that entry (pretrained on another
    dataset is a legitimate transfer experiment); the caller checks what must match. ``spec`` is the data spec as
    the user typed it (``csv:/data/cells.csv`` for the dataset named ``cells``), for the command an error suggests.

    Raises:
        UserError: empty registry, no match, or an ambiguous prefix (the message lists candidates).
    """
    ids = [p.name for p in _entry_dirs(root)]
    if not ids:
        raise UserError(f"{root_problem(root) or f'the encoder registry at {root} is empty'}; {HOW_TO_CREATE}")
    if ref in ids:
        return ref
    metas = list_entries(root)
    by_method = [m for m in metas if m.get("method") == ref]
    if by_method:
        compatible = [m for m in by_method if _compatible(m, dataset, channels)]
        if not compatible:
            wanted = ", ".join(f"{k}={v}" for k, v in (("dataset", dataset), ("channels", channels)) if v is not None)
            raise UserError(f"no {ref} encoder in {root} matches {wanted}; {ref} entries are of "
                            f"{_listing(sorted({str(m.get('dataset')) for m in by_method}))}"
                            f"{_name_hint(spec, dataset)}; create one with: ssl-noise pretrain --method {ref}"
                            + (f" --dataset {spec or dataset}" if dataset else ""))
        log.info("resolved %r to %s (newest compatible %s entry)", ref, compatible[0]["id"], ref)
        return compatible[0]["id"]
    return _by_prefix(root, ref, ids)


def _name_hint(spec: Optional[str], dataset: Optional[str]) -> str:
    """For image-file data, how its name (which entries are matched by) is made."""
    if not spec or not str(spec).startswith(("csv:", "folder:")):
        return ""
    if str(spec).startswith("csv:"):
        return (f" (this manifest's data is named {dataset!r}: the `# name: <name>` line above its header names it, "
                f"else the file's name; give it the name its entry was pretrained under, or pretrain on it)")
    return f" (this folder's data is named {dataset!r}, after the folder)"


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


def read_meta(root: PathLike, ref: str) -> Dict[str, Any]:
    """The ``meta.json`` of the entry ``ref`` resolves to (see :func:`resolve`).
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


def resolve_id(root: PathLike, ref: str) -> str:
    """Resolve a full id or a unique id prefix, but never a method name (used where a mistake deletes data).

    Raises:
        UserError: empty registry, no match, ambiguous prefix, or ``ref`` is a method name.
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

