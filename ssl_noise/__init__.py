"""ssl-noise: how much does self-supervised pretraining protect a medical image classifier against noisy labels?

The package is a library first; the ``ssl-noise`` command (``ssl_noise.cli``) is a thin layer over it.
Nothing runs at import time, and heavy dependencies (torch, faiss, lightly) are imported by the modules
that need them, so ``ssl-noise --help`` stays fast.
"""

__version__ = "0.1.0"
