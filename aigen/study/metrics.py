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

from typing import Any, Sequence

import numpy as np

from aigen.stats import Z95, t_interval, wilson_interval  # noqa: F401  (also imported from here)

THRESHOLD = 0.5
CLASS_NAMES = {0: "real", 1: "ai"}  # keys of the per-class metrics; matches LABEL_REAL / LABEL_AI


def predict_labels(prob_ai: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Hard labels (1 = ai) from probabilities; a tie at the threshold counts as ai."""
    return (np.asarray(prob_ai, dtype=np.float64) >= threshold).astype(np.int64)


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
    """'[0.780, 0.850]' or '–'; an interval of zero width (e.g. a ROC-AUC of 1.0 on every seed)
    is said to be not informative rather than shown as a certainty."""
    if not summary or not summary.get("ci95"):
        return "–"
    lo, hi = summary["ci95"]
    if lo == hi:
        return f"[{lo:.{digits}f}, {hi:.{digits}f}] (zero width: not informative)"
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


# ---- threshold-aware metrics, calibration and image-bootstrap intervals (evaluation) ----------

ECE_BINS = 10  # equal-width bins of prob_ai for the expected calibration error and its diagram
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def _both_classes(y: np.ndarray) -> bool:
    return bool(np.any(y == 1) and np.any(y == 0))


def threshold_metrics(y_true, prob_ai, threshold: float = THRESHOLD) -> dict[str, float | None]:
    """Accuracy, balanced accuracy and the accuracy on real / on AI images at `threshold`.

    A per-class accuracy is None when the labels hold no image of that class, and the balanced
    accuracy (their mean) is None unless both classes are present.
    """
    y = np.asarray(y_true, dtype=np.int64)
    correct = predict_labels(prob_ai, threshold) == y
    n_ai = int(y.sum())
    n_real = y.size - n_ai
    right_ai = int(correct[y == 1].sum())
    acc = {0: (int(correct.sum()) - right_ai) / n_real if n_real else None,
           1: right_ai / n_ai if n_ai else None}
    return {
        "accuracy": float(correct.mean()) if y.size else None,
        "balanced_accuracy": (acc[0] + acc[1]) / 2 if _both_classes(y) else None,
        "accuracy_real": acc[0],
        "accuracy_ai": acc[1],
    }


def ranking_metrics(y_true, prob_ai) -> dict[str, float | None]:
    """ROC-AUC and average precision (ai = positive class); None unless both classes are present."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(y_true, dtype=np.int64)
    if not _both_classes(y):
        return {"roc_auc": None, "average_precision": None}
    p = np.asarray(prob_ai, dtype=np.float64)
    return {"roc_auc": float(roc_auc_score(y, p)),
            "average_precision": float(average_precision_score(y, p))}


def reliability_bins(y_true, prob_ai, bins: int = ECE_BINS) -> list[dict[str, float | int]]:
    """Per equal-width bin of prob_ai (the last bin includes 1.0): n, mean prob_ai, share of ai."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(prob_ai, dtype=np.float64)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        out.append({"lower": b / bins, "upper": (b + 1) / bins, "n": n,
                    "mean_prob_ai": float(p[mask].mean()) if n else None,
                    "fraction_ai": float(y[mask].mean()) if n else None})
    return out


def expected_calibration_error(y_true, prob_ai, bins: int = ECE_BINS) -> float | None:
    """ECE of prob_ai: sum over equal-width bins of (bin share of images) x |share of ai images in
    the bin - mean prob_ai in the bin|. 0 is perfectly calibrated; None for no images."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(prob_ai, dtype=np.float64)
    if y.size == 0:
        return None
    which = np.minimum((p * bins).astype(np.int64), bins - 1)  # the bins of reliability_bins
    gap = np.bincount(which, weights=y, minlength=bins) - np.bincount(which, weights=p,
                                                                        minlength=bins)
    return float(np.abs(gap).sum() / y.size)  # sum_b n_b/n |mean_y_b - mean_p_b|


def choose_threshold(y_true, prob_ai) -> float | None:
    """The threshold on prob_ai (predict ai when prob_ai >= t) that maximises balanced accuracy on
    these labels, e.g. the validation split; ties go to the candidate closest to 0.5. None unless
    both classes are present."""
    from sklearn.metrics import roc_curve

    y = np.asarray(y_true, dtype=np.int64)
    if not _both_classes(y):
        return None
    fpr, tpr, thresholds = roc_curve(y, np.asarray(prob_ai, dtype=np.float64),
                                     drop_intermediate=False)
    finite = np.isfinite(thresholds)  # the first candidate (inf) predicts nothing as ai
    score = (tpr + 1 - fpr)[finite] / 2
    candidates = thresholds[finite]
    best = np.flatnonzero(np.isclose(score, score.max(), rtol=0, atol=1e-12))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - THRESHOLD))]])


def _curve_counts(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (true positives, false positives) at each distinct score, highest first."""
    order = np.argsort(-p, kind="mergesort")
    p, y = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(p)), p.size - 1]  # the last image at each distinct score
    tp = np.cumsum(y)[last]
    return tp, (last + 1) - tp


def fast_ranking_metrics(y_true, prob_ai) -> dict[str, float | None]:
    """ROC-AUC (trapezoids over the ROC points) and average precision (sum over distinct
    thresholds of recall gain x precision) from one sort: the values sklearn's roc_auc_score and
    average_precision_score give, without their input checks, for the many bootstrap calls."""
    y = np.asarray(y_true, dtype=np.float64)
    if not _both_classes(y):
        return {"roc_auc": None, "average_precision": None}
    tp, fp = _curve_counts(y, np.asarray(prob_ai, dtype=np.float64))
    tpr, fpr = np.r_[0.0, tp / tp[-1]], np.r_[0.0, fp / fp[-1]]
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    return {"roc_auc": auc, "average_precision": float(np.sum(np.diff(tpr) * tp / (tp + fp)))}


def detector_metrics(y_true, prob_ai, val_threshold: float | None = None,
                     fast: bool = False) -> dict[str, float | None]:
    """Every per-image metric of an evaluation for one seed: threshold_metrics at 0.5, ROC-AUC,
    average precision, ECE, and accuracy / balanced accuracy at `val_threshold`. `fast` uses the
    rank-based AUC/AP (same values) for the bootstrap."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(prob_ai, dtype=np.float64)
    out: dict[str, float | None] = dict(threshold_metrics(y, p))
    if fast:
        out.update(fast_ranking_metrics(y, p))
    else:
        out.update(ranking_metrics(y, p))
    out["ece"] = expected_calibration_error(y, p)
    at_val = threshold_metrics(y, p, val_threshold) if val_threshold is not None else {}
    out["val_threshold_accuracy"] = at_val.get("accuracy")
    out["val_threshold_balanced_accuracy"] = at_val.get("balanced_accuracy")
    return out


def bootstrap_cis(y_true, probs: Sequence[np.ndarray], metrics, n_resamples: int =
                  BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict[str, list[float] | None]:
    """{key: 95% percentile interval} of the mean over seeds of each value of metrics(y, prob, k),
    when the images are resampled with replacement (numpy default_rng(seed)).

    `probs` holds one prob_ai array per seed. `y_true` is either one label array shared by every
    seed (the seeds scored the same images: the same resample for every seed k), or a list with
    one label array per seed (each seed scored its own images, e.g. its own test split: each is
    resampled on its own). `metrics` returns a dict of floats (or None when undefined).
    Resamples on which a value is undefined for some seed (e.g. a single class drawn) are left out
    for that key; its interval is None when fewer than half of the resamples define it.
    """
    shared = not isinstance(y_true, (list, tuple))
    ys = [np.asarray(y_true)] * len(probs) if shared else [np.asarray(y) for y in y_true]
    if not len(probs) or any(y.size == 0 for y in ys):
        return {}
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    keys: list[str] = []
    for _ in range(n_resamples):
        if shared:
            idx = [rng.integers(0, ys[0].size, ys[0].size)] * len(probs)
        else:
            idx = [rng.integers(0, y.size, y.size) for y in ys]
        per_seed = [metrics(y[i], p[i], k) for k, (y, p, i) in enumerate(zip(ys, probs, idx))]
        keys = list(per_seed[0])
        for key in keys:
            v = [m[key] for m in per_seed]
            if all(x is not None for x in v):
                values.setdefault(key, []).append(float(np.mean(v)))
    return {key: ([float(q) for q in np.percentile(values[key], [2.5, 97.5])]
                  if len(values.get(key, ())) >= n_resamples / 2 else None) for key in keys}


def summarize_bootstrap(values: Sequence[float | None], ci: list[float] | None,
                        n: int | None = None) -> dict[str, Any]:
    """A summary over seeds (as `summarize`) whose ci95 comes from `bootstrap_cis`.

    For a proportion over `n` images, a bootstrap interval of zero width (every image right, or
    every one wrong: no resample can differ) is replaced by the Wilson interval of the mean
    proportion over the n images, which is honest about how few images that may be.
    """
    summary = summarize(values, bounds=None)
    summary["ci95"] = ci if summary["mean"] is not None else None
    summary["ci_method"] = "bootstrap" if summary["ci95"] is not None else None
    if n and summary["ci95"] is not None and summary["ci95"][0] == summary["ci95"][1]:
        summary["ci95"] = wilson_interval(round(summary["mean"] * n), n)
        summary["ci_method"] = "wilson"
    return summary
