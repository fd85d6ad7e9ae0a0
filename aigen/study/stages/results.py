"""The last stage: results.json, predictions.csv, history.csv, the figures, report.md and
config.json, from the outputs of the stages before it; and the summary printed at the end."""

from __future__ import annotations

import collections
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from aigen.data.preprocess import INPUT_RESIZE
from aigen.study.stages.context import SCRATCH_NAME, StudyContext
from aigen.study.stages.data import Splits, StudyData
from aigen.study.stages.score import history_rows, val_scores
from aigen.study.stages.train import Backbones, ProtocolRun, trains_scratch

CI_METHOD_TEXT = (
    "95% CI of the mean test accuracy: Student-t interval over the per-seed values when there are "
    "two or more seeds (the Wilson score interval over all seeds' test images when every seed "
    "scored the same); with one seed, the Wilson score interval over the test images."
)


@dataclass
class StudyOutputs:
    """What the stages produced, for the results: the first protocol's run comes first."""

    data: StudyData
    exploration: dict[str, Any]
    splits: Splits
    runs: list[ProtocolRun]  # one per protocol, in the run's protocol order
    lr_study: dict[str, Any]
    lr_history: list[list[Any]]  # history.csv's rows of the learning-rate study
    diagnostics: dict[str, Any]  # {"diagnostics", "figures"}
    backbones: Backbones


def write_results(ctx: StudyContext, outputs: StudyOutputs) -> dict[str, Any]:
    """Write every result file into the work folder; returns results.json's content."""
    from aigen import io
    from aigen.study.report import build_report

    first = outputs.runs[0]
    with ctx.timer.stage("evaluate"):
        protocols = protocol_results(ctx, outputs)
        results = {
            "seeds": ctx.seeds,
            # The first protocol's, as in a run with one protocol; every protocol's below.
            "models": protocols[first.protocol.key]["models"],
            "skipped_models": dict(first.skipped),
            "data": data_results(ctx, outputs.data, outputs.splits, outputs.exploration),
            "shortcut_audit": outputs.exploration["shortcut_audit"],
            "sweep": first.sweep,
            "diagnostics": outputs.diagnostics.get("diagnostics", {}),
            "lr_study": outputs.lr_study,
            "ci_method": CI_METHOD_TEXT,
            "threshold": 0.5,
            "world_size": ctx.world.world_size,
            "protocols": protocols,
        }
        if ctx.args.eval_data:
            results["external"] = first.external["sets"]
            results["external_skipped"] = first.external["skipped"]
        io.write_json(ctx.work / "results.json", results)
        write_predictions(ctx, outputs)
        io.write_csv(ctx.work / "history.csv",
                     ["model", "seed", "epoch", "train_loss", "train_acc", "val_loss", "val_acc"],
                     all_history_rows(outputs))
    with ctx.timer.stage("figures"):
        figures = make_figures(ctx, outputs, results)
    config = config_record(ctx, outputs)
    with ctx.timer.stage("report"):
        io.write_text(ctx.work / "report.md", build_report(results, config, figures))
    config["wall_seconds"] = {**ctx.timer.seconds, "total": ctx.timer.total()}
    io.write_json(ctx.work / "config.json", config)
    return results


def all_history_rows(outputs: StudyOutputs) -> list[list[Any]]:
    """history.csv: every protocol's trained (model, seed) in training order, the
    learning-rate study's runs after the first protocol's."""
    rows = []
    for k, run in enumerate(outputs.runs):
        for (name, seed), trained in run.runs.items():
            rows.extend(history_rows(run.run_name(name), seed, trained["history"]))
        if k == 0:
            rows.extend(outputs.lr_history)
    return rows


# -- per model ----------------------------------------------------------------------------------

def model_results(ctx: StudyContext, outputs: StudyOutputs, run: ProtocolRun, name: str,
                  origins: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """results.json's record of one model (every seed): what it is, its accuracies and metrics
    per split, its checkpoints. `origins`: image_origins(outputs)."""
    from aigen.io import file_sha256
    from aigen.study.metrics import aggregate_metrics, classification_metrics, summarize

    splits = outputs.splits
    info = run.models[name]
    protocol = run.protocol
    per_split: dict[str, list[dict]] = {}
    for part in ("train", "val", "test"):
        per_split[part] = []
        for seed in ctx.seeds:
            rows = splits.rows(seed, part)
            per_split[part].append(classification_metrics(
                splits.y[rows], run.runs[(name, seed)]["prob"][rows]))
    result = {
        "regime": info["regime"],
        "backbone": info["backbone"],
        # Its input protocol; the name of its checkpoints and of its rows in predictions.csv.
        "protocol": protocol.key,
        "harmonize": protocol.harmonize,
        "augment": "none" if info["regime"] == "scratch" else protocol.augment,
        # (only under another input policy than resize: a resize record is as before)
        **({"input": protocol.input} if protocol.input != INPUT_RESIZE
           and info["regime"] != "scratch" else {}),
        "run_name": run.run_name(name),
        # backbones: which network and which weights file, exactly
        **{key: info[key] for key in ("architecture", "weights_sha256") if key in info},
        "weights_source": info["weights_source"],
        "pretrained": info["pretrained"],
        "n_params": info["n_params"],
        "trainable_params": info["trainable_params"],
        "hyperparameters": info["hyperparameters"],
    }
    if info["regime"] == "full":
        result["early_stopping"] = early_stopping(ctx, run, name)
    for part, metrics in per_split.items():
        result[f"{part}_accuracy"] = summarize(
            [m["accuracy"] for m in metrics], counts=[(m["correct"], m["n"]) for m in metrics])
    result["test_roc_auc"] = summarize([m["roc_auc"] for m in per_split["test"]])
    result["test_metrics"] = {"per_seed": per_split["test"],
                              "aggregate": aggregate_metrics(per_split["test"])}
    result["test_evaluation"], per_set = in_distribution_evaluation(ctx, outputs, run, name,
                                                                    origins)
    if per_set:
        result["per_set"] = per_set
    result["val_metrics"] = {"per_seed": per_split["val"],
                             "aggregate": aggregate_metrics(per_split["val"])}
    result["checkpoints"] = {str(seed): run.checkpoint(ctx.work, name, seed,
                                                       relative=True).as_posix()
                             for seed in ctx.seeds}
    # Checked before a checkpoint is loaded again (aigen.study.checkpoints).
    result["checkpoint_sha256"] = {seed: file_sha256(ctx.work / rel)
                                   for seed, rel in result["checkpoints"].items()}
    return result


def image_origins(outputs: StudyOutputs) -> tuple[np.ndarray, np.ndarray]:
    """(set, source) of every used image (aigen.data.sets, aigen.data.discover.source_of)."""
    from aigen.data.discover import source_of
    from aigen.data.sets import image_sets

    dataset, used = outputs.data.dataset, outputs.splits.used
    sets = image_sets(dataset)
    return (np.array([sets[int(i)] for i in used]),
            np.array([source_of(dataset.images[int(i)].rel_path, dataset.class_folders)
                      for i in used]))


def in_distribution_evaluation(ctx: StudyContext, outputs: StudyOutputs, run: ProtocolRun,
                               name: str, origins: tuple[np.ndarray, np.ndarray]
                               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The in-distribution test split scored like an evaluation set (threshold-aware, calibration
    and per-source metrics with image-bootstrap CIs; aigen.study.evaluate), each seed on its own
    test split: (all test images, {set: that set's test images}, the latter only with several
    training sets). Sources are named SET/SOURCE with several sets."""
    from aigen.study.metrics import choose_threshold

    data, splits = outputs.data, outputs.splits
    sets_used, sources_used = origins
    several = len(data.sets) > 1
    thresholds = [choose_threshold(*val_scores(splits, run, name, seed)) for seed in ctx.seeds]
    rows = [splits.rows(seed, "test") for seed in ctx.seeds]
    sources = (np.array([f"{a}/{b}" for a, b in zip(sets_used, sources_used)])
               if several else sources_used)
    overall = _scored(ctx, splits, run, name, rows, sources, thresholds)
    per_set = {set_name: _scored(ctx, splits, run, name,
                                 [r[sets_used[r] == set_name] for r in rows], sources_used,
                                 thresholds)
               for set_name in data.sets} if several else {}
    return overall, per_set


def _scored(ctx: StudyContext, splits: Splits, run: ProtocolRun, name: str,
            rows: list[np.ndarray], sources: np.ndarray,
            thresholds: list[float | None]) -> dict[str, Any]:
    """model_evaluation of a model on the given rows of each seed."""
    from aigen.study.evaluate import model_evaluation

    probs = [run.runs[(name, seed)]["prob"][r] for seed, r in zip(ctx.seeds, rows)]
    if all(np.array_equal(r, rows[0]) for r in rows):  # one seed, or one reused split
        return model_evaluation(splits.y[rows[0]], list(sources[rows[0]]), probs, thresholds)
    return model_evaluation([splits.y[r] for r in rows], [list(sources[r]) for r in rows],
                            probs, thresholds)


def early_stopping(ctx: StudyContext, run: ProtocolRun, name: str) -> dict[str, Any]:
    """results.json's "early_stopping" of a full model: per seed, the epochs it ran, the epoch
    whose weights it kept, whether it stopped before its last epoch, and its head's learning rate
    at the end of each epoch."""
    from aigen.training import best_epoch

    hp = run.models[name]["hyperparameters"]
    per_seed = {}
    for seed in ctx.seeds:
        history = run.runs[(name, seed)]["history"]
        per_seed[str(seed)] = {"epochs_run": len(history), "best_epoch": best_epoch(history),
                               "stopped_early": len(history) < hp["epochs"],
                               "lr": [h.get("lr") for h in history]}
    return {"monitor": "validation accuracy, ties broken by the lower validation loss",
            "patience": hp["patience"], "max_epochs": hp["epochs"], "per_seed": per_seed}


# -- per protocol, data -------------------------------------------------------------------------

def protocol_results(ctx: StudyContext, outputs: StudyOutputs) -> dict[str, Any]:
    """results.json["protocols"]: per protocol key, what it is, its models (the per-model records
    of results["models"]), skipped models, sweep and external evaluations."""
    out = {}
    origins = image_origins(outputs)
    for run in outputs.runs:
        protocol = run.protocol
        record = {**protocol.record(),
                  "models": {name: model_results(ctx, outputs, run, name, origins)
                             for name in run.models},
                  "skipped_models": dict(run.skipped),
                  "sweep": run.sweep}
        if "scratch" in ctx.args.models and not trains_scratch(ctx, protocol):
            first = next(p for p in ctx.protocols if p.harmonize == protocol.harmonize)
            record["scratch_not_augmented"] = (
                "the scratch CNN is not augmented: it is trained once per harmonisation, "
                f"see protocol {first.key}") if protocol.input == first.input else (
                "the scratch CNN is not augmented and always takes its 32x32 resized "
                f"input: it is trained once per harmonisation, see protocol {first.key}")
        spec = run.specs["backbone"]
        if spec.crop:
            record["rescaled"] = rescaled(outputs.data, outputs.splits, spec)
        if ctx.args.eval_data:
            record["external"] = run.external["sets"]
            record["external_skipped"] = run.external["skipped"]
        out[protocol.key] = record
    return out


def rescaled(data: StudyData, splits: Splits, spec) -> dict[str, Any]:
    """How many of the study's images per class the crop spec enlarged, kept or reduced to its
    side (resampling leaves traces of its own: a class enlarged more often is a cue)."""
    from aigen.data.discover import LABEL_AI
    from aigen.data.preprocess import rescaling

    counts = {cls: {"enlarged": 0, "kept": 0, "reduced": 0} for cls in ("ai", "real")}
    for i in splits.used:
        im = data.dataset.images[int(i)]
        counts["ai" if im.label == LABEL_AI else "real"][rescaling(im.width, im.height, spec)] += 1
    return {"side": spec.size, "per_class": counts}


def data_results(ctx: StudyContext, data: StudyData, splits: Splits,
                 exploration: dict[str, Any]) -> dict[str, Any]:
    from aigen.data.discover import LABEL_AI, LABEL_REAL

    dataset, labels = data.dataset, data.labels
    categories = collections.Counter(s.category for s in dataset.skipped)
    split_counts = {}
    for seed, split in splits.splits.items():
        counts = {part: int(len(split.indices(part)))
                  for part in ("train", "val", "test", "excluded")}
        split_counts[str(seed)] = {"file": splits.files[seed], **counts}
    args = ctx.args
    return {
        "root": str(data.root) if data.root is not None else None,
        "kind": data.kind,
        "description": data.description,
        "sets": set_records(data, splits),
        "class_folders": dict(dataset.class_folders),
        "n_files": dataset.n_files,
        "n_images": len(dataset.images),
        "n_per_class": {"ai": int((labels == LABEL_AI).sum()),
                        "real": int((labels == LABEL_REAL).sum())},
        "n_skipped": len(dataset.skipped),
        "skipped_by_reason": dict(sorted(categories.items())),
        "manifest_sha256": dataset.manifest_sha256(),
        "max_pixels": dataset.max_pixels,
        "metadata_csv": str(args.metadata_csv) if args.metadata_csv else None,
        "summary": exploration["summary"],
        "splits": split_counts,
        "split_file_reused": str(args.split_file) if args.split_file else None,
    }


def set_records(data: StudyData, splits: Splits) -> dict[str, Any]:
    """{set: root, kind, images per class, test images per class per seed} of every training set
    (one entry with one set)."""
    from aigen.data.sets import set_counts

    images = set_counts(data.dataset)
    tests = {str(seed): set_counts(data.dataset, split.indices("test"))
             for seed, split in splits.splits.items()}
    return {name: {"root": str(root), "kind": data.set_kinds[name][0],
                   "n_images": sum(images[name].values()), "n_per_class": images[name],
                   "n_test_per_class": {seed: counts[name] for seed, counts in tests.items()}}
            for name, root in data.sets.items()}


def write_predictions(ctx: StudyContext, outputs: StudyOutputs) -> None:
    """predictions.csv: P(AI) of every (model, seed) on every image of its seed's split."""
    from aigen import io
    from aigen.data.sets import image_sets, path_in_set

    dataset, splits = outputs.data.dataset, outputs.splits
    sets = image_sets(dataset)
    rows = []
    for run in outputs.runs:  # every protocol's models, under their run names
        for (name, seed), trained in run.runs.items():
            assignment = splits.splits[seed].assignment
            for r, i in enumerate(splits.used):
                part = assignment[int(i)]
                if part in ("train", "val", "test"):
                    im = dataset.images[int(i)]
                    rows.append([sets[int(i)], path_in_set(dataset, im.rel_path),
                                 run.run_name(name), seed, part, im.label,
                                 repr(float(trained["prob"][r]))])
    io.write_csv(ctx.work / "predictions.csv",
                 ["set", "path", "model", "seed", "split", "label", "prob_ai"], rows)


# -- figures, config ----------------------------------------------------------------------------

def make_figures(ctx: StudyContext, outputs: StudyOutputs,
                 results: dict[str, Any]) -> dict[str, Any]:
    """The run's figures (training curves, confusion matrices, ROC curves, sweep curves, the
    learning-rate study) beside the exploration's, diagnostics' and evaluation sets' ones;
    returns their paths relative to the work folder, for the report."""
    from aigen.study import figures as fig
    from aigen.study.report import majority_rate

    work, seeds, splits = ctx.work, ctx.seeds, outputs.splits
    first = outputs.runs[0]
    fdir = work / "figures"
    rel = lambda p: p.relative_to(work).as_posix()  # noqa: E731
    out: dict[str, Any] = {"exploration": list(outputs.exploration["figures"]), "curves": {}}
    history = collections.defaultdict(list)
    keys = ("model", "seed", "epoch", "train_loss", "train_acc", "val_loss", "val_acc")
    for row in all_history_rows(outputs):
        history[row[0]].append(dict(zip(keys, row)))
    for run in outputs.runs:  # every protocol's models, under their run names
        for name in run.models:
            run_name = run.run_name(name)
            path = fdir / f"curves_{run_name}.png"
            fig.training_curves(history[run_name], f"{run_name}: training curves", path)
            out["curves"][run_name] = rel(path)
    if first.models:
        matrices = {name: m["test_metrics"]["aggregate"]["confusion_matrix"]
                    for name, m in results["models"].items()}
        summed = "summed over seeds" if len(seeds) > 1 else fig.seeds_words(seeds)
        fig.confusion_matrices(matrices, fdir / "confusion_matrices.png",
                               title=f"Test confusion matrices ({summed})")
        out["confusion"] = rel(fdir / "confusion_matrices.png")
        curves = {}
        for name in first.models:
            curves[name] = []
            for seed in seeds:
                rows = splits.rows(seed, "test")
                curves[name].append((splits.y[rows], first.runs[(name, seed)]["prob"][rows]))
        per_seed = "one line per seed" if len(seeds) > 1 else fig.seeds_words(seeds)
        fig.roc_curves(curves, fdir / "roc_curves.png",
                       title=f"ROC curves (test split, {per_seed})")
        out["roc"] = rel(fdir / "roc_curves.png")
    out["external"] = first.external["figures"]
    out["diagnostics"] = outputs.diagnostics.get("figures", {})
    out["sweep"] = {}
    sweep = first.sweep
    for key, perturbation in (sweep.get("perturbations") or {}).items():
        path = fdir / f"sweep_{key}.png"
        fig.sweep_curves(perturbation, {m: per[key] for m, per in sweep["models"].items()},
                         path, seeds=seeds, majority=majority_rate(results))
        out["sweep"][key] = rel(path)
    if outputs.lr_study.get("runs"):
        lr_history = []
        for lr in outputs.lr_study["runs"]:
            for row in history[f"{SCRATCH_NAME}_lr{lr}"]:
                lr_history.append({**row, "lr": lr})
        fig.lr_study(outputs.lr_study["runs"], lr_history, fdir / "lr_study.png", seeds=seeds,
                     baseline=majority_rate(results))
        out["lr_study"] = rel(fdir / "lr_study.png")
    return out


def config_record(ctx: StudyContext, outputs: StudyOutputs) -> dict[str, Any]:
    """config.json: how the run was started and resolved, on what data and environment."""
    from pathlib import Path

    from aigen.repro import environment_record

    data = outputs.data
    arguments = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(ctx.args).items()
                 if not k.startswith("_")}
    return {
        "command": "aigen study",
        "argv": sys.argv,
        "arguments": arguments,
        "resolved": {"seeds": ctx.seeds, "hyperparameters": ctx.hp, "scratch_lrs": ctx.lrs,
                     "out": str(ctx.out), "protocols": [p.record() for p in ctx.protocols]},
        "started": ctx.started,
        "device": str(ctx.device),
        "world_size": ctx.world.world_size,
        "distributed_backend": ctx.world.backend,
        "data": {"root": str(data.root) if data.root is not None else None,
                 "sets": {name: str(root) for name, root in data.sets.items()},
                 "kind": data.kind, "manifest_sha256": data.dataset.manifest_sha256()},
        "backbones": {name: {"architecture": b.architecture, "weights_source": b.weights_source,
                             "pretrained": b.pretrained, "init": b.init,
                             "weights_sha256": b.weights_sha256, "fingerprint": b.fingerprint}
                      for name, b in outputs.backbones.loaded.items()},
        "environment": environment_record(),
    }


# -- terminal -----------------------------------------------------------------------------------

def print_summary(ctx: StudyContext, results: dict[str, Any]) -> None:
    """The comparison table and the report's path, on stdout."""
    from aigen.study.metrics import format_summary
    from aigen.study.report import audit_cells, cell_words
    from aigen.study.sweep import shortcut_flags

    several = len(ctx.protocols) > 1  # then each model is named with its protocol
    rows = [(f"{name} [{key}]" if several else name, format_summary(m["train_accuracy"]),
             format_summary(m["val_accuracy"]), format_summary(m["test_accuracy"]))
            for key, record in results["protocols"].items()
            for name, m in record["models"].items()]
    audit = results["shortcut_audit"] or {}
    rows.append(("metadata only (audit)", "–", "–", audit_cells(audit)["accuracy"]))
    # The audit's forest can sit below the majority rate on imbalanced data: show both.
    if isinstance(audit.get("majority_baseline"), (int, float)):
        rows.append(("majority class (baseline)", "–", "–",
                     f"{audit['majority_baseline']:.3f}"))
    header = ("model", "train", "val", "test")
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(4)]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    print(f"accuracy on each split, {cell_words(ctx.seeds)}; data: {results['data']['kind']}")
    print(line(header))
    print(line(["-" * w for w in widths]))
    for r in rows:
        print(line(r))
    for name, reason in results["skipped_models"].items():
        print(f"skipped {name}: {reason.splitlines()[0][:160]}")
    for flag in shortcut_flags(results.get("sweep") or {}):
        print(f"possible shortcut: {flag['model']} under {flag['perturbation']} "
              f"{flag['strength']:g}: {'ROC-AUC' if flag['kind'] == 'ranking' else 'accuracy'}"
              f" {flag['clean']:.3f} -> {flag['perturbed']:.3f} (see the report)")
    print(f"report: {ctx.out / 'report.md'}")
