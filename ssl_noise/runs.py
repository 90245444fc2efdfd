"""The run folder and ``results.csv``: the only module that opens a fine-tuning run's files by name.

Fine-tuning writes a run folder, and sweeps, detectors, refinement, plots and reports read it back; with one owner
the file names, dtypes and the no-pickle rule live in one place. Formats and schema versions: docs/formats.md.
"""

from __future__ import annotations

import csv
import fcntl
import io as _io
import json
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

import numpy as np

from ssl_noise import io, noise
from ssl_noise.errors import UserError
from ssl_noise.metrics import SCALARS

SCHEMA_VERSION = 1
RESULTS_FILE = "results.csv"
#: Arrays the loop itself writes; a method's own outputs (``<name>.npy``) may not take these names.
LOOP_ARRAYS = ("history", "selected", "test_probs")
RESULT_COLUMNS = (
    ["run_id", "dataset", "image_size", "n_train", "init", "encoder_id", "encoder_sha256", "encoder_method",
     "encoder_seed", "backbone", "stem", "protocol", "method", "method_args", "method_active", "health",
     "method_protocol", "optimizer", "starts", "augmentation", "noise_source",
     "noise_type", "noise_rate", "noise_realised_rate", "noise_seed", "noise_mode", "clean_val", "val_realised_rate",
     "noise_rate_estimate", "noise_rate_source", "noise_rate_estimate_lo", "noise_rate_estimate_hi", "noise_estimator",
     "seed", "epochs", "select_metric", "selected_epoch"]
    + [f"test_{m}{s}" for s in ("", "_last", "_last5") for m in SCALARS]
    + ["val_acc", "val_macro_f1", "train_acc_noisy", "train_acc_clean", "train_memorised", "train_memorised_last",
       "wall_time_s", "created_at"])


class RunFolder:
    """Typed access to ``runs/<run_id>/``: reading a finished run, and writing one inside ``io.atomic_dir``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name

    # ---- reading ----
    def is_finished(self) -> bool:
        """finetune writes the folder atomically, so a folder with metrics.json is complete."""
        return (self.path / "metrics.json").is_file()

    def require(self, *names: str, message: str = "{path} is not a finished run folder (no {name})") -> None:
        """UserError (``message`` with ``path`` and ``name``) naming the first of ``names`` that is missing."""
        for name in names:
            if not (self.path / name).is_file():
                raise UserError(message.format(path=self.path, name=name))

    def _json(self, name: str) -> Dict[str, Any]:
        try:
            return json.loads((self.path / name).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {self.path / name}: {e}") from None

    def metrics(self) -> Dict[str, Any]:
        return self._json("metrics.json")

    def metrics_or_none(self) -> Optional[Dict[str, Any]]:
        """metrics.json, or None when it is missing or unreadable (tables skip such folders)."""
        try:
            return json.loads((self.path / "metrics.json").read_text())
        except (OSError, ValueError):
            return None

    def provenance(self) -> Dict[str, Any]:
        """run.json (provenance and timing); {} for folders written before it existed."""
        return self._json("run.json") if (self.path / "run.json").is_file() else {}

    def has_config(self) -> bool:
        return (self.path / "config.yaml").is_file()

    def config(self) -> Dict[str, Any]:
        """config.yaml as a plain mapping (resolve it into a FinetuneConfig where needed)."""
        import yaml

        return yaml.safe_load((self.path / "config.yaml").read_text()) or {}

    @property
    def labels_file(self) -> Path:
        """``noisy_labels.csv``: sweeps publish it as the shared noise file of a noise key."""
        return self.path / "noisy_labels.csv"

    def labels(self, *, num_classes: Optional[int] = None, indices=None) -> noise.NoiseFile:
        """The training labels (``noisy_labels.csv``: index, clean, noisy), checked."""
        return noise.read_noise_csv(self.labels_file, num_classes=num_classes, indices=indices)

    def val_labels(self, *, num_samples: int, num_classes: int) -> Optional[noise.NoiseFile]:
        """The noisy validation labels, or None when the run validated on clean labels."""
        path = self.path / "noisy_val_labels.csv"
        if not path.is_file():
            return None
        return noise.read_noise_csv(path, num_samples=num_samples, num_classes=num_classes)

    def has(self, name: str) -> bool:
        """Whether the run wrote the array ``<name>.npy``."""
        return (self.path / f"{name}.npy").is_file()

    def array(self, name: str) -> np.ndarray:
        """``<name>.npy`` (history, kept, scores ...); numbers only, never a pickled object."""
        try:
            return np.load(self.path / f"{name}.npy", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {self.path / f'{name}.npy'}: {e}") from None

    def scores(self) -> "pd.DataFrame":  # noqa: F821
        """A detection folder's ``scores.csv`` (most suspicious first), class names kept as text."""
        import pandas as pd

        self.require("scores.csv", message="{path} is not a detection folder (no {name})")
        return pd.read_csv(self.path / "scores.csv", keep_default_na=False)

    def model_state(self):
        """The selected-epoch state of a selecting method (``model.safetensors``), CPU tensors."""
        from ssl_noise.engine import load_state  # torch: tables and figures read run folders without it

        return load_state(self.path / "model.safetensors")

    # ---- writing (inside io.atomic_dir; finetune is the only writer) ----
    def write_config(self, config: Mapping[str, Any]) -> None:
        io.write_yaml(self.path / "config.yaml", dict(config))

    def write_labels(self, clean: np.ndarray, noisy: np.ndarray, *, indices=None, split: str = "train") -> None:
        name = "noisy_labels.csv" if split == "train" else "noisy_val_labels.csv"
        noise.write_noise_csv(self.path / name, clean, noisy, indices=indices)

    def write_array(self, name: str, array: np.ndarray, *, owner: str = "loop") -> None:
        if owner != "loop" and (not name.isidentifier() or name in LOOP_ARRAYS):
            raise ValueError(f"method output name {name!r} must be a plain name other than {'/'.join(LOOP_ARRAYS)}")
        np.save(self.path / f"{name}.npy", np.asarray(array))

    def write_model_state(self, state) -> None:
        from ssl_noise.engine import save_state  # torch, as above

        save_state(state, self.path / "model.safetensors")

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        io.write_json(self.path / "metrics.json", dict(metrics))

    def write_provenance(self, provenance: Mapping[str, Any]) -> None:
        io.write_json(self.path / "run.json", dict(provenance))

    def log_path(self, stage: Optional[str] = None) -> Path:
        """The per-epoch JSON-lines log (``train_log.jsonl``; a nested stage writes ``train_log_<stage>.jsonl``)."""
        return self.path / ("train_log.jsonl" if stage is None else f"train_log_{stage}.jsonl")


def run_id(*, init_method: str, dataset: str, noise_record: Mapping[str, Any], method: str, linear_probe: bool,
           seed: int, identity: Mapping[str, Any]) -> str:
    """``<init>-<dataset>-<noise>n<noise_seed>-<method>[_lp]-s<seed>-<hash10>``; the hash covers ``identity``."""
    kind = noise.short_label(noise_record["type"], noise_record["rate"])
    return "-".join([init_method, dataset, f"{kind}n{noise_record['seed']}", method + ("_lp" if linear_probe else ""),
                     f"s{seed}", io.short_hash(identity)])


def results_path(runs: str | Path) -> Path:
    """``<runs>/results.csv``: one row per finished run, appended by :func:`append_result`."""
    return Path(runs) / RESULTS_FILE


def append_result(runs: str | Path, row: Mapping[str, Any]) -> Path:
    """Append ``row`` to ``runs/results.csv`` under an exclusive lock (concurrent sweeps never interleave).

    A file whose header differs (written by another ssl-noise version) is rewritten with the union of columns.
    """
    import pandas as pd

    path = results_path(runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = _io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(["" if row.get(c) is None else row.get(c) for c in RESULT_COLUMNS])
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        header = f.readline().rstrip("\n")
        if header and header != ",".join(RESULT_COLUMNS):
            frame = pd.concat([pd.read_csv(path), pd.DataFrame([dict(row)])], ignore_index=True)
            with io.atomic_path(path) as tmp:
                frame.to_csv(tmp, index=False)
            return path
        f.write(("" if header else ",".join(RESULT_COLUMNS) + "\n") + buf.getvalue())
    return path


def read_results(path: str | Path):
    """A results table as a DataFrame (empty when missing), read under a shared lock (appends take an exclusive
    one)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        return pd.DataFrame()
    with open(path) as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        return pd.read_csv(f)


def detection_of(runs: str | Path, run_ids: Iterable[str]) -> Dict[str, Optional[Dict[str, Any]]]:
    """``metrics.json["detection"]`` of each run under ``runs`` (None where a run has none or is unreadable)."""
    out = {}
    for rid in run_ids:
        metrics = RunFolder(Path(runs) / str(rid)).metrics_or_none()
        detection = metrics.get("detection") if isinstance(metrics, dict) else None
        out[rid] = detection if isinstance(detection, dict) else None
    return out
