"""aigen.study.metrics: summaries over seeds, confidence intervals, per-seed metrics vs sklearn."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from aigen.study import metrics


def test_summarize_several_seeds_uses_sample_std_and_t_interval():
    values = [0.70, 0.80, 0.75, 0.90]
    s = metrics.summarize(values)
    assert s["mean"] == pytest.approx(np.mean(values))
    assert s["std"] == pytest.approx(np.std(values, ddof=1))
    assert s["per_seed"] == values
    lo, hi = stats.t.interval(0.95, df=3, loc=np.mean(values), scale=stats.sem(values))
    assert s["ci95"] == pytest.approx([lo, hi])
    assert s["ci_method"] == "t"


def test_summarize_clips_interval_to_bounds_only_when_asked():
    values = [0.98, 1.0, 0.9]
    assert metrics.summarize(values)["ci95"][1] == 1.0
    unclipped = metrics.summarize(values, bounds=None)["ci95"]
    assert unclipped[1] > 1.0


def test_one_seed_proportion_gets_wilson_interval():
    s = metrics.summarize([0.8], counts=[(8, 10)])
    assert s["std"] == 0.0
    assert s["ci_method"] == "wilson"
    # Reference values of the 95% Wilson score interval for 8 successes out of 10.
    assert s["ci95"] == pytest.approx([0.4902, 0.9433], abs=1e-4)


def test_one_seed_without_counts_has_no_interval():
    s = metrics.summarize([0.8])
    assert s["ci95"] is None and s["std"] == 0.0 and s["mean"] == 0.8


def test_wilson_interval_edges():
    lo, hi = metrics.wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and 0.6 < lo < 0.75
    lo, hi = metrics.wilson_interval(0, 10)
    assert lo == pytest.approx(0.0) and 0.25 < hi < 0.4
    assert metrics.wilson_interval(0, 0) is None


def test_summarize_skips_undefined_values():
    s = metrics.summarize([0.6, None, 0.8])
    assert s["mean"] == pytest.approx(0.7)
    assert s["per_seed"] == [0.6, None, 0.8]
    empty = metrics.summarize([None])
    assert empty["mean"] is None and empty["ci95"] is None


def _random_predictions(seed, n=60):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    prob = np.clip(0.5 * y + rng.uniform(0, 0.6, n) - 0.05, 0, 1)
    return y, prob


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_sklearn(seed):
    y, prob = _random_predictions(seed)
    pred = (prob >= 0.5).astype(int)
    m = metrics.classification_metrics(y, prob)
    assert m["n"] == len(y)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["correct"] == int((pred == y).sum())
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, prob))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()
    for label, name in ((0, "real"), (1, "ai")):
        assert m["per_class"][name]["precision"] == pytest.approx(
            skm.precision_score(y, pred, pos_label=label, zero_division=0))
        assert m["per_class"][name]["recall"] == pytest.approx(
            skm.recall_score(y, pred, pos_label=label, zero_division=0))
        assert m["per_class"][name]["f1"] == pytest.approx(
            skm.f1_score(y, pred, pos_label=label, zero_division=0))
        assert m["per_class"][name]["support"] == int((y == label).sum())


def test_confusion_matrix_layout_and_threshold_tie():
    y = np.array([0, 0, 1, 1, 1])
    prob = np.array([0.1, 0.5, 0.5, 0.9, 0.2])  # 0.5 counts as "ai"
    m = metrics.classification_metrics(y, prob)
    # rows: true real, true ai; columns: predicted real, predicted ai
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(3 / 5)


def test_roc_auc_undefined_for_one_class():
    m = metrics.classification_metrics(np.ones(4, int), np.array([0.2, 0.6, 0.7, 0.9]))
    assert m["roc_auc"] is None
    assert m["accuracy"] == pytest.approx(0.75)


def test_aggregate_sums_confusion_and_summarizes_seeds():
    per_seed = [metrics.classification_metrics(*_random_predictions(s)) for s in range(3)]
    agg = metrics.aggregate_metrics(per_seed)
    total = np.sum([np.asarray(m["confusion_matrix"]) for m in per_seed], axis=0)
    assert agg["confusion_matrix"] == total.tolist()
    assert np.sum(agg["confusion_matrix"]) == sum(m["n"] for m in per_seed)
    accs = [m["accuracy"] for m in per_seed]
    assert agg["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert agg["accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert agg["roc_auc"]["per_seed"] == pytest.approx([m["roc_auc"] for m in per_seed])
    f1 = [m["per_class"]["ai"]["f1"] for m in per_seed]
    assert agg["per_class"]["ai"]["f1"]["mean"] == pytest.approx(np.mean(f1))


def test_aggregate_one_seed_uses_wilson_for_accuracy():
    m = metrics.classification_metrics(*_random_predictions(5, n=40))
    agg = metrics.aggregate_metrics([m])
    assert agg["accuracy"]["ci95"] == pytest.approx(metrics.wilson_interval(m["correct"], 40))


def test_format_summary():
    assert metrics.format_summary(metrics.summarize([0.5, 0.7])) == (
        f"0.600 ± {math.sqrt(0.02):.3f}")
    assert metrics.format_summary(metrics.summarize([0.5])) == "0.500"
    assert metrics.format_summary(None) == "–"
    assert metrics.format_ci(metrics.summarize([0.8], counts=[(8, 10)])) == "[0.490, 0.943]"


def test_identical_seeds_get_a_wilson_interval_not_a_zero_width_one():
    s = metrics.summarize([1.0, 1.0, 1.0], counts=[(20, 20), (20, 20), (20, 20)])
    assert s["std"] == 0.0 and s["ci_method"] == "wilson"
    assert s["ci95"] == pytest.approx(metrics.wilson_interval(60, 60)) and s["ci95"][0] < 0.95
    assert metrics.summarize([0.5, 0.5])["ci95"] == [0.5, 0.5]  # not a proportion with counts: t as usual


def test_precision_of_a_never_predicted_class_is_undefined_not_zero():
    y = np.array([0, 0, 1, 1])
    m = metrics.classification_metrics(y, np.array([0.9, 0.8, 0.7, 0.6]))  # always "ai"
    assert m["per_class"]["real"]["precision"] is None and m["per_class"]["real"]["recall"] == 0.0
    assert m["per_class"]["ai"]["precision"] == 0.5
    agg = metrics.aggregate_metrics([m, metrics.classification_metrics(y, np.array([0.1, 0.2, 0.7, 0.6]))])
    assert agg["per_class"]["real"]["precision"]["mean"] == 1.0  # the undefined seed is left out
