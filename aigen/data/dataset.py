"""load_dataset(): discover files, hash, probe, decode into the preprocessed store, record skips.

Also the data options every command shares (add_data_arguments / dataset_from_args).
"""

from __future__ import annotations

import argparse
import collections
import csv
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from aigen.data.discover import (LABEL_AI, LABEL_NAMES, LABEL_REAL, Candidate, Skipped, discover,
                                 parse_class_args)
from aigen.data.loading import (DEFAULT_MAX_PIXELS, ImageSkip, probe_bytes, read_bytes,
                                read_unchanged)
from aigen.data.preprocess import (BACKBONE, SCRATCH, Spec, check_decodes, decode_specs,
                                   to_model_input)
from aigen.data.preprocess import CACHE_FULL_ADVICE
from aigen.data.preprocess import cache_root as preprocess_cache_root
from aigen.errors import UserError
from aigen.io import full_disk_is_user_error

DEFAULT_SPECS = (SCRATCH, BACKBONE)


@dataclass(frozen=True)
class ImageInfo:
    """One usable image. format/mode/width/height are what Pillow reads from the content (not the
    file name); the size is as stored, before EXIF orientation."""

    path: Path
    rel_path: str  # POSIX, relative to the data root
    label: int
    sha256: str
    format: str
    mode: str
    width: int
    height: int
    n_bytes: int


@dataclass
class Dataset:
    root: Path
    images: list[ImageInfo]  # sorted by rel_path; includes cross-class duplicates (see below)
    skipped: list[Skipped]  # unusable files, plus every image whose content is also in the other class
    class_names: dict[int, str]
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    class_folders: dict[str, int] = field(default_factory=dict)
    n_files: int = 0  # candidate files found (usable + skipped for a file-level reason)
    # {set name: root} when loaded as named sets (aigen.data.sets); several sets are joined, with
    # paths NAME/path-in-set.
    sets: dict[str, Path] = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        return np.array([im.label for im in self.images], dtype=np.int64)

    def manifest_sha256(self) -> str:
        """Fingerprint of the dataset: sha256 over (rel_path, sha256, label) of every image."""
        h = hashlib.sha256()
        for im in self.images:  # a name that is not UTF-8 counts with its own bytes
            h.update(f"{im.rel_path}\t{im.sha256}\t{im.label}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def conflicting_sha256s(self) -> set[str]:
        """Contents present under both labels: unusable, since the label is contradictory."""
        return conflicting_sha256s(self.images)


def conflicting_sha256s(images: Iterable[ImageInfo]) -> set[str]:
    labels: dict[str, set[int]] = collections.defaultdict(set)
    for im in images:
        labels[im.sha256].add(im.label)
    return {sha for sha, labs in labels.items() if len(labs) > 1}


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _process_file(path: str, rel_path: str, label: int, specs: tuple[Spec, ...],
                  max_pixels: int | None) -> tuple[ImageInfo | Skipped, dict[str, np.ndarray], tuple | None]:
    """Worker: stat -> bytes -> sha256 -> header probe -> one decode (the uint8 image of every spec).

    Returns (result, {spec.key: uint8 image}, (size, mtime_ns) of the file as read, or None when
    the outcome must not be remembered: an unreadable file, or running out of memory)."""
    try:
        st = os.stat(path)
        data = read_bytes(path)
    except (ImageSkip, OSError) as exc:
        reason = exc.reason if isinstance(exc, ImageSkip) else f"unreadable: {exc.strerror or exc}"
        return Skipped(Path(path), reason), {}, None
    stamp = (st.st_size, st.st_mtime_ns)
    try:
        sha = hashlib.sha256(data).hexdigest()
        probe = probe_bytes(data, max_pixels)
        if specs:
            rows = decode_specs(data, specs, max_pixels)
        else:
            # Decode anyway, so whether a file counts as an image never depends on the specs
            # (a truncated file is always a skip).
            check_decodes(data, max_pixels)
            rows = {}
    except ImageSkip as exc:
        return Skipped(Path(path), exc.reason), {}, stamp
    except MemoryError:
        return Skipped(Path(path), "cannot decode: out of memory"), {}, None
    return (ImageInfo(path=Path(path), rel_path=rel_path, label=label, sha256=sha,
                      format=probe.format, mode=probe.mode, width=probe.width, height=probe.height,
                      n_bytes=len(data)), rows, stamp)


def _process_star(task: tuple):
    return _process_file(*task)


def _pool_map(fn, tasks: list[tuple], workers: int, progress: bool, desc: str) -> Iterator:
    """fn(*task) for every task, in order, on `workers` processes (1 = in this process); the
    results are yielded as they come, a window at a time, so they never pile up in memory."""
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc=desc, unit="img", file=sys.stderr, disable=not progress,
               leave=False)
    try:
        if workers <= 1:
            for task in tasks:
                yield fn(task)
                bar.update()
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, never fork: the caller may already run threads (torch, BLAS), and fork copies
        # their locks in whatever state they are.
        chunksize = max(1, min(16, len(tasks) // (workers * 8)))
        window = max(1024, 64 * workers * chunksize)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for start in range(0, len(tasks), window):
                for result in pool.map(fn, tasks[start:start + window], chunksize=chunksize):
                    yield result
                    bar.update()
    finally:
        bar.close()


def _from_index(c: Candidate, hit: tuple) -> ImageInfo | Skipped:
    sha, n_bytes, fmt, mode, width, height, skip = hit
    if skip is not None:
        return Skipped(Path(c.path), skip)
    return ImageInfo(path=Path(c.path), rel_path=c.rel_path, label=c.label, sha256=sha, format=fmt,
                     mode=mode, width=width, height=height, n_bytes=n_bytes)


def load_dataset(root: str | os.PathLike, class_map: Mapping[str, int | str] | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, workers: int | None = None,
                 progress: bool = True, specs: Sequence[Spec] = DEFAULT_SPECS,
                 rehash: bool = False, both: bool = True) -> Dataset:
    """Discover the two classes under `root`, check every file and fill the store of each spec.

    A file the hash index knows with the same size and mtime is not read at all (`rehash=True`
    reads and hashes every file again, and rewrites the stores). Any other file is read once:
    sha256, header probe (format/mode/size, pixel limit), then one decode, whose uint8 image for
    every spec goes to the writer's scratch space; then each spec's store for this dataset is
    packed, unless it already exists (aigen.data.store). With specs=() nothing is written (the
    index is only read), but every unknown file is still decoded once, so the images/skipped
    verdict never depends on `specs`. Files run in parallel on `workers` processes (default:
    available_cores(); 1 = in this process). Unusable files become `Skipped` entries; nothing is
    ever written into the data folder. both=False accepts a folder with one class only (for
    evaluation sets).
    """
    from aigen.data.store import FileIndex, Scratch

    found = discover(root, class_map, both)
    if workers is None:
        workers = available_cores()
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if max_pixels is not None and max_pixels < 0:
        raise UserError(f"the pixel limit must be positive, got {max_pixels}")
    specs = tuple(specs)
    if specs:  # checked before the cache folder is created
        from aigen.paths import cache_location

        cache = cache_location()
        if cache.resolve().is_relative_to(Path(found.root).resolve()):
            raise UserError(f"the cache folder {cache} is inside the data folder {found.root}, "
                            "and aigen never writes into a data folder: set AIGEN_CACHE_DIR to a "
                            "folder outside it")
    base = preprocess_cache_root(create=bool(specs))
    if specs:
        _make_folder(base)
    index = FileIndex(base / "files.sqlite", writable=bool(specs))
    results: list[ImageInfo | Skipped | None] = [None] * len(found.files)
    tasks, keys = [], []
    for k, c in enumerate(found.files):
        key = os.path.abspath(c.path)
        hit = None
        if not rehash:
            try:
                st = os.stat(key)
                hit = index.get(key, st.st_size, st.st_mtime_ns, max_pixels)
            except OSError:
                pass
        if hit is not None:
            results[k] = _from_index(c, hit)
        else:
            tasks.append((str(c.path), c.rel_path, c.label, specs, max_pixels))
            keys.append((k, key))
    # A full disk while the stores are written is a one-line error naming the cache folder.
    with full_disk_is_user_error(base, CACHE_FULL_ADVICE):
        scratch = Scratch(base, specs) if specs and tasks else None
        try:
            outcomes = _pool_map(_process_star, tasks, min(workers, max(1, len(tasks))), progress,
                                 "loading images")
            for (k, key), (result, rows, stamp) in zip(keys, outcomes):
                results[k] = result
                if stamp is not None:
                    info = result if isinstance(result, ImageInfo) else None
                    index.add(key, *stamp, max_pixels, info and info.sha256, info and info.n_bytes,
                              info and info.format, info and info.mode, info and info.width,
                              info and info.height, None if info else result.reason)
                if scratch is not None and rows:
                    scratch.add(result.sha256, rows)
            index.commit()
            index.close()

            images = sorted((r for r in results if isinstance(r, ImageInfo)), key=lambda im: im.rel_path)
            skipped = list(found.skipped) + [r for r in results if isinstance(r, Skipped)]
            skipped.extend(_conflict_skips(images))
            dataset = Dataset(root=found.root, images=images, skipped=skipped,
                              class_names=found.class_names, max_pixels=max_pixels,
                              class_folders=dict(found.folders),
                              n_files=len(found.files) + len(found.skipped))
            _check_usable(dataset, both)
            if specs:
                ensure_stores(dataset, specs, scratch=scratch, workers=workers, progress=progress,
                              rebuild=rehash)
        finally:
            if scratch is not None:
                scratch.close()
    return dataset


def _make_folder(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the cache folder {path}: {exc.strerror or exc} "
                        "(set AIGEN_CACHE_DIR to a writable folder)") from None


def _decode_row(task: tuple) -> dict[str, np.ndarray] | str:
    """Worker for packing: the uint8 rows of one dataset image, or why it cannot be had now."""
    path, sha256, specs, max_pixels = task
    try:
        return decode_specs(read_unchanged(path, sha256), specs, max_pixels)
    except ImageSkip as exc:
        return exc.reason


def ensure_stores(dataset: Dataset, specs: Sequence[Spec], *, scratch=None, workers: int = 1,
                  progress: bool = False, rebuild: bool = False) -> None:
    """Pack the store of each spec for `dataset` unless it exists (or `rebuild`): rows found in
    the scratch space are copied, the others decoded again from their files (checked against
    their sha256: a file that changed since loading is a UserError)."""
    import contextlib

    from aigen.data.store import RowWriter, open_store, store_path

    base = preprocess_cache_root()
    manifest = dataset.manifest_sha256()
    n = len(dataset.images)
    todo = [spec for spec in specs
            if rebuild or open_store(base, spec, manifest, n) is None]
    if not todo:
        return
    known = scratch.slots if scratch is not None else {}
    need = [im for im in dataset.images if im.sha256 not in known]
    decoded = _pool_map(_decode_row, [(str(im.path), im.sha256, tuple(todo), dataset.max_pixels)
                                      for im in need],
                        min(workers, max(1, len(need))), progress and bool(need), "packing images")
    with contextlib.ExitStack() as stack:
        try:
            writers = {spec.key: RowWriter(store_path(base, spec, manifest)) for spec in todo}
        except OSError as exc:
            raise UserError(f"cannot write the preprocessing cache in {base}: "
                            f"{exc.strerror or exc} (set AIGEN_CACHE_DIR to a writable folder)") \
                from None
        for writer in writers.values():
            stack.callback(writer.discard)
        try:
            for im in dataset.images:
                if im.sha256 in known:
                    rows = {spec.key: scratch.reader(spec).read([known[im.sha256]])[0]
                            for spec in todo}
                else:
                    rows = next(decoded)
                    if isinstance(rows, str):
                        raise UserError(f"{im.path}: {rows}; reload the dataset")
                for key, writer in writers.items():
                    writer.append(rows[key])
            for writer in writers.values():
                writer.commit()
        except OSError as exc:
            raise UserError(f"cannot write the preprocessing cache in {base}: "
                            f"{exc.strerror or exc} (free some space, or set AIGEN_CACHE_DIR to "
                            "a folder with room)") from None
        finally:
            decoded.close()


def dataset_inputs(dataset: Dataset, spec: Spec):
    """The store of `spec` for `dataset` (a store.RowFile of uint8 images in dataset order), opened
    in O(1); packed first if missing (e.g. a spec that load_dataset was not asked for)."""
    from aigen.data.store import open_store

    base = preprocess_cache_root()
    manifest = dataset.manifest_sha256()
    store = open_store(base, spec, manifest, len(dataset.images))
    if store is None:
        ensure_stores(dataset, [spec])
        store = open_store(base, spec, manifest, len(dataset.images))
    return store


def dataset_arrays(dataset: Dataset, spec: Spec, indices: Sequence[int] | np.ndarray | None = None
                   ) -> np.ndarray:
    """float32 (N, C, H, W) model input for dataset images (all, or `indices` in that order),
    read from the store. For many images, stream batches instead (aigen.data.stream)."""
    idx = np.arange(len(dataset.images)) if indices is None else np.asarray(indices, dtype=np.int64)
    return to_model_input(dataset_inputs(dataset, spec).read(idx), spec)


def _conflict_skips(images: list[ImageInfo]) -> list[Skipped]:
    conflicts = conflicting_sha256s(images)
    if not conflicts:
        return []
    by_sha: dict[str, list[ImageInfo]] = collections.defaultdict(list)
    for im in images:
        if im.sha256 in conflicts:
            by_sha[im.sha256].append(im)
    skips = []
    for group in by_sha.values():
        for im in group:
            other = next(o for o in group if o.label != im.label)
            skips.append(Skipped(im.path, f"identical content also under the other class: {other.rel_path}"))
    return skips


def _check_usable(dataset: Dataset, both: bool = True) -> None:
    conflicts = dataset.conflicting_sha256s()
    present = set(dataset.class_folders.values()) or {LABEL_AI, LABEL_REAL}
    for label in (LABEL_AI, LABEL_REAL):
        n = sum(1 for im in dataset.images if im.label == label and im.sha256 not in conflicts)
        if n == 0 and (both or label in present):
            why = format_skip_summary(dataset) if dataset.skipped else "the folder has no files"
            raise UserError(f"no usable {LABEL_NAMES[label]} images in {dataset.root} "
                            f"(folder {dataset.class_names[label]}); {why}")


def format_skip_summary(dataset_or_skipped: Dataset | Sequence[Skipped], n_files: int | None = None) -> str:
    """One line: how many files were skipped, per reason category."""
    if isinstance(dataset_or_skipped, Dataset):
        skipped, n_files = dataset_or_skipped.skipped, dataset_or_skipped.n_files
    else:
        skipped = list(dataset_or_skipped)
    if not skipped:
        return "no files skipped"
    counts = collections.Counter(s.category for s in skipped)
    parts = ", ".join(f"{n} {cat}" for cat, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    of = f" of {n_files}" if n_files is not None else ""
    return f"skipped {len(skipped)}{of} files: {parts}"


def write_skipped(path: str | os.PathLike, skipped: Sequence[Skipped]) -> None:
    """skipped.csv: columns path, reason (one row per skipped file)."""
    from aigen.io import write_csv

    write_csv(path, ["path", "reason"], [(str(s.path), s.reason) for s in skipped])


def read_skipped(path: str | os.PathLike) -> list[Skipped]:
    with open(path, newline="", encoding="utf-8") as f:
        return [Skipped(Path(row["path"]), row["reason"]) for row in csv.DictReader(f)]


# ---- the data options shared by every command -------------------------------------------------

def _pixels(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0 or value != int(value):
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels >= 0, got {text!r}")
    return int(value)


def add_data_arguments(parser: argparse.ArgumentParser, positional: bool = True,
                       several: bool = False) -> None:
    """Add the data options: [ROOT] / --data ROOT, --classes, --max-pixels, --workers.
    several=True: --data takes one or more [NAME=]ROOT and may be repeated (a list of strings;
    aigen.data.sets)."""
    from aigen.argtypes import positive_int

    group = parser.add_argument_group("data")
    if positional:
        group.add_argument("data_root", nargs="?", metavar="ROOT", default=None,
                           help="data folder (same as --data)")
    layout = ("Kaggle layout (AiArtData/AiArtData, RealArt/RealArt) or one subfolder per class "
              "(e.g. fake/ and real/)")
    if several:
        group.add_argument("--data", dest="data", metavar="[NAME=]ROOT", nargs="+",
                           action="extend", default=None,
                           help=f"data folder(s): {layout}. Give several (or repeat --data) to "
                                "train on several sets at once, each named NAME (default: its "
                                "folder's name); splits are stratified by set and label and test "
                                "metrics are also given per set (default: the embedded "
                                "synthetic dataset)")
    else:
        group.add_argument("--data", dest="data", metavar="ROOT", default=None,
                           help=f"data folder: {layout}")
    group.add_argument("--classes", nargs="+", metavar="LABEL=FOLDER", default=None,
                       help="name the class folders explicitly, e.g. --classes ai=AiArtData real=RealArt "
                            "(folders relative to ROOT)")
    group.add_argument("--max-pixels", type=_pixels, default=DEFAULT_MAX_PIXELS, metavar="N",
                       help=f"skip images with more than N pixels (width*height; default "
                            f"{DEFAULT_MAX_PIXELS:,}; 0 = no limit of our own)")
    group.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help="processes for decoding (default: all cores)")
    group.add_argument("--rehash", action="store_true",
                       help="read and hash every file again, even those whose size and "
                            "modification time are unchanged since the last load, and rebuild "
                            "the preprocessed store")


def data_root_from_args(args: argparse.Namespace, default_root: str | os.PathLike | None = None) -> Path:
    positional = getattr(args, "data_root", None)
    option = getattr(args, "data", None)
    if positional and option and Path(positional) != Path(option):
        raise UserError(f"two data folders given: {positional} and --data {option}")
    root = positional or option or default_root
    if root is None:
        raise UserError("no data folder given: pass ROOT or --data ROOT")
    return Path(root)


def dataset_from_args(args: argparse.Namespace, default_root: str | os.PathLike | None = None,
                      progress: bool = True, specs: Sequence[Spec] = DEFAULT_SPECS) -> Dataset:
    """load_dataset with the options of add_data_arguments; prints the skip summary to stderr."""
    class_map = parse_class_args(args.classes) if getattr(args, "classes", None) else None
    dataset = load_dataset(data_root_from_args(args, default_root), class_map=class_map,
                           max_pixels=getattr(args, "max_pixels", DEFAULT_MAX_PIXELS) or None,
                           workers=getattr(args, "workers", None), progress=progress, specs=specs,
                           rehash=bool(getattr(args, "rehash", False)))
    if dataset.skipped:
        print(format_skip_summary(dataset), file=sys.stderr)
    return dataset


__all__ = ["LABEL_AI", "LABEL_REAL", "Candidate", "Dataset", "ImageInfo", "Skipped", "load_dataset",
           "format_skip_summary", "write_skipped", "read_skipped", "add_data_arguments",
           "dataset_from_args", "conflicting_sha256s", "dataset_arrays", "dataset_inputs"]
