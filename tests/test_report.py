"""report.md from hand-built results dicts: the Summary at the top (each of its sentences), the
wording with one seed, the degradation sweep's sign convention and flags, and the learning-rate
failures."""

import re

import pytest

from aigen.study import report, sweep
from aigen.study.metrics import summarize


def acc(per_seed, n=100):
    """A test-accuracy summary as the driver builds it (counts give the one-seed Wilson CI)."""
    return summarize(per_seed, counts=[(round(a * n), n) for a in per_seed])


def model(per_seed, regime="scratch"):
    return {"regime": regime, "backbone": None, "weights_source": "random", "pretrained": False,
            "n_params": 10, "trainable_params": 10, "hyperparameters": {"epochs": 1},
            "train_accuracy": acc(per_seed), "val_accuracy": acc(per_seed),
            "test_accuracy": acc(per_seed), "test_roc_auc": summarize(per_seed),
            "test_metrics": {"aggregate": {
                "per_class": {c: {k: summarize(per_seed) for k in ("precision", "recall", "f1")}
                              for c in ("ai", "real")},
                "confusion_matrix": [[40, 10], [10, 40]]}}}


def jpeg_points(clean, by_quality=None, auc=None):
    """One model's sweep points for "jpeg" from per-seed accuracies: `clean`, and per quality its
    values (the clean ones where not given); ROC-AUC = `auc` (per quality) or the accuracy."""
    by_quality, auc = by_quality or {}, auc or {}

    def point(strength, values):
        return {"strength": strength, "n": [100] * len(values), "accuracy": acc(values),
                "roc_auc": summarize(auc.get(strength, values))}

    first = point(None, clean)
    return [sweep._with_change(first, first)] + [
        sweep._with_change(point(q, by_quality.get(q, clean)), first)
        for q in sweep.PERTURBATIONS["jpeg"].strengths]


def results_dict(seeds=(0,), models=None, audit=(0.60, [0.55, 0.65]), majority=0.5,
                 sweep_models=None, lr_runs=None, external=None, kind="real"):
    models = models or {"scratch_cnn": model([0.9] * len(seeds)),
                        "resnet18_frozen": model([0.7] * len(seeds), "frozen")}
    return {
        "seeds": list(seeds),
        "models": models,
        "skipped_models": {},
        "data": {"kind": kind, "root": "/data", "n_images": 500, "n_files": 500,
                 "n_skipped": 0, "n_per_class": {"ai": 250, "real": 250},
                 "manifest_sha256": "0" * 64,
                 "splits": {str(s): {"file": "split.csv", "train": 300, "val": 100, "test": 100,
                                     "excluded": 0} for s in seeds}},
        "shortcut_audit": {"accuracy": audit[0], "accuracy_ci95": audit[1], "roc_auc": 0.6,
                           "majority_baseline": majority, "folds": 5, "seed": 0,
                           "n_images": 500, "metadata_source": "files",
                           "logistic": {"accuracy": 0.5, "accuracy_ci95": [0.45, 0.55],
                                        "roc_auc": 0.5},
                           "single_feature": {"width": {"accuracy": 0.5, "roc_auc": 0.5}},
                           "importance": {"width": 1.0}},
        "sweep": {"perturbations": sweep.describe(["jpeg"]), "n_images": 100,
                  "models": {m: {"jpeg": points} for m, points in (sweep_models or {}).items()}},
        "lr_study": {"epochs": 1, "filters": 8, "batch_size": 1, "runs": lr_runs or {}},
        "ci_method": "CI method text.",
        **({"external": external} if external is not None else {}),
    }


def summary_text(results):
    lines = report.summary_section(results)
    assert lines[0] == "## Summary"
    return "\n".join(lines)


# ---- the Summary -----------------------------------------------------------------------------

def test_summary_is_the_first_section_and_names_the_best_model():
    text = report.build_report(results_dict(), {}, {})
    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    assert sections[0] == "Summary"
    summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    ci = report._interval(results_dict()["models"]["scratch_cnn"]["test_accuracy"])
    assert f"**Best model: `scratch_cnn`**, test accuracy 0.900, 95% CI [{ci[0]:.3f}, " in summary
    assert "(one seed, seed 0; CI: Wilson interval over its 100 test images)" in summary
    assert "clearly beats the next best, `resnet18_frozen`" in summary


def test_summary_best_model_with_several_seeds_names_the_t_interval():
    results = results_dict(seeds=(0, 1, 2), models={"a": model([0.8, 0.9, 0.85]),
                                                    "b": model([0.82, 0.88, 0.86])})
    text = summary_text(results)
    assert "**Best model: `b`**" in text  # mean 0.8533 > 0.85
    assert "mean over 3 seeds (0, 1, 2); CI: Student-t interval over the seeds" in text
    assert "does not clearly beat the next best, `a`" in text  # overlapping CIs


def test_summary_against_the_audit_and_the_majority_rate():
    text = summary_text(results_dict(audit=(0.6, [0.55, 0.65])))
    assert ("`scratch_cnn` clearly beats the metadata-only audit (accuracy 0.600, 95% CI "
            "[0.550, 0.650],") in text
    assert "clearly beats the majority-class rate (0.500" in text
    assert "Possible shortcut" not in text

    text = summary_text(results_dict(audit=(0.86, [0.80, 0.92])))  # overlaps 0.9's Wilson CI
    assert "does not clearly beat the metadata-only audit (accuracy 0.860" in text
    assert "**Possible shortcut**: the metadata-only audit (0.860)" in text

    text = summary_text(results_dict(audit=(0.99, [0.98, 1.0])))
    assert "is clearly below the metadata-only audit" in text
    assert "Possible shortcut" in text


def test_summary_says_when_no_model_beats_the_majority_rate():
    results = results_dict(models={"a": model([0.52])}, audit=(0.5, [0.45, 0.55]), majority=0.5)
    text = summary_text(results)
    assert "does not clearly beat the majority-class rate (0.500" in text
    assert "No model clearly beats the majority-class rate" in text


def test_summary_sweep_sentence_flags_a_shortcut_or_gives_the_largest_mild_change():
    models = {"scratch_cnn": jpeg_points([0.9], {90: [0.5], 75: [0.5]}, auc={90: [0.52]}),
              "resnet18_frozen": jpeg_points([0.7], {90: [0.69]})}
    text = summary_text(results_dict(sweep_models=models))
    assert "**Degradation sweep** (100 test images of both classes" in text
    assert "**possible shortcut**: `scratch_cnn`: under jpeg re-encoding at quality 90" in text
    assert "ROC-AUC falls from 0.900 to 0.520" in text and "compression traces" in text

    models = {"scratch_cnn": jpeg_points([0.9], {75: [0.89], 30: [0.6]})}
    text = summary_text(results_dict(sweep_models=models))
    assert ("the largest accuracy change (perturbed − clean, negative = worse) is -0.010, "
            "`scratch_cnn` under jpeg quality 75") in text  # quality 30 is not mild
    assert "possible shortcut" not in text
    assert "models judged: `scratch_cnn`." in text

    models = {"scratch_cnn": jpeg_points([0.55], {90: [0.5]}, auc={None: [0.52]})}
    text = summary_text(results_dict(sweep_models=models))
    assert "no model is 0.1 or more above chance on clean images" in text


def external_set(accuracies, n_ai=50, n_real=50):
    return {"data": {"n_per_class": {"ai": n_ai, "real": n_real}, "n_evaluated": n_ai + n_real},
            "models": {m: {"accuracy": {**summarize([a]), "ci95": [a - 0.05, a + 0.05]}}
                       for m, a in accuracies.items()}}


def test_summary_transfer_sentence_only_with_external_results():
    assert "Transfer" not in summary_text(results_dict())
    external = {"sd_coco": external_set({"scratch_cnn": 0.52, "resnet18_frozen": 0.66}),
                "other": external_set({"scratch_cnn": 0.60, "resnet18_frozen": 0.58})}
    text = summary_text(results_dict(external=external))
    assert ("**Transfer to other data**: the best is `resnet18_frozen` on `sd_coco`, accuracy "
            "0.660, 95% CI [0.610, 0.710] (in distribution: 0.700), which clearly beats the larger "
            "class's share (0.500)") in text
    assert "the largest fall is `scratch_cnn` on `sd_coco`, 0.900 → 0.520 (change -0.380)" in text

    external = {"sd_coco": external_set({"scratch_cnn": 0.52, "resnet18_frozen": 0.50})}
    text = summary_text(results_dict(external=external))
    assert "which does not clearly beat the larger class's share (0.500)" in text


def test_summary_flags_synthetic_data():
    assert "**Synthetic proxy data**" in summary_text(results_dict(kind="synthetic"))
    assert "Synthetic proxy" not in summary_text(results_dict())


# ---- one seed: no std, no "over 1 seed(s)" ----------------------------------------------------

def full_evaluation(accuracies, seeds=(0,)):
    """An external-set record with every key the report's evaluation section reads."""
    evaluation = external_set(accuracies)
    metric = {**summarize([0.6] * len(seeds)), "ci95": [0.5, 0.7]}
    evaluation["data"].update(root="/other", kind="real", n_files=100, n_images=100,
                              n_skipped=0, sources={"ai": {"label": 1, "n": 50},
                                                    "real": {"label": 0, "n": 50}})
    evaluation["overlap"] = {"exact_duplicates_of_training": 0}
    evaluation["ci_method"] = "Each figure is the mean over seeds (std: sample standard deviation)."
    evaluation.update(name="sd_coco", seeds=list(seeds))
    for m in evaluation["models"].values():
        m.update({k: metric for k in ("balanced_accuracy", "accuracy_real", "accuracy_ai",
                                      "roc_auc", "average_precision", "ece")})
        m["at_val_threshold"] = {"threshold": metric, "accuracy": metric,
                                 "balanced_accuracy": metric}
        m["by_source"] = {"ai": {"accuracy": metric}, "real": {"accuracy": metric}}
    return evaluation


def test_one_seed_report_has_no_std_and_says_one_seed():
    sweep_models = {"scratch_cnn": jpeg_points([0.9], {50: [0.8]})}
    lr_runs = {"0.01": {"train_accuracy": acc([0.9]), "val_accuracy": acc([0.9]),
                        "test_accuracy": acc([0.9]), "final_train_loss": summarize([0.3])}}
    external = {"sd_coco": full_evaluation({"scratch_cnn": 0.6, "resnet18_frozen": 0.6})}
    results = results_dict(sweep_models=sweep_models, lr_runs=lr_runs)
    text = report.build_report(results, {}, {})
    assert "±" not in text
    assert "seed(s)" not in text and "over 1 seed" not in text
    assert "mean over seeds" not in text and "std over seeds" not in text
    assert "one seed (seed 0)" in text
    assert "Wilson score interval over the test images of that one seed" in text
    # the transfer tables too (external sets carry their own CI text)
    section = "\n".join(report.transfer_section({**results, "external": external}, {}))
    assert "±" not in section and "mean over seeds" not in section
    assert "Each figure is that of one seed (seed 0)" in section


def test_several_seeds_report_gives_mean_and_std():
    results = results_dict(seeds=(0, 1), models={"a": model([0.8, 0.9])})
    text = report.build_report(results, {}, {})
    assert "mean ± sample standard deviation over 2 seeds (0, 1)" in text
    assert "0.850 ± 0.071" in text


# ---- the degradation sweep: one sign convention in results.json and the report --------------

def test_sweep_change_sign_agrees_between_json_and_report():
    points = jpeg_points([0.9], {50: [0.8], 100: [0.95]})
    assert points[4]["accuracy"]["change"] == pytest.approx(-0.1)  # quality 50
    assert points[1]["accuracy"]["change"] == pytest.approx(0.05)  # quality 100
    results = results_dict(sweep_models={"scratch_cnn": points})
    text = "\n".join(report.sweep_section(results, {}))
    assert "in parentheses the change vs clean (perturbed − clean; negative = worse)" in text
    rows = [line for line in text.splitlines() if line.startswith("| JPEG re-encoding")]
    assert "| JPEG re-encoding, quality 50 | 0.800 (-0.100) |" in rows
    assert "| JPEG re-encoding, quality 100 | 0.950 (+0.050) |" in rows
    assert "No model lost more than half of its margin" in text


# ---- the learning-rate study -----------------------------------------------------------------

def lr_run(test, single=()):
    return {"train_accuracy": acc([test]), "val_accuracy": acc([test]),
            "test_accuracy": acc([test]), "final_train_loss": summarize([0.69]),
            "test_single_class_seeds": list(single)}


def test_lr_at_the_majority_rate_is_explained():
    results = results_dict(lr_runs={"0.01": lr_run(0.9), "0.1": lr_run(0.505)})
    lines = report.lr_failures(results)
    text = "\n".join(lines)
    assert "**Learning rate 0.1 did not learn**" in text
    assert "test accuracy (0.505) is at the majority-class rate (0.500" in text
    assert "0.01" not in text
    one_class = results_dict(lr_runs={"0.1": lr_run(0.505, single=[0])})
    assert "answered one class for every test image (seed 0)" in "\n".join(
        report.lr_failures(one_class))
    assert text in "\n".join(report._lr_section(results, {}))


def test_lr_answering_one_class_is_explained_even_off_the_majority_rate():
    results = results_dict(seeds=(0, 1), majority=0.6,
                           lr_runs={"0.1": {**lr_run(0.7, single=[1])}})
    text = "\n".join(report.lr_failures(results))
    assert "**Learning rate 0.1 did not learn**" in text
    assert "answered one class for every test image (seed 1)" in text
    assert "majority-class rate" not in text
