"""Every command, fed bad input, exits 2 with exactly one ``error:`` line, no traceback, and writes nothing.

Each case runs the CLI in-process on a shared workspace (a tiny registry, a runs folder, broken data files and
sweep specs) and compares the registry and runs folders before and after. Cases fail before any training, so the
module runs in seconds. The count of cases is quoted in the README ("Errors").
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from ssl_noise.cli import main
from ssl_noise.engine import STATE_JSON
from ssl_noise.data.synthetic import make_synthetic

SPEC = "synthetic:n_train=32,n_val=16,n_test=32"
DATA = ["--dataset", SPEC, "--image-size", "16"]
TINY = [*DATA, "--epochs", "1", "--batch-size", "16", "--quiet"]

# (id, argv with {placeholders} filled from the workspace, a substring the error line must hold or None)
CASES = [
    # --- global options ---
    ("data-root-missing", ["--data-root", "{tmp}/nowhere", "data", "info", "synthetic"], "does not exist"),
    ("data-root-file", ["--data-root", "{file}", "data", "info", "synthetic"], "not a folder"),
    ("threads-0", ["--threads", "0", "data", "list"], None),
    ("device-unknown", ["--device", "tpu", "data", "list"], None),
    ("command-unknown", ["frobnicate"], None),
    ("option-unknown", ["data", "info", "synthetic", "--bogus"], None),
    ("ck-missing-ls-json", ["--checkpoints", "{file}", "registry", "ls", "--json"], "is a file"),
    ("ck-file-ls", ["--checkpoints", "{file}", "registry", "ls"], "is a file"),
    ("ck-missing-verify", ["--checkpoints", "{tmp}/nowhere", "registry", "verify"], "does not exist"),
    ("ck-file-verify", ["--checkpoints", "{file}", "registry", "verify"], "is a file"),
    ("ck-missing-finetune", ["--checkpoints", "{tmp}/nowhere", "finetune", "--init", "simclr", *TINY],
     "does not exist"),
    # --- data ---
    ("data-unknown-flag", ["data", "info", "nosuchmnist"], "unknown dataset"),
    ("data-missing-npz", ["data", "info", "{tmp}/missing.npz"], None),
    ("data-label-255", ["data", "info", "{tmp}/mybinary.npz"], "0..K-1"),
    ("data-label-255-catalogue", ["data", "info", "{tmp}/pneumoniamnist_bad.npz"], "out of range for 2 classes"),
    ("data-empty-train", ["data", "info", "{tmp}/empty_train.npz"], "training split is empty"),
    ("data-csv-mixed-labels", ["data", "info", "csv:{tmp}/mixed.csv"], "mix class indices and names"),
    ("data-csv-negative-label", ["data", "info", "csv:{tmp}/negative.csv"], "out of range"),
    ("data-csv-label-255", ["data", "info", "csv:{tmp}/stray.csv"], "0..K-1"),
    ("data-csv-missing", ["data", "info", "csv:{tmp}/missing.csv"], None),
    ("data-csv-no-label-column", ["data", "info", "csv:{tmp}/nolabel.csv"], "lacks column"),
    ("data-folder-missing", ["data", "info", "folder:{tmp}/nowhere"], None),
    ("data-chaoyang-missing", ["data", "info", "chaoyang:{tmp}/nowhere"], None),
    ("data-synthetic-one-class", ["data", "info", "synthetic:num_classes=1"], None),
    ("data-synthetic-bad-key", ["data", "info", "synthetic:foo=1"], None),
    ("data-synthetic-bad-int", ["data", "info", "synthetic:n_train=x"], None),
    ("data-size-27", ["data", "info", "bloodmnist", "--image-size", "27"], None),
    ("data-size-0", ["data", "info", "bloodmnist", "--image-size", "0"], "positive number of pixels"),
    ("data-size-negative-files", ["data", "info", SPEC, "--image-size", "-4"], None),
    ("noise-size-0", ["noise", *DATA[:2], "--image-size", "0", "--rate", "0.3", "--out", "{tmp}/n0.csv"],
     "positive number of pixels"),
    ("data-not-npz", ["data", "info", "{tmp}/text.npz"], None),
    ("data-3d-flag", ["data", "info", "organmnist3d"], None),
    ("data-get-unknown", ["data", "get", "nosuchmnist"], None),
    ("data-get-bad-size", ["data", "get", "bloodmnist", "--image-size", "30"], None),
    # --- noise ---
    ("noise-out-under-file", ["noise", *DATA[:2], "--image-size", "16", "--rate", "0.3", "--out", "{file}/n.csv"],
     "is a file"),
    ("noise-out-readonly", ["noise", *DATA[:2], "--image-size", "16", "--rate", "0.3", "--out", "{ro}/n.csv"], None),
    ("noise-out-folder", ["noise", *DATA[:2], "--image-size", "16", "--rate", "0.3", "--out", "{tmp}"], None),
    ("noise-rate-1.5", ["noise", *DATA[:2], "--image-size", "16", "--rate", "1.5", "--out", "{tmp}/n.csv"], None),
    ("noise-rate-negative", ["noise", *DATA[:2], "--image-size", "16", "--rate", "-0.1", "--out", "{tmp}/n.csv"], None),
    ("noise-type-unknown", ["noise", *DATA[:2], "--image-size", "16", "--type", "bogus", "--rate", "0.3", "--out",
                            "{tmp}/n.csv"], "unknown noise type"),
    ("noise-asymmetric-no-map", ["noise", *DATA[:2], "--image-size", "16", "--type", "asymmetric", "--rate", "0.3",
                                 "--out", "{tmp}/n.csv"], None),
    ("noise-pairflip-0.6", ["noise", *DATA[:2], "--image-size", "16", "--type", "pairflip", "--rate", "0.6", "--out",
                            "{tmp}/n.csv"], None),
    ("noise-matrix-missing", ["noise", *DATA[:2], "--image-size", "16", "--type", "asymmetric", "--matrix",
                              "{tmp}/missing.npy", "--out", "{tmp}/n.csv"], None),
    ("noise-class-map-missing", ["noise", *DATA[:2], "--image-size", "16", "--type", "asymmetric", "--rate", "0.3",
                                 "--class-map", "{tmp}/missing.yaml", "--out", "{tmp}/n.csv"], None),
    ("noise-subset-0", ["noise", *DATA[:2], "--image-size", "16", "--rate", "0.3", "--subset", "0", "--out",
                        "{tmp}/n.csv"], None),
    ("noise-dataset-unknown", ["noise", "--dataset", "nosuch", "--rate", "0.3", "--out", "{tmp}/n.csv"], None),
    ("noise-mode-unknown", ["noise", *DATA[:2], "--rate", "0.3", "--mode", "weird", "--out", "{tmp}/n.csv"], None),
    ("noise-no-out", ["noise", *DATA[:2], "--rate", "0.3"], None),
    ("noise-label-255", ["noise", "--dataset", "{tmp}/mybinary.npz", "--rate", "0.3", "--out", "{tmp}/n.csv"],
     None),
    # --- pretrain (each fails before the first step) ---
    ("pretrain-method-unknown", ["pretrain", *TINY, "--method", "swav"], "unknown method 'swav'"),
    ("pretrain-backbone-unknown", ["pretrain", *TINY, "--backbone", "vgg16"], "unknown backbone"),
    ("pretrain-batch-too-large", ["pretrain", *TINY, "--batch-size", "100000"], "larger than"),
    ("pretrain-set-unknown-key", ["pretrain", *TINY, "--set", "epochz=3"], "unknown config key"),
    ("pretrain-set-not-int", ["pretrain", *TINY, "--set", "epochs=three"], "expects an integer"),
    ("pretrain-set-no-equals", ["pretrain", *TINY, "--set", "lr"], "key=value"),
    ("pretrain-set-lr-negative", ["pretrain", *TINY, "--set", "lr=-1e-3"], "lr must be positive"),
    ("pretrain-set-bad-yaml", ["pretrain", *TINY, "--set", "lr=[1"], None),
    ("pretrain-optimizer-unknown", ["pretrain", *TINY, "--set", "optimizer=rmsprop"], "unknown optimizer"),
    ("pretrain-precision-unknown", ["pretrain", *TINY, "--set", "precision=fp64"], "unknown precision"),
    ("pretrain-stem-unknown", ["pretrain", *TINY, "--stem", "weird"], None),
    ("pretrain-epochs-0", ["pretrain", *TINY, "--epochs", "0"], "at least 1"),
    ("pretrain-image-size-0", ["pretrain", *TINY, "--image-size", "0"], None),
    ("pretrain-recipe-missing", ["pretrain", *TINY, "--recipe", "{tmp}/missing.yaml"], "does not exist"),
    ("pretrain-recipe-invalid", ["pretrain", *TINY, "--recipe", "{tmp}/invalid.yaml"], "not valid YAML"),
    ("pretrain-recipe-list", ["pretrain", *TINY, "--recipe", "{tmp}/list.yaml"], "must be a mapping"),
    ("pretrain-resume-nothing", ["pretrain", *TINY, "--resume"], "nothing to resume"),
    ("pretrain-ck-under-file", ["--checkpoints", "{file}/ck", "pretrain", *TINY], "is a file"),
    ("pretrain-ck-readonly", ["--checkpoints", "{ro}/ck", "pretrain", *TINY], None),
    ("pretrain-runs-under-file", ["--runs", "{file}/runs", "pretrain", *TINY], "is a file"),
    ("pretrain-dataset-label-255", ["pretrain", *TINY, "--dataset", "{tmp}/mybinary.npz"], "0..K-1"),
    ("pretrain-dataset-unknown", ["pretrain", *TINY, "--dataset", "nosuch"], "unknown dataset"),
    # --- finetune (each fails before the first step) ---
    ("finetune-method-unknown", ["finetune", *TINY, "--method", "bogus"], "unknown robust method"),
    ("finetune-noise-1.5", ["finetune", *TINY, "--noise", "1.5"], "noise rate"),
    ("finetune-noise-type-unknown", ["finetune", *TINY, "--noise", "0.2", "--noise-type", "bogus"],
     "unknown noise type"),
    ("finetune-init-unknown", ["finetune", *TINY, "--init", "nosuchinit"], None),
    ("finetune-init-backbone", ["finetune", *TINY, "--init", "{entry}", "--backbone", "resnet34"],
     "drop --backbone"),
    ("finetune-init-stem", ["finetune", *TINY, "--init", "{entry}", "--stem", "imagenet"], "drop --stem"),
    ("finetune-init-size", ["finetune", *TINY, "--init", "{entry}", "--image-size", "28"], "16 px"),
    ("finetune-batch-too-large", ["finetune", *TINY, "--batch-size", "100000", "--subset", "8"], "larger than"),
    ("finetune-empty-train", ["finetune", "--dataset", "{tmp}/empty_train.npz", "--epochs", "1", "--quiet"],
     "training split is empty"),
    ("finetune-one-class", ["finetune", "--dataset", "{tmp}/oneclass.npz", "--epochs", "1", "--batch-size", "4",
                            "--quiet"], "at least 2"),
    ("finetune-label-255", ["finetune", "--dataset", "{tmp}/mybinary.npz", "--epochs", "1", "--quiet"], "0..K-1"),
    ("finetune-csv-mixed", ["finetune", "--dataset", "csv:{tmp}/mixed.csv", "--epochs", "1", "--quiet"],
     "mix class indices"),
    ("finetune-runs-under-file", ["--runs", "{file}/runs", "finetune", *TINY], "is a file"),
    ("finetune-runs-readonly", ["--runs", "{ro}/runs", "finetune", *TINY], None),
    ("finetune-runs-is-file", ["--runs", "{file}", "finetune", *TINY], "not a folder"),
    ("finetune-noise-file-missing", ["finetune", *TINY, "--noise-file", "{tmp}/missing.csv"], None),
    ("finetune-noise-file-and-rate", ["finetune", *TINY, "--noise-file", "{tmp}/noise.csv", "--noise", "0.2"],
     "drop --noise"),
    ("finetune-lr-0", ["finetune", *TINY, "--lr", "0"], "lr must be positive"),
    ("finetune-set-lr-text", ["finetune", *TINY, "--set", "lr=fast"], "expects a number"),
    ("finetune-set-weight-decay-negative", ["finetune", *TINY, "--set", "weight_decay=-1e-4"], None),
    ("finetune-epochs-0", ["finetune", *TINY, "--epochs", "0"], "at least 1"),
    ("finetune-subset-0", ["finetune", *TINY, "--subset", "0"], None),
    ("finetune-noise-estimate-1.5", ["finetune", *TINY, "--noise-estimate", "1.5"], "noise estimate"),
    ("finetune-noise-estimate-word", ["finetune", *TINY, "--noise-estimate", "guess"], "noise estimate"),
    ("finetune-select-metric", ["finetune", *TINY, "--select-metric", "auc"], None),
    ("finetune-asymmetric-no-map", ["finetune", *TINY, "--noise", "0.2", "--noise-type", "asymmetric"], None),
    ("finetune-image-size-0", ["finetune", *TINY, "--image-size", "0"], None),
    ("finetune-noise-seed-negative", ["finetune", *TINY, "--set", "noise_seed=-1"], "non-negative"),
    ("finetune-recipe-missing", ["finetune", *TINY, "--recipe", "{tmp}/missing.yaml"], "does not exist"),
    ("finetune-method-args-unknown", ["finetune", *TINY, "--set", "method_args.nosuch=1"], None),
    # --- knn (checked before any feature is extracted) ---
    ("knn-k-0", ["knn", "--init", "{entry}", "--k", "0"], "k must be at least 1"),
    ("knn-k-negative", ["knn", "--init", "{entry}", "--k", "-5"], "k must be"),
    ("knn-k-too-large", ["knn", "--init", "{entry}", "--k", "100000"], "more than the 384 training samples"),
    ("knn-t-0", ["knn", "--init", "{entry}", "--t", "0"], "temperature"),
    ("knn-t-negative", ["knn", "--init", "{entry}", "--t", "-1"], "temperature"),
    ("knn-t-nan", ["knn", "--init", "{entry}", "--t", "nan"], "temperature"),
    ("knn-init-unknown", ["knn", "--init", "nosuchinit"], None),
    ("knn-dataset-unknown", ["knn", "--init", "{entry}", "--dataset", "nosuch"], "unknown dataset"),
    # --- registry ---
    ("registry-show-unknown", ["registry", "show", "nosuchentry"], None),
    ("registry-export-under-file", ["registry", "export", "{entry}", "--out", "{file}/x.pt"], "is a file"),
    ("registry-export-readonly", ["registry", "export", "{entry}", "--out", "{ro}/x.pt"], None),
    ("registry-export-unknown", ["registry", "export", "nosuchentry", "--out", "{tmp}/x.pt"], None),
    ("registry-rm-unknown", ["registry", "rm", "nosuchentry", "--yes"], None),
    ("registry-rm-no-yes", ["registry", "rm", "{entry}"], "without --yes"),
    ("registry-verify-unknown", ["registry", "verify", "nosuchentry"], None),
    ("registry-verify-diverged", ["--checkpoints", "{bad_ck}", "registry", "verify"], "failed verification"),
    ("finetune-init-diverged", ["--checkpoints", "{bad_ck}", "finetune", *TINY, "--init", "simclr"],
     "diverged weights"),
    # --- detect / detections ---
    ("detect-detector-unknown", ["detect", "--detector", "bogus", *DATA, "--noise", "0.2"], None),
    ("detect-runs-under-file", ["--runs", "{file}/r", "detect", "--init", "random", *DATA, "--noise", "0.2"],
     "is a file"),
    ("detect-loss-no-run", ["detect", "--detector", "loss"], None),
    ("detect-run-missing", ["detect", "--detector", "loss", "--run", "{tmp}/nowhere"], None),
    ("detect-k-0", ["detect", "--k", "0", *DATA, "--noise", "0.2"], None),
    ("detect-t-0", ["detect", "--t", "0", *DATA, "--noise", "0.2"], None),
    ("detect-folds-1", ["detect", "--detector", "cleanlab", "--folds", "1", *DATA, "--noise", "0.2"], None),
    ("detect-init-unknown", ["detect", "--init", "nosuchinit", *DATA, "--noise", "0.2"], None),
    ("detect-noise-1.5", ["detect", "--init", "random", *DATA, "--noise", "1.5"], None),
    ("detections-missing", ["detections", "{tmp}/nowhere"], None),
    ("detections-empty", ["detections", "{tmp}/empty"], None),
    ("detections-out-under-file", ["detections", "{runs}", "--out", "{file}/d.csv"], "is a file"),
    ("detections-out-readonly", ["detections", "{runs}", "--out", "{ro}/d.csv"], None),
    # --- plot / report / demo ---
    ("plot-missing", ["plot", "{tmp}/missing.csv", "--out", "{tmp}/p.png"], None),
    ("plot-out-under-file", ["plot", "{tmp}/bogus.csv", "--out", "{file}/p.png"], "is a file"),
    ("plot-out-readonly", ["plot", "{tmp}/bogus.csv", "--out", "{ro}/p.png"], None),
    ("plot-not-results", ["plot", "{tmp}/bogus.csv", "--out", "{tmp}/p.png"], None),
    ("plot-metric-unknown", ["plot", "{tmp}/bogus.csv", "--out", "{tmp}/p.png", "--metric", "nosuch"], None),
    ("report-missing", ["report", "{tmp}/missing.csv", "--out", "{tmp}/r.md"], None),
    ("report-out-under-file", ["report", "{tmp}/bogus.csv", "--out", "{file}/r.md"], "is a file"),
    ("report-not-results", ["report", "{tmp}/bogus.csv", "--out", "{tmp}/r.md"], None),
    ("demo-out-is-file", ["demo", "--out", "{file}"], None),
    ("demo-out-under-file", ["demo", "--out", "{file}/demo"], "is a file"),
    ("demo-out-readonly", ["demo", "--out", "{ro}/demo"], None),
    ("demo-jobs-0", ["demo", "--jobs", "0"], None),
    # --- sweep (every name checked at expansion) ---
    ("sweep-missing", ["sweep", "{tmp}/missing.yaml"], "sweep spec"),
    ("sweep-name-escape", ["sweep", "{tmp}/escape.yaml"], "plain name"),
    ("sweep-name-absolute", ["sweep", "{tmp}/absolute.yaml"], "plain name"),
    ("sweep-name-hidden", ["sweep", "{tmp}/hidden.yaml"], "plain name"),
    ("sweep-method-unknown", ["sweep", "{tmp}/badmethod.yaml"], "unknown robust method"),
    ("sweep-noise-type-unknown", ["sweep", "{tmp}/badnoise.yaml"], "unknown noise type"),
    ("sweep-backbone-unknown", ["sweep", "{tmp}/badbackbone.yaml"], "unknown backbone"),
    ("sweep-init-unknown", ["sweep", "{tmp}/badinit.yaml"], "not in the registry"),
    ("sweep-rate-out-of-range", ["sweep", "{tmp}/badrate.yaml"], "noise rate"),
    ("sweep-key-unknown", ["sweep", "{tmp}/badkey.yaml"], "unknown key"),
    ("sweep-grid-empty", ["sweep", "{tmp}/emptygrid.yaml"], "empty grid"),
    ("sweep-grid-not-list", ["sweep", "{tmp}/notlist.yaml"], "must be a list"),
    ("sweep-spec-list", ["sweep", "{tmp}/list.yaml"], "must be a mapping"),
    ("sweep-spec-invalid", ["sweep", "{tmp}/invalid.yaml"], "not valid YAML"),
    ("sweep-set-lr-text", ["sweep", "{tmp}/ok.yaml", "--set", "lr=fast"], "expects a number"),
    ("sweep-set-grid-key", ["sweep", "{tmp}/ok.yaml", "--set", "seed=3"], "grid key"),
    ("sweep-shard-bad", ["sweep", "{tmp}/ok.yaml", "--shard", "5/2"], "--shard"),
    ("sweep-shard-bad-with-set", ["sweep", "{tmp}/ok.yaml", "--set", "epochs=2", "--shard", "1/x"], "--shard"),
    ("sweep-runs-under-file", ["--runs", "{file}/r", "sweep", "{tmp}/ok.yaml"], "is a file"),
    ("sweep-runs-readonly", ["--runs", "{ro}/r", "sweep", "{tmp}/ok.yaml"], None),
    ("sweep-jobs-0", ["sweep", "{tmp}/ok.yaml", "--jobs", "0"], None),
    # --- refine ---
    ("refine-run-name-escape", ["refine", "run", "{runs}", "--name", "../../escape"], "plain name"),
    ("refine-run-name-absolute", ["refine", "run", "{runs}", "--name", "/tmp/escape"], "plain name"),
    ("refine-run-name-hidden", ["refine", "run", "{runs}", "--name", ".hidden"], "plain name"),
    ("refine-run-name-backslash", ["refine", "run", "{runs}", "--name", "a\\b"], "plain name"),
    ("refine-run-missing", ["refine", "run", "{tmp}/nowhere"], None),
    ("refine-run-not-a-run", ["refine", "run", "{tmp}/empty"], None),
    ("refine-export-name-escape", ["refine", "export", "{runs}", "--name", "../x", "--out", "{tmp}/review"],
     "plain name"),
    ("refine-export-missing", ["refine", "export", "{tmp}/nowhere", "--out", "{tmp}/review"], None),
    ("refine-import-missing", ["refine", "import", "{tmp}/nowhere", "{tmp}/missing.csv"], None),
    ("refine-plot-missing", ["refine", "plot", "{tmp}/nowhere", "--out", "{tmp}/b.png"], None),
    ("refine-plot-out-under-file", ["refine", "plot", "{tmp}/nowhere", "--out", "{file}/b.png"], "is a file"),
]


def _npz(path: Path, data, **replace) -> None:
    arrays = {f"{s}_images": getattr(data, s).images[..., 0] for s in ("train", "val", "test")}
    arrays.update({f"{s}_labels": getattr(data, s).labels[:, None] for s in ("train", "val", "test")})
    arrays.update(replace)
    np.savez(path, **arrays)


def _diverged_registry(root: Path, make_entry) -> None:
    """A registry whose only entry's weights hold NaN, with a matching sha256 (what a diverged run would save)."""
    import safetensors.torch

    from ssl_noise.io import file_digest

    entry = root / make_entry(root, seed=7)
    weights = entry / "encoder.safetensors"
    state = safetensors.torch.load_file(str(weights))
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    safetensors.torch.save_file(state, str(weights), metadata={"format": "pt"})
    meta = json.loads((entry / "meta.json").read_text())
    meta["sha256"] = file_digest(weights)
    (entry / "meta.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, make_entry) -> dict:
    """Registry, runs folder and broken inputs shared by every case (none of them may change the first two)."""
    tmp = tmp_path_factory.mktemp("bad_inputs")
    ck, runs = tmp / "ck", tmp / "runs"
    runs.mkdir()
    (runs / "results.csv").write_text("run_id\n")
    entry = make_entry(ck)
    _diverged_registry(tmp / "bad_ck", make_entry)
    afile = tmp / "afile"
    afile.write_text("a file, not a folder\n")
    ro = afile  # root ignores permissions: a path under a regular file fails for everyone
    if os.geteuid() != 0:
        ro = tmp / "readonly"
        ro.mkdir()
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    (tmp / "empty").mkdir()

    d = make_synthetic(n_train=32, n_val=8, n_test=16, num_classes=2, channels=1, size=16, seed=0)
    stray = np.r_[d.train.labels[:-1], 255][:, None]
    _npz(tmp / "mybinary.npz", d, train_labels=stray)
    _npz(tmp / "pneumoniamnist_bad.npz", d, train_labels=stray)
    _npz(tmp / "empty_train.npz", d, train_images=np.zeros((0, 16, 16), np.uint8),
         train_labels=np.zeros((0, 1), np.int64))
    _npz(tmp / "oneclass.npz", d, **{f"{s}_labels": np.zeros((len(getattr(d, s)), 1), np.int64)
                                     for s in ("train", "val", "test")})
    (tmp / "text.npz").write_text("not an archive\n")
    from PIL import Image

    (tmp / "imgs").mkdir()
    for i in range(12):
        Image.fromarray(d.train.images[i, ..., 0]).save(tmp / "imgs" / f"{i}.png")
    (tmp / "mixed.csv").write_text("path,label\n" + "".join(f"imgs/{i}.png,{'x' if i == 5 else i % 2}\n"
                                                            for i in range(12)))
    (tmp / "negative.csv").write_text("path,label\n" + "".join(f"imgs/{i}.png,{i % 2 - (i == 2)}\n"
                                                               for i in range(12)))
    (tmp / "stray.csv").write_text("path,label\n" + "".join(f"imgs/{i}.png,{255 if i == 4 else i % 2}\n"
                                                            for i in range(12)))
    (tmp / "nolabel.csv").write_text("path,klass\nimgs/0.png,0\n")
    (tmp / "noise.csv").write_text("index,clean_label,noisy_label\n0,0,1\n")
    (tmp / "bogus.csv").write_text("a,b\n1,2\n")
    (tmp / "invalid.yaml").write_text("a: [b\n")
    (tmp / "list.yaml").write_text("- a\n- b\n")

    base = {"dataset": SPEC, "image_size": 16, "epochs": 1, "batch_size": 16, "precision": "fp32"}
    specs = {
        "ok": {"base": base, "grid": {"seed": [0, 1]}},
        "escape": {"name": "../../escape", "base": base, "grid": {"seed": [0]}},
        "absolute": {"name": str(tmp / "abs"), "base": base, "grid": {"seed": [0]}},
        "hidden": {"name": ".sweep", "base": base, "grid": {"seed": [0]}},
        "badmethod": {"base": base, "grid": {"method": ["ce", "bogus"]}},
        "badnoise": {"base": {**base, "noise_rate": 0.2}, "grid": {"noise_type": ["symmetric", "bogus"]}},
        "badbackbone": {"base": {**base, "backbone": "vgg16"}, "grid": {"seed": [0]}},
        "badinit": {"base": base, "grid": {"init": ["random", "nosuchinit"]}},
        "badrate": {"base": base, "grid": {"noise_rate": [0.2, 1.5]}},
        "badkey": {"base": {**base, "epochz": 1}, "grid": {"seed": [0]}},
        "emptygrid": {"base": base, "grid": {}},
        "notlist": {"base": base, "grid": {"seed": 0}},
    }
    for name, spec in specs.items():
        (tmp / f"{name}.yaml").write_text(json.dumps(spec))  # JSON is YAML
    return {"tmp": str(tmp), "ck": str(ck), "runs": str(runs), "entry": entry, "file": str(afile), "ro": str(ro),
            "bad_ck": str(tmp / "bad_ck")}


def _snapshot(*roots: str) -> dict:
    """Every path under ``roots`` with its size and modification time (a change anywhere shows)."""
    out = {}
    for root in map(Path, roots):
        for path in [root, *sorted(root.rglob("*"))] if root.exists() else []:
            info = path.stat()
            out[str(path)] = (path.is_dir(), info.st_size, info.st_mtime_ns)
    return out


def test_at_least_a_hundred_distinct_cases() -> None:
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 100
    assert len({tuple(case[1]) for case in CASES}) == len(CASES)
    commands = {next(a for a in case[1] if not a.startswith("-") and "{" not in a and not a.startswith("synthetic"))
                for case in CASES}
    assert {"data", "demo", "detect", "detections", "finetune", "knn", "noise", "plot", "pretrain", "refine",
            "registry", "report", "sweep"} <= commands


@pytest.mark.parametrize("name, argv, message", CASES, ids=[case[0] for case in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(workspace, capsys, monkeypatch, name, argv, message):
    monkeypatch.chdir(workspace["tmp"])  # nothing may land in the working folder either (it is under tmp)
    args = ["--checkpoints", workspace["ck"], "--runs", workspace["runs"], "--device", "cpu",
            *[a.format(**workspace) for a in argv]]
    before = _snapshot(workspace["ck"], workspace["runs"], workspace["bad_ck"])
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out = capsys.readouterr()
    errors = [line for line in out.err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2, out.err
    assert len(errors) == 1, out.err
    assert "Traceback" not in out.err + out.out
    if message:
        assert message in errors[0], errors[0]
    assert _snapshot(workspace["ck"], workspace["runs"], workspace["bad_ck"]) == before


# ---- the faults behind the cases: divergence, interruption, leftovers, pickles --------------------------------------

def _run(args, capsys) -> tuple:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_finetune_stops_at_the_first_non_finite_loss_and_records_nothing(tmp_path, capsys) -> None:
    runs = tmp_path / "runs"
    code, _, err = _run(["--runs", runs, "--device", "cpu", "finetune", "--dataset",
                         "synthetic:n_train=16,n_val=8,n_test=8,size=8", "--image-size", "8", "--epochs", "3",
                         "--batch-size", "8", "--lr", "1e12", "--set", "precision=fp32", "--set", "augmentation=false",
                         "--quiet"], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "diverged" in errors[0] and "--lr" in errors[0] and "epoch" in errors[0] and "step" in errors[0]
    assert not runs.exists() or not any(runs.iterdir())  # no run folder, no temporary folder, no results row


def test_check_finite_names_epoch_and_step() -> None:
    from ssl_noise.engine import check_finite
    from ssl_noise.errors import NonFiniteLoss

    check_finite(0.5, epoch=0, step=0, what="fine-tuning")
    with pytest.raises(NonFiniteLoss, match=r"epoch 3, step 5; lower the learning rate \(--lr\)"):
        check_finite(float("inf"), epoch=2, step=4, what="pretraining")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 3e29])
def test_registry_refuses_non_finite_and_huge_weights_by_verify_s_rule(tmp_path, value) -> None:
    import torch

    from ssl_noise import registry
    from ssl_noise.backbones import build_backbone
    from ssl_noise.errors import NonFiniteLoss

    model = build_backbone("resnet18", stem="cifar", in_channels=1)[0]
    with torch.no_grad():
        model.layer1[0].conv1.weight[0, 0, 0, 0] = value
    meta = {"method": "simclr", "method_config": {}, "backbone": "resnet18", "stem": "cifar", "feat_dim": 512,
            "dataset": "synthetic", "image_size": 16, "channels": 1, "normalisation": {"mean": [0.5], "std": [0.25]},
            "epochs": 1, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1}, "seed": 0}
    # finite but far beyond any learned weight (registry.DIVERGED_ABS): refused as `registry verify` would fail it
    with pytest.raises(NonFiniteLoss, match="layer1.0.conv1.weight"):
        registry.save_entry(tmp_path, model, meta, config={})
    assert not any(tmp_path.iterdir())


def test_monitor_features_must_be_finite() -> None:
    import torch

    from ssl_noise.errors import NonFiniteLoss, SslNoiseWarning
    from ssl_noise.knn import extract_features

    class Diverged(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1) * float("nan")

    images = np.zeros((4, 8, 8, 1), np.uint8)
    with pytest.raises(NonFiniteLoss, match="4 of 4 images"):
        extract_features(Diverged(), images, mean=[0.5], std=[0.25], bf16=False, strict=True)
    with pytest.warns(SslNoiseWarning):
        assert np.isfinite(extract_features(Diverged(), images, mean=[0.5], std=[0.25], bf16=False)).all()


def test_verify_flags_diverged_weights_naming_the_entry_once(workspace, capsys) -> None:
    code, out, err = _run(["--checkpoints", workspace["bad_ck"], "registry", "verify"], capsys)
    fail = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert code == 2 and len(fail) == 1 and "diverged weights" in fail[0]
    entry = fail[0].split()[1].rstrip(":")
    assert fail[0].count(entry) == 2  # "FAIL <id>: ... registry rm <id>": the id is not repeated as a prefix
    assert not fail[0].startswith(f"FAIL {entry}: {entry}")


@pytest.mark.parametrize("saved", [True, False])
def test_ctrl_c_in_pretraining_prints_the_resume_command(tmp_path, capsys, monkeypatch, saved) -> None:
    import ssl_noise.pretrain

    def interrupted(cfg, *, runs, **kwargs):
        work = ssl_noise.pretrain.work_dir(runs, cfg)
        if saved:
            work.mkdir(parents=True)
            (work / STATE_JSON).write_bytes(b"{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(ssl_noise.pretrain, "pretrain", interrupted)
    monkeypatch.setattr("sys.argv", ["ssl-noise", "pretrain", "--epochs", "5"])
    code, _, err = _run(["--runs", tmp_path / "runs", "--checkpoints", tmp_path / "ck", "pretrain", "--dataset",
                         "synthetic", "--epochs", "5"], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 130 and len(errors) == 1
    if saved:
        assert errors[0].endswith("continue with: ssl-noise pretrain --epochs 5 --resume")
    else:
        assert "nothing to resume" in errors[0]


def test_a_diverged_pretraining_leaves_no_resume_state(tmp_path, capsys, monkeypatch) -> None:
    import ssl_noise.pretrain
    from ssl_noise.errors import NonFiniteLoss

    def diverging(cfg, *, runs, **kwargs):
        work = ssl_noise.pretrain.work_dir(runs, cfg)
        work.mkdir(parents=True)
        (work / STATE_JSON).write_bytes(b"{}")
        raise NonFiniteLoss("pretraining diverged: the loss is nan at epoch 2, step 1; lower the learning rate")

    monkeypatch.setattr(ssl_noise.pretrain, "pretrain", diverging)
    code, _, err = _run(["--runs", tmp_path / "runs", "--checkpoints", tmp_path / "ck", "pretrain", "--dataset",
                         "synthetic"], capsys)
    assert code == 2 and "diverged" in err
    assert not (tmp_path / "runs").exists()  # nor the folders made for its state


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("how", [[], ["--collect"]])
def test_a_killed_cells_temporary_folder_is_removed_by_a_restart(workspace, tmp_path, capsys, how) -> None:
    import socket

    runs = tmp_path / "runs"
    host = socket.gethostname().replace(".", "_")
    dead = runs / f".random-synthetic-cleann0-ce-s0-abc.p{_dead_pid()}@{host}.x1y2z3_a.tmp"
    live = runs / f".random-synthetic-cleann0-ce-s0-def.p{os.getpid()}@{host}.x1y2z3_b.tmp"
    for folder in (dead, live):
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("{}\n")
    spec = Path(workspace["tmp"]) / "badmethod.yaml"  # fails at expansion, after the clean-up
    _run(["--runs", runs, "--checkpoints", workspace["ck"], "sweep", spec, *how], capsys)
    assert not dead.exists() and live.exists()


def test_history_or_resume_state_holding_a_pickle_is_a_user_error(tmp_path) -> None:
    import torch

    import ssl_noise.pretrain
    from ssl_noise.config import PretrainConfig
    from ssl_noise.errors import UserError
    from ssl_noise.runs import RunFolder

    np.save(tmp_path / "history.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="history.npy"):
        RunFolder(tmp_path).array("history")
    torch.save({"model": Pickled(), "epoch": 1}, tmp_path / "state-e1.safetensors")  # a pickle, not safetensors
    (tmp_path / STATE_JSON).write_text(json.dumps({"tensors": "state-e1.safetensors", "epoch": 1, "state": {}}))
    with pytest.raises(UserError, match="cannot be read"):
        ssl_noise.pretrain._start(tmp_path, None, None, PretrainConfig(), "cpu", resume=True, rank=0)


class Pickled:
    """An object a pickle can carry and ``weights_only`` loading must refuse."""


def test_offline_imagenet_leaves_no_empty_cache_folders(tmp_path, monkeypatch) -> None:
    import urllib.error

    import torch

    from ssl_noise import backbones
    from ssl_noise.errors import UserError

    hub = tmp_path / "cache" / "torch" / "hub"

    def offline(url, **kwargs):  # what torch.hub does: create the cache folders, then fail to download
        (hub / "checkpoints").mkdir(parents=True)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match="not available offline"):
        backbones.load_imagenet_backbone("resnet18")
    assert list(tmp_path.iterdir()) == []


def test_set_reads_yaml_1_2_numbers() -> None:
    from ssl_noise.config import PretrainConfig, parse_overrides, resolve

    values = parse_overrides(["lr=1e-3", "method_args.temperature=1e-6", "epochs=7", "optimizer=adam"])
    assert values == {"lr": 1e-3, "method_args.temperature": 1e-6, "epochs": 7, "optimizer": "adam"}
    cfg = resolve(PretrainConfig, values)
    assert cfg.lr == 1e-3 and cfg.method_args == {"temperature": 1e-6}


@pytest.mark.parametrize("name", ["../../escape", "..", "a/b", "a\\b", "/abs", "", " ", ".hidden"])
def test_names_that_would_leave_their_folder_are_refused(name) -> None:
    from ssl_noise.errors import UserError
    from ssl_noise.io import check_name

    with pytest.raises(UserError, match="plain name"):
        check_name(name, "--name")


def test_check_writable_refuses_a_read_only_folder(tmp_path) -> None:
    from ssl_noise.errors import UserError
    from ssl_noise.io import check_writable

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the cases above use a path under a file instead")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(UserError, match="not writable"):
        check_writable(locked / "sub" / "out.csv", "--out")
    assert check_writable(tmp_path / "a" / "b" / "out.csv", "--out") == tmp_path / "a" / "b" / "out.csv"


def test_multi_line_messages_become_one_line() -> None:
    from ssl_noise.cli.app import one_line

    assert one_line("Error(s) in loading state_dict:\n\tMissing key(s): a.\n\tUnexpected key(s): b.\n") == \
        "Error(s) in loading state_dict: Missing key(s): a.; Unexpected key(s): b."


def test_ls_of_a_missing_registry_says_so(tmp_path, capsys) -> None:
    """A fresh machine has no registry: ls succeeds, but says the folder does not exist (not "no encoders")."""
    code, out, err = _run(["--checkpoints", tmp_path / "nowhere", "registry", "ls"], capsys)
    assert code == 0 and out == "" and "nowhere does not exist" in err and "pretrain" in err
