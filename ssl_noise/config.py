"""Typed configuration: dataclass defaults, then a YAML recipe, then command-line overrides.

Every stage (pretraining, fine-tuning, sweeps) describes its knobs as a dataclass. :func:`resolve` layers a recipe
file and ``key=value`` overrides on top of the defaults, refusing unknown keys and values of the wrong type, so a
typo in a recipe fails before hours of training rather than being silently ignored. The resolved config is dumped
next to every artefact (``config.yaml``) and is what run ids are hashed from.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Type, TypeVar, Union

import yaml

from ssl_noise.errors import UserError
from ssl_noise.settings import given_recipe, recipe_path

C = TypeVar("C")
#: ``--init`` values that are not registry entries.
BUILTIN_INITS = ("random", "imagenet")


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


def check_noise_estimate(value: Any) -> Any:
    """``auto`` (estimate the rate from the noisy labels), ``oracle`` (the injected rate: ablations only) or a rate
    in [0, 1) given as a number or its text; UserError otherwise."""
    if isinstance(value, str) and value in ("auto", "oracle"):
        return value
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise UserError(f"noise estimate must be auto, oracle or a rate in [0, 1), got {value!r}") from None
    if not 0 <= rate < 1:
        raise UserError(f"noise estimate must be auto, oracle or a rate in [0, 1), got {rate:g}")
    return rate


@dataclass
class NoArgs:
    """The ``Args`` of a method (SSL or noise-robust) without hyper-parameters of its own."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float syntax: YAML 1.1, which PyYAML follows, needs a dot and a signed
    exponent, so ``1e-3`` and ``1e6`` would be read as strings and refused as "not a number"."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?(?:\d[\d_]*)?\.\d+$|^[-+]?\d[\d_]*\.$"
               r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """YAML as recipes, specs and ``--set`` values are read (safe, with YAML 1.2 floats such as ``1e-3``).

    >>> load_yaml("lr: 1e-3"), load_yaml("1e6"), load_yaml("7")
    ({'lr': 0.001}, 1000000.0, 7)
    """
    return yaml.load(text, Loader=_Loader)


def parse_overrides(items: Iterable[str]) -> Dict[str, Any]:
    """Turn ``["lr=0.1", "optimizer=sgd"]`` into ``{"lr": 0.1, "optimizer": "sgd"}`` (values parsed as YAML)."""
    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise UserError(f"--set {item}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
        out[key.strip().replace("-", "_")] = value
    return out


def load_recipe(path: str | Path, what: str = "recipe") -> Dict[str, Any]:
    """Read a YAML recipe (or another YAML mapping: ``what`` names it in errors); it must be a mapping (an empty
    file is an empty recipe)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        data = load_yaml(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must be a mapping of key: value")
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
                raise UserError(f"unknown config key {key!r} for {cls.__name__}; "
                                + (f"known keys: {', '.join(sorted(fields))}" if fields else "it takes none"))
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


def from_recipe(cls: Type[C], kind: str, name: str, flags: Mapping[str, Any], *, recipe: Optional[str] = None,
                overrides: Iterable[str] = ()) -> "tuple[C, Optional[str | Path]]":
    """``cls`` from its defaults, a recipe, command-line ``flags`` (None: not given) and ``--set`` overrides.

    The recipe is ``recipe`` when given, else the default ``<kind>/<dataset>/<name>.yaml`` (the working folder's,
    then the one shipped with the package). Returns the config and the recipe file used (None: defaults only), so
    every entry point layers a run's settings the same way.
    """

    dataset = flags.get("dataset") or getattr(cls, "dataset")
    recipe_file = given_recipe(recipe) if recipe else recipe_path(kind, dataset, name)
    cfg = resolve(cls, load_recipe(recipe_file) if recipe_file else {}, flags, parse_overrides(overrides))
    return cfg, recipe_file


#: Fields added after results were published, left out of hashes while unset, so that the run and cell ids of
#: every earlier config stay what they were (a sweep resumed after an upgrade finds its finished cells).
LATE_FIELDS = ("label_column", "test_eval")


def to_dict(cfg: Any) -> Dict[str, Any]:
    """A plain, YAML-safe dict of a config dataclass (what gets dumped)."""
    return dataclasses.asdict(cfg)


#: Fields added after results were published whose value then is what every earlier run did: left out of hashes
#: at that value (``protocol: shared`` is the one recipe every method trained with before the field existed).
LEGACY_VALUES = {"protocol": "shared"}


def hashed_dict(cfg: Any) -> Dict[str, Any]:
    """:func:`to_dict` as ids hash it: a :data:`LATE_FIELDS` field only once it is set, a :data:`LEGACY_VALUES`
    field only at another value."""
    return {k: v for k, v in to_dict(cfg).items()
            if not (k in LATE_FIELDS and v is None) and not (k in LEGACY_VALUES and v == LEGACY_VALUES[k])}


def method_args_text(args: Dict[str, Any]) -> str:
    """A method's options as they go into results.csv: compact JSON with sorted keys, "" for the defaults.

    Two variants of one method in a sweep (the k-NN filter that drops vs the one that relabels) are different
    methods for a table or a curve; without this column they would be pooled as one.
    """
    return json.dumps(args, sort_keys=True, separators=(",", ":")) if args else ""


# ----------------------------------------------------------------------------------------------------------------
# Stage configs. Field comments are the documentation; recipes (pretrain/<dataset>/<method>.yaml) set them.
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class PretrainConfig:
    """Everything that determines a pretraining run (and so its registry entry)."""

    method: str = "simclr"
    dataset: str = "bloodmnist"          # a MedMNIST flag or another data spec (see ssl_noise.data)
    image_size: Optional[int] = None     # None: the data's own (MedMNIST 28; image files their common size)
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
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"lr must be positive, got {self.lr}")


#: Fine-tuning augmentation under ``FinetuneConfig.augment`` (which overrides single keys): a mild crop and horizontal
#: flips, no colour changes (colour carries stain and modality information in medical images, and the label must
#: survive the augmentation). Keys not named in either fall back to ``AugmentConfig``'s (SimCLR-strength) defaults,
#: so every key is listed here.
FINETUNE_AUGMENT: Dict[str, Any] = {"min_scale": 0.8, "hf_prob": 0.5, "vf_prob": 0.0, "rr_prob": 0.0,
                                    "cj_prob": 0.0, "cj_bright": 0.0, "cj_contrast": 0.0, "cj_sat": 0.0,
                                    "cj_hue": 0.0, "random_gray_scale": 0.0}


@dataclass
class FinetuneConfig:
    """Everything that determines a fine-tuning run (and so, with the encoder and label hashes, its run id).

    Noise fields describe how the training labels are corrupted; with ``noise_file`` the labels come from that
    file instead and ``noise_rate``/``noise_type``/``noise_mode`` are ignored (``noise_seed`` still seeds the
    validation noise unless ``clean_val``).
    """

    init: str = "random"                 # random | imagenet | a registry reference (id, unique prefix, method)
    dataset: str = "bloodmnist"
    image_size: Optional[int] = None     # None: the encoder's (registry), else the data's own (MedMNIST 28)
    subset: Optional[int] = None         # stratified training subset, drawn with noise_seed (as `ssl-noise noise`)
    backbone: str = "resnet18"           # random/imagenet only; a registry entry fixes its own architecture
    stem: Optional[str] = None           # random/imagenet only; None: cifar below 64 px, else imagenet
    freeze: bool = False                 # True: linear probe (encoder frozen, BN statistics too)
    method: str = "ce"                   # a key of ssl_noise.robust.ROBUST
    method_args: Dict[str, Any] = field(default_factory=dict)
    noise_rate: Optional[float] = None   # None or 0: clean labels (unless a noise matrix or noise file is given)
    noise_type: str = "symmetric"        # symmetric | uniform | pairflip | asymmetric | instance
    noise_mode: str = "sampled"          # sampled | exact
    noise_seed: int = 0
    class_map: Optional[str] = None      # asymmetric: YAML/JSON {clean: noisy}
    noise_matrix: Optional[str] = None   # asymmetric: KxK matrix file (then noise_rate is not used)
    noise_file: Optional[str] = None     # reuse exactly these training labels (index,clean_label,noisy_label)
    label_column: Optional[str] = None   # csv data: the column to train on, or majority (of annotator* columns)
    noise_force: bool = False            # accept noise where a wrong class is as likely as the clean one
    clean_val: bool = False              # default: validation labels are noisy too, as in practice
    noise_estimate: Union[str, float] = "auto"  # rate told to methods that need one: auto | oracle | a rate
    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "sgd"               # sgd | adam | lars
    lr: float = 0.05                     # peak learning rate (after warm-up), cosine decay to 0 per step
    momentum: float = 0.9
    weight_decay: float = 5e-4           # not applied to BatchNorm and bias parameters
    warmup_epochs: float = 0.0
    augmentation: bool = True            # False: train on the plain images
    augment: Dict[str, Any] = field(default_factory=dict)  # AugmentConfig fields over FINETUNE_AUGMENT
    select_metric: str = "acc"           # validation metric that picks the reported epoch: acc | macro_f1
    seed: int = 0                        # head init (and random-init encoder), sample order, augmentation
    precision: str = "bf16"              # bf16 | fp32
    channels_last: bool = True
    eval_batch_size: int = 512
    test_eval: Optional[str] = None      # None or "every": the test split after every epoch; "reported": only at the
                                         # epochs a result reports (each new validation best, the last 5): same numbers
    protocol: str = "paper"              # paper: a method with a published recipe trains with it (its optimiser,
                                         # schedule and phase starts, scaled to `epochs`: docs/methods.md); shared:
                                         # every method under this config's optimiser and cosine schedule

    def validate(self) -> None:
        choices = {"optimizer": ("adam", "lars", "sgd"), "precision": ("bf16", "fp32"),
                   "noise_mode": ("exact", "sampled"), "select_metric": ("acc", "macro_f1"),
                   "test_eval": (None, "every", "reported"), "protocol": ("paper", "shared")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"unknown {name} {getattr(self, name)!r}; choose from: "
                                f"{', '.join(a for a in allowed if a is not None)}")
        if self.stem not in (None, "cifar", "imagenet"):
            raise UserError(f"unknown stem {self.stem!r}; choose from: cifar, imagenet")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("seed", "noise_seed"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.image_size is not None and self.image_size < 1:
            raise UserError(f"image_size must be at least 1, got {self.image_size}")
        if self.noise_rate is not None and not 0 <= self.noise_rate < 1:
            raise UserError(f"noise rate must be in [0, 1), got {self.noise_rate}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise UserError(f"lr must be positive and weight_decay, warmup_epochs non-negative "
                            f"(got {self.lr}, {self.weight_decay}, {self.warmup_epochs})")
        check_noise_estimate(self.noise_estimate)
        if self.noise_file is not None and (self.class_map is not None or self.noise_matrix is not None):
            raise UserError("--noise-file gives the labels itself; do not combine it with --class-map/--noise-matrix")
