"""Named data sets: `--data NAME=ROOT` (training, several allowed) and `--eval-data NAME=ROOT`.

A set is a labelled data folder with a name (letters, digits, '.', '_', '-'). One training set is
loaded exactly as a plain data folder is (paths relative to its root). Several are loaded one by
one and joined into one Dataset whose image paths are NAME/path-in-its-set: every path stays
unique, every image keeps the name of its set (`image_sets`, `path_in_set`), and the split is
stratified by set and label (aigen.data.split). The joined store is packed from the sets' own
stores, without decoding any image again.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from aigen.data.dataset import (DEFAULT_SPECS, Dataset, conflicting_sha256s, dataset_inputs,
                                ensure_stores, format_skip_summary, load_dataset)
from aigen.data.discover import LABEL_AI, LABEL_NAMES, LABEL_REAL, check_root
from aigen.data.loading import DEFAULT_MAX_PIXELS
from aigen.data.preprocess import Spec
from aigen.errors import UserError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def set_name(text: str) -> str:
    """A set name: letters, digits, '.', '_' and '-' (it names files, keys and path prefixes)."""
    if not _NAME.fullmatch(text or ""):
        raise UserError(f"data set name {text!r}: use letters, digits, '.', '_' or '-' (up to 64 "
                        "characters, starting with a letter or digit)")
    return text


def safe_name(text: str) -> str:
    """A set name made from a folder name (other characters become '_')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip("._-")[:64] or "data"


def parse_sets(items: Sequence[str], option: str = "--data") -> dict[str, Path]:
    """`NAME=ROOT` or a bare `ROOT` (named after its folder) per item -> {NAME: absolute ROOT}, in
    the order given; a name given twice, a bad name or a missing folder is a UserError."""
    sets: dict[str, Path] = {}
    for item in items:
        name, sep, root = str(item).partition("=")
        if not sep or not _NAME.fullmatch(name):
            if sep and not Path(item).expanduser().exists():  # meant as NAME=ROOT
                set_name(name)
            name, root = safe_name(Path(item).expanduser().resolve().name), str(item)
        if not root:
            raise UserError(f"{option} {item!r}: no folder after '='; use {option} NAME=ROOT")
        if name in sets:
            raise UserError(f"{option} names the set {name!r} twice (give each set its own "
                            "name: NAME=ROOT)")
        sets[name] = check_root(root).resolve()
    return sets


# ----------------------------------------------------------------------------------------------
# Which set an image came from


def image_sets(dataset: Dataset) -> list[str]:
    """The name of the set of every image of `dataset`, in its order."""
    names = list(getattr(dataset, "sets", None) or {}) or [safe_name(Path(dataset.root).name)]
    if len(names) == 1:
        return names * len(dataset.images)
    return [im.rel_path.partition("/")[0] for im in dataset.images]


def path_in_set(dataset: Dataset, rel_path: str) -> str:
    """An image's path relative to its own set's root (rel_path without the NAME/ prefix that a
    joined dataset adds)."""
    return rel_path.partition("/")[2] if len(getattr(dataset, "sets", None) or {}) > 1 \
        else rel_path


def set_counts(dataset: Dataset, indices: Sequence[int] | np.ndarray | None = None
               ) -> dict[str, dict[str, int]]:
    """{set: {"ai": n, "real": n}} over the given images (default: all)."""
    sets = image_sets(dataset)
    idx = range(len(dataset.images)) if indices is None else indices
    out = {name: {"ai": 0, "real": 0} for name in dict.fromkeys(sets)}
    for i in idx:
        out[sets[int(i)]]["ai" if dataset.images[int(i)].label == LABEL_AI else "real"] += 1
    return out


# ----------------------------------------------------------------------------------------------
# Loading


def load_sets(sets: Mapping[str, Path], class_map=None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
              workers: int | None = None, progress: bool = True,
              specs: Sequence[Spec] = DEFAULT_SPECS, rehash: bool = False) -> Dataset:
    """The dataset of one set (as load_dataset gives it), or of several joined (see the module
    docstring). `class_map` (--classes) applies to every set. With several sets, a set may hold
    one class only, as long as the sets together hold both."""
    if not sets:
        raise ValueError("no data set given")
    if len(sets) == 1:
        (name, root), = sets.items()
        dataset = load_dataset(root, class_map=class_map, max_pixels=max_pixels, workers=workers,
                               progress=progress, specs=specs, rehash=rehash)
        if dataset.skipped:
            print(format_skip_summary(dataset), file=sys.stderr)
        dataset.sets = {name: Path(dataset.root)}
        return dataset
    parts: dict[str, Dataset] = {}
    for name, root in sets.items():
        part = load_dataset(root, class_map=class_map, max_pixels=max_pixels, workers=workers,
                            progress=progress, specs=specs, rehash=rehash, both=False)
        if part.skipped:
            print(f"{name}: {format_skip_summary(part)}", file=sys.stderr)
        parts[name] = part
    dataset = join_sets(parts)
    if specs:
        ensure_stores(dataset, specs, scratch=_PartRows(parts.values()))
    return dataset


def join_sets(parts: Mapping[str, Dataset]) -> Dataset:
    """One Dataset of several loaded sets: paths NAME/path, class folders NAME/folder; contents
    found under both labels across sets are skipped like those within one set."""
    from aigen.data.dataset import _conflict_skips

    images = sorted((dataclasses.replace(im, rel_path=f"{name}/{im.rel_path}")
                     for name, part in parts.items() for im in part.images),
                    key=lambda im: im.rel_path)
    within = set().union(*(part.conflicting_sha256s() for part in parts.values()))
    across = conflicting_sha256s(images) - within
    skipped = [s for part in parts.values() for s in part.skipped]
    skipped += _conflict_skips([im for im in images if im.sha256 in across])
    folders = {f"{name}/{folder}": label for name, part in parts.items()
               for folder, label in part.class_folders.items()}
    roots = [Path(part.root).resolve() for part in parts.values()]
    dataset = Dataset(
        root=Path(os.path.commonpath(roots)), images=images, skipped=skipped,
        class_names={label: ", ".join(f for f, lab in sorted(folders.items()) if lab == label)
                     for label in (LABEL_AI, LABEL_REAL)},
        max_pixels=next(iter(parts.values())).max_pixels, class_folders=folders,
        n_files=sum(part.n_files for part in parts.values()))
    dataset.sets = {name: Path(part.root) for name, part in parts.items()}
    conflicts = dataset.conflicting_sha256s()
    for label in (LABEL_AI, LABEL_REAL):
        if not any(im.label == label and im.sha256 not in conflicts for im in images):
            raise UserError(f"no usable {LABEL_NAMES[label]} images in any of the data sets "
                            f"({', '.join(parts)}); training needs both classes")
    return dataset


class _PartRows:
    """The sets' own stores seen as the `scratch` of ensure_stores: {sha256: slot} and a reader
    per spec, so the joined store is copied row by row instead of decoded again."""

    def __init__(self, parts):
        self.slots: dict[str, int] = {}
        self._where: list[tuple[Dataset, int]] = []
        self._readers: dict[str, _Reader] = {}
        for part in parts:
            for row, im in enumerate(part.images):
                if im.sha256 not in self.slots:
                    self.slots[im.sha256] = len(self._where)
                    self._where.append((part, row))

    def reader(self, spec: Spec):
        if spec.key not in self._readers:
            self._readers[spec.key] = _Reader(self._where, spec)
        return self._readers[spec.key]


class _Reader:
    def __init__(self, where: list[tuple[Dataset, int]], spec: Spec):
        self._where = where
        self._spec = spec
        self._stores: dict[int, object] = {}

    def read(self, slots) -> np.ndarray:
        rows = []
        for slot in slots:
            part, row = self._where[int(slot)]
            if id(part) not in self._stores:
                self._stores[id(part)] = dataset_inputs(part, self._spec)
            rows.append(self._stores[id(part)].read([row])[0])
        return np.stack(rows)
