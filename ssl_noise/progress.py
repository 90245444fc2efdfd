"""Progress bars and the one switch for them, so every long step looks and behaves the same.

Decoding images, extracting features, cross-validation folds and training epochs show a tqdm bar with rate and ETA
on a terminal; no bar is drawn when stderr is not a terminal (a redirected log gets no carriage-return garbage),
or after ``ssl-noise --quiet`` (:func:`set_quiet`). tqdm does the drawing; this module only decides whether.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

_quiet = False
#: Without a bar (stderr not a terminal), the most often a long step prints a plain progress line.
LINE_EVERY_S = 10.0


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


def plain_lines() -> bool:
    """True when long steps should print one plain line per epoch: not quiet and stderr is no terminal (a log
    file, nohup, a scheduler's or a notebook's captured stream), where no bar is drawn."""
    import sys

    return not _quiet and not sys.stderr.isatty()


def epoch_line(record: dict) -> str:
    """One readable line for an epoch's log record (the JSON goes to the log file only).

    >>> epoch_line({"epoch": 3, "epochs": 20, "loss": 4.1234, "lr": 0.06, "samples_per_s": 812.4, "knn_acc": 0.71})
    'epoch 3/20  loss 4.1234  lr 0.06  812 samples/s  knn acc 0.7100'
    >>> epoch_line({"epoch": 2, "epochs": 40, "loss": 1.5, "val_acc": 0.61, "eta_s": 754})
    'epoch 2/40  loss 1.5000  val acc 0.6100  ETA 12 min 34 s'
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
    if record.get("val_acc") is not None:
        parts.append(f"val acc {record['val_acc']:.4f}")
    if record.get("eta_s") is not None:
        minutes, seconds = divmod(int(round(record["eta_s"])), 60)
        parts.append(f"ETA {minutes} min {seconds:02d} s" if minutes else f"ETA {seconds} s")
    return "  ".join(parts)
