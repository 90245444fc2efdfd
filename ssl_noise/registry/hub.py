"""Export an entry for the Hugging Face Hub: ``model.safetensors``, ``config.json`` and a model card.

The weights are the entry's own (torchvision key names, which timm's ResNets share), so the folder loads into plain
torchvision and into timm. ``config.json`` follows timm's hub layout (``architecture``, ``num_features``,
``model_args``, ``pretrained_cfg``) plus an ``ssl_noise`` block with the input contract. timm has no ResNet stem of
the CIFAR kind (3x3 stride-1 conv, no max-pool): a ``cifar``-stem export records the two-line surgery in
``ssl_noise.stem_surgery`` and the card shows it; only ``imagenet``-stem exports load with timm alone
(``timm.create_model(..., pretrained=True)`` from the hub or a local file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping

import safetensors.torch

from ssl_noise.errors import UserError
from ssl_noise.io import atomic_dir, file_mode
from ssl_noise.registry.load import load_encoder

#: Version of the ``ssl_noise`` block of an export's config.json.
EXPORT_SCHEMA_VERSION = 1
CIFAR_SURGERY = {"conv1": {"kernel_size": 3, "stride": 1, "padding": 1, "bias": False}, "maxpool": "identity"}


def data_licence(dataset: str) -> str:
    """The licence the MedMNIST catalogue gives for ``dataset``, else a note that it is the user's to state."""
    from ssl_noise.data import catalogue

    entry = catalogue().get(str(dataset).lower())
    if entry is None:
        return f"unknown ({dataset} is not in the MedMNIST catalogue: state your data's licence here)"
    return entry.licence


def hf_config(meta: Mapping[str, Any]) -> Dict[str, Any]:
    """config.json: timm's hub keys and the entry's input contract."""
    c, size, norm = int(meta["channels"]), int(meta["image_size"]), meta["normalisation"]
    return {
        "architecture": meta["backbone"], "num_classes": 0, "num_features": int(meta["feat_dim"]),
        "global_pool": "avg", "model_args": {"in_chans": c},
        "pretrained_cfg": {"input_size": [c, size, size], "mean": list(norm["mean"]), "std": list(norm["std"]),
                           "num_classes": 0, "first_conv": "conv1", "classifier": "fc", "interpolation": "bilinear",
                           "crop_pct": 1.0, "license": "other"},
        "ssl_noise": {"schema_version": EXPORT_SCHEMA_VERSION, "entry_id": meta["id"], "sha256": meta["sha256"],
                      "backbone": meta["backbone"], "stem": meta["stem"], "channels": c, "image_size": size,
                      "feat_dim": int(meta["feat_dim"]), "normalisation": {"mean": list(norm["mean"]),
                                                                           "std": list(norm["std"])},
                      "stem_surgery": CIFAR_SURGERY if meta["stem"] == "cifar" else None},
    }


def _loading_code(meta: Mapping[str, Any]) -> str:
    c, arch = int(meta["channels"]), meta["backbone"]
    surgery = ""
    if meta["stem"] == "cifar":
        surgery = (f"model.conv1 = torch.nn.Conv2d({c}, 64, kernel_size=3, stride=1, padding=1, bias=False)\n"
                   "model.maxpool = torch.nn.Identity()\n")
    tv_stem = surgery or (f"model.conv1 = torch.nn.Conv2d({c}, 64, kernel_size=7, stride=2, padding=3, bias=False)\n"
                          if c != 3 else "")
    return (f"```python\nimport torch, torchvision, timm\nfrom safetensors.torch import load_file\n\n"
            f"state = load_file(\"model.safetensors\")\n\n# torchvision\nmodel = torchvision.models.{arch}()\n"
            f"{tv_stem}model.fc = torch.nn.Identity()\nmodel.load_state_dict(state, strict=True)\n\n"
            f"# timm (same key names)\nmodel = timm.create_model(\"{arch}\", pretrained=False, num_classes=0, "
            f"in_chans={c})\n{surgery}model.load_state_dict(state, strict=True)\n```")


def model_card(meta: Mapping[str, Any]) -> str:
    """README.md: what the encoder is, how it was trained, how good its features are, and how to load it."""
    opt, metrics, norm = meta.get("optimizer", {}), meta.get("metrics") or {}, meta["normalisation"]
    knn = metrics.get("knn_acc")
    knn_text = (f"{knn:.4f} (weighted k-NN, k={metrics.get('knn_k')}, t={metrics.get('knn_t')}; training split as "
                f"the bank, validation split as queries)" if isinstance(knn, (int, float)) else "not measured")
    method_args = json.dumps(meta.get("method_config") or {}, sort_keys=True)
    front = ["---", "pipeline_tag: image-feature-extraction", "license: other",
             "tags:", "- image-feature-extraction", "- self-supervised-learning", "- medical-imaging", "- ssl-noise",
             f"- {meta['method']}"]
    if meta["stem"] == "imagenet":
        front.insert(1, "library_name: timm")
    lines = front + ["---", "", f"# {meta['id']}", "",
                     f"A {meta['backbone']} encoder ({meta['stem']} stem, {meta['channels']} input channel(s), "
                     f"{meta['feat_dim']}-d pooled features, no classifier) pretrained with **{meta['method']}** on "
                     f"**{meta['dataset']}** at {meta['image_size']} px by ssl-noise.", "",
                     "| | |", "|---|---|",
                     f"| method | {meta['method']} `{method_args}` |",
                     f"| data | {meta['dataset']}, {meta.get('num_train_samples', '?')} training images"
                     f"{'' if meta.get('subset') is None else ' (subset)'} |",
                     f"| data licence | {data_licence(meta['dataset'])} |",
                     f"| schedule | {meta['epochs']} epochs, batch {meta['batch_size']} x {meta.get('world_size', 1)} "
                     f"process(es), {opt.get('name')} lr {opt.get('lr')} momentum {opt.get('momentum')} weight decay "
                     f"{opt.get('weight_decay')} warm-up {opt.get('warmup_epochs')} epoch(s), "
                     f"{meta.get('precision', 'fp32')} |",
                     f"| k-NN accuracy | {knn_text} |",
                     f"| seed | pretraining seed {meta['seed']} |",
                     f"| input | {meta['channels']} channel(s), {meta['image_size']} px, scaled to [0, 1] then "
                     f"normalised with mean {list(norm['mean'])} std {list(norm['std'])} |",
                     f"| weights | `model.safetensors`, sha256 {meta['sha256']} (registry entry {meta['id']}) |",
                     f"| made | {meta.get('created_at')}, ssl-noise git {(meta.get('git') or {}).get('sha')} |",
                     "", "## Loading", "", _loading_code(meta), ""]
    if meta["stem"] == "imagenet":
        lines += ["From the Hub after uploading this folder: `timm.create_model(\"hf-hub:<user>/<repo>\", "
                  "pretrained=True, num_classes=0)`. Without `pretrained=True` timm builds the architecture with "
                  "random weights and loads nothing.", ""]
    if meta["stem"] == "cifar":
        lines += ["timm has no ResNet stem of this kind (3x3 stride-1 `conv1`, no max-pool, for small images): "
                  "apply the two lines above (recorded in `config.json` as `ssl_noise.stem_surgery`) before loading.",
                  ""]
    lines += ["The data licence above is the dataset's; check it, and cite the dataset, before you publish these "
              "weights.", ""]
    return "\n".join(lines)


def export_hf(root, ref: str, out_dir) -> Path:
    """Write ``out_dir`` (a new folder) with the entry's ``model.safetensors``, ``config.json`` and ``README.md``;
    the weights are verified (sha256, strict load) first."""
    out = Path(out_dir)
    if out.exists():
        raise UserError(f"{out} already exists; choose another --out or remove it first")
    model, meta = load_encoder(root, ref)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(out) as tmp:
        safetensors.torch.save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        os.chmod(tmp / "model.safetensors", file_mode())  # safetensors writes 0600; the other files 0644
        (tmp / "config.json").write_text(json.dumps(hf_config(meta), indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(meta))
    return out
