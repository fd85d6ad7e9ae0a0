"""report.md: the study written up from results.json and config.json (nothing else is read)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from aigen.data.preprocess import INPUT_RESIZE
from aigen.study.metrics import format_ci, format_summary

REGIME_WORDS = {
    "scratch": "scratch CNN (32x32 grayscale, trained from random initialisation)",
    "frozen": "frozen backbone, new linear head trained",
    "finetuned": "backbone fine-tuned (last stage + new head trained)",
    "full": "backbone fully trained (every layer + new head; lower learning rates for earlier "
            "layers, early stopping)",
}


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _figure(path: str | None, alt: str) -> str:
    return f"![{alt}]({path})" if path else ""


def seed_words(seeds: Sequence[Any]) -> str:
    """'one seed (seed 0)' or '3 seeds (0, 1, 2)'."""
    seeds = list(seeds)
    if len(seeds) == 1:
        return f"one seed (seed {seeds[0]})"
    return f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"


def cell_words(seeds: Sequence[Any]) -> str:
    """What a table cell is: 'mean ± sample standard deviation over 3 seeds (0, 1, 2)', or with
    one seed 'values of seed 0' (no spread over seeds exists to show)."""
    seeds = list(seeds)
    if len(seeds) == 1:
        return f"values of seed {seeds[0]}"
    return f"mean ± sample standard deviation over {seed_words(seeds)}"


def majority_rate(results: Mapping[str, Any]) -> float | None:
    """The share of the larger class (accuracy of always answering it), from the audit or the data."""
    audit = results.get("shortcut_audit") or {}
    if isinstance(audit.get("majority_baseline"), (int, float)):
        return float(audit["majority_baseline"])
    counts = (results.get("data") or {}).get("n_per_class") or {}
    n = sum(counts.values())
    return max(counts.values()) / n if n else None


# ---- the Summary at the top of report.md -------------------------------------------------------

MAJORITY_TOLERANCE = 0.01  # an accuracy this close to the majority-class rate learnt nothing


def _interval(summary: Mapping[str, Any] | None) -> list[float] | None:
    ci = (summary or {}).get("ci95")
    if ci and all(isinstance(v, (int, float)) and v == v for v in ci):  # v == v: not NaN
        return [float(ci[0]), float(ci[1])]
    return None


def _with_ci(value: float, ci: Sequence[float] | None) -> str:
    return f"{value:.3f}" + (f", 95% CI [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _ci_source(results: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """How the best model's CI was computed, in words, with the number of test images."""
    seeds = list(results["seeds"])
    splits = (results.get("data") or {}).get("splits") or {}
    n_test = sum(int(splits[str(s)]["test"]) for s in seeds if str(s) in splits)
    images = f"{n_test} test images" if n_test else "test images"
    if len(seeds) == 1:
        return f"one seed, seed {seeds[0]}; CI: Wilson interval over its {images}"
    if summary.get("ci_method") == "wilson":
        return (f"mean over {seed_words(seeds)}; every seed scored the same, so the CI is the "
                f"Wilson interval over all seeds' {images}")
    return f"mean over {seed_words(seeds)}; CI: Student-t interval over the seeds"


def _compare(ci: Sequence[float] | None, value: float, other: float,
             other_ci: Sequence[float] | None) -> str:
    """'clearly beats' / 'is clearly below' / 'does not clearly beat' (95% CIs overlap)."""
    lo, hi = ci if ci else (value, value)
    olo, ohi = other_ci if other_ci else (other, other)
    if lo > ohi:
        return "clearly beats"
    if hi < olo:
        return "is clearly below"
    return "does not clearly beat"


def _sweep_sentence(results: Mapping[str, Any]) -> str | None:
    """The degradation sweep in one sentence: the shortcut flags, else the largest accuracy
    change (perturbed − clean, negative = worse) at a mild strength."""
    from aigen.study.sweep import MILD, PERTURBATIONS, flag_text, judged_models, shortcut_flags

    sweep = results.get("sweep") or {}
    if not sweep.get("models"):
        return None
    head = (f"**Degradation sweep** ({sweep.get('n_images', '?')} test images of both classes "
            "re-encoded, blurred, downscaled, noised)")
    flags = shortcut_flags(sweep)
    if flags:
        more = f" ({len(flags) - 1} more in the sweep section)" if len(flags) > 1 else ""
        return f"{head}: **possible shortcut**: {flag_text(flags[0])}{more}"
    changes = []
    judged = judged_models(sweep)
    if not judged:
        return f"{head}: {_judged_text(sweep)}."
    for model in judged:
        for key, points in sweep["models"][model].items():
            for point in points[1:]:
                change = point["accuracy"].get("change")
                if change is not None and point["strength"] in MILD.get(key, ()):
                    changes.append((change, model, key, point["strength"]))
    if not changes:
        return None
    change, model, key, strength = min(changes, key=lambda c: (c[0], c[1], c[2]))
    label = PERTURBATIONS[key].label(strength) if key in PERTURBATIONS else strength
    return (f"{head}: at the mild strengths the largest accuracy change (perturbed − clean, "
            f"negative = worse) is {change:+.3f}, `{model}` under {key} {label}; no model lost "
            f"more than half of its margin over chance there; {_judged_text(sweep)}.")


def _transfer_sentence(results: Mapping[str, Any]) -> str | None:
    external = results.get("external") or {}
    entries = []  # (external mean, ci, model, set, in-distribution mean, chance)
    for set_name, evaluation in external.items():
        counts = (evaluation.get("data") or {}).get("n_per_class") or {}
        n = sum(counts.values())
        chance = max(counts.values()) / n if n else 0.5
        for model, m in (evaluation.get("models") or {}).items():
            acc = m.get("accuracy") or {}
            test = ((results.get("models") or {}).get(model) or {}).get("test_accuracy") or {}
            if acc.get("mean") is not None:
                entries.append((acc["mean"], _interval(acc), model, set_name, test.get("mean"),
                                chance))
    if not entries:
        skipped = results.get("external_skipped") or {}
        return (f"**Transfer**: no evaluation set could be scored ({', '.join(skipped)} skipped)."
                if skipped else None)
    best = max(entries, key=lambda e: e[0])
    mean, ci, model, set_name, test, chance = best
    beats = "clearly beats" if ci and ci[0] > chance else "does not clearly beat"
    text = (f"**Transfer to other data**: the best is `{model}` on `{set_name}`, accuracy "
            f"{_with_ci(mean, ci)}" + (f" (in distribution: {test:.3f})" if test is not None
                                       else "") + f", which {beats} the larger class's share "
            f"({chance:.3f})")
    falls = [(e[4] - e[0], e) for e in entries if e[4] is not None and e[4] > e[0]]
    if falls:
        fall, (mean, _, model, set_name, test, _) = max(falls, key=lambda f: f[0])
        text += (f"; the largest fall is `{model}` on `{set_name}`, {test:.3f} → {mean:.3f} "
                 f"(change {mean - test:+.3f})")
    return text + (". A model that keeps its in-distribution accuracy on other sources has "
                   "learnt more than the quirks of one data set.")


def summary_section(results: Mapping[str, Any]) -> list[str]:
    """The report's first section, from results.json alone: the best model with its CI, whether
    it clearly beats the metadata-only audit and the majority-class rate, the degradation sweep's
    shortcut flags (or its largest change at a mild strength), the transfer results (when there are any) and a flag when the metadata alone does as
    well as the best model. "Clearly beats" means the 95% CIs do not overlap."""
    out = ["## Summary", ""]
    if (results.get("data") or {}).get("kind") == "synthetic":
        out.append("- **Synthetic proxy data**: these numbers say how the pipeline behaves on "
                   "the embedded proxy dataset and nothing about real AI-generated images.")
    models = {n: m for n, m in (results.get("models") or {}).items()
              if (m.get("test_accuracy") or {}).get("mean") is not None}
    if not models:
        out.append("- No model was scored on a test split.")
        return out + [""]
    ranked = sorted(models, key=lambda n: -models[n]["test_accuracy"]["mean"])
    best = ranked[0]
    acc = models[best]["test_accuracy"]
    mean, ci = acc["mean"], _interval(acc)
    text = (f"- **Best model: `{best}`**, test accuracy {_with_ci(mean, ci)} "
            f"({_ci_source(results, acc)})")
    if len(ranked) > 1:
        nxt = models[ranked[1]]["test_accuracy"]
        text += (f"; it {_compare(ci, mean, nxt['mean'], _interval(nxt))} the next best, "
                 f"`{ranked[1]}` ({_with_ci(nxt['mean'], _interval(nxt))})")
    out.append(text + ".")
    audit = results.get("shortcut_audit") or {}
    majority = majority_rate(results)
    parts = []
    audit_acc = audit.get("accuracy")
    audit_ci = _interval({"ci95": audit.get("accuracy_ci95")})
    if isinstance(audit_acc, (int, float)):
        parts.append(f"{_compare(ci, mean, audit_acc, audit_ci)} the metadata-only audit "
                     f"(accuracy {_with_ci(audit_acc, audit_ci)}, from file metadata alone)")
    if majority is not None:
        parts.append(f"{_compare(ci, mean, majority, None)} the majority-class rate "
                     f"({majority:.3f}, always answering the larger class)")
    if parts:
        out.append(f"- **Against the baselines**, `{best}` " + " and ".join(parts)
                   + ". \"Clearly\": the 95% intervals do not overlap.")
    sentence = _sweep_sentence(results)
    if sentence:
        out.append(f"- {sentence}")
    sentence = _transfer_sentence(results)
    if sentence:
        out.append(f"- {sentence}")
    lo = ci[0] if ci else mean
    if isinstance(audit_acc, (int, float)) and audit_acc >= lo:
        out.append(f"- **Possible shortcut**: the metadata-only audit ({audit_acc:.3f}) reaches "
                   f"the best model's 95% CI or beyond: file metadata alone (size, format, "
                   "resolution) separates these classes about as well, so the models' accuracy "
                   "may rest on such cues rather than on image content.")
    if majority is not None and (ci[0] if ci else mean) <= majority:
        out.append("- **No model clearly beats the majority-class rate**: nothing here shows "
                   "that the classes can be told apart.")
    out += [f"- {flag}" for flag in shortcut_flags(results)]  # raw vs harmonised inputs
    return out + [""]


def audit_cells(audit: Mapping[str, Any] | None) -> dict[str, str]:
    """Accuracy, its 95% CI and ROC-AUC of the metadata-only classifier (shortcut_audit), as
    table cells: cross-validated over folds of the whole dataset, not over seeds."""
    cells = {"accuracy": "–", "ci95": "–", "roc_auc": "–"}
    if not audit:
        return cells
    if isinstance(audit.get("accuracy"), (int, float)):
        cells["accuracy"] = f"{audit['accuracy']:.3f}"
    ci = audit.get("accuracy_ci95")
    if ci and all(isinstance(v, (int, float)) and v == v for v in ci):  # v == v: not NaN
        cells["ci95"] = f"[{ci[0]:.3f}, {ci[1]:.3f}]"
    if isinstance(audit.get("roc_auc"), (int, float)):
        cells["roc_auc"] = f"{audit['roc_auc']:.3f}"
    return cells


def _audit_section(results: Mapping[str, Any]) -> list[str]:
    audit = results.get("shortcut_audit")
    if not audit:
        return []
    from aigen.data.explore import format_audit

    return [
        "### Metadata shortcut audit",
        "",
        "How well file metadata alone (width, height, aspect ratio, file size, bytes per pixel, "
        "format, colour mode; no pixels) separates the classes, by cross-validation over the "
        "whole dataset. It is shown beside the models below: *what a model could reach by "
        "cheating*.",
        "",
        "```",
        format_audit(audit),
        "```",
        "",
    ]


def _data_section(results: Mapping[str, Any], figures: Mapping[str, Any]) -> list[str]:
    data = results["data"]
    out = ["## Data", ""]
    if data.get("kind") == "synthetic":
        out.append(
            "**The data was the embedded synthetic proxy dataset** (generated by `aigen synth`): "
            "simulated \"camera\" and \"generator\" images. The numbers below say how the pipeline "
            "behaves on that proxy and **nothing about real AI-generated images**."
        )
    elif data.get("root") is None and data.get("sets"):
        out.append(f"**The data was {len(data['sets'])} data sets trained on together** "
                   f"({data.get('kind')}), each image keeping the name of its set:")
    else:
        out.append(f"**The data was a user-supplied image folder** at `{data['root']}` (not the "
                   "synthetic proxy), taken as real AI-generated and real images.")
    out.append("")
    out += data_sets_lines(data)
    counts = data.get("n_per_class", {})
    out.append(
        f"{data['n_images']} usable images ({counts.get('ai', '?')} AI-generated, "
        f"{counts.get('real', '?')} real) out of {data.get('n_files', '?')} files; "
        f"{data['n_skipped']} file(s) skipped (listed in `skipped.csv`)."
    )
    if data.get("skipped_by_reason"):
        out.append("")
        out.append(_table(["reason", "files"], sorted(data["skipped_by_reason"].items())))
    out.append("")
    splits = data.get("splits", {})
    if splits:
        out.append("Stratified train/val/test split per seed (exact duplicates kept together; "
                   "contents present in both classes excluded), recorded in the split files:")
        out.append("")
        rows = [[seed, s["file"], s["train"], s["val"], s["test"], s["excluded"]]
                for seed, s in splits.items()]
        out.append(_table(["seed", "file", "train", "val", "test", "excluded"], rows))
        out.append("")
    out.append(f"Manifest sha256 (paths, contents, labels): `{data['manifest_sha256']}`.")
    out.append("")
    if data.get("summary"):
        from aigen.data.explore import format_summary_markdown

        out.append(format_summary_markdown(data["summary"]).rstrip())
        out.append("")
    explore_figures = [_figure(path, "exploration") for path in figures.get("exploration", [])]
    if explore_figures:
        out.append(" ".join(explore_figures))
        out.append("")
    out += _audit_section(results)
    return out


def _models_section(results: Mapping[str, Any]) -> list[str]:
    out = ["## Models and weights", ""]
    rows = []
    for name, m in results["models"].items():
        rows.append([f"`{name}`", REGIME_WORDS.get(m["regime"], m["regime"]),
                     m["weights_source"], f"{m['n_params']:,}", f"{m['trainable_params']:,}"])
    if rows:
        out.append(_table(["model", "what", "weights", "parameters", "trained parameters"], rows))
        out.append("")
    skipped = results.get("skipped_models", {})
    if skipped:
        out.append("Skipped models (not trained, not in the tables):")
        out.append("")
        out += [f"- `{name}`: {reason}" for name, reason in skipped.items()]
        out.append("")
    not_pretrained = [n for n, m in results["models"].items()
                      if m["regime"] != "scratch" and not m.get("pretrained", True)]
    if not_pretrained:
        out.append("**Not pretrained** (`--init random`): " + ", ".join(f"`{n}`" for n in
                                                                          not_pretrained)
                   + " started from a random initialisation; they exercise the code path only.")
        out.append("")
    return out


def _protocol_lines(results: Mapping[str, Any]) -> list[str]:
    """One line per model: its training hyperparameters and which epoch's weights it kept."""
    lines = []
    for name, m in results["models"].items():
        hp = dict(m.get("hyperparameters") or {})
        checkpoint = hp.pop("checkpoint", "last")
        kept = ("the last epoch's weights" if checkpoint == "last" else
                "the weights of the epoch with the best validation accuracy (so its val column "
                "is not a held-out estimate)")
        stopping = m.get("early_stopping")
        if stopping:  # the full regime: early stopping on validation
            runs = "; ".join(f"seed {seed}: {r['epochs_run']} epoch(s) run, epoch "
                             f"{r['best_epoch']} kept" for seed, r in stopping["per_seed"].items())
            kept = ("the weights of its best validation epoch (early stopping after "
                    f"{stopping['patience']} epoch(s) without a better one; {runs}), so its val "
                    "column is not a held-out estimate")
        settings = ", ".join(f"{k} {v}" for k, v in hp.items())
        lines.append(f"- `{name}`: {settings}; kept {kept}.")
    return ["Training settings:", "", *lines, ""] if lines else []


def _comparison_section(results: Mapping[str, Any], figures: Mapping[str, Any]) -> list[str]:
    seeds = results["seeds"]
    out = ["## Comparison", ""]
    data = results.get("data", {})
    if data.get("split_file_reused"):
        varies = (f"every seed uses the one split reused from `{data['split_file_reused']}`, so "
                  "the spread covers initialisation and shuffling only")
    else:
        varies = "each seed has its own split and initialisation"
    if len(seeds) == 1:
        out.append(f"Accuracy on each split with {seed_words(seeds)}, so no spread over seeds "
                   "is shown. 95% CI of the test accuracy: the Wilson score interval over the "
                   "test images of that one seed; it covers the finite number of test images, "
                   "not the variation between splits and initialisations that more seeds would "
                   "show.")
    else:
        out.append(f"Accuracy on each split, {cell_words(seeds)}; {varies}. "
                   + results["ci_method"])
    out.append("")
    out += _protocol_lines(results)
    rows = []
    for name, m in results["models"].items():
        rows.append([f"`{name}`", format_summary(m["train_accuracy"]),
                     format_summary(m["val_accuracy"]), format_summary(m["test_accuracy"]),
                     format_ci(m["test_accuracy"]), format_summary(m["test_roc_auc"])])
    audit = audit_cells(results.get("shortcut_audit"))
    rows.append(["metadata only (shortcut audit)", "–", "–", audit["accuracy"], audit["ci95"],
                 audit["roc_auc"]])
    out.append(_table(["model", "train", "val", "test", "test 95% CI", "test ROC-AUC"], rows))
    out.append("")
    out.append(
        "The last row is what a classifier reaches from file metadata alone (cross-validated "
        "over the whole dataset, see the shortcut audit above): *what a model could reach by "
        "cheating*. A model that does not clearly beat it has not shown that it learnt anything "
        "beyond such cues."
    )
    out.append("")
    per_class_rows = []
    for name, m in results["models"].items():
        agg = m["test_metrics"]["aggregate"]["per_class"]
        per_class_rows.append([f"`{name}`"] + [format_summary(agg[c][k]) for c in ("ai", "real")
                                               for k in ("precision", "recall", "f1")])
    if per_class_rows:
        out.append("Per class on the test split ("
                   + (f"seed {seeds[0]}" if len(seeds) == 1 else cell_words(seeds)) + "):")
        out.append("")
        out.append(_table(["model", "ai precision", "ai recall", "ai F1", "real precision",
                           "real recall", "real F1"], per_class_rows))
        out.append("")
    for key, alt in (("confusion", "confusion matrices"), ("roc", "ROC curves")):
        if figures.get(key):
            out.append(_figure(figures[key], alt))
            out.append("")
    if figures.get("confusion"):
        out.append(("Confusion matrices are summed over seeds" if len(seeds) > 1 else
                    f"Confusion matrices of seed {seeds[0]}")
                   + " (rows: true class, columns: predicted).")
        out.append("")
    curves = figures.get("curves", {})
    if curves:
        out.append("### Training curves")
        out.append("")
        for name, path in curves.items():
            out.append(_figure(path, f"training curves {name}"))
        out.append("")
    return out


def _lr_section(results: Mapping[str, Any], figures: Mapping[str, Any]) -> list[str]:
    study = results.get("lr_study")
    if not study or not study.get("runs"):
        return []
    out = ["## Learning-rate study (scratch CNN)", ""]
    out.append(
        f"The scratch CNN trained with each learning rate (plain SGD, batch size "
        f"{study['batch_size']}, {study['epochs']} epoch(s), {study['filters']} filters), same "
        f"seeds and splits as above; {cell_words(results['seeds'])}."
    )
    out.append("")
    rows = [[lr, format_summary(r["train_accuracy"]), format_summary(r["val_accuracy"]),
             format_summary(r["test_accuracy"]), format_summary(r["final_train_loss"], 4)]
            for lr, r in study["runs"].items()]
    out.append(_table(["learning rate", "train", "val", "test", "final train loss"], rows))
    out.append("")
    out += lr_failures(results)
    if figures.get("lr_study"):
        out.append(_figure(figures["lr_study"], "learning-rate study"))
        out.append("")
    return out


def lr_failures(results: Mapping[str, Any]) -> list[str]:
    """One sentence per learning rate whose scratch CNN did not learn: a test accuracy within
    MAJORITY_TOLERANCE of the majority-class rate, or one class answered for every test image."""
    study = results.get("lr_study") or {}
    majority = majority_rate(results)
    out = []
    for lr, r in (study.get("runs") or {}).items():
        mean = (r.get("test_accuracy") or {}).get("mean")
        single = list(r.get("test_single_class_seeds") or [])
        at_majority = (mean is not None and majority is not None
                       and abs(mean - majority) <= MAJORITY_TOLERANCE)
        if not (at_majority or single):
            continue
        why = []
        if at_majority:
            why.append(f"its test accuracy ({mean:.3f}) is at the majority-class rate "
                       f"({majority:.3f}, always answering the larger class)")
        if single:
            every = len(single) == len(results.get("seeds") or ()) and len(single) > 1
            which = "every seed" if every else \
                "seed" + ("s " if len(single) > 1 else " ") + ", ".join(map(str, single))
            why.append(f"it answered one class for every test image ({which})")
        out.append(f"**Learning rate {lr} did not learn**: " + " and ".join(why) + ". Training at this "
                   "rate produced no classifier (plain SGD diverging or collapsing to a constant "
                   "answer, or too few epochs), so this row says nothing about what the "
                   "architecture can learn.")
        out.append("")
    return out


def _sweep_cell(point: Mapping[str, Any], metric: str) -> str:
    """'0.850 (-0.030)': mean over seeds and change from the clean point (negative = worse)."""
    summary = point[metric]
    text = format_summary(summary)
    change = summary.get("change")
    if point["strength"] is None or change is None or text == "–":
        return text
    return f"{text} ({round(change, 3) + 0.0:+.3f})"  # + 0.0: no "-0.000"


def sweep_section(results: Mapping[str, Any], figures: Mapping[str, Any]) -> list[str]:
    """The degradation sweep: what it does, a table per metric, one figure per perturbation, and
    plain flags where a model collapses under a mild degradation (sweep.shortcut_flags)."""
    from aigen.study.sweep import flag_text, shortcut_flags

    sweep = results.get("sweep")
    if not sweep or not sweep.get("models"):
        return []
    models = list(sweep["models"])
    perts = sweep["perturbations"]
    out = ["## Degradation sweep", ""]
    out.append(
        f"Every model scored again on its seed's test images ({sweep['n_images']} distinct test "
        "images over all seeds, both classes alike), each image decoded at its stored resolution, "
        "degraded in memory, then preprocessed like every other image. **How to read it:** a "
        "model that learnt what the images show keeps most of its accuracy and ROC-AUC under the "
        "mild strengths (left of each figure) and declines gradually; one that relied on "
        "compression or resampling traces falls towards chance (0.5) as soon as they change. "
        "A drop in accuracy with a steady ROC-AUC means the scores moved but still rank the "
        "images (the threshold 0.5 no longer fits). The clean column is the same full-resolution "
        "decode without degradation (it can differ slightly from the comparison table, whose "
        "large JPEGs were decoded at reduced scale)."
    )
    out.append("")
    out += [f"- **{p['title']}** ({p['parameter']} "
            f"{', '.join(f'{s:g}' for s in p['strengths'])}): {p['description']}."
            for p in perts.values()]
    out.append("")
    for metric, title in (("accuracy", "Test accuracy"), ("roc_auc", "Test ROC-AUC")):
        rows = []
        for key, p in perts.items():
            for k, point in enumerate(sweep["models"][models[0]][key]):
                if k == 0 and key != "format_swap":
                    if rows:
                        continue  # every other perturbation shares the first one's clean point
                    label = "clean"
                elif k == 0:
                    label = f"{p['title']}: clean, on its images only (n={_n_text(point['n'])})"
                else:
                    label = f"{p['title']}, {p['parameter']} {point['strength']:g}"
                rows.append([label, *[_sweep_cell(sweep["models"][m][key][k], metric)
                                      for m in models]])
        out.append(f"{title} ({cell_words(results['seeds'])}); in parentheses the change vs "
                   "clean (perturbed − clean; negative = worse):")
        out.append("")
        out.append(_table(["condition", *[f"`{m}`" for m in models]], rows))
        out.append("")
    for key, path in (figures.get("sweep") or {}).items():
        out.append(_figure(path, f"degradation sweep: {perts[key]['title']}"))
    out.append("")
    flags = shortcut_flags(sweep)
    if flags:
        out.append("**Possible shortcuts** (at a mild strength a model lost more than half of "
                   "its margin over chance):")
        out.append("")
        out += [f"- {flag_text(f)}" for f in flags]
    else:
        out.append(f"No model lost more than half of its margin over chance under a mild "
                   "degradation (JPEG quality ≥ 75, downscaling to ≥ 0.5, blur σ ≤ 1, noise "
                   f"σ ≤ 5, the format swap); {_judged_text(sweep)}.")
    out.append("")
    return out


def _judged_text(sweep: Mapping[str, Any]) -> str:
    """Which models the shortcut flags could judge (those clearly above chance when clean)."""
    from aigen.study.sweep import MIN_MARGIN, judged_models

    judged = judged_models(sweep)
    if not judged:
        return (f"no model is {MIN_MARGIN:g} or more above chance on clean images, so the sweep "
                "cannot show a shortcut")
    left = [m for m in sweep["models"] if m not in judged]
    return ("models judged: " + ", ".join(f"`{m}`" for m in judged)
            + (f" (not {', '.join(f'`{m}`' for m in left)}: within {MIN_MARGIN:g} of chance on "
               "clean images)" if left else ""))


def _n_text(n: Sequence[int]) -> str:
    values = sorted(set(n))
    return "–" if not values else str(values[0]) if len(values) == 1 else \
        f"{values[0]}–{values[-1]}"


def diagnostics_section(results: Mapping[str, Any], figures: Mapping[str, Any]) -> list[str]:
    """What the models look at: the classes' frequency spectra, Grad-CAM of every backbone model,
    the scratch CNN's filters and activation maps; each explained in a sentence or two."""
    diag = results.get("diagnostics") or {}
    figs = figures.get("diagnostics") or {}
    if not diag:
        return []
    out = ["## What the models look at", ""]
    from aigen.data.spectra import spectra_markdown

    out += spectra_markdown(diag.get("spectra"), figs.get("spectra"))
    gradcam = diag.get("gradcam") or {}
    if gradcam:
        seed = next(iter(gradcam.values()))["seed"]
        out += ["### Grad-CAM heat maps", ""]
        out.append(
            f"For each backbone model (seed {seed}), test images of each class, classified "
            "correctly and wrongly (the most confident first), with the Grad-CAM map of its "
            "decision overlaid: the regions whose features in the last convolutional stage pushed "
            "it towards the class it chose (red: most). The maps are coarse (the stage's 7×7 "
            "grid, enlarged). **How to read it:** maps on the subject and its structures suggest "
            "the model uses content; maps that hug borders or corners, text or watermarks, or "
            "spread evenly over flat texture and sky suggest it uses something else (framing, "
            "compression or noise texture). The wrong rows show what misleads it.")
        out.append("")
        for name in gradcam:
            path = (figs.get("gradcam") or {}).get(name)
            if path:
                out.append(_figure(path, f"Grad-CAM {name}"))
        out.append("")
    scratch = diag.get("scratch_filters")
    if scratch:
        out += ["### The scratch CNN's filters", ""]
        out.append(
            f"The {scratch['filters']} learned 3×3 filters of `scratch_cnn` (seed "
            f"{scratch['seed']}; red: positive weights, blue: negative) and each filter's "
            "activation map (ReLU of the convolution) on test images of both classes. **How to "
            "read it:** filters with a clear sign pattern detect edges or gradients in one "
            "direction, and their maps outline shapes; a filter whose weights share one sign "
            "measures local brightness, and one that lights up evenly over a whole image of one "
            "class carries brightness or texture statistics rather than shapes. At 32×32 grey, "
            "the model sees only coarse structure: no fine detail, no colour.")
        out.append("")
        if figs.get("scratch_filters"):
            out.append(_figure(figs["scratch_filters"], "scratch CNN filters"))
            out.append("")
    return out


def build_report(results: Mapping[str, Any], config: Mapping[str, Any],
                 figures: Mapping[str, Any]) -> str:
    """The report as Markdown text.

    `figures` maps "exploration" (list), "confusion", "roc", "lr_study" (paths), "curves" ({model:
    path}), "sweep" ({perturbation: path}) and "diagnostics" ({"spectra": path, "gradcam": {model:
    path}, "scratch_filters": path}) to paths relative to the results folder.
    """
    env = config.get("environment", {})
    git = env.get("git") or {}
    commit = git.get("commit")
    out = ["# aigen study report", ""]
    out.append(
        f"Run {config.get('started', '')}; {seed_words(results['seeds'])}; device "
        f"`{config.get('device', '?')}`; aigen {env.get('packages', {}).get('aigen', '?')}, "
        + (f"commit `{commit[:12]}`{' (with local changes)' if git.get('dirty') else ''}"
           if commit else "not from a git checkout")
        + (". **Quick smoke run** (one epoch per model): the numbers are not meaningful."
           if config.get("arguments", {}).get("quick") else ".")
    )
    out.append("")
    out += summary_section(results)
    out.append("Everything here is in this folder: `results.json` (all numbers), `predictions.csv`, "
               "`history.csv`, the split files, `skipped.csv`, `config.json` (arguments, versions, "
               "timings) and `checkpoints/`.")
    out.append("")
    out += _data_section(results, figures)
    out += _models_section(results)
    out += _comparison_section(results, figures)
    out += test_metrics_section(results)
    out += per_set_section(results)
    out += protocols_section(results)
    out += _lr_section(results, figures)
    out += sweep_section(results, figures)
    out += diagnostics_section(results, figures)
    out += transfer_section(results, figures)
    return "\n".join(out).rstrip() + "\n"


# ---- evaluation on other labelled data (aigen evaluate, aigen study --eval-data) ---------------

def _cell(summary: Mapping[str, Any] | None) -> str:
    """'0.812 ± 0.021 [0.780, 0.850]' (mean ± std over seeds, then the 95% CI) or '–'."""
    text = format_summary(summary)
    ci = format_ci(summary)
    return text if "–" in (text, ci) else f"{text} {ci}"


def detector_tables(models: Mapping[str, Mapping[str, Any]], val_text: str) -> list[str]:
    """The tables of one set of images scored by every model (records of
    aigen.study.evaluate.model_evaluation): accuracy at 0.5, balanced and per-class accuracy,
    ROC-AUC, AP and ECE; the same at the threshold chosen on `val_text`; the per-source view."""
    if not models:
        return []
    out = [_table(["model", "accuracy (0.5)", "balanced accuracy", "accuracy real", "accuracy ai",
                   "ROC-AUC", "average precision", "ECE"],
                  [[f"`{name}`", _cell(m["accuracy"]), _cell(m["balanced_accuracy"]),
                    format_summary(m["accuracy_real"]), format_summary(m["accuracy_ai"]),
                    _cell(m["roc_auc"]), format_summary(m["average_precision"]),
                    format_summary(m["ece"])] for name, m in models.items()]), ""]
    out.append(f"At the threshold chosen on {val_text} (maximising balanced accuracy there, per "
               "seed):")
    out.append("")
    out.append(_table(["model", "threshold", "accuracy", "balanced accuracy"],
                      [[f"`{name}`", format_summary(m["at_val_threshold"]["threshold"]),
                        _cell(m["at_val_threshold"]["accuracy"]),
                        _cell(m["at_val_threshold"]["balanced_accuracy"])]
                       for name, m in models.items()]))
    out.append("")
    first = next(iter(models.values()))["by_source"]
    sources = sorted({s for m in models.values() for s in m["by_source"]})
    if sources:
        out.append("Per source (accuracy at 0.5; ROC-AUC too for a source holding both classes):")
        out.append("")
        rows = []
        for name, m in models.items():
            cells = []
            for s in sources:
                entry = m["by_source"].get(s, {})
                text = format_summary(entry.get("accuracy"))
                if "roc_auc" in entry:
                    text += f", AUC {format_summary(entry['roc_auc'])}"
                cells.append(text)
            rows.append([f"`{name}`", *cells])
        out.append(_table(["model", *[f"`{s}` (n={first.get(s, {}).get('n', '?')})"
                                      for s in sources]], rows))
        out.append("")
    return out


def data_sets_lines(data: Mapping[str, Any]) -> list[str]:
    """With several training sets: one row per set (its folder, kind, images per class)."""
    sets = data.get("sets") or {}
    if len(sets) < 2:
        return []
    rows = [[f"`{name}`", f"`{s['root']}`", s["kind"], s["n_per_class"]["ai"],
             s["n_per_class"]["real"]] for name, s in sets.items()]
    return [_table(["set", "folder", "kind", "ai images", "real images"], rows), "",
            "The splits are stratified by set and label (exact duplicates kept together, also "
            "across sets); split.csv and predictions.csv name each image's set.", ""]


def per_set_section(results: Mapping[str, Any]) -> list[str]:
    """With several training sets: every model's test metrics on each set's test images."""
    sets = (results.get("data") or {}).get("sets") or {}
    models = {name: m["per_set"] for name, m in results["models"].items() if m.get("per_set")}
    if len(sets) < 2 or not models:
        return []
    out = ["### Test split per training set", ""]
    out.append(
        "Each model on the test images of each training set (at the threshold 0.5); "
        f"{cell_words(results['seeds'])}, then a 95% bootstrap CI over that set's test images. A "
        "model that does well on one set only has learnt that set rather than what AI images "
        "share.")
    out.append("")
    names = list(sets)
    first = next(iter(models.values()))
    header = ["model", *[f"`{s}` (n={first[s]['n']})" for s in names if s in first]]
    for title, key in (("Accuracy (threshold 0.5)", "accuracy"),
                       ("Balanced accuracy", "balanced_accuracy"), ("ROC-AUC", "roc_auc")):
        rows = [[f"`{model}`", *[_cell(per_set[s][key]) for s in names if s in per_set]]
                for model, per_set in models.items()]
        out += [f"{title}:", "", _table(header, rows), ""]
    return out


def test_metrics_section(results: Mapping[str, Any]) -> list[str]:
    """The in-distribution test split scored like an evaluation set (results.json
    models.MODEL.test_evaluation): threshold-aware, calibration and per-source metrics."""
    models = {name: m["test_evaluation"] for name, m in results["models"].items()
              if m.get("test_evaluation")}
    if not models:
        return []
    cm = next(iter(results["models"].values()))["test_metrics"]["aggregate"]["confusion_matrix"]
    n_real, n_ai = sum(cm[0]), sum(cm[1])  # rows: true class, summed over seeds
    n = n_ai + n_real
    out = ["### Test split: threshold-aware metrics, calibration, sources", ""]
    out.append(
        "Each model on its seed's test split, with the metrics of the external evaluations: "
        f"{cell_words(results['seeds'])}, then a 95% CI from 1000 bootstrap resamples of the test "
        "images (each seed's own test images resampled; numpy seed 0). Baselines: always "
        "answering the larger "
        f"class reaches accuracy {max(n_ai, n_real) / n:.3f} and balanced accuracy 0.500; a "
        f"random ranking has ROC-AUC 0.500 and average precision {n_ai / n:.3f} (the share of ai "
        "images). ECE: expected calibration error of prob_ai over 10 equal-width bins (0 = "
        "calibrated). A source is the folder below the class folder.")
    out.append("")
    out += detector_tables(models, "the seed's validation split")
    return out


def evaluation_section(evaluation: Mapping[str, Any], figures: Mapping[str, str],
                       level: str = "##") -> list[str]:
    """Tables of one evaluation set: data, overall and threshold metrics, per source, figures."""
    data = evaluation["data"]
    n_ai, n_real = data["n_per_class"]["ai"], data["n_per_class"]["real"]
    n = n_ai + n_real
    dup = evaluation["overlap"]["exact_duplicates_of_training"]
    out = [f"{level} Evaluation set `{evaluation.get('name', '')}`", ""]
    out.append(
        f"`{data['root']}` ({data['kind']}): {data['n_files']} files, {data['n_images']} usable "
        f"images, {data['n_skipped']} skipped (listed in skipped.csv); {dup} exact copies of "
        f"images of the run's data set left out (duplicates.csv); **{n} evaluated**: {n_ai} ai, "
        f"{n_real} real.")
    out.append("")
    out.append(_table(["source", "class", "images"],
                      [[f"`{s}`", {1: "ai", 0: "real"}.get(v["label"], "both"), v["n"]]
                       for s, v in data["sources"].items()]))
    out.append("")
    ci_method = evaluation["ci_method"]
    seeds = evaluation.get("seeds") or []
    if len(seeds) == 1:
        ci_method = (f"Each figure is that of {seed_words(seeds)}. 95% CI: percentile interval "
                     "over 1000 bootstrap resamples of the evaluated images (numpy seed 0), so it "
                     "reflects how many images were evaluated.")
    out.append(ci_method + " Baselines: always answering the larger class reaches "
               f"accuracy {max(n_ai, n_real) / n:.3f} and balanced accuracy 0.500; a random "
               f"ranking has ROC-AUC 0.500 and average precision {n_ai / n:.3f} (the share of ai "
               "images). ECE: expected calibration error of prob_ai over 10 equal-width bins "
               "(0 = calibrated).")
    out.append("")
    out += detector_tables(evaluation["models"], "the run's validation split")
    for key, alt in (("roc", "ROC curves"), ("precision_recall", "precision-recall curves"),
                     ("reliability", "reliability diagram")):
        if figures.get(key):
            out.append(_figure(figures[key], alt))
    out.append("")
    return out


def build_evaluation_report(evaluation: Mapping[str, Any], figures: Mapping[str, str]) -> str:
    """report.md of `aigen evaluate`."""
    out = ["# aigen evaluation report", ""]
    out.append(f"Models of the run `{evaluation['run']}` (seeds "
               f"{', '.join(map(str, evaluation['seeds']))}), each scored on every image with the "
               "run's own preprocessing. Everything is in this folder: `evaluation.json` (all "
               "numbers), `predictions.csv`, `skipped.csv`, `duplicates.csv`, `figures/`.")
    out.append("")
    out += evaluation_section(evaluation, figures)
    return "\n".join(out).rstrip() + "\n"


def transfer_section(results: Mapping[str, Any], figures: Mapping[str, Any]) -> list[str]:
    """The transfer tables (models x in-distribution test and each external set) and one section
    per external set; nothing when the run had no --eval-data."""
    external = results.get("external") or {}
    if not external:
        return []
    out = ["## Transfer to other data", ""]
    out.append(
        "Every model (every seed) scored on data it never saw, from other sources (`--eval-data`). "
        "In-distribution: the test split (95% CI as in the comparison above); external sets: "
        f"{cell_words(results['seeds'])}, then a 95% bootstrap CI over the evaluated images. "
        "A model that "
        "learnt what tells AI images from real ones, rather than the quirks of one data set, "
        "keeps its in-distribution figures here; chance is accuracy ~0.5 (the larger class's "
        "share) and ROC-AUC 0.5.")
    out.append("")
    names = list(external)
    for title, test_key, key in (("Accuracy (threshold 0.5)", "test_accuracy", "accuracy"),
                                 ("ROC-AUC", "test_roc_auc", "roc_auc")):
        rows = []
        for model, m in results["models"].items():
            rows.append([f"`{model}`", _cell(m.get(test_key)),
                         *[_cell(external[s]["models"].get(model, {}).get(key)) for s in names]])
        header = ["model", "in-distribution test",
                  *[f"`{s}` (n={external[s]['data']['n_evaluated']})" for s in names]]
        out.append(f"{title}:")
        out.append("")
        out.append(_table(header, rows))
        out.append("")
    for name, evaluation in external.items():
        out += evaluation_section(evaluation, (figures.get("external") or {}).get(name, {}),
                                  level="###")
    return out


# ---- input protocols: raw vs harmonised, with and without augmentation -------------------------

SHORTCUT_DROP = 0.1  # a fall in test accuracy under harmonisation larger than this is flagged


def protocol_rows(results: Mapping[str, Any]) -> tuple[list[str], list[str], list[tuple]]:
    """(harmonisations, augmentations, rows) of the run's protocols: one row (model, input,
    augment, {harmonize: model record or None}) per model, input policy and augmentation, in
    the run's order (input "resize" for a protocol recorded without one)."""
    protocols = results.get("protocols") or {}
    harmonize = list(dict.fromkeys(p["harmonize"] for p in protocols.values()))
    augment = list(dict.fromkeys(p["augment"] for p in protocols.values()))
    inputs = list(dict.fromkeys(p.get("input", INPUT_RESIZE) for p in protocols.values()))
    by_parts = {(p.get("input", INPUT_RESIZE), p["harmonize"], p["augment"]): p
                for p in protocols.values()}
    rows = []
    names = list(dict.fromkeys(n for p in protocols.values() for n in p.get("models", {})))
    for name in names:
        for policy in inputs:
            for aug in augment:
                by_h = {h: (by_parts.get((policy, h, aug)) or {}).get("models", {}).get(name)
                        for h in harmonize}
                if any(by_h.values()):
                    rows.append((name, policy, aug, by_h))
    return harmonize, augment, rows


def _input_words(policy: str) -> str:
    return "" if policy == INPUT_RESIZE else f", input {policy}"


def shortcut_flags(results: Mapping[str, Any], drop: float = SHORTCUT_DROP) -> list[str]:
    """Plain sentences naming each model whose test accuracy collapses when the inputs are
    harmonised: a fall of more than `drop` from the same model and augmentation on raw inputs,
    or a 95% CI that is above the majority-class rate on raw inputs but not once harmonised."""
    harmonize, _, rows = protocol_rows(results)
    if "none" not in harmonize:
        return []
    majority = majority_rate(results)
    flags = []
    for name, policy, aug, by_h in rows:
        raw = by_h.get("none")
        if not raw or raw["test_accuracy"].get("mean") is None:
            continue
        for h, m in by_h.items():
            if h == "none" or not m or m["test_accuracy"].get("mean") is None:
                continue
            before, after = raw["test_accuracy"]["mean"], m["test_accuracy"]["mean"]
            reasons = []
            if before - after > drop:
                reasons.append(f"its test accuracy falls from {before:.3f} to {after:.3f}")
            if isinstance(majority, (int, float)):
                lo_raw = (raw["test_accuracy"].get("ci95") or [None])[0]
                lo = (m["test_accuracy"].get("ci95") or [None])[0]
                if lo_raw is not None and lo is not None and lo_raw > majority >= lo:
                    reasons.append(f"its 95% CI is no longer above the majority-class rate "
                                   f"{majority:.3f}")
            if reasons:
                flags.append(
                    f"**Looks like a shortcut:** `{name}` (augmentation {aug}"
                    f"{_input_words(policy)}): "
                    + " and ".join(reasons) + f" when every input is harmonised ({h}). What it "
                    "relied on does not survive one common JPEG re-encoding of both classes, so "
                    "it probably learnt the files' compression or resampling traces rather than "
                    "what the images show.")
    return flags


def _crop_lines(crops: Sequence[Mapping[str, Any]]) -> list[str]:
    """What the crop policy is, and how often it had to enlarge each class's images."""
    out = [
        "*Crops* (input crop): the backbones see 224×224 windows of the image at close to its "
        "stored resolution (short side scaled to S, centre S×S square; harmonised at that size, "
        "before any window is cut), a random window per image and epoch in training and the mean "
        "probability of five fixed windows (centre and corners) everywhere else; *resized* "
        "inputs shrink the whole image to 224×224. Crops keep the high-frequency traces that "
        "resizing smooths away, generation traces and compression traces alike: a model that "
        "gains from crops on raw inputs but not once harmonised may have gained from the files' "
        "compression (the JPEG round trip also removes genuine high-frequency traces of the "
        "generator). The scratch CNN keeps its 32×32 resized input.", ""]
    seen = set()
    for p in crops:
        rescaled = p.get("rescaled")
        if not rescaled or rescaled.get("side") in seen:
            continue
        seen.add(rescaled.get("side"))
        parts = []
        for cls, counts in (rescaled.get("per_class") or {}).items():
            n = sum(counts.values())
            if n:
                parts.append(f"{cls}: {counts.get('enlarged', 0) / n:.0%} enlarged, "
                             f"{counts.get('kept', 0) / n:.0%} kept, "
                             f"{counts.get('reduced', 0) / n:.0%} reduced")
        if parts:
            out += [f"Scaling to S = {rescaled['side']} (of the study's images; resampling leaves "
                    "traces of its own, so a class enlarged more often than the other carries a "
                    "cue): " + "; ".join(parts) + ".", ""]
    return out


def protocols_section(results: Mapping[str, Any]) -> list[str]:
    """"Raw vs harmonised": test accuracy and ROC-AUC (mean ± std over seeds, 95% CI) of every
    model under every protocol side by side, and the shortcut flags; empty with one protocol."""
    protocols = results.get("protocols") or {}
    if len(protocols) < 2:
        only = next(iter(protocols.values()), None)
        if only and only.get("input", INPUT_RESIZE) != INPUT_RESIZE:  # a run with crops alone
            return ["## Input policy: native-resolution crops", "", *_crop_lines([only])]
        return []
    harmonize, augment, rows = protocol_rows(results)
    crops = [p for p in protocols.values() if p.get("input", INPUT_RESIZE) != INPUT_RESIZE]
    title = ("raw vs harmonised, resized vs native-resolution crops, with and without "
             "augmentation" if crops else "raw vs harmonised, with and without augmentation")
    out = [f"## Input protocols: {title}", ""]
    on_square = " (crops: of the S×S square, before any window is cut)" if crops else ""
    out.append(
        "Each protocol trains and tests every model on the same splits; only the inputs differ. "
        "*Harmonised* (jpeg:Q): every image of both classes, in training, validation and test "
        "alike, is JPEG-encoded at quality Q after the resize to the model's input size"
        f"{on_square} and decoded again, so both classes carry the same fresh compression and a difference in how "
        "the files were compressed is no longer an easy cue. *Augmented*: the backbone models "
        "train on randomly flipped (flip) and also blurred and re-compressed (blurjpeg) images; "
        "the scratch CNN is never augmented. A model whose accuracy holds under harmonisation "
        "did not depend on the files' compression.")
    out.append("")
    if crops:
        out += _crop_lines(crops)
    out += [f"- `{key}`: {p.get('harmonize_text', p['harmonize'])}; augmentation: "
            f"{p.get('augment_text', p['augment'])}" for key, p in protocols.items()]
    out.append("")
    out.append(f"The other sections of this report show the first protocol, `{next(iter(protocols))}`"
               "; every protocol's numbers are in `results.json` under `protocols`.")
    out.append("")
    header = ["model", *(["input"] if crops else []), "augmentation"]
    for h in harmonize:
        header += [f"test accuracy ({h})", f"test ROC-AUC ({h})"]
    table = []
    for name, policy, aug, by_h in rows:
        scratch = any(m and m.get("regime") == "scratch" for m in by_h.values())
        shown = "none (never augmented)" if scratch else aug
        cells = [f"`{name}`", *([("resize (always)" if scratch else policy)] if crops else []),
                 shown]
        for h in harmonize:
            m = by_h.get(h)
            cells += [_cell(m and m["test_accuracy"]), _cell(m and m["test_roc_auc"])]
        table.append(cells)
    out.append(_table(header, table))
    out.append("")
    majority = majority_rate(results)
    out.append("Mean ± standard deviation over seeds, then the 95% CI of the mean (" +
               results.get("ci_method", "") + ")" +
               (f"; the majority-class rate to beat is {majority:.3f}."
                if isinstance(majority, (int, float)) else "."))
    out.append("")
    flags = shortcut_flags(results)
    if flags:
        out += [*flags, ""]
    elif "none" in harmonize and len(harmonize) > 1:
        out.append(f"No model loses more than {SHORTCUT_DROP} test accuracy under "
                   "harmonisation or falls to the majority-class rate: none of them looks like it "
                   "relied on the files' compression alone.")
        out.append("")
    return out
