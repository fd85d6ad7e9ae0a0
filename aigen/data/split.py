"""Seeded, stratified, duplicate-aware train/val/test split and its split.csv manifest.

Images are grouped by content (sha256): a group never straddles two splits, so an exact duplicate
cannot sit in train and test at once, even across data sets. Contents found under both labels are
"excluded". The split is stratified by label and, with several data sets, by set and label.
"""

from __future__ import annotations

import collections
import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aigen.data.dataset import Dataset
from aigen.data.discover import LABEL_NAMES
from aigen.errors import UserError

SPLITS = ("train", "val", "test")
EXCLUDED = "excluded"
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
SPLIT_HEADER = ["set", "path", "sha256", "label", "split"]
_HEADER_WITHOUT_SET = SPLIT_HEADER[1:]  # split files written before data sets had names


@dataclass
class Split:
    assignment: list[str]  # one of SPLITS or EXCLUDED per dataset image, in dataset order
    seed: int | None = None

    def indices(self, name: str) -> np.ndarray:
        """Dataset indices (ascending, int64) of the images in split `name`."""
        if name not in SPLITS and name != EXCLUDED:
            raise ValueError(f"unknown split {name!r}")
        return np.array([i for i, a in enumerate(self.assignment) if a == name], dtype=np.int64)

    def counts(self, labels: np.ndarray) -> dict[str, dict[int, int]]:
        """{split: {label: number of images}} for the given per-image labels."""
        out: dict[str, dict[int, int]] = {}
        for name in SPLITS + (EXCLUDED,):
            idx = self.indices(name)
            out[name] = {int(lab): int(np.sum(labels[idx] == lab)) for lab in sorted(LABEL_NAMES)}
        return out


def _targets(n: int, fractions: tuple[float, float, float]) -> dict[str, int]:
    """Images wanted per split for one class of n images; val and test get at least one each."""
    n_val = max(1, round(n * fractions[1]))
    n_test = max(1, round(n * fractions[2]))
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def make_split(dataset: Dataset, seed: int, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
               ) -> Split:
    """Stratified train/val/test split by content groups, reproducible for a given seed.

    Per stratum (a class; with several data sets, a class within one set), content groups are
    shuffled with numpy's default_rng(seed) and dealt, largest first, to the split furthest below
    its target (fractions of that stratum's images); every split gets at least one group per
    stratum. A group of identical files in several sets belongs to the stratum of its first file
    (by path), so it stays in one split. A stratum with fewer than 3 distinct contents is a
    UserError; with several sets a set may lack a class altogether.
    """
    from aigen.data.sets import image_sets

    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    conflicts = dataset.conflicting_sha256s()
    assignment = [EXCLUDED] * len(dataset.images)
    rng = np.random.default_rng(seed)
    sets = image_sets(dataset)
    several = len(set(sets)) > 1
    for label in sorted(LABEL_NAMES):
        groups: dict[str, list[int]] = collections.defaultdict(list)
        for i, im in enumerate(dataset.images):
            if im.label == label and im.sha256 not in conflicts:
                groups[im.sha256].append(i)
        for set_name in sorted(set(sets)):
            # sorted: independent of dict order
            members = [groups[sha] for sha in sorted(groups) if sets[groups[sha][0]] == set_name]
            if several and not members:
                continue  # this set has no image of this class
            if len(members) < len(SPLITS):
                where = f" of the set {set_name}" if several else ""
                raise UserError(f"too few images to split: the {LABEL_NAMES[label]} class{where} "
                                f"has {len(members)} distinct image(s); at least {len(SPLITS)} "
                                "are needed (one per split)")
            _deal(members, rng, fractions, assignment)
    return Split(assignment=assignment, seed=seed)


def _deal(members: list[list[int]], rng: np.random.Generator,
          fractions: tuple[float, float, float], assignment: list[str]) -> None:
    """Assign the content groups of one stratum to the splits (see make_split)."""
    order = rng.permutation(len(members))
    # Largest first (stable, so equal sizes keep the shuffled order): big groups land while
    # the deficits are large, and the singletons at the end even out the counts exactly.
    shuffled = sorted((members[k] for k in order), key=len, reverse=True)
    n = sum(len(g) for g in shuffled)
    target = _targets(n, fractions)
    count = dict.fromkeys(SPLITS, 0)
    for k, group in enumerate(shuffled):
        empty = [s for s in SPLITS if count[s] == 0]
        if len(shuffled) - k <= len(empty):
            name = empty[0]  # just enough groups left to give every split one
        else:
            name = max(SPLITS, key=lambda s: target[s] - count[s])  # ties: train, val, test
        count[name] += len(group)
        for i in group:
            assignment[i] = name


def write_split(path: str | os.PathLike, dataset: Dataset, split: Split) -> None:
    """split.csv: set (the data set's name), path (POSIX, relative to that set's root), sha256,
    label (1 AI, 0 real), split."""
    from aigen.data.sets import image_sets, path_in_set
    from aigen.io import write_csv

    if len(split.assignment) != len(dataset.images):
        raise ValueError("split and dataset differ in length")
    write_csv(path, SPLIT_HEADER,
              [(name, path_in_set(dataset, im.rel_path), im.sha256, im.label, a)
               for name, im, a in zip(image_sets(dataset), dataset.images, split.assignment)])


def read_split(path: str | os.PathLike, dataset: Dataset) -> Split:
    """Reload a split.csv for `dataset`; any difference between the two is a UserError. A split
    file without the set column (written by an earlier version) fits a single data set."""
    from aigen.data.sets import image_sets
    from aigen.io import escape_undecodable

    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = list(reader)
    except OSError as exc:
        raise UserError(f"cannot read split file {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:  # a binary or otherwise foreign file
        raise UserError(f"{path} is not a split file (not a UTF-8 CSV text file: {exc})") from None
    if header not in (SPLIT_HEADER, _HEADER_WITHOUT_SET):
        raise UserError(f"{path} is not a split file: expected the header {','.join(SPLIT_HEADER)}")
    several = len(set(image_sets(dataset))) > 1
    if several and header == _HEADER_WITHOUT_SET:
        raise UserError(f"{path} has no set column, so it cannot say which of the data sets "
                        f"({', '.join(dataset.sets)}) each path belongs to")
    # Paths as write_split wrote them (a name that is not UTF-8 has its bytes as \xNN there); with
    # several sets, NAME/path as in the dataset.
    by_path = {escape_undecodable(im.rel_path): i for i, im in enumerate(dataset.images)}
    skipped = {escape_undecodable(_relative_path(dataset, Path(s.path))): s.reason
               for s in dataset.skipped}
    assignment: list[str | None] = [None] * len(dataset.images)
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise UserError(f"{path}, line {line}: expected {len(header)} columns, got {len(row)}")
        if header == SPLIT_HEADER:
            set_name, row = row[0], row[1:]
        rel, sha, label, name = row
        if several:
            rel = f"{set_name}/{rel}"
        if name not in SPLITS and name != EXCLUDED:
            raise UserError(f"{path}, line {line}: unknown split {name!r}")
        if rel not in by_path:
            why = f"it is now skipped ({skipped[rel]})" if rel in skipped else "it is missing"
            raise UserError(f"{path} lists {rel}, but {why}; "
                            "the data folder changed since the split was made")
        i = by_path[rel]
        im = dataset.images[i]
        if im.sha256 != sha:
            raise UserError(f"{rel} changed since the split was made (sha256 {im.sha256[:12]}..., "
                            f"split file says {sha[:12]}...)")
        if str(im.label) != label:
            raise UserError(f"{rel} has label {im.label} but {path} says {label}")
        if assignment[i] is not None:
            raise UserError(f"{path} lists {rel} twice")
        assignment[i] = name
    unlisted = [im.rel_path for im, a in zip(dataset.images, assignment) if a is None]
    if unlisted:
        raise UserError(f"{len(unlisted)} image(s) are not in {path} (e.g. {unlisted[0]}): "
                        "the data folder changed since the split was made")
    _check_split_rules(path, dataset, assignment)
    return Split(assignment=[a for a in assignment if a is not None])


def _relative_path(dataset: Dataset, path: Path) -> str:
    """A file's path as the dataset names its images (NAME/path with several sets)."""
    roots = dataset.sets if len(dataset.sets) > 1 else {"": Path(dataset.root)}
    for name, root in roots.items():
        if path.is_relative_to(root):
            rel = path.relative_to(root).as_posix()
            return f"{name}/{rel}" if name else rel
    return str(path)


def _check_split_rules(path: Path, dataset: Dataset, assignment: list) -> None:
    """A reloaded (possibly hand-edited) split must keep the rules `make_split` follows: no exact
    duplicate on two sides, contents found under both labels excluded, no empty split."""
    conflicts = dataset.conflicting_sha256s()
    side_of: dict[str, tuple[str, str]] = {}
    for im, name in zip(dataset.images, assignment):
        if im.sha256 in conflicts:
            if name != EXCLUDED:
                raise UserError(f"{path} puts {im.rel_path} in {name}, but its content is under "
                                f"both labels and must be {EXCLUDED}")
            continue
        first = side_of.setdefault(im.sha256, (name, im.rel_path))
        if first[0] != name:
            raise UserError(f"{path} puts the identical files {first[1]} ({first[0]}) and "
                            f"{im.rel_path} ({name}) in different splits: that would leak")
    for name in SPLITS:
        if name not in assignment:
            raise UserError(f"{path} has no {name} images")
