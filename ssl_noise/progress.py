"""Progress bars and the one switch for them, so every long step looks and behaves the same.

Decoding images, extracting features, cross-validation folds and training epochs show a tqdm bar with rate and ETA
on a terminal; no bar is drawn when stderr is not a terminal (a redirected log gets no carriage-return garbage),
or after ``ssl-noise --quiet`` (:func:`set_quiet`). tqdm does the drawing; this module only decides whether.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Switch every bar of this process off (the global ``--quiet``)."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    return _quiet


def bar(iterable: Optional[Iterable] = None, *, enabled: bool = True, **kwargs: Any):
    """A tqdm bar over ``iterable`` (or a manual one with ``total=``); off when quiet, when ``enabled`` is False,
    and (tqdm's ``disable=None``) when stderr is not a terminal."""
    from tqdm import tqdm

    disable = True if (_quiet or not enabled) else None
    return tqdm(iterable, disable=disable, dynamic_ncols=True, **kwargs)


def epoch_line(record: dict) -> str:
    """One readable line for an epoch's log record (the JSON goes to the log file only).

    >>> epoch_line({"epoch": 3, "epochs": 20, "loss": 4.1234, "lr": 0.06, "samples_per_s": 812.4, "knn_acc": 0.71})
    'epoch 3/20  loss 4.1234  lr 0.06  812 samples/s  knn acc 0.7100'
    """
    parts = [f"epoch {record['epoch']}" + (f"/{record['epochs']}" if record.get("epochs") else "")]
    if record.get("loss") is not None:
        parts.append(f"loss {record['loss']:.4f}")
    if record.get("lr") is not None:
        parts.append(f"lr {record['lr']:.3g}")
    if record.get("samples_per_s") is not None:
        parts.append(f"{record['samples_per_s']:.0f} samples/s")
    if record.get("knn_acc") is not None:
        parts.append(f"knn acc {record['knn_acc']:.4f}")
    return "  ".join(parts)
