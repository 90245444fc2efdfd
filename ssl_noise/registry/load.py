"""Loading entries: strict load after a sha256 check, end-to-end verification, and export for plain PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import safetensors
import safetensors.torch
import torch
from torch import nn

from ssl_noise import backbones
from ssl_noise.errors import UserError
from ssl_noise.io import atomic_path, file_digest
from ssl_noise.registry.layout import DIVERGED_ABS, WEIGHTS_FILE, PathLike, _entry_dirs, _read_meta, non_finite
from ssl_noise.registry.lookup import resolve


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
    except RuntimeError as e:  # torch's message spans lines (one per kind of mismatch): keep its first reason
        reason = " ".join(str(e).split())
        raise UserError(f"{path.name}: weights do not load strictly into {meta['backbone']} "
                        f"(stem={meta['stem']}, channels={meta['channels']}): {reason}") from e
    bad = non_finite(state)
    if bad:
        raise UserError(f"{path.name}: diverged weights, {bad}; remove the entry "
                        f"(ssl-noise registry rm {path.name}) and pretrain with a lower --lr")
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
    """
    folders = {p.name: p for p in _entry_dirs(root)}
    return _verify_dir(folders[ref] if ref in folders else Path(root) / resolve(root, ref))


def verify_all(root: PathLike) -> List[Tuple[str, bool, str]]:
    """:func:`verify_entry` for every entry folder: ``[(id, ok, message), ...]`` sorted by id.
    """
    return [(p.name, *_verify_dir(p)) for p in _entry_dirs(root)]


def _verify_dir(path: Path) -> Tuple[bool, str]:
    try:
        meta = _read_meta(path)
        model = _load_dir(path, meta, verify=True)
    except UserError as e:  # the caller prints the id: do not repeat it
        message = str(e)
        return False, message[len(path.name) + 2:] if message.startswith(f"{path.name}: ") else message
    n = len(model.state_dict())
    huge = non_finite(model.state_dict(), limit=DIVERGED_ABS)
    if huge:
        return False, (f"diverged weights, {huge}; remove the entry (ssl-noise registry rm {path.name}) and "
                       f"pretrain with a lower --lr")
    dead = _non_finite_output(model, meta)
    if dead:
        return False, dead
    return True, (f"ok: sha256 {meta['sha256'][:12]}..., {n} tensors, strict load into {meta['backbone']} "
                  f"(stem={meta['stem']}, channels={meta['channels']})")


def _non_finite_output(model: nn.Module, meta: Mapping[str, Any]) -> Optional[str]:
    """Why the encoder is unusable though its weights are finite (huge weights overflow in the forward pass), else
    None: one forward pass of a small seeded batch in eval mode, milliseconds at MedMNIST sizes."""
    g = torch.Generator().manual_seed(0)
    size, channels = int(meta["image_size"]), int(meta["channels"])
    x = torch.randn(2, channels, size, size, generator=g)
    model.eval()
    with torch.no_grad():
        out = model(x)
    if not torch.isfinite(out).all():
        return ("the encoder gives non-finite features (its weights diverged in pretraining); remove the entry and "
                "pretrain with a lower --lr")
    return None


def export_entry(root: PathLike, ref: str, out_path: PathLike) -> Path:
    """Write the entry's weights as a plain ``torch.save`` dict of tensors for use outside ssl-noise.

    The file loads with ``torch.load(path, weights_only=True)`` and then ``load_state_dict(strict=True)`` into the
    torchvision model that :func:`export_instructions` describes. The weights are verified first.

    Raises:
        UserError: unknown ref, damaged entry, or ``out_path`` already exists (nothing is overwritten).
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

    >>> print(export_instructions({"backbone": "resnet18", "stem": "imagenet", "channels": 3, "image_size": 224,
    ...                            "normalisation": {"mean": [0.5] * 3, "std": [0.25] * 3}}, "simclr.pt"))
    import torch, torchvision
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()  # forward returns pooled features; put your own head on top
    model.load_state_dict(torch.load('simclr.pt', weights_only=True), strict=True)
    # inputs: 3 channel(s), 224 px, normalised with mean=[0.5, 0.5, 0.5] std=[0.25, 0.25, 0.25]
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

