"""Cells: the grid points of a sweep spec, each a resolved FinetuneConfig with a stable id.

Expansion resolves every init reference once to a concrete registry id (pinned per sweep in
``<runs>/sweeps/<name>.inits.json``), hashes the whole resolved config into the cell id, names the shared noise
file of cells that must train on the same labels, and shares cells out between machines.
Format: docs/formats.md.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ssl_noise import noise
from ssl_noise.config import BUILTIN_INITS, FinetuneConfig, load_recipe, resolve, to_dict
from ssl_noise.data import dataset_name, spec_label
from ssl_noise.errors import UserError
from ssl_noise.io import file_digest, short_hash, write_json
from ssl_noise.sweep.log import Log, log_stderr
from ssl_noise.sweep.queue import SCHEMA_VERSION, Locked, read_json
from ssl_noise.sweep.spec import (
    SweepSpec,
    check_key,
    check_names,
    find_file,
    grid_fields,
    grid_values,
)

# Function-level imports of ssl_noise.registry (it imports torch) keep ``ssl-noise --help`` fast.



@dataclass(frozen=True)
class Cell:
    """One grid point: ``config`` is what ``finetune`` runs (init resolved to a concrete id)."""

    cell_id: str
    config: FinetuneConfig
    values: tuple[tuple[str, Any], ...]   # the grid values of this cell, in grid order (for printing)
    encoder_sha256: str | None = None

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.values)


def _sha256_file(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return file_digest(Path(path).expanduser())
    except OSError:
        raise UserError(f"file {path} named in the sweep cannot be read") from None


def noise_label(cfg: FinetuneConfig) -> str:
    """``clean``, ``sym0.4``, ``pair0.3``, ``asym`` (matrix) ...: the noise part of cell and run ids.

    >>> noise_label(FinetuneConfig(noise_type="pairflip", noise_rate=0.3)), noise_label(FinetuneConfig())
    ('pair0.3', 'clean')
    """
    if cfg.noise_matrix:
        return noise.short_label("asymmetric", None)
    return noise.short_label(cfg.noise_type, cfg.noise_rate or 0.0)


def cell_id(cfg: FinetuneConfig, *, init_label: str, encoder_sha256: str | None) -> str:
    """The id of a cell: readable parts, then a hash of **everything** that determines the run.

    The hash covers ``hashed_dict(cfg)`` (all fields; late ones once set), the encoder's sha256 (registry inits)
    and the content of the class-map / noise-matrix files, so two cells share an id only if they would train the
    same thing.
    """
    from ssl_noise.finetune.prepare import hashed_config  # here: a sweep worker imports this module first, light

    identity = {"schema": SCHEMA_VERSION, "config": hashed_config(cfg), "encoder_sha256": encoder_sha256,
                "files": {k: _sha256_file(getattr(cfg, k)) for k in ("class_map", "noise_matrix")}}
    digest = short_hash(identity)
    return "-".join([init_label, spec_label(cfg.dataset), f"{noise_label(cfg)}n{cfg.noise_seed}",
                     cfg.method + ("_lp" if cfg.freeze else ""), f"s{cfg.seed}", digest])


def noise_key(cfg: FinetuneConfig) -> str:
    """File stem of the shared noise file of every cell whose training labels must be identical to this one's."""
    fields = {"dataset": cfg.dataset, "image_size": cfg.image_size, "subset": cfg.subset,
              "type": cfg.noise_type, "rate": cfg.noise_rate or 0.0, "mode": cfg.noise_mode, "seed": cfg.noise_seed,
              "class_map": _sha256_file(cfg.class_map), "noise_matrix": _sha256_file(cfg.noise_matrix)}
    digest = short_hash(fields)
    subset = f"-sub{cfg.subset}" if cfg.subset else ""
    return f"{spec_label(cfg.dataset)}-{noise_label(cfg)}-{cfg.noise_mode}-n{cfg.noise_seed}{subset}-{digest}"


# ============ init references, resolved once and pinned ============

class _Inits:
    """Resolves init references once per (reference, dataset): from the sweep's pins first, else the registry."""

    def __init__(self, checkpoints: Path, pins: dict[str, str]):
        self.checkpoints, self.pins, self.cache, self.missing, self.new = Path(checkpoints), pins, {}, {}, {}

    def __call__(self, ref: str, dataset: str) -> tuple[str, str, str] | None:
        """``(entry id, label, sha256)``; for random/imagenet ``(ref, ref, None)``; None when unresolvable."""
        if ref in BUILTIN_INITS:
            return ref, ref, None
        name = dataset_name(dataset)  # as inits.image_size filters: the entries of this data
        key = f"{ref}@{name}"
        if key not in self.cache:
            try:
                entry, meta = self._lookup(ref, key, name, dataset)
                self.cache[key] = (entry, str(meta["method"]), meta["sha256"])
            except UserError as e:
                if key in self.pins:
                    raise
                self.cache[key] = None
                self.missing[ref] = str(e)
        return self.cache[key]

    def _lookup(self, ref: str, key: str, name: str, spec: str) -> tuple[str, dict[str, Any]]:
        """The pinned entry of ``key`` (which must still exist), else the registry's current match of ``ref``."""
        from ssl_noise import registry

        if key in self.pins:
            entry = self.pins[key]
            try:
                return entry, registry.read_meta(self.checkpoints, entry)
            except UserError:
                raise UserError(f"init {ref!r} is pinned to {entry}, which is no longer in the registry "
                                f"{self.checkpoints}; restore it, or delete the sweep's pins file to "
                                "re-resolve (new cells)") from None
        entry = registry.resolve(self.checkpoints, ref, dataset=name, spec=spec)
        meta = registry.read_meta(self.checkpoints, entry)
        self.new[key] = entry
        return entry, meta


def pins_path(runs: Path, name: str) -> Path:
    """``<runs>/sweeps/<name>.inits.json``: how the sweep's init references resolved the first time it ran."""
    return Path(runs) / "sweeps" / f"{name}.inits.json"


def remembered_overrides(runs: Path, name: str, overrides: Sequence[str], *, save: bool) -> tuple[list[str], bool]:
    """The ``--set`` values of a sweep: the given ones (saved to ``<runs>/sweeps/<name>.set.json`` with ``save``), or,
    when none are given, those its last real invocation saved (what ``--collect`` and ``--dry-run`` ask for: the
    cells of the run they follow, without repeating its flags). Returns ``(values, whether they were remembered)``."""
    path = Path(runs) / "sweeps" / f"{name}.set.json"
    if save:  # a real run: what it ran with is what --collect will mean
        if overrides:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, {"set": list(overrides)})
        else:
            path.unlink(missing_ok=True)
    if overrides or save:
        return list(overrides), False
    stored = (read_json(path) or {}).get("set") if path.is_file() else None
    return (list(stored), True) if stored else ([], False)


def _save_pins(path: Path, new: dict[str, str]) -> None:
    """Merge newly resolved references into the pins file (first writer wins per reference; under the lock)."""
    with Locked(path.parent / ".lock"):
        pins = read_json(path) or {}
        write_json(path, {**new, **pins})


# ============ expansion ============

def expand(spec: SweepSpec, *, checkpoints: Path, overrides: dict[str, Any] | None = None,
           skip_missing: bool = False, runs: Path | None = None, pin: bool = False,
           log: Log = log_stderr) -> list[Cell]:
    """All cells of ``spec`` in grid order (duplicates, i.e. equal ids or the same clean run, kept once).

    Init references (a method name, an id prefix) resolve to concrete registry ids. With ``runs``, references the
    sweep resolved in an earlier invocation keep that resolution (``<runs>/sweeps/<name>.inits.json``), so a
    resumed sweep, or a shard started later, never switches to a newer encoder half-way; ``pin`` records the
    references resolved now (the CLI pins on real runs, not on ``--dry-run``).

    Args:
        spec: from :func:`load_spec`.
        checkpoints: registry root, for resolving inits given by method name or prefix.
        overrides: ``--set`` values applied over ``base`` (a grid key cannot be overridden).
        skip_missing: drop cells whose init is not in the registry (said on ``log``) instead of failing.
        runs: the runs folder whose pins to honour.
        pin: write the newly resolved references to the pins file (needs ``runs``).

    Raises:
        UserError: a bad value in any cell, an unresolvable init without ``skip_missing``, or a pinned encoder
            that left the registry.
    """
    layers = _layers(spec, overrides)
    pins_file = pins_path(runs, spec.name) if runs is not None else None
    pinned = (read_json(pins_file) or {}) if pins_file is not None else {}
    inits = _Inits(checkpoints, pinned)
    cells, collapsed = _grid_cells(spec, layers, inits)
    if collapsed:
        log(f"sweep {spec.name}: {collapsed} clean cell(s) differ from an earlier one only in noise seed, type or "
            f"mode, which draw nothing without noise: each is run once")
    if inits.missing:
        _missing_inits(spec, inits.missing, checkpoints, skip_missing, log)
    used = {k: v for k, v in pinned.items() if k in inits.cache}
    if used:
        log(f"sweep {spec.name}: inits as first resolved by this sweep ({pins_file}): "
            + ", ".join(f"{k.split('@')[0]} -> {v}" for k, v in used.items()))
    if pin and pins_file is not None and inits.new:
        _save_pins(pins_file, {k: v for k, v in inits.new.items() if k.split("@")[0] != v})
    return cells


def _layers(spec: SweepSpec, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` with the ``--set`` overrides applied; a grid key cannot be overridden."""
    overrides = {check_key(k, "--set"): v for k, v in (overrides or {}).items()}
    clash = sorted(set(overrides) & set(grid_fields(spec.grid)))
    if clash:
        raise UserError(f"--set {', '.join(clash)}: a grid key of {spec.path}; edit the grid instead")
    return {**spec.base, **overrides}


def _grid_cells(spec: SweepSpec, layers: dict[str, Any], inits: _Inits) -> tuple[list[Cell], int]:
    """The cells of every grid point whose init resolves, and how many clean duplicates were collapsed."""
    recipes: dict[str, dict[str, Any]] = {}
    cells: list[Cell] = []
    seen: dict[str, str] = {}
    collapsed = 0
    keys = list(spec.grid)
    points = []
    for combo in itertools.product(*(spec.grid[k] for k in keys)):
        values = grid_values(keys, combo)
        cfg = _cell_config(spec, {**layers, **values}, values, recipes)
        resolved = inits(cfg.init, cfg.dataset)
        if resolved is not None:
            points.append((values, dataclasses.replace(cfg, init=resolved[0]), resolved))
    contracts = _contracts([cfg for _, cfg, _ in points], inits.checkpoints)
    for values, cfg, (entry, label, sha) in points:
        cfg = _like_for_like(cfg, contracts)
        cid = cell_id(cfg, init_label=label, encoder_sha256=sha)
        same_run = cell_id(_without_noise_draw(cfg), init_label=label, encoder_sha256=sha)
        if same_run in seen:
            collapsed += seen[same_run] != cid  # an equal id (a name and the id it resolves to) is no news
            continue
        seen[same_run] = cid
        cells.append(Cell(cid, cfg, tuple(values.items()), sha))
    return cells, collapsed


def _contracts(configs: list[FinetuneConfig], checkpoints: Path) -> dict[str, set[tuple[int, str, str]]]:
    """Per dataset name, the input contracts ``(image_size, stem, backbone)`` of the sweep's registry encoders."""
    from ssl_noise import registry

    found: dict[str, set[tuple[int, str, str]]] = {}
    for cfg in configs:
        if cfg.init not in BUILTIN_INITS:
            meta = registry.read_meta(checkpoints, cfg.init)
            found.setdefault(dataset_name(cfg.dataset), set()).add(
                (int(meta["image_size"]), str(meta["stem"]), str(meta["backbone"])))
    return found


def _like_for_like(cfg: FinetuneConfig, contracts: dict[str, set[tuple[int, str, str]]]) -> FinetuneConfig:
    """A random or ImageNet cell built like the sweep's encoders on the same data (one contract among them): its
    pair then differs in the init only, not in image size or stem. Fields the spec sets stay; a field is only
    written where it changes the default (28 px MedMNIST / the cifar stem below 64 px), so the ids of sweeps whose
    encoders already match the default stay as they were."""
    from ssl_noise.backbones import default_stem

    found = contracts.get(dataset_name(cfg.dataset), set())
    if cfg.init not in BUILTIN_INITS or len(found) != 1:
        return cfg
    size, stem, backbone = next(iter(found))
    changes: dict[str, Any] = {}
    if cfg.image_size is None and size != (28 if dataset_name(cfg.dataset) == cfg.dataset.lower() else None):
        changes["image_size"] = size
    if cfg.stem is None and stem != default_stem(cfg.image_size or size):
        changes["stem"] = stem
    if cfg.backbone == "resnet18" != backbone:  # the default backbone follows the encoders'
        changes["backbone"] = backbone
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _cell_config(spec: SweepSpec, chosen: dict[str, Any], values: dict[str, Any],
                 recipes: dict[str, dict[str, Any]]) -> FinetuneConfig:
    """Resolve one grid point: defaults < recipe < base < ``--set`` < grid values (recipes loaded once each)."""
    fields = {k: v for k, v in chosen.items() if k != "recipe"}
    name = chosen.get("recipe")
    try:
        if name is not None and name not in recipes:
            recipes[name] = load_recipe(find_file(str(name), spec.path.parent))
        cfg = resolve(FinetuneConfig, recipes[name] if name is not None else {}, fields)
        check_names(cfg)
        return cfg
    except UserError as e:
        raise UserError(f"sweep spec {spec.path}, cell {values}: {e}") from None


def _missing_inits(spec: SweepSpec, missing: dict[str, str], checkpoints: Path, skip_missing: bool,
                   log: Log) -> None:
    """Fail on unresolvable inits (grouped by reason), or with ``skip_missing`` say their cells are skipped."""
    reasons: dict[str, list[str]] = {}
    for ref, why in missing.items():
        reasons.setdefault(why, []).append(ref)
    detail = "; ".join(f"{', '.join(refs)}: {why}" for why, refs in reasons.items())
    if not skip_missing:
        raise UserError(f"sweep {spec.name}: init(s) {', '.join(missing)} not in the registry "
                        f"{checkpoints} ({detail}); pretrain them, or pass --skip-missing to run the other cells")
    log(f"sweep {spec.name}: skipping the cells of init(s) {', '.join(missing)} (not in the registry)")


def _without_noise_draw(cfg: FinetuneConfig) -> FinetuneConfig:
    """``cfg`` with the noise fields that draw nothing reset, so cells that are the same run compare equal.

    Without noise (rate 0 or unset, no noise matrix or file) the training and validation labels are the clean ones
    for every noise seed, type and mode; only a ``subset`` still depends on the noise seed (it draws the subset).
    A grid ``noise_seed: [1, 2]`` x ``noise_rate: [0, 0.4]`` would otherwise train the clean cell twice, and a
    report would count one run as two seeds with a spread of zero. The first such cell in grid order is kept,
    under its own id, so ids of finished cells do not change.
    """
    if cfg.noise_rate or cfg.noise_matrix is not None or cfg.noise_file is not None:
        return cfg
    drawn = {"noise_seed": cfg.noise_seed} if cfg.subset is not None else {}
    return dataclasses.replace(cfg, **{"noise_seed": 0, "noise_type": "symmetric", "noise_mode": "sampled",
                                       "noise_rate": None, "class_map": None, "noise_force": False, **drawn})


# ============ shards and listing ============

def parse_shard(text: str) -> tuple[int, int]:
    """``"3/10"`` -> ``(3, 10)``; 0-based index (a SLURM ``--array=0-9`` task id).

    >>> parse_shard("3/10")
    (3, 10)
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise UserError(f"--shard expects I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(match[1]), int(match[2])


def shard(cells: Sequence[Cell], index: int, count: int) -> list[Cell]:
    """Shard ``index`` of ``count``: cells sorted by id, every ``count``-th from ``index`` (disjoint, covering)."""
    return sorted(cells, key=lambda c: c.cell_id)[index::count]


def dump_cells(cells: Sequence[Cell]) -> str:
    """The cells' configs as YAML (what ``--dry-run -v`` prints)."""
    return yaml.safe_dump([{"cell_id": c.cell_id, **to_dict(c.config)} for c in cells], sort_keys=False)
