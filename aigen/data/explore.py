"""Data exploration and the metadata shortcut audit; `aigen explore`.

`summarize` and `write_exploration` describe the two classes (counts, formats and colour modes
by content, size and file-size distributions) as a table and figures. `shortcut_audit` asks how
well a classifier that sees *only* metadata (width, height, aspect, file size, bytes per pixel,
format, mode) separates the classes: the accuracy a model could reach by cheating on those cues,
reported beside the real models. See docs/exploration.md.

Every function accepts an optional metadata override, a mapping rel_path -> {width, height,
n_bytes, format, mode}: for datasets whose files were re-encoded or downscaled after collection
(the metadata that matters is the one the images were published with). `read_metadata_csv` reads
such a mapping from a manifest CSV, preferring its `orig_*` columns.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from aigen.data.discover import LABEL_AI, LABEL_NAMES, LABEL_REAL
from aigen.errors import UserError

NUMERIC = ("width", "height", "aspect", "n_bytes", "bytes_per_pixel")
CATEGORICAL = ("format", "mode")
FEATURE_GROUPS = NUMERIC + CATEGORICAL
QUANTITY_LABELS = {
    "width": "width (px)",
    "height": "height (px)",
    "aspect": "aspect ratio (width / height)",
    "n_bytes": "file size (bytes)",
    "bytes_per_pixel": "bytes per pixel",
}
# The Markdown table gives every file size in kB (one unit per row, comparable across columns).
TABLE_LABELS = {**QUANTITY_LABELS, "n_bytes": "file size (kB)"}
STATISTICS = ("min", "q1", "median", "mean", "q3", "max")
CLASS_KEYS = {LABEL_AI: "ai", LABEL_REAL: "real"}
CLASS_COLOURS = {LABEL_AI: "tab:orange", LABEL_REAL: "tab:blue"}
HEADLINE_MODEL = "random_forest"
METADATA_FIELDS = ("width", "height", "n_bytes", "format", "mode")


# --------------------------------------------------------------------------------------------
# Per-image metadata records

def _usable_images(dataset) -> list:
    """The images the study can use: contents found under both labels are left out."""
    conflicts = dataset.conflicting_sha256s() if hasattr(dataset, "conflicting_sha256s") else set()
    return [im for im in dataset.images if im.sha256 not in conflicts]


def metadata_records(dataset, metadata: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict]:
    """One dict per usable image: label, rel_path, width, height, n_bytes, format, mode, aspect,
    bytes_per_pixel, source ("file" or "override"). Values come from `metadata[rel_path]` where
    present, else from the dataset (decoded content)."""
    records = []
    for im in _usable_images(dataset):
        values = {"width": im.width, "height": im.height, "n_bytes": im.n_bytes,
                  "format": im.format, "mode": im.mode}
        source = "file"
        if metadata is not None and im.rel_path in metadata:
            values.update({k: v for k, v in metadata[im.rel_path].items() if k in METADATA_FIELDS})
            source = "override"
        width, height, n_bytes = int(values["width"]), int(values["height"]), int(values["n_bytes"])
        records.append({
            "rel_path": im.rel_path, "label": int(im.label), "sha256": im.sha256,
            "width": width, "height": height, "n_bytes": n_bytes,
            "format": str(values["format"]).upper(), "mode": str(values["mode"]),
            "aspect": width / height if height else float("nan"),
            "bytes_per_pixel": n_bytes / (width * height) if width * height else float("nan"),
            "source": source,
        })
    return records


def _check_override_coverage(dataset, metadata: Mapping | None) -> None:
    if metadata is None:
        return
    if not any(im.rel_path in metadata for im in _usable_images(dataset)):
        example = next(iter(metadata), "?")
        raise UserError(
            f"none of the {len(metadata)} paths in the metadata CSV matches an image under "
            f"{dataset.root} (paths must be relative to the data folder; the CSV has e.g. {example!r})")


def read_metadata_csv(path: str | os.PathLike) -> dict[str, dict]:
    """Read a metadata override: rel_path -> {width, height, n_bytes, format, mode}.

    Columns: `path` (relative to the data folder) and, for each of width, height, bytes, format,
    mode, either `orig_<name>` or `<name>` (`orig_*` wins: the values before any re-encoding).
    `n_bytes` is accepted for bytes.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = set(reader.fieldnames or ())
            rows = list(reader)
    except OSError as exc:
        raise UserError(f"cannot read metadata CSV {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"metadata CSV {path} is not a readable CSV file: {exc}") from None

    wanted = {"width": ("width",), "height": ("height",), "n_bytes": ("bytes", "n_bytes"),
              "format": ("format",), "mode": ("mode",)}
    chosen: dict[str, str] = {}
    for field, names in wanted.items():
        for candidate in [f"orig_{n}" for n in names] + list(names):
            if candidate in columns:
                chosen[field] = candidate
                break
    missing = [f for f in wanted if f not in chosen]
    if "path" not in columns or missing:
        need = (["path"] if "path" not in columns else []) + [
            "/".join(f"(orig_){n}" for n in wanted[f]) for f in missing]
        raise UserError(f"metadata CSV {path} lacks the column(s) {', '.join(need)}")

    out: dict[str, dict] = {}
    for line, row in enumerate(rows, start=2):
        key = (row.get("path") or "").replace("\\", "/")
        try:
            out[key] = {
                "width": int(row[chosen["width"]]), "height": int(row[chosen["height"]]),
                "n_bytes": int(row[chosen["n_bytes"]]),
                "format": row[chosen["format"]].strip().upper(), "mode": row[chosen["mode"]].strip(),
            }
        except (TypeError, ValueError, AttributeError):
            raise UserError(f"metadata CSV {path}, line {line}: width, height and bytes must be "
                            "whole numbers") from None
        if min(out[key]["width"], out[key]["height"]) <= 0:
            raise UserError(f"metadata CSV {path}, line {line}: width and height must be positive")
    if not out:
        raise UserError(f"metadata CSV {path} has no rows")
    return out


# --------------------------------------------------------------------------------------------
# Summary

def _stats(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {s: float("nan") for s in STATISTICS}
    q1, median, q3 = np.percentile(a, [25, 50, 75])
    return {"min": float(a.min()), "q1": float(q1), "median": float(median),
            "mean": float(a.mean()), "q3": float(q3), "max": float(a.max())}


def _counts(values: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def summarize(dataset, metadata: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
    """Per class ("ai", "real"): count, formats and colour modes (by content), and min / quartiles
    / median / mean / max of width, height, aspect, file size and bytes per pixel.

    Images whose content appears under both labels are left out (the study cannot use them).
    With `metadata` (rel_path -> dict), those values replace the ones read from the files.
    """
    _check_override_coverage(dataset, metadata)
    records = metadata_records(dataset, metadata)
    classes = {}
    for label in (LABEL_AI, LABEL_REAL):
        rows = [r for r in records if r["label"] == label]
        entry = {
            "label": label,
            "name": LABEL_NAMES[label],
            "folder": dataset.class_names.get(label, ""),
            "count": len(rows),
            "formats": _counts([r["format"] for r in rows]),
            "modes": _counts([r["mode"] for r in rows]),
        }
        for q in NUMERIC:
            entry[q] = _stats([r[q] for r in rows])
        classes[CLASS_KEYS[label]] = entry
    return {
        "root": str(dataset.root),
        "n_images": len(records),
        "n_skipped": len(dataset.skipped),
        "metadata_source": _source_note(records),
        "classes": classes,
    }


def _source_note(records: list[dict]) -> str:
    n_override = sum(r["source"] == "override" for r in records)
    if n_override == 0:
        return "files"
    if n_override == len(records):
        return "metadata CSV"
    return f"metadata CSV for {n_override} of {len(records)} images, files for the rest"


def _fmt_number(value: float, quantity: str) -> str:
    if value != value:  # NaN
        return "-"
    if quantity == "n_bytes":
        return _fmt_bytes(value)
    if quantity in ("aspect", "bytes_per_pixel"):
        return f"{value:.2f}"
    return f"{value:.0f}"


def _fmt_table_number(value: float, quantity: str) -> str:
    """A cell of the Markdown table, in the unit TABLE_LABELS names (file sizes in kB)."""
    if quantity == "n_bytes" and value == value:
        return f"{value / 1e3:.1f}"
    return _fmt_number(value, quantity)


def _fmt_bytes(n: float) -> str:
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _fmt_shares(counts: Mapping[str, int], total: int) -> str:
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in counts.items()) if total else "-"


def format_summary(summary: dict) -> str:
    """A plain-text table of the summary, for the terminal."""
    classes = list(summary["classes"].values())
    table = [["", *(c["name"] for c in classes)], ["images", *(str(c["count"]) for c in classes)]]
    for key in ("formats", "modes"):
        table.append([key, *(_fmt_shares(c[key], c["count"]) for c in classes)])
    for q in NUMERIC:
        table.append([f"{q} median (IQR)", *(
            f"{_fmt_number(c[q]['median'], q)} ({_fmt_number(c[q]['q1'], q)} to "
            f"{_fmt_number(c[q]['q3'], q)})" for c in classes)])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [f"data: {summary['root']}  ({summary['n_images']} images, {summary['n_skipped']} "
             f"skipped; metadata from {summary['metadata_source']})"]
    for row in table:
        lines.append("  " + row[0].ljust(widths[0]) + "".join(
            "   " + cell.rjust(w) for cell, w in zip(row[1:], widths[1:])))
    return "\n".join(lines)


def format_summary_markdown(summary: dict) -> str:
    """The summary as Markdown tables (one for distributions, one for formats and modes)."""
    classes = list(summary["classes"].values())
    out = [f"Images: {summary['n_images']} usable, {summary['n_skipped']} skipped; "
           f"metadata from {summary['metadata_source']}.", ""]
    out.append("| class | quantity | " + " | ".join(STATISTICS) + " |")
    out.append("|---|---|" + "---:|" * len(STATISTICS))
    for c in classes:
        for q in NUMERIC:
            out.append(f"| {c['name']} (n={c['count']}) | {TABLE_LABELS[q]} | "
                       + " | ".join(_fmt_table_number(c[q][s], q) for s in STATISTICS) + " |")
    out += ["", "| class | formats (by content) | colour modes |", "|---|---|---|"]
    for c in classes:
        out.append(f"| {c['name']} | {_fmt_shares(c['formats'], c['count'])} | "
                   f"{_fmt_shares(c['modes'], c['count'])} |")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# Figures and tables

def write_exploration(dataset, out_dir: str | os.PathLike,
                      metadata: Mapping[str, Mapping[str, Any]] | None = None,
                      summary: dict | None = None) -> dict[str, Path]:
    """Write figures (out_dir/figures/*.png) and the tables exploration.csv / exploration.md.

    Returns {name: path} of everything written. `summary` may be passed to avoid recomputing it.
    """
    from aigen.io import write_csv, write_text

    out_dir = Path(out_dir)
    summary = summary if summary is not None else summarize(dataset, metadata)
    records = metadata_records(dataset, metadata)
    written: dict[str, Path] = {}

    rows = []
    for key, c in summary["classes"].items():
        rows.append((key, "count", "n", c["count"]))
        for q in NUMERIC:
            rows.extend((key, q, s, c[q][s]) for s in STATISTICS)
        for field in ("formats", "modes"):
            rows.extend((key, field[:-1], name, n) for name, n in c[field].items())
    written["table_csv"] = out_dir / "exploration.csv"
    write_csv(written["table_csv"], ["class", "variable", "statistic", "value"], rows)
    written["table_md"] = out_dir / "exploration.md"
    write_text(written["table_md"], "# Data exploration\n\n" + format_summary_markdown(summary))

    figures = out_dir / "figures"
    for q in NUMERIC:
        written[f"figure_{q}"] = _histogram(records, q, figures / f"{q}.png", dataset.class_names)
    for field in CATEGORICAL:
        written[f"figure_{field}"] = _bars(records, field, figures / f"{field}.png",
                                           dataset.class_names)
    return written


def _class_label(label: int, class_names: Mapping[int, str], n: int) -> str:
    folder = class_names.get(label, "")
    return f"{LABEL_NAMES[label]} ({folder}, n={n})" if folder else f"{LABEL_NAMES[label]} (n={n})"


def _new_figure(width: float = 7.6, height: float = 4.0):
    from matplotlib.figure import Figure

    # A bare Figure renders with Agg and touches no global pyplot state.
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _legend_outside(ax):
    """The legend to the right of the plot area, where it covers no bar (the constrained layout
    makes room for it)."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0,
                     fontsize="small")


def _save(fig, path: Path) -> Path:
    from aigen.io import atomic_path

    with atomic_path(path) as tmp:
        # "tight": the saved image grows to hold what lies outside the axes (legends, labels)
        fig.savefig(tmp, format="png", bbox_inches="tight", pad_inches=0.05)
    return path


def _histogram(records: list[dict], quantity: str, path: Path, class_names) -> Path:
    fig = _new_figure()
    ax = fig.add_subplot()
    values = np.array([r[quantity] for r in records], dtype=np.float64)
    finite = values[np.isfinite(values) & (values > 0)]
    # Sizes that span more than a decade read better on a log axis.
    log = finite.size > 0 and finite.max() / finite.min() > 10
    if finite.size == 0:
        bins = 10
    elif log:
        bins = np.geomspace(finite.min(), finite.max() * 1.0001, 30)
    else:
        lo, hi = finite.min(), finite.max()
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 30)
    for label in (LABEL_AI, LABEL_REAL):
        v = np.array([r[quantity] for r in records if r["label"] == label], dtype=np.float64)
        v = v[np.isfinite(v)]
        ax.hist(v, bins=bins, alpha=0.55, color=CLASS_COLOURS[label],
                label=_class_label(label, class_names, v.size), edgecolor="white", linewidth=0.4)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(QUANTITY_LABELS[quantity] + (" (log scale)" if log else ""))
    ax.set_ylabel("images")
    ax.set_title(f"{QUANTITY_LABELS[quantity].split(' (')[0].capitalize()} by class")
    _legend_outside(ax)
    return _save(fig, path)


def _bars(records: list[dict], field: str, path: Path, class_names) -> Path:
    fig = _new_figure()
    ax = fig.add_subplot()
    categories = sorted({r[field] for r in records},
                        key=lambda c: -sum(r[field] == c for r in records))
    x = np.arange(len(categories))
    width = 0.4
    for offset, label in ((-width / 2, LABEL_AI), (width / 2, LABEL_REAL)):
        rows = [r for r in records if r["label"] == label]
        shares = [100 * sum(r[field] == c for r in rows) / max(1, len(rows)) for c in categories]
        bars = ax.bar(x + offset, shares, width, color=CLASS_COLOURS[label],
                      label=_class_label(label, class_names, len(rows)))
        ax.bar_label(bars, fmt="%.0f%%", fontsize=8, padding=1)
    ax.set_xticks(x, categories)
    ax.set_ylim(0, 110)
    ax.set_xlabel("file format (by content)" if field == "format" else "colour mode (by content)")
    ax.set_ylabel("share of the class's images (%)")
    ax.set_title(f"{'File formats' if field == 'format' else 'Colour modes'} by class")
    _legend_outside(ax)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Shortcut audit

def _feature_matrix(records: list[dict]) -> tuple[np.ndarray, list[str], list[str]]:
    """(X, column names, group of each column): numeric columns, then one-hot format and mode."""
    columns, groups, names = [], [], []
    for q in NUMERIC:
        columns.append(np.array([r[q] for r in records], dtype=np.float64))
        names.append(q)
        groups.append(q)
    for field in CATEGORICAL:
        for value in sorted({r[field] for r in records}):
            columns.append(np.array([r[field] == value for r in records], dtype=np.float64))
            names.append(f"{field}={value}")
            groups.append(field)
    return np.column_stack(columns), names, groups


def _t_interval(values: Sequence[float]) -> list[float]:
    """95% t-interval of the mean over folds (at least 2), clipped to [0, 1]."""
    from aigen.stats import t_interval

    lo, hi = t_interval(values)
    return [max(0.0, lo), min(1.0, hi)]


def _accuracy_interval(per_fold: Sequence[float], n: int) -> list[float]:
    """95% CI of the cross-validated accuracy: the t-interval over folds, or, when every fold
    scored the same (a zero-width interval, e.g. all correct on tiny data), the Wilson interval
    over the n images, which says how few they are."""
    from aigen.stats import wilson_interval

    if np.ptp(per_fold) == 0:
        return wilson_interval(round(float(np.mean(per_fold)) * n), n)
    return _t_interval(per_fold)


def _forest(seed: int):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=100, min_samples_leaf=3, random_state=seed, n_jobs=1)


def _logistic():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    # Sizes span decades: compare them on a log scale (every feature is >= 0).
    return make_pipeline(FunctionTransformer(np.log1p), StandardScaler(),
                         LogisticRegression(max_iter=1000))


def _cross_validate(make_model, X: np.ndarray, y: np.ndarray, folds) -> dict:
    from sklearn.metrics import accuracy_score, roc_auc_score

    acc, auc, importances = [], [], []
    for train, test in folds:
        model = make_model().fit(X[train], y[train])
        proba = model.predict_proba(X[test])[:, list(model.classes_).index(LABEL_AI)]
        acc.append(accuracy_score(y[test], (proba >= 0.5).astype(int)))
        auc.append(roc_auc_score(y[test], proba))
        if hasattr(model, "feature_importances_"):
            importances.append(model.feature_importances_)
    result = {
        "accuracy": float(np.mean(acc)), "accuracy_ci95": _accuracy_interval(acc, len(y)),
        "accuracy_per_fold": [float(a) for a in acc],
        "roc_auc": float(np.mean(auc)), "roc_auc_ci95": _t_interval(auc),
    }
    if importances:
        result["importances"] = np.mean(importances, axis=0)
    return result


def shortcut_audit(dataset, seed: int = 0, folds: int = 5,
                   metadata: Mapping[str, Mapping[str, Any]] | None = None,
                   progress: bool = False) -> dict:
    """How well metadata alone separates the classes (stratified k-fold cross-validation).

    Features: width, height, aspect, file size, bytes per pixel, and one-hot format and colour
    mode. Headline: a seeded random forest (100 trees, min 3 samples per leaf); beside it a
    logistic regression on log-scaled, standardised features, the majority-class baseline, the
    accuracy of the forest on each feature group alone (which cue leaks most), and the forest's
    impurity importances summed per group. Accuracy and ROC-AUC are means over the folds with a
    95% t-interval over folds (folds share training data, so the interval is somewhat narrow); an
    accuracy on which every fold scored the same gets the Wilson interval over all images instead
    of a zero-width one. Folds are grouped by content hash, as the study's split is: an exact duplicate never sits on
    both sides of a fold, where its twin would give its metadata away.
    With `metadata` (rel_path -> dict), those values replace the ones read from the files.
    `progress` shows a bar over the cross-validations (about 30 s at 16k images on 2 cores).
    """
    from sklearn.model_selection import StratifiedGroupKFold
    from tqdm import tqdm

    _check_override_coverage(dataset, metadata)
    records = metadata_records(dataset, metadata)
    y = np.array([r["label"] for r in records], dtype=np.int64)
    # Folds hold whole contents, so what limits their number is distinct contents per class.
    smallest = min(len({r["sha256"] for r in records if r["label"] == label})
                   for label in (LABEL_AI, LABEL_REAL))
    if smallest < 2:
        raise UserError(f"the shortcut audit needs at least 2 distinct images per class, got {smallest}")
    if folds < 2:
        raise UserError(f"the shortcut audit needs at least 2 folds, got {folds}")
    k = min(folds, smallest)
    contents = [r["sha256"] for r in records]
    splits = list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
                  .split(records, y, groups=contents))
    X, names, groups = _feature_matrix(records)

    bar = tqdm(total=2 + len(FEATURE_GROUPS), desc="metadata shortcut audit", unit="model",
               disable=not progress, leave=False)
    forest = _cross_validate(lambda: _forest(seed), X, y, splits)
    bar.update(1)
    logistic = _cross_validate(_logistic, X, y, splits)
    bar.update(1)
    importances = forest.pop("importances")
    by_group = {g: float(sum(imp for imp, gg in zip(importances, groups) if gg == g))
                for g in FEATURE_GROUPS}
    single = {}
    for g in FEATURE_GROUPS:
        cols = [i for i, gg in enumerate(groups) if gg == g]
        r = _cross_validate(lambda: _forest(seed), X[:, cols], y, splits)
        r.pop("importances", None)
        single[g] = {"accuracy": r["accuracy"], "accuracy_ci95": r["accuracy_ci95"],
                     "roc_auc": r["roc_auc"]}
        bar.update(1)
    bar.close()
    leading = max(single, key=lambda g: (single[g]["accuracy"], single[g]["roc_auc"]))
    majority = float(max((y == LABEL_AI).mean(), (y == LABEL_REAL).mean()))
    return {
        "headline_model": HEADLINE_MODEL,
        "n_images": int(y.size),
        "n_ai": int((y == LABEL_AI).sum()),
        "n_real": int((y == LABEL_REAL).sum()),
        "folds": k,
        "seed": seed,
        "metadata_source": _source_note(records),
        "features": names,
        "majority_baseline": majority,
        "accuracy": forest["accuracy"],
        "accuracy_ci95": forest["accuracy_ci95"],
        "accuracy_per_fold": forest["accuracy_per_fold"],
        "roc_auc": forest["roc_auc"],
        "roc_auc_ci95": forest["roc_auc_ci95"],
        "logistic": logistic,
        "single_feature": single,
        "importance": by_group,
        "leading_cue": leading,
    }


def format_audit(audit: dict) -> str:
    """The audit as plain text: headline, baselines, and the cues ranked by single-cue accuracy."""
    lo, hi = audit["accuracy_ci95"]
    lg = audit["logistic"]
    lines = [
        f"metadata shortcut audit ({audit['folds']}-fold stratified CV grouped by content, "
        f"seed {audit['seed']}, "
        f"{audit['n_images']} images, metadata from {audit['metadata_source']})",
        f"  random forest on metadata: accuracy {audit['accuracy']:.3f} "
        f"[95% CI {lo:.3f}-{hi:.3f}], ROC-AUC {audit['roc_auc']:.3f}",
        f"  logistic regression:       accuracy {lg['accuracy']:.3f} "
        f"[95% CI {lg['accuracy_ci95'][0]:.3f}-{lg['accuracy_ci95'][1]:.3f}], ROC-AUC {lg['roc_auc']:.3f}",
        f"  majority-class baseline:   accuracy {audit['majority_baseline']:.3f}",
        "  single cue (random forest on that cue alone; importance in the full forest):",
    ]
    for g, r in sorted(audit["single_feature"].items(), key=lambda kv: -kv[1]["accuracy"]):
        lines.append(f"    {g:16s} accuracy {r['accuracy']:.3f}  ROC-AUC {r['roc_auc']:.3f}  "
                     f"importance {audit['importance'][g]:.2f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    from aigen.argtypes import seed
    from aigen.data.dataset import add_data_arguments

    parser.description = (
        "Summarise a dataset (counts, formats, modes, size distributions; figures and tables) and "
        "run the metadata shortcut audit. Writes to --out, never into the data folder. "
        "See docs/exploration.md.")
    add_data_arguments(parser)
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output folder (default: results/explore-<timestamp>)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the audit's folds and forest (default: 0)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    parser.add_argument("--metadata-csv", metavar="PATH", default=None,
                        help="CSV with columns path,(orig_)width,(orig_)height,(orig_)bytes,"
                             "(orig_)format,(orig_)mode giving each file's original metadata "
                             "(orig_* preferred); paths relative to the data folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    from aigen.data.spectra import add_argument as add_spectrum_argument

    add_spectrum_argument(parser)


def run(args: argparse.Namespace) -> int:
    from aigen import __version__
    from aigen.data.dataset import data_root_from_args, dataset_from_args, write_skipped
    from aigen.io import (atomic_folder, check_new_folder, new_results_folder, refuse_inside,
                          write_json, write_text)

    root = data_root_from_args(args)
    if not root.is_dir():
        raise UserError(f"data folder not found: {root}")
    out = check_new_folder(args.out) if args.out else new_results_folder("explore-")
    refuse_inside(out, root)
    metadata = read_metadata_csv(args.metadata_csv) if args.metadata_csv else None

    # Header probes are all the exploration needs: no decoding into the preprocessing cache.
    dataset = dataset_from_args(args, progress=not args.quiet, specs=())
    summary = summarize(dataset, metadata)
    audit = shortcut_audit(dataset, seed=args.seed, folds=args.folds, metadata=metadata,
                           progress=not args.quiet)
    spectra = None
    if args.spectrum_images:
        from aigen.data.dataset import available_cores
        from aigen.data.spectra import class_spectra

        workers = args.workers or available_cores()
        spectra = class_spectra(_usable_images(dataset), per_class=args.spectrum_images,
                                seed=args.seed, max_pixels=dataset.max_pixels,
                                workers=0 if workers <= 1 else min(workers, 4),
                                progress=not args.quiet)

    with atomic_folder(out) as work:
        written = write_exploration(dataset, work, metadata=metadata, summary=summary)
        if spectra is not None:
            from aigen.data.spectra import spectra_figure, spectra_markdown

            written["figure_spectra"] = spectra_figure(spectra, work / "figures" / "spectra.png",
                                                       dataset.class_names)
            text = written["table_md"].read_text(encoding="utf-8")
            write_text(written["table_md"], text.rstrip() + "\n\n" + "\n".join(
                spectra_markdown(spectra.record, "figures/spectra.png", level="##")))
        write_skipped(work / "skipped.csv", dataset.skipped)
        write_json(work / "exploration.json", {
            "aigen_version": __version__,
            "data_root": str(dataset.root),
            "metadata_csv": str(args.metadata_csv) if args.metadata_csv else None,
            "summary": summary,
            "shortcut_audit": audit,
            "spectra": spectra.record if spectra is not None else None,
            "files": {k: str(p.relative_to(work)) for k, p in written.items()},
        })
    print(format_summary(summary))
    print()
    print(format_audit(audit))
    if spectra is not None:
        from aigen.data.spectra import difference_text

        print()
        print("frequency spectra: " + difference_text(spectra.record["difference"]).replace("**", ""))
    print(f"\nwrote figures, exploration.csv/.md/.json and skipped.csv to {out}")
    return 0

