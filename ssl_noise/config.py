"""Typed configuration: dataclass defaults, then a YAML recipe, then command-line overrides.

Every stage (pretraining, fine-tuning, sweeps) describes its knobs as a dataclass. :func:`resolve` layers a recipe
file and ``key=value`` overrides on top of the defaults, refusing unknown keys and values of the wrong type, so a
typo in a recipe fails before hours of training rather than being silently ignored. The resolved config is dumped
next to every artefact (``config.yaml``) and is what run ids are hashed from.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Type, TypeVar

import yaml

from ssl_noise.errors import UserError

C = TypeVar("C")


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check (and gently convert) ``value`` against a field annotation; raise UserError on a mismatch."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X] and friends
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(name, value, arg)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{name}: bad value {value!r}")
    if annotation is Any:
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {name!r} expects a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(name, v, inner) for v in value]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key {name!r} expects a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config key {name!r} expects true/false, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"config key {name!r} expects a number, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"config key {name!r} expects an integer, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise UserError(f"config key {name!r} expects a string, got {value!r}")
    return value


def parse_overrides(items: Iterable[str]) -> Dict[str, Any]:
    """Turn ``["lr=0.1", "optimizer=sgd"]`` into ``{"lr": 0.1, "optimizer": "sgd"}`` (values parsed as YAML)."""
    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        out[key.strip().replace("-", "_")] = yaml.safe_load(raw) if raw != "" else ""
    return out


def load_recipe(path: str | Path) -> Dict[str, Any]:
    """Read a YAML recipe; it must be a mapping (an empty file is an empty recipe)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"recipe {path} must be a mapping of key: value")
    return data


def resolve(cls: Type[C], *layers: Optional[Mapping[str, Any]]) -> C:
    """Build ``cls`` from its defaults plus each mapping in ``layers`` (later layers win).

    Unknown keys and wrongly typed values raise :class:`UserError` naming the key. ``None`` values in a layer
    mean "not given" and leave the earlier value alone, so unset CLI options do not override a recipe.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values: Dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            key = key.replace("-", "_")
            if "." in key:  # dotted override into a mapping field: method_args.temperature=0.07
                head, sub = key.split(".", 1)
                if head not in fields or typing.get_origin(hints[head]) is not dict:
                    raise UserError(f"unknown config key {key!r} for {cls.__name__}")
                values[head] = {**values.get(head, {}), sub: value}
                continue
            if key not in fields:
                raise UserError(f"unknown config key {key!r} for {cls.__name__}; known keys: {', '.join(sorted(fields))}")
            if value is None:
                continue
            value = _coerce(key, value, hints[key])
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                value = {**values[key], **value}  # a later layer refines a mapping rather than replacing it
            values[key] = value
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(cfg: Any) -> Dict[str, Any]:
    """A plain, YAML-safe dict of a config dataclass (what gets dumped and hashed)."""
    return dataclasses.asdict(cfg)


# ----------------------------------------------------------------------------------------------------------------
# Stage configs. Field comments are the documentation; recipes (pretrain/<dataset>/<method>.yaml) set them.
# ----------------------------------------------------------------------------------------------------------------

from dataclasses import dataclass, field  # noqa: E402


@dataclass
class PretrainConfig:
    """Everything that determines a pretraining run (and so its registry entry)."""

    method: str = "simclr"
    dataset: str = "bloodmnist"          # a MedMNIST flag or another data spec (see ssl_noise.data)
    image_size: int = 28
    subset: Optional[int] = None         # stratified subset of the training split, for quick runs
    backbone: str = "resnet18"
    stem: Optional[str] = None           # cifar | imagenet; None: cifar below 64 px, else imagenet
    epochs: int = 20
    batch_size: int = 256                # per process; the effective batch is this x world size
    optimizer: str = "sgd"               # sgd | adam | lars
    lr: float = 0.06                     # peak learning rate (after warm-up), not rescaled by batch size
    momentum: float = 0.9                # sgd/lars momentum; adam beta1
    weight_decay: float = 5e-4           # not applied to BatchNorm and bias parameters
    warmup_epochs: float = 1.0
    method_args: Dict[str, Any] = field(default_factory=dict)   # the method's own Args (see its file)
    augment: Dict[str, Any] = field(default_factory=dict)       # ssl_noise.augment.AugmentConfig fields
    seed: int = 0
    precision: str = "bf16"              # bf16 | fp32 (autocast dtype on CPU and CUDA)
    channels_last: bool = True
    num_workers: int = 0                 # 0 = in-process batching (fast here: images are uint8 in memory)
    sync_bn: bool = False                # SyncBatchNorm under DDP
    knn_every: int = 5                   # epochs between k-NN monitor evaluations (and always at the end)
    knn_k: int = 200
    knn_t: float = 0.1

    def validate(self) -> None:
        if self.optimizer not in ("sgd", "adam", "lars"):
            raise UserError(f"unknown optimizer {self.optimizer!r}; choose from: adam, lars, sgd")
        if self.precision not in ("bf16", "fp32"):
            raise UserError(f"unknown precision {self.precision!r}; choose from: bf16, fp32")
        if self.stem not in (None, "cifar", "imagenet"):
            raise UserError(f"unknown stem {self.stem!r}; choose from: cifar, imagenet")
        for name in ("epochs", "batch_size", "image_size", "knn_every", "knn_k"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"lr must be positive, got {self.lr}")
