"""The study's figures and the exploration histograms: legends outside the plot area, distinct
line styles per model, seed wording in titles, no error bars with one seed."""

import numpy as np
import pytest

from aigen.data import explore
from aigen.study import figures
from aigen.study.metrics import summarize


def assert_legends_outside(fig):
    """Every legend of `fig` lies outside its axes' plot area (it can cover no data)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # the figures are bare Figures, saved through Agg
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = 0
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        legends += 1
        box, area = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert box.x0 >= area.x1, (ax.get_title(), box, area)
        assert not box.overlaps(area)
    assert legends, "no legend drawn"


def history(seeds=(0,)):
    return [{"seed": s, "epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e,
             "train_acc": 1.0, "val_acc": 1.0} for s in seeds for e in (1, 2, 3)]


def test_training_curves_legend_does_not_cover_accuracy_at_one(tmp_path):
    fig = figures.training_curves(history((0, 1)), "model", tmp_path / "c.png")
    assert_legends_outside(fig)


def test_roc_curves_have_distinct_styles_and_an_outside_legend(tmp_path):
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    curves = {name: [(y, p)] for name in ("a", "b", "c")}  # identical curves: all must show
    fig = figures.roc_curves(curves, tmp_path / "roc.png")
    lines = [line for line in fig.axes[0].get_lines() if line.get_label() in
             {f"{n} (AUC 0.833)" for n in curves}]
    assert len(lines) == 3
    assert len({line.get_linestyle() for line in lines}) == 3
    assert len({line.get_marker() for line in lines}) == 3
    assert_legends_outside(fig)


def test_precision_recall_and_reliability_curves(tmp_path):
    y = np.array([0, 0, 1, 1, 1, 0])
    curves = {"a": [(y, np.array([0.1, 0.6, 0.4, 0.8, 0.9, 0.2]))],
              "b": [(y, np.array([0.2, 0.5, 0.4, 0.7, 0.9, 0.3]))]}
    for draw in (figures.precision_recall_curves, figures.reliability_diagram):
        fig = draw(curves, tmp_path / "f.png")
        styles = {(line.get_linestyle(), line.get_marker()) for line in fig.axes[0].get_lines()
                  if line.get_label().startswith(("a (", "b ("))}
        assert len(styles) == 2
        assert_legends_outside(fig)


def error_bars(ax):
    return [c for c in ax.containers if getattr(c, "errorbar", None) is not None]


def sweep_models(per_seed):
    from aigen.study import sweep

    def point(strength, mean):
        values = [mean + 0.01 * k for k in range(len(per_seed))]
        s = {**summarize(values), "change": 0.0}
        return {"strength": strength, "n": [50] * len(values), "accuracy": s, "roc_auc": s}

    strengths = sweep.PERTURBATIONS["jpeg"].strengths
    return sweep.describe(["jpeg"])["jpeg"], {
        name: [point(None, 0.9)] + [point(st, 0.9 - 0.05 * k) for k, st in enumerate(strengths)]
        for name in ("a", "b")}


def test_sweep_one_seed_has_no_band_and_says_the_seed(tmp_path):
    from matplotlib.collections import PolyCollection

    pert, models = sweep_models([0.8])
    fig = figures.sweep_curves(pert, models, tmp_path / "s.png", seeds=[3])
    assert "seed 3, no band" in fig._suptitle.get_text()
    assert not [c for ax in fig.axes for c in ax.collections if isinstance(c, PolyCollection)]
    styles = {(line.get_linestyle(), line.get_marker()) for line in fig.axes[1].get_lines()
              if line.get_label() in ("a", "b")}
    assert len(styles) == 2
    assert_legends_outside(fig)

    pert, models = sweep_models([0.8, 0.9])
    fig = figures.sweep_curves(pert, models, tmp_path / "s.png", seeds=[0, 1])
    assert "mean over 2 seeds, bands: 95% CI" in fig._suptitle.get_text()
    assert len([c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]) == 2


def lr_runs(per_seed):
    return {lr: {f"{p}_accuracy": summarize(per_seed) for p in ("train", "val", "test")}
            for lr in ("0.01", "0.1")}


def test_lr_study_titles_and_error_bars_follow_the_seeds(tmp_path):
    rows = [{**h, "lr": lr} for h in history() for lr in ("0.01", "0.1")]
    fig = figures.lr_study(lr_runs([0.6]), rows, tmp_path / "lr.png", seeds=[0])
    titles = [ax.get_title() for ax in fig.axes]
    assert "accuracy per learning rate (seed 0)" in titles
    assert "loss per epoch (seed 0)" in titles
    assert not any("mean over" in t for t in titles)
    assert not error_bars(fig.axes[0])
    assert_legends_outside(fig)

    fig = figures.lr_study(lr_runs([0.6, 0.7]), rows, tmp_path / "lr.png", seeds=[0, 1],
                           baseline=0.555)
    assert "loss per epoch (mean over 2 seeds)" in [ax.get_title() for ax in fig.axes]
    assert error_bars(fig.axes[0])
    # the majority-class rate is drawn (and named) where a learning rate that learnt nothing sits
    line = next(l for l in fig.axes[0].get_lines() if l.get_label() == "majority class (0.555)")
    assert list(line.get_ydata()) == [0.555, 0.555]


@pytest.mark.parametrize("quantity", ["width", "n_bytes"])
def test_exploration_histogram_legend_outside(tmp_path, quantity, monkeypatch):
    records = [{"label": label, "width": w, "height": w, "n_bytes": 1000 * w}
               for label in (0, 1) for w in range(40, 90, 5)]
    saved = []
    monkeypatch.setattr(explore, "_save", lambda fig, path: saved.append(fig) or path)
    explore._histogram(records, quantity, tmp_path / "h.png", {0: "real", 1: "ai"})
    explore._bars([{**r, "format": "PNG"} for r in records], "format", tmp_path / "b.png",
                  {0: "real", 1: "ai"})
    for fig in saved:
        assert_legends_outside(fig)
