"""The sweep spec: a YAML file with a ``base`` and a ``grid`` of FinetuneConfig fields (and ``recipe``).

Reads and key-checks a spec (values are checked later, when cells resolve), spreads joined grid keys such as
``noise_type+noise_rate`` over their fields, and finds the recipe and data files a spec names.
Format: docs/formats.md.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssl_noise.config import FinetuneConfig, load_recipe
from ssl_noise.errors import UserError
from ssl_noise.io import check_name
from ssl_noise.settings import SHIPPED, shipped_file

SPEC_KEYS = ("name", "description", "base", "grid")
#: Fields the sweep owns: the noise is drawn per cell from its parameters (docs/formats.md).
OWNED_FIELDS = ("noise_file",)


@dataclass
class SweepSpec:
    """A parsed, key-checked sweep spec (values are checked when cells are resolved)."""

    name: str
    path: Path
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    description: str = ""


def check_key(key: str, where: str) -> str:
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
    """Read and check a sweep spec: unknown keys and an empty grid raise :class:`UserError` (exit 2)."""
    path = Path(path)
    data = load_recipe(path, "sweep spec")  # exists, is YAML, is a mapping
    unknown = sorted(set(map(str, data)) - set(SPEC_KEYS))
    if unknown:
        raise UserError(f"sweep spec {path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(SPEC_KEYS)}")
    base, grid = data.get("base") or {}, data.get("grid")
    if not isinstance(base, dict):
        raise UserError(f"sweep spec {path}: base must be a mapping of FinetuneConfig fields")
    if not isinstance(grid, dict) or not grid:
        raise UserError(f"sweep spec {path}: empty grid; give grid: {{field: [values, ...]}} with at least one field")
    checked_grid = _check_grid(grid, path)
    fields = grid_fields(checked_grid)
    repeated = sorted({k for k in fields if fields.count(k) > 1})
    if repeated:
        raise UserError(f"sweep spec {path}: {', '.join(repeated)} appears in more than one grid key; keep it in one")
    checked_base = {check_key(k, f"sweep spec {path}: base"): v for k, v in base.items()}
    both = sorted(set(checked_base) & set(fields))
    if both:
        raise UserError(f"sweep spec {path}: {', '.join(both)} is in both base and grid; keep it in one")
    name = check_name(str(data.get("name") or path.stem), f"sweep spec {path}: name")  # it names files in runs/
    return SweepSpec(name=name, path=path, base=checked_base, grid=checked_grid,
                     description=str(data.get("description") or ""))


def _check_grid(grid: dict[Any, Any], path: Path) -> dict[str, list[Any]]:
    """The grid with checked keys; each value a non-empty list (of field-count lists for a joined key)."""
    checked: dict[str, list[Any]] = {}
    for key, values in grid.items():
        joined = [check_key(k.strip(), f"sweep spec {path}: grid") for k in str(key).split("+")]
        key = "+".join(joined)
        if not isinstance(values, list):
            raise UserError(f"sweep spec {path}: grid.{key} must be a list (put a single value in base)")
        if not values:
            raise UserError(f"sweep spec {path}: empty grid: grid.{key} has no values")
        if len(joined) > 1 and any(not isinstance(v, list) or len(v) != len(joined) for v in values):
            raise UserError(f"sweep spec {path}: grid.{key} joins {len(joined)} fields, so each value must be a list "
                            f"of {len(joined)} (e.g. [{', '.join(joined)}])")
        checked[key] = values
    return checked


def check_names(cfg: FinetuneConfig) -> None:
    """Every name in ``cfg`` that a registry can check (robust method, noise type, backbone; inits are resolved
    by the caller), so a typo in one grid value fails the whole sweep at expansion instead of failing its cells
    after the others have trained."""
    from ssl_noise import noise  # here: the spec is read by code that does not need the method registries
    from ssl_noise.backbones import BACKBONES
    from ssl_noise.robust import ROBUST

    ROBUST.get_or_fail(cfg.method).parse_args(cfg.method_args)
    noise.check_noise_type(cfg.noise_type)
    BACKBONES.get_or_fail(cfg.backbone)


def grid_fields(grid: dict[str, list[Any]]) -> list[str]:
    """The config fields a grid sets, a joined key (``noise_type+noise_rate``) counting as each of its fields.

    >>> grid_fields({"noise_type+noise_rate": [["symmetric", 0.4], ["pairflip", 0.3]], "seed": [0, 1]})
    ['noise_type', 'noise_rate', 'seed']
    """
    return [k for key in grid for k in key.split("+")]


def grid_values(keys: Sequence[str], combo: Sequence[Any]) -> dict[str, Any]:
    """One grid point as field -> value: the value of a joined key is spread over its fields.

    >>> grid_values(["noise_type+noise_rate", "seed"], [["pairflip", 0.3], 1])
    {'noise_type': 'pairflip', 'noise_rate': 0.3, 'seed': 1}
    """
    values: dict[str, Any] = {}
    for key, value in zip(keys, combo):
        values.update(zip(key.split("+"), value) if "+" in key else [(key, value)])
    return values


def find_file(name: str, spec_dir: Path | None = None) -> Path:
    """A recipe or data file named in a spec: absolute, else relative to the working folder, the spec's folder or
    the package's shipped copy (so ``finetune/bloodmnist/default.yaml`` works from anywhere, installed or not)."""
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
