"""Sweeps: a grid of fine-tuning runs declared in YAML, run once each, by any number of workers.

A sweep spec (``finetune/sweeps/*.yaml``) has a ``base`` (a fine-tuning ``recipe`` path and/or any
:class:`~ssl_noise.config.FinetuneConfig` fields) and a ``grid`` (field -> list of values; ``recipe`` may be a grid
key too). Every combination is a *cell*: its config is resolved in the order dataclass defaults < recipe < base <
``--set`` overrides < grid values, exactly like ``ssl-noise finetune`` resolves a recipe and flags.

A grid key may join fields with ``+`` to vary them together rather than crosswise, e.g.
``noise_type+noise_rate: [[symmetric, 0.4], [pairflip, 0.3]]`` is two settings, not four: the way a study names
the settings it compares (HSA-NRL's are symmetric 0.4 and pair-flip 0.3) without paying for the cross product.

Ids. An init given by method name (``simclr``) or id prefix is resolved **once, at expansion**, to a concrete registry
id, which is written into the cell's config, and pinned in ``<runs>/sweeps/<name>.inits.json`` the first time the
sweep runs, so later invocations (a resumed sweep, shards started later) keep that encoder even after newer
entries join the registry. The cell id is ``<init>-<dataset>-<noise>n<noise_seed>-<method>[_lp]-s<seed>-
<hash10>`` where the hash covers the *whole* resolved config (every field, not a hand-picked subset), the encoder's
sha256 and the sha256 of any class-map/matrix file. A spec whose inits cannot all be resolved exits 2 at expansion
(naming the missing ones) unless ``skip_missing``: an unresolvable init has no stable id. The cell runs through
:func:`ssl_noise.finetune.finetune`, whose own run id (the run folder) additionally hashes the data and the noisy
labels; ``<runs>/.done/<cell_id>.json`` maps the cell to that folder.

Pairing. The noise of a cell is drawn by finetune from (dataset, subset, noise type, rate, mode, noise seed) with
``default_rng(noise_seed)``: a pure function, so every init and method of a noise seed trains on the same labels.
The first finished cell of each noise key publishes its ``noisy_labels.csv`` as ``<runs>/noise/<key>.csv`` (atomic
create-if-absent) and every later cell's labels are compared with that file (``noise.read_noise_csv``); a cell whose
labels differ is recorded as failed. (Why the labels are generated rather than passed as ``noise_file``: a run fed
a file records its noise as ``file`` with no rate in results.csv, and robust methods are then not told the noise
rate; generated noise keeps rows, run ids and method inputs identical to a hand-typed ``ssl-noise finetune``.)

Concurrency (workers on one machine, ``--jobs``, shards on many machines sharing one runs folder):

* finished = ``.done/<cell_id>.json`` exists and its run folder holds ``metrics.json`` (finetune writes the folder
  atomically); a finished cell is never run again.
* claim = ``.claims/<cell_id>`` created with ``O_CREAT | O_EXCL`` (host, pid, token, time), under an exclusive
  ``flock`` of ``.claims/.lock`` so that the check-and-take of a stale claim is atomic too. The owner refreshes
  the claim's mtime every ``stale_after / 10`` seconds while training. **Stale** = its owner is a dead process on
  this host, or it has not been refreshed for ``stale_after`` seconds (default 600, any host); a stale claim is
  taken over. The owner writes the done/failed record *before* it releases the claim, and only releases its own.
* results.csv rows are appended by finetune under its exclusive file lock, so workers never interleave rows.
* failed = ``.failed/<cell_id>.json`` (error, traceback, host, time). A failed cell never stops the sweep. Failures
  recorded before this sweep started are **retried** (fixing the cause and re-running is the normal workflow)
  unless ``skip_failed``; failures recorded while it runs are not retried by it (no retry loops).

Shards: cells sorted by id, shard ``i`` of ``n`` takes ``cells[i::n]`` (0-based), so shards are disjoint and their
union is the grid on every machine that expands the same spec against the same registry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
import socket
import sys
import threading
import time
import traceback
import typing
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import yaml

from ssl_noise.config import FinetuneConfig, load_recipe, method_args_text, resolve, to_dict
from ssl_noise.data import spec_label
from ssl_noise.errors import UserError

SCHEMA_VERSION = 1
SPEC_KEYS = ("name", "description", "base", "grid")
#: Fields the sweep owns: the noise is drawn per cell from its parameters (see the module docstring).
OWNED_FIELDS = ("noise_file",)
BUILTIN_INITS = ("random", "imagenet")
DEFAULT_STALE_AFTER_S = 600.0
NOISE_SHORT = {"symmetric": "sym", "uniform": "uni", "pairflip": "pair", "asymmetric": "asym"}

Log = Callable[[str], None]


def log_stderr(message: str) -> None:
    """The default progress logger of sweeps and the demo: one flushed line on stderr."""
    print(message, file=sys.stderr, flush=True)


# ============ the spec ============

@dataclass
class SweepSpec:
    """A parsed, key-checked sweep spec (values are checked when cells are resolved)."""

    name: str
    path: Path
    base: Dict[str, Any]
    grid: Dict[str, List[Any]]
    description: str = ""


def _check_key(key: str, where: str) -> str:
    """Normalise a spec key (``-`` -> ``_``) and refuse anything that is not a FinetuneConfig field or ``recipe``."""
    hints = typing.get_type_hints(FinetuneConfig)
    key = str(key).replace("-", "_")
    head = key.split(".", 1)[0]
    if key in OWNED_FIELDS:
        raise UserError(f"{where}: {key} is set by the sweep itself (it draws each cell's noise from noise_type, "
                        f"noise_rate, noise_mode and noise_seed); remove it")
    if key == "recipe" or key in hints or ("." in key and typing.get_origin(hints.get(head)) is dict):
        return key
    raise UserError(f"{where}: unknown key {key!r}; use recipe or a FinetuneConfig field: "
                    f"{', '.join(sorted(set(hints) - set(OWNED_FIELDS)))}")


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """Read and check a sweep spec: unknown keys and an empty grid raise :class:`UserError` (exit 2).

    >>> load_spec("finetune/sweeps/demo.yaml").grid["init"]          # doctest: +SKIP
    ['random', 'simclr']
    """
    path = Path(path)
    data = load_recipe(path)  # exists, is YAML, is a mapping
    unknown = sorted(set(map(str, data)) - set(SPEC_KEYS))
    if unknown:
        raise UserError(f"sweep spec {path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(SPEC_KEYS)}")
    base, grid = data.get("base") or {}, data.get("grid")
    if not isinstance(base, dict):
        raise UserError(f"sweep spec {path}: base must be a mapping of FinetuneConfig fields")
    if not isinstance(grid, dict) or not grid:
        raise UserError(f"sweep spec {path}: empty grid; give grid: {{field: [values, ...]}} with at least one field")
    checked_grid: Dict[str, List[Any]] = {}
    for key, values in grid.items():
        joined = [_check_key(k.strip(), f"sweep spec {path}: grid") for k in str(key).split("+")]
        key = "+".join(joined)
        if not isinstance(values, list):
            raise UserError(f"sweep spec {path}: grid.{key} must be a list (put a single value in base)")
        if not values:
            raise UserError(f"sweep spec {path}: empty grid: grid.{key} has no values")
        if len(joined) > 1 and any(not isinstance(v, list) or len(v) != len(joined) for v in values):
            raise UserError(f"sweep spec {path}: grid.{key} joins {len(joined)} fields, so each value must be a list "
                            f"of {len(joined)} (e.g. [{', '.join(joined)}])")
        checked_grid[key] = values
    fields = grid_fields(checked_grid)
    repeated = sorted({k for k in fields if fields.count(k) > 1})
    if repeated:
        raise UserError(f"sweep spec {path}: {', '.join(repeated)} appears in more than one grid key; keep it in one")
    checked_base = {_check_key(k, f"sweep spec {path}: base"): v for k, v in base.items()}
    both = sorted(set(checked_base) & set(fields))
    if both:
        raise UserError(f"sweep spec {path}: {', '.join(both)} is in both base and grid; keep it in one")
    return SweepSpec(name=str(data.get("name") or path.stem), path=path, base=checked_base, grid=checked_grid,
                     description=str(data.get("description") or ""))


def grid_fields(grid: Dict[str, List[Any]]) -> List[str]:
    """The config fields a grid sets, a joined key (``noise_type+noise_rate``) counting as each of its fields."""
    return [k for key in grid for k in key.split("+")]


def _grid_values(keys: Sequence[str], combo: Sequence[Any]) -> Dict[str, Any]:
    """One grid point as field -> value: the value of a joined key is spread over its fields."""
    values: Dict[str, Any] = {}
    for key, value in zip(keys, combo):
        values.update(zip(key.split("+"), value) if "+" in key else [(key, value)])
    return values


def find_file(name: str, spec_dir: Optional[Path] = None) -> Path:
    """A recipe or data file named in a spec: absolute, else relative to the working folder, the spec's folder or
    the package's shipped copy (so ``finetune/bloodmnist/default.yaml`` works from anywhere, installed or not)."""
    from ssl_noise.settings import SHIPPED, shipped_file

    path = Path(name).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [Path.cwd() / path] + ([spec_dir / path] if spec_dir else []) + \
                     [shipped_file(path) or SHIPPED / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserError(f"file {name} not found (looked in: {', '.join(str(c.parent) for c in candidates)})")


# ============ cells and their ids ============

@dataclass(frozen=True)
class Cell:
    """One grid point: ``config`` is what ``finetune`` runs (init resolved to a concrete id)."""

    cell_id: str
    config: FinetuneConfig
    values: Tuple[Tuple[str, Any], ...]   # the grid values of this cell, in grid order (for printing)
    encoder_sha256: Optional[str] = None

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.values)


def _sha256_file(path: Optional[str]) -> Optional[str]:
    if not path:
        return None
    from ssl_noise.io import file_digest

    try:
        return file_digest(Path(path).expanduser())
    except OSError:
        raise UserError(f"file {path} named in the sweep cannot be read") from None


def noise_label(cfg: FinetuneConfig) -> str:
    """``clean``, ``sym0.4``, ``pair0.3``, ``asym`` (matrix) ...: the noise part of cell and run ids."""
    if cfg.noise_matrix:
        return "asym"
    if not cfg.noise_rate:
        return "clean"
    return f"{NOISE_SHORT.get(cfg.noise_type, cfg.noise_type)}{cfg.noise_rate:g}"


def cell_id(cfg: FinetuneConfig, *, init_label: str, encoder_sha256: Optional[str]) -> str:
    """The id of a cell: readable parts, then a hash of **everything** that determines the run.

    The hash covers ``to_dict(cfg)`` (all fields), the encoder's sha256 (registry inits) and the content of the
    class-map / noise-matrix files, so two cells share an id only if they would train the same thing.
    """
    identity = {"schema": SCHEMA_VERSION, "config": to_dict(cfg), "encoder_sha256": encoder_sha256,
                "files": {k: _sha256_file(getattr(cfg, k)) for k in ("class_map", "noise_matrix")}}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return "-".join([init_label, spec_label(cfg.dataset), f"{noise_label(cfg)}n{cfg.noise_seed}",
                     cfg.method + ("_lp" if cfg.freeze else ""), f"s{cfg.seed}", digest])


def noise_key(cfg: FinetuneConfig) -> str:
    """File stem of the shared noise file of every cell whose training labels must be identical to this one's."""
    fields = {"dataset": cfg.dataset, "image_size": cfg.image_size, "subset": cfg.subset,
              "type": cfg.noise_type, "rate": cfg.noise_rate or 0.0, "mode": cfg.noise_mode, "seed": cfg.noise_seed,
              "class_map": _sha256_file(cfg.class_map), "noise_matrix": _sha256_file(cfg.noise_matrix)}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    subset = f"-sub{cfg.subset}" if cfg.subset else ""
    return f"{spec_label(cfg.dataset)}-{noise_label(cfg)}-{cfg.noise_mode}-n{cfg.noise_seed}{subset}-{digest}"


class _Inits:
    """Resolves init references once per (reference, dataset): from the sweep's pins first, else the registry."""

    def __init__(self, checkpoints: Path, pins: Dict[str, str]):
        self.checkpoints, self.pins, self.cache, self.missing, self.new = Path(checkpoints), pins, {}, {}, {}

    def __call__(self, ref: str, dataset: str) -> Optional[Tuple[str, str, str]]:
        """``(entry id, label, sha256)``; for random/imagenet ``(ref, ref, None)``; None when unresolvable."""
        if ref in BUILTIN_INITS:
            return ref, ref, None
        from ssl_noise import registry
        from ssl_noise.data import catalogue

        flag = dataset.lower() if dataset.lower() in catalogue() else None  # as finetune.prepare filters
        key = f"{ref}@{flag or dataset}"
        if key not in self.cache:
            try:
                if key in self.pins:
                    entry = self.pins[key]
                    try:
                        meta = registry.read_meta(self.checkpoints, entry)
                    except UserError:
                        raise UserError(f"init {ref!r} is pinned to {entry}, which is no longer in the registry "
                                        f"{self.checkpoints}; restore it, or delete the sweep's pins file to "
                                        "re-resolve (new cells)") from None
                else:
                    entry = registry.resolve(self.checkpoints, ref, dataset=flag)
                    meta = registry.read_meta(self.checkpoints, entry)
                    self.new[key] = entry
                self.cache[key] = (entry, str(meta["method"]), meta["sha256"])
            except UserError as e:
                if key in self.pins:
                    raise
                self.cache[key] = None
                self.missing[ref] = str(e)
        return self.cache[key]


def pins_path(runs: Path, name: str) -> Path:
    """``<runs>/sweeps/<name>.inits.json``: how the sweep's init references resolved the first time it ran."""
    return Path(runs) / "sweeps" / f"{name}.inits.json"


def _save_pins(path: Path, new: Dict[str, str]) -> None:
    """Merge newly resolved references into the pins file (first writer wins per reference; under the lock)."""
    from ssl_noise.io import write_json

    with _Locked(path.parent / ".lock"):
        pins = _read_json(path) or {}
        write_json(path, {**new, **pins})


def expand(spec: SweepSpec, *, checkpoints: Path, overrides: Optional[Dict[str, Any]] = None,
           skip_missing: bool = False, runs: Optional[Path] = None, pin: bool = False,
           log: Log = log_stderr) -> List[Cell]:
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
    overrides = {_check_key(k, "--set"): v for k, v in (overrides or {}).items()}
    clash = sorted(set(overrides) & set(grid_fields(spec.grid)))
    if clash:
        raise UserError(f"--set {', '.join(clash)}: a grid key of {spec.path}; edit the grid instead")
    layers = {**spec.base, **overrides}
    recipes: Dict[str, Dict[str, Any]] = {}

    def recipe(name: Optional[str]) -> Dict[str, Any]:
        if name is None:
            return {}
        if name not in recipes:
            recipes[name] = load_recipe(find_file(str(name), spec.path.parent))
        return recipes[name]

    pins_file = pins_path(runs, spec.name) if runs is not None else None
    pinned = (_read_json(pins_file) or {}) if pins_file is not None else {}
    inits, cells, seen, collapsed = _Inits(checkpoints, pinned), [], {}, 0
    keys = list(spec.grid)
    for combo in itertools.product(*(spec.grid[k] for k in keys)):
        values = _grid_values(keys, combo)
        chosen = {**layers, **values}
        fields = {k: v for k, v in chosen.items() if k != "recipe"}
        try:
            cfg = resolve(FinetuneConfig, recipe(chosen.get("recipe")), fields)
        except UserError as e:
            raise UserError(f"sweep spec {spec.path}, cell {values}: {e}") from None
        resolved = inits(cfg.init, cfg.dataset)
        if resolved is None:
            continue
        entry, label, sha = resolved
        cfg = dataclasses.replace(cfg, init=entry)
        cid = cell_id(cfg, init_label=label, encoder_sha256=sha)
        same_run = cell_id(_without_noise_draw(cfg), init_label=label, encoder_sha256=sha)
        if same_run in seen:
            collapsed += seen[same_run] != cid  # an equal id (a name and the id it resolves to) is no news
            continue
        seen[same_run] = cid
        cells.append(Cell(cid, cfg, tuple(values.items()), sha))
    if collapsed:
        log(f"sweep {spec.name}: {collapsed} clean cell(s) differ from an earlier one only in noise seed, type or "
            f"mode, which draw nothing without noise: each is run once")
    if inits.missing:
        reasons: Dict[str, List[str]] = {}
        for ref, why in inits.missing.items():
            reasons.setdefault(why, []).append(ref)
        detail = "; ".join(f"{', '.join(refs)}: {why}" for why, refs in reasons.items())
        if not skip_missing:
            raise UserError(f"sweep {spec.name}: init(s) {', '.join(inits.missing)} not in the registry "
                            f"{checkpoints} ({detail}); pretrain them, or pass --skip-missing to run the other cells")
        log(f"sweep {spec.name}: skipping the cells of init(s) {', '.join(inits.missing)} (not in the registry)")
    used = {k: v for k, v in pinned.items() if k in inits.cache}
    if used:
        log(f"sweep {spec.name}: inits as first resolved by this sweep ({pins_file}): "
            + ", ".join(f"{k.split('@')[0]} -> {v}" for k, v in used.items()))
    if pin and pins_file is not None and inits.new:
        _save_pins(pins_file, {k: v for k, v in inits.new.items() if k.split("@")[0] != v})
    return cells


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


def parse_shard(text: str) -> Tuple[int, int]:
    """``"3/10"`` -> ``(3, 10)``; 0-based index (a SLURM ``--array=0-9`` task id)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise UserError(f"--shard expects I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(match[1]), int(match[2])


def shard(cells: Sequence[Cell], index: int, count: int) -> List[Cell]:
    """Shard ``index`` of ``count``: cells sorted by id, every ``count``-th from ``index`` (disjoint, covering)."""
    return sorted(cells, key=lambda c: c.cell_id)[index::count]


# ============ state on disk: done, failed, claims ============

def _paths(runs: Path, cid: str) -> Dict[str, Path]:
    runs = Path(runs)
    return {"done": runs / ".done" / f"{cid}.json", "failed": runs / ".failed" / f"{cid}.json",
            "claim": runs / ".claims" / cid, "lock": runs / ".claims" / ".lock"}


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def done_record(runs: Path, cid: str) -> Optional[Dict[str, Any]]:
    """The done record of a finished cell (its run folder still holding metrics.json), else None."""
    record = _read_json(_paths(runs, cid)["done"])
    if record and (Path(runs) / str(record.get("run_id")) / "metrics.json").is_file():
        return record
    return None


def cell_status(runs: Path, cid: str, *, stale_after: float = DEFAULT_STALE_AFTER_S) -> str:
    """``done``, ``running`` (a live claim), ``failed`` or ``pending``."""
    p = _paths(runs, cid)
    if done_record(runs, cid):
        return "done"
    if p["claim"].exists() and not _stale(p["claim"], stale_after):
        return "running"
    return "failed" if p["failed"].exists() else "pending"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(claim: Path, stale_after: float) -> bool:
    try:
        age = time.time() - claim.stat().st_mtime
    except FileNotFoundError:
        return False
    info = _read_json(claim) or {}
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) and not _pid_alive(info["pid"]):
        return True
    return age > stale_after


class _Locked:
    """Exclusive ``flock`` on ``.claims/.lock``: claim checks and takeovers are serialised across processes."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a")
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.f.close()  # closing releases the lock


def claim(runs: Path, cid: str, *, started_at: float, retry_failed: bool = True,
          stale_after: float = DEFAULT_STALE_AFTER_S, log: Log = log_stderr) -> Tuple[str, Optional[str]]:
    """Try to take a cell: ``("claimed", token)`` or ``(reason, None)`` with reason done/running/failed."""
    p = _paths(runs, cid)
    with _Locked(p["lock"]):
        if done_record(runs, cid):
            return "done", None
        failure = _read_json(p["failed"])
        if failure and (not retry_failed or failure.get("failed_at", 0) >= started_at):
            return "failed", None
        if p["claim"].exists():
            if not _stale(p["claim"], stale_after):
                return "running", None
            old = _read_json(p["claim"]) or {}
            log(f"{cid}: taking over the stale claim of {old.get('host')}:{old.get('pid')}")
            p["claim"].unlink()
        token = uuid.uuid4().hex
        fd = os.open(p["claim"], os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "token": token,
                       "claimed_at": time.time()}, f)
        return "claimed", token


def release(runs: Path, cid: str, token: str) -> None:
    """Remove the claim if it is still ours (a claim taken over as stale now belongs to someone else)."""
    p = _paths(runs, cid)
    with _Locked(p["lock"]):
        if (_read_json(p["claim"]) or {}).get("token") == token:
            p["claim"].unlink()


class _Heartbeat:
    """Refreshes the claim's mtime every ``interval`` seconds while a cell trains."""

    def __init__(self, path: Path, interval: float):
        self.path, self.interval, self.stop = path, interval, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                os.utime(self.path)
            except OSError:
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


# ============ running cells ============

def check_pairing(runs: Path, cfg: FinetuneConfig, folder: Path) -> Path:
    """Publish this run's training labels as the noise key's shared file, or check them against it.

    Returns the shared file. Raises UserError when the labels differ (the comparison would not be paired).
    """
    import shutil

    from ssl_noise import noise

    shared = Path(runs) / "noise" / f"{noise_key(cfg)}.csv"
    mine = folder / "noisy_labels.csv"
    if not shared.exists():
        shared.parent.mkdir(parents=True, exist_ok=True)
        tmp = shared.with_name(f".{shared.name}.{uuid.uuid4().hex}.tmp")
        shutil.copyfile(mine, tmp)
        try:
            os.link(tmp, shared)  # atomic create-if-absent: the first finished cell of a noise key defines it
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    a, b = noise.read_noise_csv(shared), noise.read_noise_csv(mine)
    if not (np.array_equal(a.index, b.index) and np.array_equal(a.clean, b.clean) and np.array_equal(a.noisy, b.noisy)):
        raise UserError(f"the noisy labels of {folder.name} differ from the sweep's shared noise file {shared}: "
                        "the comparison across inits would not be paired (did the data or the noise code change?)")
    return shared



@dataclass
class WorkerReport:
    """What one worker did, by cell id."""

    trained: List[str] = field(default_factory=list)     # trained here
    reused: List[str] = field(default_factory=list)      # finetune found an identical finished run
    failed: List[str] = field(default_factory=list)      # failed here (recorded in .failed/)
    skipped: Dict[str, str] = field(default_factory=dict)  # cell id -> done | running | failed

    def merge(self, other: "WorkerReport") -> "WorkerReport":
        """Both reports as one; a cell one worker skipped because the other ran it counts only as run."""
        trained, reused, failed = self.trained + other.trained, self.reused + other.reused, self.failed + other.failed
        ran = set(trained) | set(reused) | set(failed)
        skipped = {cid: why for cid, why in {**self.skipped, **other.skipped}.items() if cid not in ran}
        return WorkerReport(trained, reused, failed, skipped)


def run_cell(cell: Cell, *, runs: Path, checkpoints: Path, data_root: Optional[str], device: str,
             command: Optional[List[str]] = None, show_progress: bool = False) -> Dict[str, Any]:
    """Fine-tune one cell and check its labels against the shared noise file; returns the done record."""
    from ssl_noise.finetune import finetune

    start = time.perf_counter()
    folder, trained = finetune(cell.config, data_root=data_root, checkpoints=checkpoints, runs=runs, device=device,
                               command=command, show_progress=show_progress)
    shared = check_pairing(runs, cell.config, folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"schema_version": SCHEMA_VERSION, "cell_id": cell.cell_id, "run_id": folder.name, "trained": trained,
            "noise_file": os.path.relpath(shared, runs), "test_acc": metrics["test"]["best"]["acc"],
            "wall_time_s": round(time.perf_counter() - start, 2), "host": socket.gethostname(),
            "finished_at": time.time(), "values": dict(cell.values)}


def work(cells: Sequence[Cell], *, runs: Path, checkpoints: Path, data_root: Optional[str], device: str = "cpu",
         started_at: Optional[float] = None, retry_failed: bool = True, stale_after: float = DEFAULT_STALE_AFTER_S,
         command: Optional[List[str]] = None, show_progress: bool = False, log: Log = log_stderr) -> WorkerReport:
    """One worker: go through ``cells`` in order, claim each free one, run it, record done or failed.

    Any number of workers (processes, machines) may run this over the same cells and runs folder at once.
    """
    from ssl_noise.io import write_json

    runs = Path(runs)
    started_at = time.time() if started_at is None else started_at
    report = WorkerReport()
    for i, cell in enumerate(cells, 1):
        status, token = claim(runs, cell.cell_id, started_at=started_at, retry_failed=retry_failed,
                              stale_after=stale_after, log=log)
        if status != "claimed":
            report.skipped[cell.cell_id] = status
            continue
        p = _paths(runs, cell.cell_id)
        log(f"[{i}/{len(cells)}] {cell.cell_id}: {cell.describe()}")
        try:
            with _Heartbeat(p["claim"], max(stale_after / 10, 0.05)):
                record = run_cell(cell, runs=runs, checkpoints=checkpoints, data_root=data_root, device=device,
                                  command=command, show_progress=show_progress)
            write_json(p["done"], record)
            p["failed"].unlink(missing_ok=True)
            (report.trained if record["trained"] else report.reused).append(cell.cell_id)
            how = "trained" if record["trained"] else "an identical run had finished"
            log(f"[{i}/{len(cells)}] {cell.cell_id}: {how} in {record['wall_time_s']:.1f} s, test acc "
                f"{record['test_acc']:.4f} -> {runs / record['run_id']}")
        except KeyboardInterrupt:
            release(runs, cell.cell_id, token)
            raise
        except Exception as e:  # noqa: BLE001 - a failed cell is recorded and the sweep goes on
            write_json(p["failed"], {"schema_version": SCHEMA_VERSION, "cell_id": cell.cell_id,
                                     "error": f"{type(e).__name__}: {e}", "user_error": isinstance(e, UserError),
                                     "traceback": traceback.format_exc(), "host": socket.gethostname(),
                                     "pid": os.getpid(), "failed_at": time.time(), "config": to_dict(cell.config)})
            report.failed.append(cell.cell_id)
            log(f"[{i}/{len(cells)}] {cell.cell_id}: FAILED ({type(e).__name__}: {e}); recorded in {p['failed']}")
        release(runs, cell.cell_id, token)
    return report


def _worker_main(index: int, gpu: Optional[int], threads: Optional[int], cells: List[Cell], kwargs: Dict[str, Any],
                 queue) -> None:
    """Entry point of a spawned worker: pin its GPU / thread count, then :func:`work`."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before CUDA initialises in this process
    import torch

    if threads:
        torch.set_num_threads(threads)

    def log(message: str) -> None:
        log_stderr(f"worker {index}: {message}")

    try:
        queue.put((index, dataclasses.asdict(work(cells, log=log, **kwargs))))
    except KeyboardInterrupt:
        queue.put((index, None))


def run_sweep(cells: Sequence[Cell], *, runs: Path, checkpoints: Path, data_root: Optional[str], device: str = "cpu",
              jobs: int = 1, threads: Optional[int] = None, retry_failed: bool = True,
              stale_after: float = DEFAULT_STALE_AFTER_S, command: Optional[List[str]] = None,
              show_progress: bool = False, log: Log = log_stderr) -> WorkerReport:
    """Run ``cells`` with ``jobs`` workers on this machine.

    ``jobs == 1`` runs in this process. Otherwise ``jobs`` spawned processes each run :func:`work` over all cells
    (the claims share the cells out): on CPU each gets ``threads // jobs`` torch threads (``threads`` defaults to
    the usable cores); on CUDA worker ``w`` sees only GPU ``w % n_gpus`` (``CUDA_VISIBLE_DEVICES``).
    """
    import multiprocessing
    import queue as queue_mod

    kwargs = dict(runs=Path(runs), checkpoints=Path(checkpoints), data_root=data_root, device=device,
                  started_at=time.time(), retry_failed=retry_failed, stale_after=stale_after, command=command)
    if jobs <= 1:
        return work(cells, show_progress=show_progress, log=log, **kwargs)
    gpus = 0
    if device.startswith("cuda"):
        import torch

        gpus = torch.cuda.device_count()
    cores = threads or len(os.sched_getaffinity(0))
    per_worker = max(1, cores // jobs)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker_main, args=(w, w % gpus if gpus else None, per_worker, list(cells), kwargs,
                                                    results)) for w in range(jobs)]
    for proc in procs:
        proc.start()
    log(f"sweep: {jobs} workers, {per_worker} torch thread(s) each" + (f", on {gpus} GPU(s)" if gpus else ""))
    report, got = WorkerReport(), 0
    try:
        while got < jobs:
            try:
                _, data = results.get(timeout=1.0)
                got += 1
                if data is not None:
                    report = report.merge(WorkerReport(**data))
            except queue_mod.Empty:
                if not any(proc.is_alive() for proc in procs):
                    break
    finally:
        for proc in procs:
            proc.join()
    crashed = [w for w, proc in enumerate(procs) if proc.exitcode]
    if crashed:
        log(f"sweep: worker(s) {crashed} exited abnormally; their claims go stale and a re-run takes them over")
    return report


# ============ the sweep's results ============

def read_results(path: Path):
    """results.csv as a DataFrame, read under a shared lock (finetune appends under an exclusive one)."""
    import fcntl

    import pandas as pd

    path = Path(path)
    if not path.is_file():
        return pd.DataFrame()
    with open(path) as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        return pd.read_csv(f)


def collect(cells: Sequence[Cell], runs: Path):
    """The results.csv rows of the finished cells (one per cell, with its ``cell_id``)."""
    import pandas as pd

    records = {c.cell_id: done_record(runs, c.cell_id) for c in cells}
    by_run = {r["run_id"]: cid for cid, r in records.items() if r}
    frame = read_results(Path(runs) / "results.csv")
    if frame.empty or not by_run:
        return pd.DataFrame()
    frame = frame[frame["run_id"].isin(by_run)].drop_duplicates("run_id", keep="last").copy()
    frame.insert(0, "cell_id", frame["run_id"].map(by_run))
    # From the cells, not the rows: rows written before results.csv had the column lack it, and the cell's
    # config is what ran (its id hashes the arguments).
    args = frame["cell_id"].map({c.cell_id: method_args_text(c.config.method_args) for c in cells})
    if "method_args" in frame.columns:
        frame["method_args"] = args
    else:
        frame.insert(frame.columns.get_loc("method") + 1, "method_args", args)
    return frame.reset_index(drop=True)


def write_table(cells: Sequence[Cell], runs: Path, name: str) -> Optional[Path]:
    """Write ``<runs>/sweeps/<name>.csv`` (the finished cells' rows, atomically); None when nothing finished."""
    return save_table(collect(cells, runs), runs, name)


def save_table(frame, runs: Path, name: str) -> Optional[Path]:
    """Write the rows :func:`collect` returned to ``<runs>/sweeps/<name>.csv`` (atomically); None when empty."""
    from ssl_noise.io import atomic_path

    if frame.empty:
        return None
    path = Path(runs) / "sweeps" / f"{name}.csv"
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def dump_cells(cells: Sequence[Cell]) -> str:
    """The cells' configs as YAML (what ``--dry-run -v`` prints)."""
    return yaml.safe_dump([{"cell_id": c.cell_id, **to_dict(c.config)} for c in cells], sort_keys=False)
