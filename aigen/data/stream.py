"""Streaming: torch Datasets over the store or over image files, batch loaders, and feature arrays
that stay in RAM only within a memory budget (docs/scale.md).

Nothing here holds every image at once: a batch is read (store rows by offset, or files decoded)
when the loader asks for it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from aigen.data.preprocess import CACHE_VERSION, Spec, preprocess, to_model_input
from aigen.data.store import RowFile, RowWriter

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of reusable features kept in RAM (1 GiB)


def _torch_dataset():
    import torch.utils.data

    return torch.utils.data.Dataset


class StoreImages(_torch_dataset()):
    """Model inputs of dataset rows `rows`, read from a store (store.RowFile of uint8 images).

    `ds[i]` is one float32 tensor (C, H, W); `ds[[i, j, ...]]` a batch (N, C, H, W) read in one go
    (what `batches` asks for); a crop spec gives each image's fixed windows, (N, n_windows, C, H,
    W) (preprocess.to_model_input). Pickles as a path, for DataLoader workers."""

    def __init__(self, store: RowFile, spec: Spec, rows: Sequence[int] | np.ndarray | None = None):
        self.store = store
        self.spec = spec
        self.rows = np.arange(len(store)) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        import torch

        single = np.ndim(index) == 0
        u8 = self.store.read(self.rows[np.atleast_1d(np.asarray(index, dtype=np.int64))])
        x = torch.from_numpy(to_model_input(u8, self.spec))
        return x[0] if single else x


class ImageFiles(_torch_dataset()):
    """Model inputs decoded from image files, as dataset files are (same decode, same JPEG draft
    scale: Spec.decode_min_side), with an optional `transform` (PIL RGB image -> PIL image) applied before the
    preprocessing: perturbations, augmentations. `items` are (path, sha256) pairs; a file whose
    content no longer has that sha256 raises UserError (sha256 None: not checked)."""

    def __init__(self, items: Sequence[tuple[Any, str | None]], spec: Spec,
                 transform: Callable | None = None, max_pixels: int | None = None):
        self.items = list(items)
        self.spec = spec
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def image(self, i: int):
        from aigen.data.loading import ImageSkip, decode_bytes, read_bytes, read_unchanged
        from aigen.errors import UserError

        path, sha256 = self.items[i]
        try:
            data = read_unchanged(path, sha256) if sha256 else read_bytes(path)
            img = decode_bytes(data, max_pixels=self.max_pixels,
                               min_side=self.spec.decode_min_side)
        except ImageSkip as exc:
            raise UserError(f"{path}: {exc.reason}; leave the data folder alone while aigen "
                            "reads it") from None
        return self.transform(img) if self.transform is not None else img

    def __getitem__(self, index):
        import torch

        single = np.ndim(index) == 0
        u8 = np.stack([preprocess(self.image(int(i)), self.spec) for i in np.atleast_1d(index)])
        x = torch.from_numpy(to_model_input(u8, self.spec))
        return x[0] if single else x


def batches(dataset, batch_size: int, *, device=None, workers: int = 0):
    """A DataLoader giving `dataset` in order, `batch_size` items per batch (the last may be
    shorter), each batch fetched in one call; pinned memory when the target is CUDA."""
    import torch.utils.data as tud

    sampler = tud.BatchSampler(tud.SequentialSampler(range(len(dataset))), batch_size, False)
    cuda = device is not None and getattr(device, "type", str(device)) == "cuda"
    return tud.DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=workers,
                          pin_memory=cuda, persistent_workers=False)


def loader_workers(device, requested: int | None = None) -> int:
    """DataLoader worker processes for `batches()` on `device`: none on the CPU (the network uses
    its cores, and a store read is cheap); on CUDA `requested` (--workers), else up to 4 per
    process, sharing the machine's cores with the other processes torchrun started there."""
    import os

    if getattr(device, "type", str(device)) != "cuda":
        return 0
    if requested:
        return int(requested)
    from aigen.data.dataset import available_cores

    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(4, available_cores() // local))


class FeatureRows:
    """Rows of a feature array, kept in RAM (a numpy array) or read from a file (a RowFile) on
    demand; `rows` selects and orders them. Indexing with a slice, or with integer indices (numpy
    or torch), gives a float32 torch tensor of just those rows; `subset(rows)` is another view.
    The training and evaluation loops only ever index a batch at a time."""

    is_feature_rows = True

    def __init__(self, source, rows: Sequence[int] | np.ndarray | None = None):
        self.source = source
        self.rows = np.arange(len(source)) if rows is None else np.asarray(rows, dtype=np.int64)
        row_shape = source.row_shape if isinstance(source, RowFile) else source.shape[1:]
        self.shape = (len(self.rows),) + tuple(row_shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def in_memory(self) -> bool:
        return not isinstance(self.source, RowFile)

    def __len__(self) -> int:
        return self.shape[0]

    def subset(self, rows) -> "FeatureRows":
        return FeatureRows(self.source, self.rows[np.asarray(rows, dtype=np.int64)])

    def numpy(self, key) -> np.ndarray:
        if hasattr(key, "numpy"):  # a torch tensor of indices
            key = key.numpy()
        picked = self.rows[key]
        if isinstance(self.source, RowFile):
            return self.source.read(np.atleast_1d(picked))
        return np.ascontiguousarray(self.source[picked], dtype=np.float32)

    def __getitem__(self, key):
        import torch

        return torch.from_numpy(self.numpy(key))


def feature_key(*parts: Any) -> str:
    """Cache key of a feature array: sha256 over its description (data manifest, rows, network
    and its weights, input spec, device type, torch version...)."""
    h = hashlib.sha256(f"features-v{CACHE_VERSION}".encode())
    for part in parts:
        h.update(b"\0")
        h.update(part.tobytes() if isinstance(part, np.ndarray) else str(part).encode())
    return h.hexdigest()


def open_features(folder: Path, key: str) -> RowFile | None:
    """The stored feature array `key` in `folder`, or None when absent or incomplete."""
    try:
        meta = json.loads((folder / f"{key}.json").read_text())
        rows = RowFile(folder / f"{key}.f32", meta["row_shape"], np.float32, int(meta["n_rows"]))
        if (folder / f"{key}.f32").stat().st_size != rows.n_rows * rows.row_bytes:
            return None
        return rows
    except (OSError, ValueError, KeyError, TypeError):
        return None


def computed_features(folder: Path, key: str, n_rows: int, compute, *, budget: int,
                      desc: str = "features", progress: bool = False) -> FeatureRows:
    """A feature array of `n_rows` rows, reused from `folder` when it holds `key`, else computed
    by `compute()` (an iterator of float32 batches, in row order) and stored there, one batch at
    a time. Kept in RAM when it fits in `budget` bytes; otherwise read from the file per batch.

    Under torchrun (aigen.distributed) every process runs `compute()` (each its share, gathered
    into rank 0's batches) and rank 0 alone writes the file, which the others then read."""
    from aigen import distributed

    stored = open_features(folder, key)
    if not distributed.from_main(stored is not None):
        def drain():
            for _ in compute():
                pass

        stored = distributed.main_first(
            lambda: _store_features(folder, key, n_rows, compute, desc, progress)
            if distributed.is_main() else open_features(folder, key), meanwhile=drain)
    if n_rows * stored.row_bytes <= budget:
        return FeatureRows(stored.read(np.arange(n_rows)))  # one read; the file stays for reuse
    return FeatureRows(stored)


def _store_features(folder: Path, key: str, n_rows: int, compute, desc: str,
                    progress: bool) -> RowFile:
    """compute()'s batches written to `folder`/`key`.f32 (+ .json), then opened."""
    from tqdm import tqdm

    from aigen.errors import UserError
    from aigen.io import write_json

    writer = None
    try:
        with tqdm(total=n_rows, desc=desc, unit="img", disable=not progress,
                  leave=False) as bar:
            for batch in compute():
                batch = np.ascontiguousarray(np.asarray(batch, dtype=np.float32))
                if writer is None:
                    writer = RowWriter(folder / f"{key}.f32")
                    row_shape = batch.shape[1:]
                writer.file.write(batch.tobytes())
                writer.n_rows += len(batch)
                bar.update(len(batch))
        if writer is None or writer.n_rows != n_rows:
            raise ValueError(f"expected {n_rows} feature rows, got {writer and writer.n_rows}")
        writer.commit()
        writer = None
        write_json(folder / f"{key}.json", {"row_shape": list(row_shape), "n_rows": n_rows})
    except OSError as exc:
        raise UserError(f"cannot write features in {folder}: {exc.strerror or exc} (free some "
                        "space, or set AIGEN_CACHE_DIR to a folder with room)") from None
    finally:
        if writer is not None:
            writer.discard()
    return open_features(folder, key)


def features_folder() -> Path:
    """Where reusable feature arrays are kept: <cache_dir>/features/v<CACHE_VERSION>."""
    from aigen.data.preprocess import cache_root

    folder = cache_root().parent.parent / "features" / f"v{CACHE_VERSION}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from aigen.errors import UserError

        raise UserError(f"cannot create the cache folder {folder}: {exc.strerror or exc} "
                        "(set AIGEN_CACHE_DIR to a writable folder)") from None
    return folder


def prefix_features(backbone, store: RowFile, spec: Spec, rows: np.ndarray, *, manifest: str,
                    device, budget: int = DEFAULT_MEMORY_BUDGET, batch_size: int = 64,
                    workers: int = 0, progress: bool = False) -> FeatureRows:
    """The backbone's prefix activations of dataset rows `rows` (in that order), computed from
    the store in batches, or reused from an earlier run with the same data, rows, backbone
    weights, input spec and device type (docs/scale.md).

    A crop spec gives n_windows rows per image, its fixed windows (preprocess.crop_windows) one
    after the other: len(rows) * n_windows rows."""
    import torch

    from aigen import distributed
    from aigen.data.preprocess import crop_windows, n_windows

    views = n_windows(spec)
    parts = ["prefix", manifest, np.asarray(rows, dtype=np.int64), backbone.name,
             backbone.fingerprint, spec.key, getattr(device, "type", str(device)),
             torch.__version__]
    if spec.crop:  # the windows are not in the store's bytes (nor key): they are here
        parts.append(f"windows{spec.crop}:{crop_windows(spec)}")
    key = feature_key(*parts)
    step = max(1, batch_size // views)  # images per batch: about batch_size model inputs

    def activations(x):
        flat = x.reshape((-1,) + tuple(x.shape[-3:]))  # an image's windows, one after the other
        return backbone.prefix_activations(flat, device, batch_size).contiguous()

    def compute():
        if not distributed.world().distributed:
            for x in batches(StoreImages(store, spec, rows), step, device=device,
                             workers=workers):
                yield activations(x).numpy()
            return
        # Each process its share of the rows; each batch gathered back into row order (an
        # image's windows stay together).
        done = 0
        mine = np.asarray(rows)[distributed.shard(len(rows))]
        for x in batches(StoreImages(store, spec, mine), step, device=device,
                         workers=workers):
            act = activations(x)
            gathered = distributed.gather_rows(act.reshape((-1, views) + tuple(act.shape[1:])))
            part = gathered[:len(rows) - done]
            done += len(part)
            yield part.reshape((-1,) + tuple(act.shape[1:])).contiguous().numpy()

    return computed_features(features_folder(), key, len(rows) * views, compute, budget=budget,
                             desc=f"{backbone.name} prefix", progress=progress)


__all__ = ["StoreImages", "ImageFiles", "batches", "loader_workers", "FeatureRows", "computed_features",
           "prefix_features", "DEFAULT_MEMORY_BUDGET"]
