"""The advise workflow: look, estimate, rank, choose the test labels, plan and run the pilot, score, write."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from ssl_noise import detect, estimate, io, registry, sweep
from ssl_noise.advise import plan as planning
from ssl_noise.advise.look import Look, given_labels, look
from ssl_noise.advise.score import (Scored, TestLabels, check_invertible, paired, recommend, sample_size,
                                    score, stratified_sample)
from ssl_noise.config import PretrainConfig, load_recipe, resolve
from ssl_noise.data import ImageDataset, load_dataset
from ssl_noise.demo import PRETRAIN_RECIPE, data_overrides, existing_entry, stage_fields
from ssl_noise.engine import STATE_JSON
from ssl_noise.errors import UserError
from ssl_noise.io import read_csv_strict
from ssl_noise.knn import knn_scores
from ssl_noise.pretrain import pretrain, work_dir
from ssl_noise.refine.answers import parse_label
from ssl_noise.refine.review import UNSURE, page, shown_path
from ssl_noise.runs import RunFolder

FINETUNE_RECIPE = "finetune/bloodmnist/default.yaml"
PLAN_FILE = "plan.json"
TOP_FILES = 50            # suspicious training files on the review page
HALF_WIDTH = 0.05         # the relabelled test sample's target: accuracy within ± 5 points (90 %)


@dataclass
class Advice:
    out: Path
    page: Path                                 # advice.md
    estimate: estimate.Estimate
    look: Look
    suspicious: pd.DataFrame                   # every training file, most suspicious first
    test: TestLabels
    plan: planning.Plan
    scored: Optional[Scored]
    recommended: Optional[str]
    separable: bool                            # False: the pilot cannot tell the recommendation from others
    finished: bool                             # every pilot cell ran (False: the budget ran out; rerun continues)
    wall_time_s: float
    summary: str


# ============ estimate and rank ============

def confused_pairs(T: np.ndarray, labels: np.ndarray, names: Sequence[str], top: int = 3) -> List[Dict[str, Any]]:
    """The class pairs with the most wrong labels expected: N p̃_i T̂_ij from clean class i to given label j."""
    K, N = len(T), len(labels)
    shares = np.bincount(labels, minlength=K) / N
    expected = N * shares[:, None] * T * (1 - np.eye(K))
    order = np.argsort(-expected, axis=None)[:top]
    return [{"clean": names[i], "given": names[j], "T": float(T[i, j]), "expected_wrong": int(round(expected[i, j]))}
            for i, j in (np.unravel_index(o, (K, K)) for o in order) if expected[i, j] >= 0.5]


def rank_files(data: ImageDataset, features: np.ndarray, rate: float, *, seed: int) -> tuple:
    """Every training file scored by the k-NN and the cleanlab detector (same features), most suspicious first by
    their mean percentile rank; and the two detectors' agreement (overlap of their top ``rate`` shares)."""
    given, K = given_labels(data.train), data.num_classes
    source = detect.Source("advise", given, given, np.arange(len(given)), K, None, {}, features=features,
                           class_names=list(data.class_names), paths=data.train.paths, ground_truth=False)
    knn, votes = knn_scores(features, given, K, k=detect.DetectOptions.k, t=detect.DetectOptions.t)
    clab = detect.DETECTORS.get_or_fail("cleanlab")(source, detect.DetectOptions(seed=seed, noise_estimate=rate))
    pct = [pd.Series(s).rank(pct=True).to_numpy() for s in (knn, clab.scores)]
    combined = (pct[0] + pct[1]) / 2
    names = np.asarray(data.class_names, dtype=object)
    frame = pd.DataFrame({"index": np.arange(len(given))})
    if data.train.paths is not None:
        frame["path"] = [shown_path(path, data.source) for path in data.train.paths]
    frame = frame.assign(given_label=names[given], suggested_label=names[votes.argmax(1)],
                         p_suggested=np.round(votes.max(1), 4), knn_score=np.round(knn, 4),
                         cleanlab_score=np.round(clab.scores, 4), score=np.round(combined, 4))
    order = np.argsort(-combined, kind="stable")
    frame = frame.iloc[order].reset_index(drop=True)
    frame.insert(len(frame.columns), "rank", np.arange(1, len(frame) + 1))
    n_top = max(1, int(round(rate * len(given))))
    tops = [set(np.argsort(-p, kind="stable")[:n_top]) for p in pct]
    agreement = len(tops[0] & tops[1]) / max(1, len(tops[0] | tops[1]))
    return frame, {"top_share": round(rate, 4), "n_top": n_top, "jaccard": round(agreement, 3)}


def write_review_page(folder: Path, title: str, how: str, data: ImageDataset, split: str, rows: np.ndarray,
                      frame: pd.DataFrame) -> Path:
    """A review page for ``rows`` of ``split`` (``frame``: one row each, the columns of :func:`page`), kept as it
    is when one exists (an expert may be answering it)."""
    out = folder / "review.html"
    if out.exists():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    images = [data.splits[split].images[r] for r in rows]
    with io.atomic_path(out) as tmp:
        tmp.write_text(page(title, how, list(data.class_names), frame, images,
                            storage=f"ssl-noise/advise/{folder.resolve()}"), encoding="utf-8")
    frame.to_csv(folder / "to_review.csv", index=False)
    return out


# ============ the test labels ============

def read_test_answers(path: Path, data: ImageDataset) -> TestLabels:
    """An expert's labels for test images (``index,label``: index = position in the test split, label = class name
    or index; blank or ``unsure`` skipped)."""
    frame = read_csv_strict(path, what="answer file", columns=("index", "label"))
    names, n = list(data.class_names), len(data.test)
    rows, labels = [], []
    for line, (raw_index, raw_label) in enumerate(zip(frame["index"].str.strip(), frame["label"].str.strip()), 2):
        if not raw_index.isdigit() or int(raw_index) >= n:
            raise UserError(f"{path} line {line}: index {raw_index!r} is not a test image (0..{n - 1})")
        if raw_label == "" or raw_label.lower() == UNSURE:
            continue
        label = parse_label(raw_label, names, len(names), f"{path} line {line}", int(raw_index))
        if int(raw_index) in rows:
            raise UserError(f"{path} line {line}: index {raw_index} is answered twice")
        rows.append(int(raw_index))
        labels.append(label)
    if len(rows) < 2 * len(names):
        raise UserError(f"{path} answers {len(rows)} test images; score a pilot on at least {2 * len(names)}")
    given = given_labels(data.test)
    agree = float(np.mean(given[rows] == np.array(labels)))
    return TestLabels("answers", np.array(rows), np.array(labels), given,
                      note=f"{len(rows)} test images relabelled by an expert ({path}); their given labels agree "
                           f"with the expert on {agree:.1%}")


def test_labels(data: ImageDataset, found: estimate.Estimate, answers: Optional[Path], *, half_width: float,
                seed: int) -> TestLabels:
    """Clean labels if the data has them, else the expert's answers, else T̂-corrected estimates (with the
    stratified test sample an expert should relabel for ± ``half_width``)."""
    if data.test.given is not None:
        return TestLabels("clean", np.arange(len(data.test)), data.test.labels, data.test.given,
                          note="the data's clean_label column")
    if answers is not None:
        return read_test_answers(Path(answers), data)
    check_invertible(found.T)
    given = given_labels(data.test)
    rows = stratified_sample(given, sample_size(half_width, population=len(data.test)), seed)
    return TestLabels("corrected", np.arange(len(data.test)), None, given, found.T,
                      note=f"no clean test labels: accuracies corrected with the estimated T̂ (estimates); "
                           f"{len(rows)} relabelled test images would give ± {half_width:.2f} (90 %)", sample=rows)


def write_test_page(out: Path, data: ImageDataset, rows: np.ndarray) -> Path:
    """The review page of the test sample (given labels hidden: the expert labels from the image alone)."""
    frame = pd.DataFrame({"index": rows, "current_name": "", "predicted_name": "", "p_predicted": 0.0})
    if data.test.paths is not None:
        frame.insert(1, "path", [shown_path(data.test.paths[r], data.source) for r in rows])
    return write_review_page(out / "test_review", "advise: test sample",
                             f"These {len(rows)} test images were drawn stratified by their given label; label "
                             f"each as you would for a paper (the given label is hidden on purpose). Save "
                             f"<code>answers.csv</code> into this page's folder, then run the same <code>ssl-noise "
                             f"advise</code> command with <code>--test-answers "
                             f"{out / 'test_review' / 'answers.csv'}</code>: the pilot is not trained again, only "
                             f"scored.", data, "test", rows, frame)


# ============ the pilot ============

def _entry(data: ImageDataset, spec: str, pretrain_epochs: int, *, checkpoints: Path, out: Path,
           data_root: Optional[str], device: str, show_progress: bool, log: sweep.Log) -> str:
    """A SimCLR pretraining on the data into ``checkpoints`` (reused, or resumed, when run before)."""
    own = data_overrides(spec, data_root=data_root, log=lambda m: None)
    pre = load_recipe(sweep.find_file(PRETRAIN_RECIPE))
    cfg = resolve(PretrainConfig, {**pre, **stage_fields(own, pre["batch_size"]), "epochs": pretrain_epochs,
                                   "subset": None})
    found = existing_entry(checkpoints, cfg)
    if found:
        log(f"advise: reusing the SimCLR encoder {found}")
        return found
    state = work_dir(out / "runs", cfg) / STATE_JSON
    log(f"advise: SimCLR pretraining, {cfg.epochs} epochs on {len(data.train)} images"
        + (" (resumed)" if state.is_file() else ""))
    return pretrain(cfg, data_root=data_root, checkpoints=checkpoints, runs=out / "runs", device=device,
                    resume=state.is_file(), command=["ssl-noise", "advise"], show_progress=show_progress)


def pilot_cells(spec: str, data: ImageDataset, entry: str, the_plan: planning.Plan, *, checkpoints: Path,
                stem: str) -> List[sweep.Cell]:
    """The paired grid: seed-major (a budget that runs out leaves whole seeds), then init, then method; real labels
    (nothing injected), the rate told to methods estimated (``auto``), each method under its authors' recipe."""
    n_train = the_plan.subset or len(data.train)
    base = {"recipe": FINETUNE_RECIPE, "dataset": spec, "image_size": data.image_size, "stem": stem,
            "subset": the_plan.subset, "epochs": the_plan.epochs, "noise_rate": 0.0, "noise_estimate": "auto",
            "protocol": "paper", "test_eval": "reported",
            **({"batch_size": n_train} if n_train < 128 else {})}
    grid = {"seed": the_plan.seeds, "init": ["random", entry], "method": [m.method for m in the_plan.methods]}
    spec_ = sweep.SweepSpec("advise", Path("advise.yaml"), base, grid, "ssl-noise advise pilot")
    return sweep.expand(spec_, checkpoints=checkpoints, log=lambda m: None)


def run_pilot(cells: List[sweep.Cell], the_plan: planning.Plan, *, deadline: float, runs: Path, checkpoints: Path,
              data_root: Optional[str], device: str, jobs: int, show_progress: bool, log: sweep.Log) -> bool:
    """Run the grid seed by seed; a seed whose expected time no longer fits before ``deadline`` is left for a rerun
    (finished cells are kept). True when every cell has finished."""
    per_seed = the_plan.expected_s["pilot"] / len(the_plan.seeds)
    for seed in the_plan.seeds:
        mine = [c for c in cells if c.config.seed == seed]
        left = [c for c in mine if not sweep.done_record(runs, c.cell_id)]
        if left and seed > the_plan.seeds[0] and time.time() + 0.8 * per_seed * len(left) / len(mine) > deadline:
            log(f"advise: the time budget does not fit seed {seed}'s {len(left)} runs; stopping (run the same "
                f"command again to finish them)")
            return False
        if left:
            log(f"advise: pilot seed {seed}: {len(left)} of {len(mine)} runs to train")
        result = sweep.run_sweep(mine, runs=runs, checkpoints=checkpoints, data_root=data_root, device=device,
                                 jobs=jobs, command=["ssl-noise", "advise"], show_progress=show_progress and jobs == 1,
                                 log=log)
        if result.failed:
            raise UserError(f"advise: {len(result.failed)} pilot run(s) failed; errors in {runs / '.failed'}")
    return True


#: How the page names an entry's SSL method (others: the method name as the registry records it).
SSL_NAMES = {"simclr": "SimCLR", "moco": "MoCo", "byol": "BYOL", "simsiam": "SimSiam", "barlowtwins": "Barlow Twins",
             "vicreg": "VICReg", "dino": "DINO", "rotation": "Rotation", "jigsaw": "Jigsaw"}


def ssl_name(checkpoints: Path, entry: str) -> str:
    """The SSL method of a registry entry, as the page names it (``SimCLR``)."""
    method = json.loads((checkpoints / entry / "meta.json").read_text()).get("method", "SSL")
    return SSL_NAMES.get(method, method)


def candidate(init: str, method: str, ssl: str = "SimCLR") -> str:
    return f"{'random' if init == 'random' else ssl} init + {method}"


def pilot_predictions(cells: List[sweep.Cell], runs: Path, ssl: str) -> Dict[str, List[np.ndarray]]:
    """Each candidate's test predictions (at its validation-selected epoch), one array per finished seed, in grid
    order; only seeds finished for every candidate, so every comparison is paired."""
    found: Dict[str, Dict[int, np.ndarray]] = {}
    for c in cells:
        record = sweep.done_record(runs, c.cell_id)
        if record:
            probs = RunFolder(runs / record["run_id"]).array("test_probs")
            found.setdefault(candidate(c.config.init, c.config.method, ssl), {})[c.config.seed] = probs.argmax(1)
    names = list(dict.fromkeys(candidate(c.config.init, c.config.method, ssl) for c in cells))
    seeds = sorted(set.intersection(*(set(found.get(n, {})) for n in names))) if names else []
    return {n: [found[n][s] for s in seeds] for n in names} if seeds else {}


def init_effect(preds: Dict[str, List[np.ndarray]], test: TestLabels, seed: int, ssl: str) -> List[Dict[str, Any]]:
    """SSL init − random init for each method (paired: same method, seeds and test resamples)."""
    rows = []
    for method in dict.fromkeys(n.split(" + ")[1] for n in preds):
        pre, rnd = candidate(ssl, method, ssl), candidate("random", method)
        if pre in preds and rnd in preds:
            rows.append({"method": method, **paired(preds[pre], preds[rnd], test, seed=seed)})
    return rows


# ============ the workflow ============

def _saved_plan(out: Path, key: Dict[str, Any]) -> Optional[planning.Plan]:
    """The plan of an earlier advise run with the same settings (so a rerun continues its grid, not a new one)."""
    path = out / PLAN_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    if saved["key"] != key:
        raise UserError(f"{out} holds an advise run with other settings ({path}); pass another --out")
    p = saved["plan"]
    return planning.Plan([planning.Choice(**m) for m in p["methods"]], p["seeds"], p["epochs"], p["subset"],
                         p["pretrain_epochs"], p["seconds_per_image"], p["expected_s"], p["notes"])


def run_advise(dataset: str, out: str | Path = "advice", *, time_budget_s: float = 7200.0,
               data_root: Optional[str] = None, checkpoints: str | Path = "checkpoints", device: str = "cpu",
               jobs: int = 1, encoder: Optional[str] = None, methods: Sequence[str] = (), seeds: int = 2,
               epochs: Optional[int] = None, pretrain_epochs: Optional[int] = None, subset: Optional[int] = None,
               test_answers: Optional[str | Path] = None, image_size: Optional[int] = None, seed: int = 0,
               show_progress: bool = True, log: sweep.Log = sweep.log_stderr) -> Advice:
    """Look, estimate, rank, pick the test labels, plan and run the pilot within ``time_budget_s``, score it and
    write ``out/advice.md``. A rerun with the same settings continues (the pilot is a sweep; ``plan.json`` fixes
    its grid) and rescoring with ``test_answers`` trains nothing."""
    from ssl_noise.advise.write import write_advice

    start = time.time()
    deadline = start + time_budget_s
    out = Path(out)
    if seeds < 2:
        raise UserError("advise pairs at least 2 seeds (--seeds 2 or more)")
    asked = planning.given_methods(methods) if methods else None      # checked before anything is loaded
    data = load_dataset(dataset, data_root=data_root, size=image_size)
    if data.multilabel or data.num_classes < 2:
        raise UserError(f"{data.name}: advise needs one class per image and at least two classes")
    key = {"dataset": dataset, "image_size": data.image_size, "time_budget_s": time_budget_s, "methods": list(methods),
           "seeds": seeds, "epochs": epochs, "pretrain_epochs": pretrain_epochs, "subset": subset, "encoder": encoder,
           "seed": seed}
    the_plan = _saved_plan(out, key)          # a rerun with other settings is refused before any work

    # ---- look ----
    seen = look(data, seed=seed)
    log(f"advise: {data.name}: {' / '.join(f'{k} {v}' for k, v in seen.sizes.items())} images, {data.num_classes} "
        f"classes, {data.image_size} px; {seen.n_exact} exact and {seen.n_near} near duplicate pair(s), "
        f"{seen.problems()['cross_split']} across splits, {seen.problems()['label_conflict']} with two labels")

    # ---- estimate, rank, the test labels ----
    given = given_labels(data.train)
    features = estimate.pixel_features(data.train.images, seed=seed)
    found = estimate.estimate(features, given, data.num_classes, seed=seed)
    log(f"advise: estimated noise rate {found.describe()}")
    suspicious, agreement = rank_files(data, features, found.rate, seed=seed)
    test = test_labels(data, found, None if test_answers is None else Path(test_answers), half_width=HALF_WIDTH,
                       seed=seed)
    log(f"advise: test labels: {test.note}")

    # ---- plan (a budget too short is refused here, before anything is written) ----
    stem = "cifar" if data.image_size < 28 else "imagenet"
    if the_plan is None:
        chosen = asked or planning.choose_methods(found.rate, found.lo, found.hi, found.T, given)
        c = planning.seconds_per_image(data.image_size, data.channels, stem, device=device)
        the_plan = planning.plan(deadline - time.time(), methods=chosen, n_train=len(data.train),
                                 n_val=len(data.val), c=c, seeds=seeds, pretrain=encoder is None, epochs=epochs,
                                 pretrain_epochs=pretrain_epochs, subset=subset)
        out.mkdir(parents=True, exist_ok=True)
        with io.atomic_path(out / PLAN_FILE) as tmp:
            tmp.write_text(json.dumps({"key": key, "plan": dataclasses.asdict(the_plan)}, indent=2))
    log(f"advise: pilot plan: {the_plan.describe()}")

    # ---- the files to check, the test sample to relabel ----
    with io.atomic_path(out / "suspicious.csv") as tmp:
        suspicious.to_csv(tmp, index=False)
    top = suspicious.head(TOP_FILES)
    write_review_page(out / "review", "advise: most suspicious training labels",
                      f"The {len(top)} training files whose labels the k-NN and cleanlab detectors find least "
                      f"consistent with their neighbours, most suspicious first. <code>answers.csv</code> lists your "
                      f"corrections (index = the training position in <code>suspicious.csv</code>): fix them where "
                      f"your labels live.", data, "train", top["index"].to_numpy(),
                      top.rename(columns={"given_label": "current_name", "suggested_label": "predicted_name",
                                          "p_suggested": "p_predicted"}))
    if test.sample is not None:
        write_test_page(out, data, test.sample)

    # ---- pilot ----
    runs = out / "runs"
    if encoder is None:
        ckpt = out / "checkpoints"
        entry = _entry(data, dataset, the_plan.pretrain_epochs, checkpoints=ckpt, out=out, data_root=data_root,
                       device=device, show_progress=show_progress, log=log)
    else:
        ckpt = Path(checkpoints)
        entry = registry.resolve(ckpt, encoder, dataset=data.name, channels=data.channels, spec=dataset)
        stem = json.loads((ckpt / entry / "meta.json").read_text())["stem"]
    cells = pilot_cells(dataset, data, entry, the_plan, checkpoints=ckpt, stem=stem)
    finished = run_pilot(cells, the_plan, deadline=deadline, runs=runs, checkpoints=ckpt, data_root=data_root,
                         device=device, jobs=jobs, show_progress=show_progress, log=log)

    # ---- score and recommend ----
    ssl = ssl_name(ckpt, entry)
    preds = pilot_predictions(cells, runs, ssl)
    scored = score(preds, test, seed=seed) if preds else None
    recommended, separable = recommend(scored) if scored else (None, False)
    effects = init_effect(preds, test, seed, ssl) if preds else []
    advice = Advice(out, out / "advice.md", found, seen, suspicious, test, the_plan, scored, recommended, separable,
                    finished, time.time() - start, "")
    advice.summary = write_advice(advice, data, agreement=agreement, effects=effects, entry=entry, ssl=ssl,
                                  pairs=confused_pairs(found.T, given, data.class_names))
    return advice
