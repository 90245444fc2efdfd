"""ssl-noise: how much does self-supervised pretraining protect a medical image classifier against noisy labels?

The package is a library first; the ``ssl-noise`` command (``ssl_noise.cli``) is a thin layer over it.
Nothing runs at import time, and heavy dependencies (torch, faiss, lightly) are imported by the modules
that need them, so ``ssl-noise --help`` stays fast.
"""

__version__ = "0.1.0"

#: The public names importable from ``ssl_noise`` itself (docs/api.md), loaded on first use. ``finetune``,
#: ``pretrain``, ``sweep`` and ``report`` are subpackages of this package as well, so those four are called from
#: ``ssl_noise.api`` (``import ssl_noise.api as sn`` gives every name).
_API = ("Encoder", "Estimate", "ImageDataset", "NoisyLabels", "Run", "UserError", "corrupt_labels",
        "estimate_noise_rate", "find_label_issues", "load_dataset", "load_encoder")


def __getattr__(name: str):
    if name in _API:  # by name: the package root imports nothing at import time, nor for the layer contract
        import importlib

        return getattr(importlib.import_module("ssl_noise.api"), name)
    raise AttributeError(f"module 'ssl_noise' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
