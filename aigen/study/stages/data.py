"""The data stages: load and check the training sets (packing every protocol's inputs into the
store), explore them (tables, histograms, the metadata shortcut audit), and split them per seed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aigen.io import refuse_inside
from aigen.study.stages.context import BACKBONE_REGIMES, StudyContext


def data_kind(root: Path) -> tuple[str, str]:
    """("synthetic", description) for an `aigen synth` output, else ("real", description)."""
    from aigen.data import synth

    manifest = synth.read_manifest(Path(root))
    if manifest is not None:
        return "synthetic", (
            f"embedded synthetic proxy dataset ({synth.GENERATOR_NAME} v"
            f"{manifest.get('generator_version')}, seed {manifest.get('seed')}, "
            f"difficulty {manifest.get('difficulty')}); not real AI-generated images")
    return "real", "image folder supplied by the user"


def data_sets_option(args) -> dict[str, Path]:
    """The --data sets {NAME: ROOT} (none: the synthetic default). A run recorded before --data
    took several sets has a string."""
    from aigen.data.sets import parse_sets

    data = getattr(args, "data", None)
    if not data:
        return {}
    return parse_sets([data] if isinstance(data, str) else data)


@dataclass
class StudyData:
    """The loaded training sets (one aigen.data.dataset.Dataset, images in a fixed order) and
    what the results say about them."""

    dataset: Any
    sets: dict[str, Path]  # set name -> resolved root
    set_kinds: dict[str, tuple[str, str]]  # set name -> data_kind()
    kind: str  # "synthetic", "real" or "mixed"
    description: str
    root: Path | None  # the root with one set, else None

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels


def load_data(ctx: StudyContext) -> StudyData:
    """Every training image found, checked and packed into the store, once for every protocol's
    inputs; under torchrun rank 0 packs and the others then open what it wrote."""
    from aigen import distributed
    from aigen.data.dataset import write_skipped
    from aigen.data.discover import parse_class_args
    from aigen.data.preprocess import BACKBONE
    from aigen.data.sets import load_sets, parse_sets

    args = ctx.args
    sets = data_sets_option(args)
    needs_backbone = bool(args.backbones) and bool(set(BACKBONE_REGIMES) & set(args.models))
    wanted = []  # every protocol's inputs, packed in one pass over the files
    for protocol in ctx.protocols:
        specs = protocol.specs()
        wanted.append(specs["scratch"])
        if needs_backbone:
            wanted.append(specs["backbone"])
            # Training from images (augmented, or the full regime) reads the unharmonised rows
            # (aigen.data.augment.AugmentedImages) of resized inputs; crops are cut from the
            # harmonised squares (their own store).
            if (protocol.augment != "none" or "full" in args.models) \
                    and not specs["backbone"].crop:
                wanted.append(BACKBONE)
    specs = tuple({spec.key: spec for spec in wanted}.values())

    def load():  # rank 0 writes the cache (store, index); the others then only read it
        nonlocal sets
        if not sets:
            from aigen.data.synth import default_dataset

            ctx.log("no --data given: using the embedded synthetic dataset")
            sets = parse_sets([str(default_dataset(progress=ctx.progress))])
        return load_sets(
            sets, class_map=parse_class_args(args.classes) if args.classes else None,
            max_pixels=args.max_pixels or None, workers=args.workers, progress=ctx.progress,
            specs=specs if ctx.main else (), rehash=ctx.main and bool(getattr(args, "rehash",
                                                                              False)))

    dataset = distributed.main_first(load)
    roots = {name: Path(root).resolve() for name, root in dataset.sets.items()}
    for root in roots.values():
        refuse_inside(ctx.out, root)
    set_kinds = {name: data_kind(root) for name, root in roots.items()}
    if len(set_kinds) == 1:
        kind, description = next(iter(set_kinds.values()))
    else:
        kinds = {k for k, _ in set_kinds.values()}
        kind = kinds.pop() if len(kinds) == 1 else "mixed"
        description = "; ".join(f"{name}: {text}" for name, (_, text) in set_kinds.items())
    if ctx.main:
        write_skipped(ctx.work / "skipped.csv", dataset.skipped)
    return StudyData(dataset=dataset, sets=roots, set_kinds=set_kinds, kind=kind,
                     description=description,
                     root=next(iter(roots.values())) if len(roots) == 1 else None)


def explore(ctx: StudyContext, data: StudyData) -> dict[str, Any]:
    """{"summary", "figures" (relative paths), "shortcut_audit"}: the exploration tables
    (exploration.csv/.md) and histograms (figures/) of the data, and the metadata-only shortcut
    audit (aigen.data.explore)."""
    from aigen.data import explore as explore_data

    def compute():
        summary = explore_data.summarize(data.dataset, ctx.metadata)
        written = explore_data.write_exploration(data.dataset, ctx.work, metadata=ctx.metadata,
                                                 summary=summary)
        figures = sorted(path for key, path in written.items() if key.startswith("figure_"))
        return {"summary": summary,
                "figures": [Path(p).relative_to(ctx.work).as_posix() for p in figures],
                "shortcut_audit": explore_data.shortcut_audit(data.dataset, seed=ctx.seeds[0],
                                                              metadata=ctx.metadata,
                                                              progress=ctx.progress)}

    return ctx.persisted("exploration", compute)


@dataclass
class Splits:
    """One split per seed, and the images that some split of some seed uses: every per-image
    array of the study (predictions, scratch inputs, activations) has one row per used image."""

    splits: dict[int, Any]  # seed -> aigen.data.split.Split
    files: dict[int, str]  # seed -> its split file in the results folder
    used: np.ndarray  # dataset indices of the used images, ascending
    y: np.ndarray  # their labels
    row_of: dict[int, int]  # dataset index -> row

    def rows(self, seed: int, part: str) -> np.ndarray:
        """The rows of the images of `part` ("train", "val", "test") of `seed`'s split."""
        return np.array([self.row_of[int(i)] for i in self.splits[seed].indices(part)],
                        dtype=np.int64)

    def test_union(self) -> list[int]:
        """Every seed's test images (dataset indices), ascending."""
        return sorted({int(i) for s in self.splits.values() for i in s.indices("test")})


def make_splits(ctx: StudyContext, data: StudyData) -> Splits:
    """A stratified split per seed (or the --split-file for every seed), written as split.csv
    (first seed) and split_seedK.csv."""
    from aigen.data.split import make_split, read_split, write_split

    args = ctx.args
    fixed = read_split(args.split_file, data.dataset) if args.split_file else None
    splits, files = {}, {}
    for k, seed in enumerate(ctx.seeds):
        split = fixed if fixed is not None else make_split(data.dataset, seed)
        name = "split.csv" if k == 0 else f"split_seed{seed}.csv"
        if ctx.main:
            write_split(ctx.work / name, data.dataset, split)
        splits[seed], files[seed] = split, name
    used = set()
    for split in splits.values():
        for part in ("train", "val", "test"):
            used.update(int(i) for i in split.indices(part))
    used = np.array(sorted(used), dtype=np.int64)
    return Splits(splits=splits, files=files, used=used, y=data.labels[used],
                  row_of={int(i): r for r, i in enumerate(used)})

