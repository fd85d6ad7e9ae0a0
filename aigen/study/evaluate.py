"""`aigen evaluate --run RUN --data ROOT`: every model (every seed) of a finished study run, scored
on another labelled folder, with threshold-aware, per-source and calibration metrics.

The same code serves `aigen study --eval-data NAME=ROOT` (the driver passes its in-memory models):
`load_eval_dataset` finds and decodes the images exactly as the study does, with the run's own
preprocessing (`run_preprocessing`), `evaluate_dataset` scores them and computes every metric, and
`write_evaluation` writes predictions.csv, skipped.csv, duplicates.csv and the figures.
See docs/evaluation.md for the contract of evaluation.json.
"""

from __future__ import annotations

import argparse
import collections
import csv
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from aigen.data.preprocess import INPUT_RESIZE
from aigen.errors import UserError

EVAL_CHUNK = 64  # images decoded and scored together (bounds the float32 inputs held at once)
METRIC_KEYS = ("accuracy", "balanced_accuracy", "accuracy_real", "accuracy_ai", "roc_auc",
               "average_precision", "ece")
CI_TEXT = (
    "Each figure is the mean over seeds (std: sample standard deviation over seeds). 95% CI: "
    "percentile interval of that mean over 1000 bootstrap resamples of the evaluated images "
    "(numpy seed 0; the same resample for every seed), so it reflects how many images were "
    "evaluated; the spread over seeds is the std.")


# ----------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `aigen evaluate` (see docs/evaluation.md)."""
    from aigen.argtypes import positive_int

    parser.description = (
        "Score every model (every seed) of a finished `aigen study` run on another labelled "
        "image folder and write a new results folder: evaluation.json, predictions.csv, "
        "skipped.csv, figures and report.md. See docs/evaluation.md.")
    parser.add_argument("--run", required=True, metavar="RUN",
                        help="a results folder written by `aigen study` (only read)")
    parser.add_argument("--data", required=True, metavar="ROOT",
                        help="labelled folder: one folder per class (e.g. ai/ and real/), "
                             "optionally one subfolder per source below each (only read)")
    parser.add_argument("--classes", nargs="+", metavar="LABEL=FOLDER", default=None,
                        help="name the class folders explicitly, e.g. --classes ai=fake "
                             "real=photos (one class alone is allowed)")
    parser.add_argument("--models", nargs="+", metavar="NAME", default=None,
                        help="models of the run to evaluate (default: all)")
    parser.add_argument("--protocol", default=None, metavar="KEY",
                        help="which input protocol's models, for a run with several (e.g. "
                             "jpeg:96/none; see docs/study.md; default: the run's first)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="results folder to create (default: results/<timestamp>-eval-NAME)")
    parser.add_argument("--name", metavar="NAME", default=None,
                        help="name of the evaluation set (default: the data folder's name)")
    parser.add_argument("--weights", action="append", metavar="NAME=PATH", default=None,
                        help="a backbone's weights file, if it moved since the run: NAME=PATH "
                             "(NAME: the backbone, or ARCH of torchvision:ARCH), or a bare PATH "
                             "for resnet18; repeat for several (default: the --weights the run "
                             "recorded)")
    parser.add_argument("--device", default="cpu", metavar="auto|cpu|cuda",
                        help="torch device for backbones (default: cpu)")
    parser.add_argument("--workers", type=positive_int, default=None, metavar="N",
                        help="processes for decoding (default: all cores)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars on stderr")


def parse_eval_data(items: Sequence[str]) -> dict[str, Path]:
    """`--eval-data NAME=ROOT ...` (or a bare ROOT, named after its folder) -> {NAME: ROOT}."""
    from aigen.data.sets import parse_sets

    return parse_sets(items, "--eval-data")


def run(args: argparse.Namespace) -> int:
    """Evaluate a run on a labelled folder; returns 0. Bad input is a UserError before any work."""
    from aigen.data.discover import check_root, parse_class_args
    from aigen.data.sets import safe_name, set_name
    from aigen.device import resolve_device
    from aigen.io import atomic_folder, check_new_folder, new_results_folder, refuse_inside
    from aigen.study.predict import load_models, read_run

    from aigen.study.protocols import protocol_view, resolve_names

    run_dir = Path(args.run).expanduser().resolve()
    results, config = read_run(run_dir)
    # One protocol's models (under their run names), its harmonisation and input policy.
    protocol, harmonize, input_policy, results = protocol_view(results,
                                                               getattr(args, "protocol", None))
    seeds = check_run(run_dir, results)
    data_root = check_root(args.data).resolve()
    name = set_name(args.name) if args.name else safe_name(data_root.name)
    out = (check_new_folder(args.out) if args.out
           else new_results_folder(suffix=f"-eval-{name}"))
    refuse_inside(out, data_root)
    if out.resolve().is_relative_to(run_dir):
        raise UserError(f"--out {out} is inside the run folder {run_dir}; choose another "
                        "(evaluation never writes into a run)")
    names = _chosen_models(run_dir, results, resolve_names(args.models, results["models"]))
    class_map = parse_class_args(args.classes) if args.classes else None
    val = run_val_predictions(run_dir, names, seeds)
    training = run_training_sha256(run_dir, results)
    preprocessing = run_preprocessing(config, harmonize, input_policy)
    regimes = {n: results["models"][n]["regime"] for n in names}
    device = resolve_device(args.device)
    backbones: dict[str, Any] = {}  # loaded first: a damaged checkpoint fails before decoding
    models = {seed: load_models(run_dir, results, config, names, seed, args.weights, device,
                                backbones) for seed in seeds}
    dataset = load_eval_dataset(data_root, class_map, preprocessing, regimes, args.workers,
                                args.progress)
    with atomic_folder(out) as work:
        evaluation, predictions, duplicates = evaluate_dataset(
            dataset, make_scorer(models, regimes), regimes, seeds, val, training,
            progress=args.progress, harmonize=harmonize, input_policy=input_policy)
        evaluation = {"command": "aigen evaluate", "name": name, "run": str(run_dir),
                      "protocol": protocol, **evaluation, "preprocessing": preprocessing}
        figures = write_evaluation(work, "", name, dataset, evaluation, predictions, duplicates)
        from aigen import io
        from aigen.study.report import build_evaluation_report

        io.write_json(work / "evaluation.json", evaluation)
        io.write_text(work / "report.md", build_evaluation_report(evaluation, figures))
    print(format_evaluation(evaluation))
    print(f"report: {out / 'report.md'}")
    return 0


# ----------------------------------------------------------------------------------------------
# What a finished run provides: its models, its preprocessing, its validation scores, its data


def check_run(run_dir: Path, results: Mapping[str, Any]) -> list[int]:
    """The run's seeds, once its results.json has been checked for what evaluation needs."""
    seeds = results.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise UserError(f"--run {run_dir}: results.json has no list of seeds (damaged, or written "
                        "by another version of aigen)")
    for name, model in results["models"].items():
        missing = [s for s in seeds if str(s) not in model["checkpoints"]]
        if missing:
            raise UserError(f"--run {run_dir}: model {name} has no checkpoint for seed(s) "
                            f"{', '.join(map(str, missing))} (damaged run folder)")
    return seeds


def _chosen_models(run_dir: Path, results: Mapping[str, Any], names: list[str] | None
                   ) -> list[str]:
    available = list(results["models"])
    if not available:
        raise UserError(f"the run {run_dir} has no trained models")
    for name in names or ():
        if name not in available:
            raise UserError(f"no model {name!r} in {run_dir}; available: {', '.join(available)}")
    return list(dict.fromkeys(names)) if names else available


def run_preprocessing(config: Mapping[str, Any], harmonize: str = "none",
                      input_policy: str = INPUT_RESIZE) -> dict[str, Any]:
    """How the run turned files into model inputs: the pixel limit, read from its config.json,
    and the harmonisation and input policy of the protocol whose models score them
    (aigen.study.protocols; "input" is recorded only when it is not "resize"). Every image
    scored with the run's models goes through this."""
    arguments = config.get("arguments") or {}
    out = {"max_pixels": arguments.get("max_pixels") or None, "harmonize": harmonize}
    if input_policy != INPUT_RESIZE:
        out["input"] = input_policy
    return out


def run_val_predictions(run_dir: Path, names: Sequence[str], seeds: Sequence[int]
                        ) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """{(model, seed): (labels, prob_ai)} on the run's validation split, from its predictions.csv
    (for the threshold chosen on validation)."""
    path = run_dir / "predictions.csv"
    rows: dict[tuple[str, int], list[tuple[int, float]]] = collections.defaultdict(list)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if row["split"] == "val":
                    rows[(row["model"], int(row["seed"]))].append(
                        (int(row["label"]), float(row["prob_ai"])))
    except FileNotFoundError:
        raise UserError(f"--run {run_dir} has no predictions.csv (damaged run folder)") from None
    except (OSError, KeyError, ValueError, csv.Error) as exc:
        raise UserError(f"cannot read {path}: {exc!r} (damaged, or written by another version of "
                        "aigen)") from None
    out = {}
    for name in names:
        for seed in seeds:
            if not rows.get((name, seed)):
                raise UserError(f"{path} has no validation scores for {name}, seed {seed} "
                                "(damaged run folder)")
            y, p = zip(*rows[(name, seed)])
            out[(name, seed)] = (np.array(y, dtype=np.int64), np.array(p, dtype=np.float64))
    return out


def run_training_sha256(run_dir: Path, results: Mapping[str, Any]) -> set[str]:
    """sha256 of every image of the run's dataset (any split), from its split files."""
    files = sorted({s.get("file") for s in (results.get("data") or {}).get("splits", {}).values()
                    if isinstance(s, dict) and s.get("file")})
    if not files:
        raise UserError(f"--run {run_dir}: results.json names no split file (damaged, or written "
                        "by another version of aigen)")
    shas: set[str] = set()
    for name in files:
        try:
            with open(run_dir / name, newline="", encoding="utf-8") as f:
                shas.update(row["sha256"] for row in csv.DictReader(f))
        except (OSError, KeyError, csv.Error) as exc:
            raise UserError(f"cannot read {run_dir / name}: {exc!r} (damaged run folder)") from None
    return shas


# ----------------------------------------------------------------------------------------------
# Loading and scoring a labelled folder


def load_eval_dataset(root: Path, class_map, preprocessing: Mapping[str, Any],
                      regimes: Mapping[str, str], workers: int | None, progress: bool):
    """The labelled folder, found, checked and decoded like the study's data (one class alone is
    allowed); the skip summary goes to stderr."""
    from aigen.data.dataset import format_skip_summary, load_dataset
    from aigen.study.predict import needed_specs

    specs = needed_specs(regimes, preprocessing.get("harmonize", "none"),
                         preprocessing.get("input", INPUT_RESIZE))
    dataset = load_dataset(root, class_map=class_map, max_pixels=preprocessing["max_pixels"],
                           workers=workers, progress=progress, specs=tuple(specs.values()),
                           both=False)
    if dataset.skipped:
        print(f"{root}: {format_skip_summary(dataset)}", file=sys.stderr)
    return dataset


Scorer = Callable[[dict[str, np.ndarray]], dict[tuple[str, int], np.ndarray]]


def make_scorer(models: Mapping[int, Mapping[str, Any]], regimes: Mapping[str, str]) -> Scorer:
    """batch {spec key: float32 inputs} -> {(model, seed): prob_ai}; `models` is {seed: {name:
    model}}. Backbone prefix activations are computed once per batch and shared by every seed."""
    from aigen.study.predict import score

    layout = {"models": {name: {"regime": regime} for name, regime in regimes.items()}}

    def scorer(batch: dict[str, np.ndarray]) -> dict[tuple[str, int], np.ndarray]:
        prefix: dict[str, Any] = {}
        return {(name, seed): prob for seed, by_name in models.items()
                for name, prob in score(dict(by_name), layout, batch, prefix).items()}

    return scorer


def evaluate_dataset(dataset, scorer: Scorer, regimes: Mapping[str, str], seeds: Sequence[int],
                     val: Mapping[tuple[str, int], tuple[np.ndarray, np.ndarray]],
                     training_sha256: set[str], progress: bool = True, harmonize: str = "none",
                     input_policy: str = INPUT_RESIZE
                     ) -> tuple[dict[str, Any], list[list[Any]], list[list[Any]]]:
    """Score every usable image of `dataset` with every (model, seed) and compute the metrics.

    Images whose content is also in the run's data (`training_sha256`) are not scored: they are
    counted and listed. Returns (evaluation {"data", "overlap", "models", ...}, predictions.csv
    rows [path, source, label, model, seed, prob_ai], duplicates.csv rows [path]).
    """
    from tqdm import tqdm

    from aigen.data.dataset import conflicting_sha256s
    from aigen.data.dataset import dataset_arrays
    from aigen.data.discover import source_of
    from aigen.study.metrics import choose_threshold
    from aigen.study.predict import needed_specs

    conflicts = conflicting_sha256s(dataset.images)
    duplicates = [i for i, im in enumerate(dataset.images)
                  if im.sha256 in training_sha256 and im.sha256 not in conflicts]
    used = np.array([i for i, im in enumerate(dataset.images)
                     if im.sha256 not in training_sha256 and im.sha256 not in conflicts],
                    dtype=np.int64)
    if used.size == 0:
        raise UserError(f"{dataset.root}: no image left to evaluate (all {len(duplicates)} usable "
                        "image(s) are exact copies of the run's data)")
    # The models' own inputs (their protocol's); a crop spec's arrays hold each image's fixed
    # windows, whose probabilities the scorer averages.
    specs = needed_specs(regimes, harmonize, input_policy)
    y = dataset.labels[used]
    sources = [source_of(dataset.images[int(i)].rel_path, dataset.class_folders) for i in used]
    probs = {key: np.empty(used.size) for key in ((n, s) for n in regimes for s in seeds)}
    for start in tqdm(range(0, used.size, EVAL_CHUNK), desc=f"scoring {Path(dataset.root).name}",
                      unit="chunk", disable=not progress, leave=False, file=sys.stderr):
        chunk = used[start:start + EVAL_CHUNK]
        batch = {key: dataset_arrays(dataset, spec, chunk) for key, spec in specs.items()}
        for key, prob in scorer(batch).items():
            probs[key][start:start + len(chunk)] = prob
    thresholds = {key: choose_threshold(*val[key]) for key in probs}
    models = {name: model_evaluation(y, sources, [probs[(name, s)] for s in seeds],
                                     [thresholds[(name, s)] for s in seeds])
              for name in regimes}
    rows = [[dataset.images[int(i)].rel_path, sources[r], int(y[r]), name, seed,
             repr(float(probs[(name, seed)][r]))]
            for name in regimes for seed in seeds for r, i in enumerate(used)]
    evaluation = {
        "data": _data_record(dataset, y, sources),
        "overlap": {"exact_duplicates_of_training": len(duplicates),
                    "compared_with": "every image of the run's data set (any split)",
                    "excluded_from_metrics": True},
        "seeds": list(seeds),
        "threshold": 0.5,
        "ci_method": CI_TEXT,
        "models": models,
        # Curves for the figures, per model and seed (not written to JSON).
        "_curves": {name: [(y, probs[(name, s)]) for s in seeds] for name in regimes},
    }
    return evaluation, rows, [[dataset.images[i].rel_path] for i in duplicates]


def _per_seed(values, n_seeds: int) -> list:
    """`values` as a list with one entry per seed: a list is already one; anything else is shared
    by every seed."""
    return list(values) if isinstance(values, (list, tuple)) else [values] * n_seeds


def _mean_count(counts: Sequence[int]) -> int:
    return int(round(float(np.mean(counts)))) if len(counts) else 0


def model_evaluation(y, sources, probs: Sequence[np.ndarray],
                     thresholds: Sequence[float | None]) -> dict[str, Any]:
    """The contract record of one model: each metric summarised over seeds with an
    image-bootstrap CI, the threshold chosen on validation and its metrics, the per-source view.

    `y` (labels) and `sources` are either shared by every seed (an evaluation set: every seed
    scored the same images) or lists with one entry per seed (each seed's own test split); then
    "n" is the mean number of images per seed and "n_per_seed" lists them."""
    from aigen.study.metrics import (bootstrap_cis, detector_metrics, summarize,
                                     summarize_bootstrap)

    ys = _per_seed(y, len(probs))
    per_seed = [detector_metrics(yk, p, t) for yk, p, t in zip(ys, probs, thresholds)]
    cis = bootstrap_cis(y, probs, lambda yy, pp, k: detector_metrics(yy, pp, thresholds[k],
                                                                      fast=True))
    n_images = _mean_count([len(yk) for yk in ys])
    n = {"accuracy": n_images, "accuracy_real": _mean_count([int((yk == 0).sum()) for yk in ys]),
         "accuracy_ai": _mean_count([int((yk == 1).sum()) for yk in ys])}  # for the Wilson CIs
    record: dict[str, Any] = {
        key: summarize_bootstrap([m[key] for m in per_seed], cis.get(key), n.get(key))
        for key in METRIC_KEYS}
    record["at_val_threshold"] = {
        "threshold": summarize(thresholds, bounds=None),
        "accuracy": summarize_bootstrap([m["val_threshold_accuracy"] for m in per_seed],
                                        cis.get("val_threshold_accuracy"), n_images),
        "balanced_accuracy": summarize_bootstrap(
            [m["val_threshold_balanced_accuracy"] for m in per_seed],
            cis.get("val_threshold_balanced_accuracy")),
    }
    record["n"] = n_images
    if isinstance(y, (list, tuple)):
        record["n_per_seed"] = [int(len(yk)) for yk in ys]
    record["by_source"] = by_source(y, sources, probs)
    return record


def by_source(y, sources, probs: Sequence[np.ndarray]) -> dict[str, Any]:
    """{source: {"label", "n", "accuracy"[, "roc_auc"]}}; a source holding both classes (label
    None) also gets ROC-AUC. `y` and `sources` are shared by every seed or given per seed (as in
    `model_evaluation`; then "n" is the mean number of the source's images per seed)."""
    from aigen.study.metrics import (bootstrap_cis, fast_ranking_metrics, ranking_metrics,
                                     summarize_bootstrap, threshold_metrics)

    shared = not isinstance(y, (list, tuple))
    ys = _per_seed(y, len(probs))
    srcs = [np.asarray(s) for s in ([sources] * len(probs) if shared else sources)]
    out = {}
    for name in sorted(set().union(*(set(s.tolist()) for s in srcs))):
        masks = [s == name for s in srcs]
        ys_k = [yk[m] for yk, m in zip(ys, masks)]
        ps = [p[m] for p, m in zip(probs, masks)]
        labels = sorted(set(int(v) for v in np.concatenate(ys_k)))
        mixed = len(labels) == 2

        def metrics(yy, pp, _k, fast=True):
            m = {"accuracy": threshold_metrics(yy, pp)["accuracy"]}
            if mixed:
                m["roc_auc"] = (fast_ranking_metrics(yy, pp) if fast
                                else ranking_metrics(yy, pp))["roc_auc"]
            return m

        per_seed = [metrics(yk, p, k, fast=False) for k, (yk, p) in enumerate(zip(ys_k, ps))]
        cis = bootstrap_cis(ys_k[0] if shared else ys_k, ps, metrics)
        entry = {"label": None if mixed else labels[0],
                 "n": _mean_count([int(m.sum()) for m in masks])}
        for key in per_seed[0]:
            entry[key] = summarize_bootstrap([m[key] for m in per_seed], cis.get(key),
                                             entry["n"] if key == "accuracy" else None)
        out[name] = entry
    return out


def _data_record(dataset, y: np.ndarray, sources: Sequence[str]) -> dict[str, Any]:
    from aigen.study.stages.data import data_kind

    kind, description = data_kind(Path(dataset.root))
    categories = collections.Counter(s.category for s in dataset.skipped)
    counts = collections.Counter(zip(sources, (int(v) for v in y)))
    return {
        "root": str(Path(dataset.root).resolve()),
        "kind": kind,
        "description": description,
        "class_folders": dict(dataset.class_folders),
        "n_files": dataset.n_files,
        "n_images": len(dataset.images),
        "n_evaluated": int(len(y)),
        "n_per_class": {"ai": int((y == 1).sum()), "real": int((y == 0).sum())},
        "sources": {src: {"label": label, "n": n} for (src, label), n in sorted(counts.items())},
        "n_skipped": len(dataset.skipped),
        "skipped_by_reason": dict(sorted(categories.items())),
        "manifest_sha256": dataset.manifest_sha256(),
    }


# ----------------------------------------------------------------------------------------------
# Output


def write_evaluation(folder: Path, prefix: str, name: str, dataset, evaluation: dict[str, Any],
                     predictions: list[list[Any]], duplicates: list[list[Any]]) -> dict[str, str]:
    """predictions.csv, skipped.csv, duplicates.csv (into `folder`/`prefix`) and the ROC,
    precision-recall and reliability figures (into `folder`/figures). Removes the curves from
    `evaluation`; returns {figure kind: path relative to `folder`}."""
    from aigen import io
    from aigen.data.dataset import write_skipped
    from aigen.study import figures as fig

    base = folder / prefix if prefix else folder
    base.mkdir(parents=True, exist_ok=True)
    io.write_csv(base / "predictions.csv", ["path", "source", "label", "model", "seed", "prob_ai"],
                 predictions)
    write_skipped(base / "skipped.csv", dataset.skipped)
    io.write_csv(base / "duplicates.csv", ["path"], duplicates)
    curves = evaluation.pop("_curves")
    (folder / "figures").mkdir(exist_ok=True)
    stem = f"figures/{name}_" if prefix else "figures/"
    out = {}
    if evaluation["data"]["n_per_class"]["ai"] and evaluation["data"]["n_per_class"]["real"]:
        fig.roc_curves(curves, folder / f"{stem}roc.png", title=f"ROC curves ({name})")
        fig.precision_recall_curves(curves, folder / f"{stem}precision_recall.png",
                                    title=f"Precision-recall curves ({name})")
        out.update(roc=f"{stem}roc.png", precision_recall=f"{stem}precision_recall.png")
    fig.reliability_diagram(curves, folder / f"{stem}reliability.png",
                            title=f"Reliability diagram ({name})")
    out["reliability"] = f"{stem}reliability.png"
    return out


def format_evaluation(evaluation: Mapping[str, Any]) -> str:
    """A short table for the terminal: accuracy, balanced accuracy, ROC-AUC per model."""
    from aigen.study.metrics import format_ci, format_summary

    data = evaluation["data"]
    lines = [f"{evaluation.get('name', '')}: {data['n_evaluated']} images evaluated "
             f"({data['n_per_class']['ai']} ai, {data['n_per_class']['real']} real; "
             f"{evaluation['overlap']['exact_duplicates_of_training']} copies of the run's data "
             "left out)"]
    for name, m in evaluation["models"].items():
        lines.append(f"  {name}: accuracy {format_summary(m['accuracy'])} "
                     f"{format_ci(m['accuracy'])}, balanced {format_summary(m['balanced_accuracy'])}"
                     f", ROC-AUC {format_summary(m['roc_auc'])} {format_ci(m['roc_auc'])}")
    return "\n".join(lines)
