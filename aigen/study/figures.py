"""The study's figures (PNG, matplotlib's Agg renderer, no global pyplot state).

Every function takes plain data (lists, dicts, arrays) and a path, so it can be drawn from the
results folder alone, and returns the matplotlib Figure it saved. Legends sit outside the plot
area, where they cover no data; curves of different models differ in colour, line style and
marker; titles say "mean over N seeds" only when there are several seeds, else "seed K".
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from aigen.io import atomic_path

DPI = 110


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig, path: str | os.PathLike):
    with atomic_path(path) as tmp:
        # "tight": the saved image grows to hold what lies outside the axes (legends, labels)
        fig.savefig(tmp, format="png", bbox_inches="tight", pad_inches=0.05)


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _styles(n: int) -> list[dict[str, Any]]:
    """Colour, line style and marker per curve, all three distinct between neighbours, so that
    overlapping curves (e.g. two models with the same ROC) stay visible; markers every tenth of
    the curve's length."""
    return [{"color": c, "ls": LINESTYLES[k % len(LINESTYLES)], "marker": MARKERS[k % len(MARKERS)],
             "markevery": 0.1, "markersize": 5, "fillstyle": "none"}
            for k, c in enumerate(_colors(n))]


def _legend_outside(ax, **kwargs):
    """The axes' legend to the right of its plot area, where it can cover no data (the
    constrained layout makes room for it)."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0,
                     fontsize="small", **kwargs)


def seeds_words(seeds: Sequence[Any]) -> str:
    """For figure titles: "mean over N seeds" with several seeds, "seed K" with one."""
    seeds = list(seeds)
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"mean over {len(seeds)} seeds"


def _baseline_line(ax, baseline: float | None) -> None:
    """A dotted horizontal line at the majority-class rate (labelled), or at 0.5 without one."""
    if baseline is None:
        ax.axhline(0.5, color="grey", ls=":", lw=1, label="0.5")
    else:
        ax.axhline(baseline, color="grey", ls=":", lw=1.2,
                   label=f"majority class ({baseline:.3f})")


def _n_seeds(summaries: Sequence[Mapping[str, Any]]) -> int:
    """How many seeds a list of metrics.summarize records covers (the most defined values)."""
    return max((len([v for v in s.get("per_seed", []) if v is not None]) for s in summaries),
               default=0)


def _epoch_axis(ax, epochs: Sequence[int]) -> None:
    """Whole epochs on the x axis; a single epoch sits in the middle of a one-epoch-wide axis."""
    epochs = sorted(set(epochs))
    if len(epochs) <= 12:
        ax.set_xticks(epochs)
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)
    if len(epochs) == 1:
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)


# Train and validation curves: solid with filled circles, dashed with open squares (told apart
# even when a single epoch leaves one point per curve).
TRAIN_STYLE = {"ls": "-", "marker": "o"}
VAL_STYLE = {"ls": "--", "marker": "s", "fillstyle": "none"}


def training_curves(history: Sequence[Mapping[str, Any]], title: str,
                    path: str | os.PathLike):
    """Loss and accuracy per epoch, train (solid, circles) and validation (dashed, open squares),
    one colour per seed; markers only with few epochs.

    `history` rows are dicts with "seed", "epoch", "train_loss", "val_loss", "train_acc", "val_acc".
    """
    fig = _figure(9, 3.6)
    ax_loss, ax_acc = fig.subplots(1, 2)
    seeds = sorted({row["seed"] for row in history})
    for seed, color in zip(seeds, _colors(len(seeds))):
        rows = sorted((r for r in history if r["seed"] == seed), key=lambda r: r["epoch"])
        epochs = [r["epoch"] for r in rows]
        few = {} if len(epochs) < 6 else {"marker": None}
        for ax, key in ((ax_loss, "loss"), (ax_acc, "acc")):
            ax.plot(epochs, [r[f"train_{key}"] for r in rows], color=color,
                    **{**TRAIN_STYLE, **few}, label=f"seed {seed} train")
            ax.plot(epochs, [r[f"val_{key}"] for r in rows], color=color,
                    **{**VAL_STYLE, **few}, label=f"seed {seed} val")
    ax_loss.set(xlabel="epoch", ylabel="loss (BCE)", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        _epoch_axis(ax, [r["epoch"] for r in history])
    _legend_outside(ax_acc, ncols=2 if len(seeds) > 4 else 1)
    fig.suptitle(title)
    _save(fig, path)
    return fig


def confusion_matrices(matrices: Mapping[str, Sequence[Sequence[int]]], path: str | os.PathLike,
                       class_names: Sequence[str] = ("real", "ai"), title: str = ""):
    """One panel per model side by side; rows true class, columns predicted, counts annotated."""
    n = max(1, len(matrices))
    fig = _figure(min(3.2 * n + 0.5, 20), 3.6)
    axes = np.atleast_1d(fig.subplots(1, n))
    for ax, (name, cm) in zip(axes, matrices.items()):
        cm = np.asarray(cm)
        ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, cm.max()))
        for (i, j), value in np.ndenumerate(cm):
            ax.text(j, i, str(value), ha="center", va="center", fontsize="large",
                    color="white" if value > cm.max() / 2 else "black")
        ax.set(xticks=range(len(class_names)), yticks=range(len(class_names)),
               xticklabels=class_names, yticklabels=class_names,
               xlabel="predicted", ylabel="true", title=name)
        ax.title.set_fontsize("small")
    if title:
        fig.suptitle(title)
    _save(fig, path)
    return fig


def roc_curves(curves: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]],
               path: str | os.PathLike, title: str = "ROC curves (test split)"):
    """ROC per model (one colour, line style and marker) and seed (one line; the seeds after the
    first paler); the legend, outside the plot, gives the mean AUC over seeds.

    `curves` maps model name -> [(y_true, prob_ai) for each seed].
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = _figure(7.6, 4.6)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="chance")
    for (name, per_seed), style in zip(curves.items(), _styles(len(curves))):
        usable = [(y, p) for y, p in per_seed if len(np.unique(y)) == 2]  # AUC needs both classes
        if not usable:
            continue
        auc = np.mean([roc_auc_score(y, p) for y, p in usable])
        seeds = f", mean of {len(usable)} seeds" if len(usable) > 1 else ""
        for k, (y, p) in enumerate(usable):
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, alpha=0.9 if k == 0 else 0.4, **style,
                    label=f"{name} (AUC {auc:.3f}{seeds})" if k == 0 else None)
    ax.set(xlabel="false positive rate (real called ai)", ylabel="true positive rate (ai found)",
           xlim=(-0.01, 1), ylim=(0, 1.01), title=title, aspect="equal")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    _save(fig, path)
    return fig


def sweep_curves(perturbation: Mapping[str, Any], models: Mapping[str, Sequence[Mapping]],
                 path: str | os.PathLike, chance: float | None = 0.5,
                 seeds: Sequence[Any] | None = None, majority: float | None = None):
    """One perturbation of the degradation sweep: accuracy (left) and ROC-AUC (right) against
    strength, mild to severe left to right; one line per model (its own colour, line style and
    marker), a band for the 95% CI over seeds (none with one seed); legend outside the axes.

    `perturbation` is results.json's sweep["perturbations"][key]; `models` maps a model name to
    its sweep points for that perturbation ([clean point, point per strength]); `seeds` names
    the seed of a one-seed run in the title; `majority` (the larger class's share, the accuracy
    to beat) is drawn on the accuracy panel.
    """
    fig = _figure(10.5, 3.9)
    axes = fig.subplots(1, 2)
    labels = ["clean"] + [f"{s:g}" for s in perturbation["strengths"]]
    x = np.arange(len(labels))
    n_seeds, n_images = 1, set()
    for (name, points), style in zip(models.items(), _styles(len(models))):
        style = {**style, "markevery": 1, "fillstyle": "full"}
        for ax, metric in zip(axes, ("accuracy", "roc_auc")):
            summaries = [p[metric] for p in points]
            mean = np.array([np.nan if s["mean"] is None else s["mean"] for s in summaries])
            ax.plot(x, mean, **style, label=name if metric == "roc_auc" else None)
            defined = _n_seeds(summaries)
            n_seeds = max(n_seeds, defined)
            if defined > 1:
                lo = [np.nan if not s.get("ci95") else s["ci95"][0] for s in summaries]
                hi = [np.nan if not s.get("ci95") else s["ci95"][1] for s in summaries]
                ax.fill_between(x, lo, hi, color=style["color"], alpha=0.15, lw=0)
        n_images.update(n for p in points for n in p["n"])
    for ax, metric in zip(axes, ("accuracy", "ROC-AUC")):
        if chance is not None:
            ax.axhline(chance, color="grey", ls=":", lw=1, label="chance" if metric == "ROC-AUC"
                       else None)
        ax.set_xticks(x, labels)
        ax.set(xlabel=f"{perturbation['parameter']} (mild → severe)", ylabel=f"test {metric}",
               ylim=(0, 1.02), title=metric if metric == "ROC-AUC" else "accuracy (threshold 0.5)")
        ax.grid(alpha=0.3)
    band = (f"mean over {n_seeds} seeds, bands: 95% CI" if n_seeds > 1
            else (seeds_words(seeds) if seeds else "one seed") + ", no band")
    n_text = (f"n = {min(n_images)}" + (f"–{max(n_images)}" if len(n_images) > 1 else "")
              + " test images per seed") if n_images else "no test image"
    fig.suptitle(f"Degradation sweep: {perturbation['title']} ({n_text}; {band})",
                 fontsize="medium")
    if majority is not None:
        axes[0].axhline(majority, color="black", ls=(0, (1, 3)), lw=1)
        axes[0].annotate(f"majority class {majority:.2f}", (x[-1], majority), fontsize="x-small",
                         ha="right", va="bottom", xytext=(0, 2), textcoords="offset points")
    _legend_outside(axes[1])
    _save(fig, path)
    return fig


def lr_study(lr_results: Mapping[str, Mapping[str, Any]],
             history: Sequence[Mapping[str, Any]], path: str | os.PathLike,
             title: str = "Scratch CNN: learning-rate sensitivity",
             seeds: Sequence[Any] | None = None, baseline: float | None = None):
    """Left: train/val/test accuracy per learning rate (mean ± std over seeds as error bar; one
    seed: its value, no error bar). Right: train and validation loss per epoch per learning rate
    (mean over seeds). The panel titles say "mean over N seeds" or "seed K". The dotted line is
    `baseline` (the majority-class rate: a learning rate that learnt nothing sits on it), or 0.5.

    `lr_results` is results.json's lr_study["runs"]: {lr string: {"train_accuracy", ...}};
    `history` rows carry an "lr" key besides the training_curves fields.
    """
    lrs = list(lr_results)
    n_seeds = _n_seeds([lr_results[lr]["test_accuracy"] for lr in lrs])
    which = seeds_words(seeds) if seeds else (
        f"mean over {n_seeds} seeds" if n_seeds > 1 else "one seed")
    fig = _figure(11, 3.8)
    ax_bar, ax_curve = fig.subplots(1, 2)
    x = np.arange(len(lrs))
    splits = ("train", "val", "test")
    width = 0.8 / len(splits)
    for k, (split, color) in enumerate(zip(splits, _colors(len(splits)))):
        summaries = [lr_results[lr][f"{split}_accuracy"] for lr in lrs]
        stds = [s["std"] or 0.0 for s in summaries] if n_seeds > 1 else None
        ax_bar.bar(x + (k - 1) * width, [s["mean"] for s in summaries], width,
                   yerr=stds, color=color, label=split, capsize=2)
    _baseline_line(ax_bar, baseline)
    ax_bar.set_xticks(x, [f"lr {lr}" for lr in lrs])
    ax_bar.set(ylabel="accuracy", ylim=(0, 1.05), title=f"accuracy per learning rate ({which})")
    _legend_outside(ax_bar)
    for lr, color in zip(lrs, _colors(len(lrs))):
        rows = [r for r in history if str(r["lr"]) == lr]
        epochs = sorted({r["epoch"] for r in rows})
        few = {} if len(epochs) < 6 else {"marker": None}
        for key, style in (("train_loss", TRAIN_STYLE), ("val_loss", VAL_STYLE)):
            means = [np.mean([r[key] for r in rows if r["epoch"] == e]) for e in epochs]
            ax_curve.plot(epochs, means, color=color, **{**style, **few},
                          label=f"lr {lr} {key.split('_')[0]}")
    ax_curve.set(xlabel="epoch", ylabel="loss (BCE)", title=f"loss per epoch ({which})")
    _epoch_axis(ax_curve, [r["epoch"] for r in history])
    _legend_outside(ax_curve)
    for ax in (ax_bar, ax_curve):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    _save(fig, path)
    return fig


def precision_recall_curves(curves: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]],
                            path: str | os.PathLike,
                            title: str = "Precision-recall curves"):
    """Precision-recall (ai = positive class) per model (one colour) and seed (one line); the
    legend gives the mean average precision over seeds; the dotted line is the share of ai images
    (what a random ranking reaches)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig = _figure(7.6, 4.6)
    ax = fig.subplots()
    base = None
    for (name, per_seed), style in zip(curves.items(), _styles(len(curves))):
        usable = [(y, p) for y, p in per_seed if len(np.unique(y)) == 2]
        if not usable:
            continue
        base = float(np.mean(usable[0][0] == 1))
        ap = np.mean([average_precision_score(y, p) for y, p in usable])
        seeds = f", mean of {len(usable)} seeds" if len(usable) > 1 else ""
        for k, (y, p) in enumerate(usable):
            precision, recall, _ = precision_recall_curve(y, p)
            ax.plot(recall, precision, drawstyle="steps-post", alpha=0.9 if k == 0 else 0.4,
                    **style, label=f"{name} (AP {ap:.3f}{seeds})" if k == 0 else None)
    if base is not None:
        ax.axhline(base, color="grey", ls=":", lw=1, label=f"random ({base:.2f})")
    ax.set(xlabel="recall (ai found)", ylabel="precision (ai calls that are ai)",
           xlim=(0, 1.01), ylim=(0, 1.01), title=title, aspect="equal")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    _save(fig, path)
    return fig


def reliability_diagram(curves: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]],
                        path: str | os.PathLike, title: str = "Reliability diagram"):
    """Share of ai images against mean prob_ai per equal-width bin (all seeds pooled), one line per
    model; the diagonal is perfect calibration; the legend gives the mean ECE over seeds."""
    from aigen.study.metrics import expected_calibration_error, reliability_bins

    fig = _figure(7.6, 4.6)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="perfectly calibrated")
    for (name, per_seed), style in zip(curves.items(), _styles(len(curves))):
        if not per_seed:
            continue
        y = np.concatenate([y for y, _ in per_seed])
        p = np.concatenate([p for _, p in per_seed])
        bins = [b for b in reliability_bins(y, p) if b["n"]]
        ece = np.mean([expected_calibration_error(y_, p_) for y_, p_ in per_seed])
        ax.plot([b["mean_prob_ai"] for b in bins], [b["fraction_ai"] for b in bins],
                **{**style, "markevery": 1}, label=f"{name} (ECE {ece:.3f})")
    ax.set(xlabel="mean predicted prob_ai (bin)", ylabel="share of ai images (bin)",
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), title=title, aspect="equal")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    _save(fig, path)
    return fig
