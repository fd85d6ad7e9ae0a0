"""The stages that score trained models: the scratch CNN's learning-rate study, the degradation
sweep, the diagnostics (frequency spectra, Grad-CAM, the scratch CNN's filters) and the evaluation
on other labelled data (--eval-data). Each returns a record for results.json; the sweep, the
diagnostics and the evaluations are persisted as soon as they are done (StudyContext.persisted),
so a resumed run does not compute them again."""

from __future__ import annotations

from typing import Any

import numpy as np

from aigen.errors import UserError
from aigen.study.stages.context import SCRATCH_NAME, StudyContext, lr_key
from aigen.study.stages.data import Splits, StudyData
from aigen.study.stages import train
from aigen.study.stages.train import ProtocolRun


def lr_study(ctx: StudyContext, splits: Splits, run: ProtocolRun
             ) -> tuple[dict[str, Any], list[list[Any]]]:
    """(record, history rows): the scratch CNN trained at each --scratch-lrs value for every
    seed (the main run stands for its own learning rate; each run is persisted, and read back on
    --resume), with accuracies per split and the seeds that answered one class."""
    from aigen.study import runfolder
    from aigen.study.metrics import summarize

    if not ctx.lrs:
        return {}, []
    rows_out: list[list[Any]] = []
    runs = {}
    for lr in ctx.lrs:
        name = f"{SCRATCH_NAME}_lr{lr_key(lr)}"
        accuracy = {part: [] for part in ("train", "val", "test")}
        counts = {part: [] for part in ("train", "val", "test")}
        final_loss = []
        one_class = []  # seeds whose model answered one class for every test image
        for seed in ctx.seeds:
            if lr == ctx.hp["scratch"]["lr"] and (SCRATCH_NAME, seed) in run.runs:
                done = run.runs[(SCRATCH_NAME, seed)]  # the main run already trained this lr
                history, prob = done["history"], done["prob"]
            else:
                state = runfolder.load_run(ctx.work, name, seed)
                if state is not None:
                    history, prob = state[0], state[1]
                else:
                    model, history = train.fit_scratch(ctx, splits, run.X_scratch, seed, lr)
                    prob = model.predict_proba(run.X_scratch)
                    runfolder.save_run(ctx.work, name, seed, history, prob)
                    runfolder.log_history(ctx.work, ctx.args, name, seed, history)
            rows_out.extend(history_rows(name, seed, history))
            for part in accuracy:
                rows = splits.rows(seed, part)
                correct = int(((prob[rows] >= 0.5) == (splits.y[rows] == 1)).sum())
                accuracy[part].append(correct / len(rows))
                counts[part].append((correct, len(rows)))
            final_loss.append(history[-1]["train_loss"])
            if len(np.unique(prob[splits.rows(seed, "test")] >= 0.5)) == 1:
                one_class.append(seed)
        runs[lr_key(lr)] = {
            "lr": lr,
            **{f"{part}_accuracy": summarize(accuracy[part], counts[part]) for part in accuracy},
            "final_train_loss": summarize(final_loss, bounds=None),
            "test_single_class_seeds": one_class,
        }
    hp = ctx.hp["scratch"]
    return ({"epochs": hp["epochs"], "filters": hp["filters"], "batch_size": hp["batch_size"],
             "runs": runs}, rows_out)


def history_rows(run_name: str, seed: int, history: list[dict]) -> list[list[Any]]:
    """history.csv's rows of one trained (model, seed)."""
    return [[run_name, seed, h["epoch"], h["train_loss"], h["train_acc"], h["val_loss"],
             h["val_acc"]] for h in history]


def degradation_sweep(ctx: StudyContext, data: StudyData, splits: Splits,
                      run: ProtocolRun) -> dict[str, Any]:
    """Every model scored on its seed's test images degraded step by step (aigen.study.sweep):
    the union of the seeds' test images, each degraded once and scored by every seed's models."""
    from aigen.study.evaluate import make_scorer
    from aigen.study.sweep import PERTURBATIONS, run_sweep

    requested = getattr(ctx.args, "sweep", None)  # None: a run saved before the option
    perturbations = list(PERTURBATIONS) if requested is None else list(dict.fromkeys(requested))
    if not run.models or not perturbations:
        return {}

    def compute():
        union = splits.test_union()
        position = {i: k for k, i in enumerate(union)}
        test_pos = {seed: np.array([position[int(i)] for i in splits.splits[seed].indices("test")],
                                   dtype=np.int64) for seed in ctx.seeds}
        return run_sweep([data.dataset.images[i] for i in union], data.labels[union], test_pos,
                         run.input_specs(),
                         make_scorer(run.models_by_seed(ctx.seeds), run.regimes()),
                         list(run.models), ctx.seeds, max_pixels=data.dataset.max_pixels,
                         workers=ctx.loader_workers(), perturbations=perturbations,
                         progress=ctx.progress)

    return ctx.persisted(f"sweep@{run.protocol.tag}", compute)


def diagnose(ctx: StudyContext, data: StudyData, splits: Splits,
             run: ProtocolRun) -> dict[str, Any]:
    """{"diagnostics": results.json's record, "figures": their paths} (aigen.data.spectra,
    aigen.study.diagnostics): the classes' spectra on a sample of the study's images; for the
    first seed, Grad-CAM of every backbone model and the scratch CNN's filters."""
    return ctx.persisted("diagnostics", lambda: _diagnostics(ctx, data, splits, run))


def _diagnostics(ctx: StudyContext, data: StudyData, splits: Splits,
                 run: ProtocolRun) -> dict[str, Any]:
    from aigen.data.dataset import dataset_inputs
    from aigen.data.spectra import class_spectra, spectra_figure
    from aigen.study import diagnostics

    record: dict[str, Any] = {}
    figures: dict[str, Any] = {}
    fdir = ctx.work / "figures"
    per_class = getattr(ctx.args, "spectrum_images", 0)
    dataset = data.dataset
    if per_class:
        spectra = class_spectra([dataset.images[int(i)] for i in splits.used],
                                per_class=per_class, seed=ctx.seeds[0],
                                max_pixels=dataset.max_pixels, workers=ctx.loader_workers(),
                                progress=ctx.progress)
        record["spectra"] = spectra.record
        spectra_figure(spectra, fdir / "spectra.png", dataset.class_names)
        figures["spectra"] = "figures/spectra.png"
    if not run.models:
        return {"diagnostics": record, "figures": figures}
    seed = ctx.seeds[0]
    rows = splits.rows(seed, "test")
    indices = splits.used[rows]
    y = splits.y[rows]
    paths = [dataset.images[int(i)].rel_path for i in indices]
    spec = run.input_specs().get("backbone")  # (none for the scratch CNN alone)
    record["gradcam"], figures["gradcam"] = {}, {}
    for name, info in run.models.items():
        trained = run.runs[(name, seed)]
        prob = trained["prob"][rows]
        if info["regime"] == "scratch":
            path = fdir / f"filters_{name}.png"
            record["scratch_filters"] = diagnostics.scratch_diagnostic(
                trained["model"], run.X_scratch[rows], y, prob, paths, seed, path)
            figures["scratch_filters"] = f"figures/{path.name}"
            continue
        path = fdir / f"gradcam_{name}.png"
        record["gradcam"][name] = diagnostics.gradcam_diagnostic(
            name, trained["model"], dataset_inputs(dataset, spec), spec, indices, y, prob, paths,
            seed, path, device=ctx.device)
        figures["gradcam"][name] = f"figures/{path.name}"
    return {"diagnostics": record, "figures": figures}


def val_scores(splits: Splits, run: ProtocolRun, name: str,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, prob_ai) of a model on its seed's validation split (for the threshold chosen on
    validation)."""
    rows = splits.rows(seed, "val")
    return splits.y[rows], run.runs[(name, seed)]["prob"][rows]


def evaluate_sets(ctx: StudyContext, data: StudyData, splits: Splits,
                  run: ProtocolRun) -> dict[str, Any]:
    """{"sets": {name: evaluation}, "skipped": {name: why}, "figures": {name: paths}}: every
    trained model (every seed) scored on each --eval-data set, exactly as `aigen evaluate` scores
    a finished run; a set that fails is reported, not fatal."""
    from aigen.study.evaluate import parse_eval_data

    sets = parse_eval_data(ctx.args.eval_data or [])
    if not sets or not run.models:
        return {"sets": {}, "skipped": {}, "figures": {}}
    return ctx.persisted(f"external@{run.protocol.tag}",
                         lambda: _evaluate_sets(ctx, data, splits, run, sets))


def _evaluate_sets(ctx: StudyContext, data: StudyData, splits: Splits, run: ProtocolRun,
                   sets: dict[str, Any]) -> dict[str, Any]:
    from aigen.study.evaluate import (evaluate_dataset, load_eval_dataset, make_scorer,
                                      run_preprocessing, write_evaluation)

    out: dict[str, Any] = {"sets": {}, "skipped": {}, "figures": {}}
    regimes = run.regimes()
    scorer = make_scorer(run.models_by_seed(ctx.seeds), regimes)
    val = {(name, seed): val_scores(splits, run, name, seed)
           for name in run.models for seed in ctx.seeds}
    training = {im.sha256 for im in data.dataset.images}
    protocol = run.protocol
    # The same function `aigen evaluate` applies to a run's config.json, with the protocol's
    # harmonisation.
    preprocessing = run_preprocessing({"arguments": vars(ctx.args)}, protocol.harmonize,
                                      protocol.input)
    # Another protocol's files are told apart by its tag: external/NAME@TAG/.
    label = (lambda n: n) if run.is_default else (lambda n: f"{n}@{protocol.tag}")  # noqa: E731
    for set_name, root in sets.items():
        try:
            dataset = load_eval_dataset(root, None, preprocessing, regimes, ctx.args.workers,
                                        ctx.progress)
            evaluation, rows, duplicates = evaluate_dataset(
                dataset, scorer, regimes, ctx.seeds, val, training, progress=ctx.progress,
                harmonize=protocol.harmonize, input_policy=protocol.input)
        except UserError as exc:
            out["skipped"][set_name] = str(exc)
            ctx.log(f"evaluation set {set_name} skipped: {exc}")
            continue
        for row in rows:  # predictions.csv names the models as the run's files do
            row[3] = run.run_name(row[3])
        out["figures"][set_name] = write_evaluation(
            ctx.work, f"external/{label(set_name)}", label(set_name), dataset, evaluation, rows,
            duplicates)
        out["sets"][set_name] = {"name": set_name, "protocol": protocol.key, **evaluation,
                                 "preprocessing": preprocessing}
    return out
