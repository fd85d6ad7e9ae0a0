"""Classification metrics per seed (scikit-learn) and their summary over seeds.

Conventions used throughout the results folder:
- label 1 is "ai", label 0 is "real"; a model predicts "ai" when prob_ai >= THRESHOLD (0.5);
- a summary over seeds is {"mean", "std", "per_seed", "ci95"}; "std" is the sample standard
  deviation (ddof=1; 0.0 with one seed);
- "ci95" is a two-sided 95% interval for the mean: with two or more seeds, the Student-t interval
  over the per-seed values, except for a proportion (accuracy) on which every seed scored the same,
  where it is the Wilson score interval over all seeds' images (a t-interval would have zero
  width); with one seed and a proportion, the Wilson score interval over the images of that split;
  otherwise (one seed, not a proportion) null;
- a per-class precision (and F1) is null for a seed whose model never predicted that class.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from aigen.stats import t_interval  # noqa: F401  (used below; also imported from here)

THRESHOLD = 0.5
CLASS_NAMES = {0: "real", 1: "ai"}  # keys of the per-class metrics; matches LABEL_REAL / LABEL_AI
Z95 = 1.959963984540054  # two-sided 95% normal quantile


def predict_labels(prob_ai: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Hard labels (1 = ai) from probabilities; a tie at the threshold counts as ai."""
    return (np.asarray(prob_ai, dtype=np.float64) >= threshold).astype(np.int64)


def wilson_interval(correct: int, total: int, z: float = Z95) -> list[float] | None:
    """Wilson score interval for a proportion correct/total (None when total is 0)."""
    if total <= 0:
        return None
    p = correct / total
    denom = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def summarize(
    values: Sequence[float | None],
    counts: Sequence[tuple[int, int]] | None = None,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> dict[str, Any]:
    """Mean, sample std, per-seed values and a 95% CI (see the module docstring for the method).

    `counts` gives (correct, total) per seed for a proportion, enabling the one-seed Wilson interval.
    Values that are None (a metric undefined for a seed) are left out of mean/std/CI but kept in
    "per_seed". `bounds` clips the t-interval to the metric's range.
    """
    per_seed = [None if v is None else float(v) for v in values]
    defined = [v for v in per_seed if v is not None]
    if not defined:
        return {"mean": None, "std": None, "per_seed": per_seed, "ci95": None, "ci_method": None}
    x = np.asarray(defined, dtype=np.float64)
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    if x.size > 1 and std == 0.0 and counts is not None:
        # Every seed scored the same: the t-interval would have zero width, claiming a certainty
        # the test images cannot give. The Wilson interval over all seeds' images is honest.
        ci, method = wilson_interval(sum(c for c, _ in counts), sum(n for _, n in counts)), "wilson"
    elif x.size > 1:
        ci, method = t_interval(x), "t"
        if bounds is not None:
            ci = [max(bounds[0], ci[0]), min(bounds[1], ci[1])]
    elif counts is not None and len(counts) == 1:
        ci, method = wilson_interval(*counts[0]), "wilson"
    else:
        ci, method = None, None
    return {"mean": mean, "std": std, "per_seed": per_seed, "ci95": ci, "ci_method": method}


def classification_metrics(y_true: np.ndarray, prob_ai: np.ndarray) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, ROC-AUC and the confusion matrix.

    The confusion matrix is [[real->real, real->ai], [ai->real, ai->ai]] (rows: true label,
    columns: predicted). ROC-AUC is None when the labels hold a single class.
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    y_true = np.asarray(y_true, dtype=np.int64)
    prob_ai = np.asarray(prob_ai, dtype=np.float64)
    y_pred = predict_labels(prob_ai)
    labels = sorted(CLASS_NAMES)
    # A class never predicted has no precision (nor F1): None, left out of the means over seeds,
    # rather than a 0.0 that would be averaged in as if it had been measured.
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=np.nan
    )
    auc = float(roc_auc_score(y_true, prob_ai)) if len(np.unique(y_true)) == 2 else None
    return {
        "n": int(y_true.size),
        "correct": int((y_pred == y_true).sum()),
        "accuracy": float(accuracy_score(y_true, y_pred)) if y_true.size else None,
        "roc_auc": auc,
        "per_class": {
            CLASS_NAMES[label]: {
                "precision": _defined(precision[i]),
                "recall": _defined(recall[i]),
                "f1": _defined(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def _defined(value) -> float | None:
    return None if np.isnan(value) else float(value)


def aggregate_metrics(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Summaries over seeds of the dicts `classification_metrics` returns.

    Accuracy, ROC-AUC and each per-class precision/recall/F1 get a `summarize` record; the
    confusion matrix is summed over seeds (its total is then n_seeds x test size).
    """
    accuracy = summarize(
        [m["accuracy"] for m in per_seed], counts=[(m["correct"], m["n"]) for m in per_seed]
    )
    per_class = {
        name: {
            key: summarize([m["per_class"][name][key] for m in per_seed])
            for key in ("precision", "recall", "f1")
        }
        for name in CLASS_NAMES.values()
    }
    cm = np.sum([np.asarray(m["confusion_matrix"], dtype=np.int64) for m in per_seed], axis=0)
    return {
        "accuracy": accuracy,
        "roc_auc": summarize([m["roc_auc"] for m in per_seed]),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def format_summary(summary: dict[str, Any] | None, digits: int = 3) -> str:
    """'0.812 ± 0.021' (or '0.812' with one seed, '–' when undefined) for tables."""
    if not summary or summary.get("mean") is None:
        return "–"
    mean = f"{summary['mean']:.{digits}f}"
    if len([v for v in summary["per_seed"] if v is not None]) > 1:
        return f"{mean} ± {summary['std']:.{digits}f}"
    return mean


def format_ci(summary: dict[str, Any] | None, digits: int = 3) -> str:
    """'[0.780, 0.850]' or '–'."""
    if not summary or not summary.get("ci95"):
        return "–"
    lo, hi = summary["ci95"]
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"
