"""Model inputs: the two preprocessing specs, the on-disk cache of resized images, float arrays.

One code path for every image: `preprocess(open_image(...), spec)` gives the uint8 image that is
cached for dataset files, and `to_model_input` turns uint8 images into the float32 NCHW model input.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
from PIL import Image

from aigen.data.loading import DEFAULT_MAX_PIXELS, ImageSkip, decode_bytes, open_image

if TYPE_CHECKING:
    from aigen.data.dataset import Dataset

# Bumped whenever decoding or resizing changes, so old cache entries are never reused.
CACHE_VERSION = 1
# Dataset images are decoded (JPEG draft) so both sides stay >= this many pixels: the largest
# model input. Every spec derives from this one decode, whichever specs are requested together.
DECODE_MIN_SIDE = 224

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Spec:
    """A model input: `mode` ("L" or "RGB") resized to size x size with `resample`, then
    (x / 255 - mean) / std per channel. Aspect ratio is not preserved and nothing is cropped,
    so the original size and shape are not inputs (resampling still leaves traces of them)."""

    name: str
    size: int
    mode: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resample: str = "bilinear"

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    @property
    def u8_shape(self) -> tuple[int, ...]:
        """Shape of the cached uint8 image: (H, W) for grey, (H, W, 3) for RGB."""
        return (self.size, self.size) if self.mode == "L" else (self.size, self.size, 3)

    @property
    def key(self) -> str:
        """Cache folder name: every parameter that changes the cached bytes."""
        return f"{self.name}-{self.size}x{self.size}-{self.mode}-{self.resample}-draft{DECODE_MIN_SIDE}"


SCRATCH = Spec("scratch", 32, "L", mean=(0.0,), std=(1.0,))
BACKBONE = Spec("backbone", 224, "RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD)
SPECS = {SCRATCH.name: SCRATCH, BACKBONE.name: BACKBONE}

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR}


def preprocess(img: Image.Image, spec: Spec) -> np.ndarray:
    """The uint8 image for `spec`: RGB -> (grey via Pillow's convert("L"), ITU-R 601 luma) ->
    resize to size x size with Pillow's bilinear filter (antialiased when shrinking)."""
    if img.mode != "RGB":
        from aigen.data.loading import to_rgb

        img = to_rgb(img)
    if spec.mode == "L":
        img = img.convert("L")
    img = img.resize((spec.size, spec.size), _RESAMPLE[spec.resample])
    return np.array(img, dtype=np.uint8)


def _lookup_table(spec: Spec) -> np.ndarray:
    """(256, C) float32: (v / 255 - mean) / std for every byte value, computed in float64."""
    v = np.arange(256, dtype=np.float64)[:, None] / 255.0
    return ((v - np.asarray(spec.mean)) / np.asarray(spec.std)).astype(np.float32)


def to_model_input(u8: np.ndarray, spec: Spec) -> np.ndarray:
    """float32 NCHW model input from one uint8 image or a batch (N, H, W[, 3]); one image -> N=1.

    Each value is (v / 255 - mean[c]) / std[c], computed in float64 and rounded to float32 (a
    lookup table, which also avoids float temporaries of the whole batch)."""
    u8 = np.asarray(u8)
    if u8.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {u8.dtype}")
    if u8.ndim == len(spec.u8_shape):
        u8 = u8[None]
    if u8.shape[1:] != spec.u8_shape:
        raise ValueError(f"expected images of shape {spec.u8_shape} for {spec.name}, got {u8.shape[1:]}")
    lut = _lookup_table(spec)
    out = np.empty((u8.shape[0], spec.channels, spec.size, spec.size), dtype=np.float32)
    if spec.mode == "L":
        out[:, 0] = lut[:, 0][u8]
    else:
        for c in range(spec.channels):
            out[:, c] = lut[:, c][u8[..., c]]
    return out


def load_model_inputs(path: str | os.PathLike, specs: Iterable[Spec],
                      max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict[Spec, np.ndarray]:
    """{spec: float32 (1, C, H, W)} for an image file outside a dataset: decoded once, exactly like
    dataset files (raises loading.ImageSkip when the file is unusable)."""
    img = open_image(path, max_pixels, min_side=DECODE_MIN_SIDE)
    return {spec: to_model_input(preprocess(img, spec), spec) for spec in specs}


def load_model_input(path: str | os.PathLike, spec: Spec,
                     max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """float32 (1, C, H, W) for one spec (see load_model_inputs)."""
    return load_model_inputs(path, [spec], max_pixels)[spec]


CACHE_FULL_ADVICE = ("free some space there or set AIGEN_CACHE_DIR to a folder on another disk "
                     "(the cache can be deleted safely)")


def cache_root(create: bool = True) -> Path:
    """Where preprocessed images are kept: <cache_dir>/preprocess/v<CACHE_VERSION> (the cache
    folder is created unless `create` is false: a run that only reads the cache writes nothing)."""
    from aigen.errors import UserError
    from aigen.paths import cache_dir, cache_location

    from aigen.io import full_disk_is_user_error

    try:
        with full_disk_is_user_error(cache_location(), CACHE_FULL_ADVICE):
            return (cache_dir() if create else cache_location()) / "preprocess" / f"v{CACHE_VERSION}"
    except OSError as exc:
        raise UserError(f"cannot create the cache folder: {exc} "
                        "(set AIGEN_CACHE_DIR to a writable folder)") from None


class PreprocessCache:
    """One .npy per (content sha256, spec) under root/<spec.key>/<sha[:2]>/<sha>.npy.

    Writes go to a temporary file in the same folder and are renamed into place, so concurrent
    writers and interrupted runs never leave a half-written entry under the final name."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else cache_root()
        self._sizes: dict[Spec, int] = {}

    def path(self, sha256: str, spec: Spec) -> Path:
        return self.root / spec.key / sha256[:2] / f"{sha256}.npy"

    def _expected_size(self, spec: Spec) -> int:
        if spec not in self._sizes:
            buf = io.BytesIO()
            np.save(buf, np.zeros(spec.u8_shape, np.uint8))
            self._sizes[spec] = buf.tell()
        return self._sizes[spec]

    def has(self, sha256: str, spec: Spec) -> bool:
        """Cheap check (a stat): the entry exists with the right byte size."""
        try:
            return self.path(sha256, spec).stat().st_size == self._expected_size(spec)
        except OSError:
            return False

    def get(self, sha256: str, spec: Spec) -> np.ndarray | None:
        """The cached uint8 image, or None when missing or corrupt."""
        try:
            arr = np.load(self.path(sha256, spec), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if arr.dtype != np.uint8 or arr.shape != spec.u8_shape:
            return None
        return arr

    def put(self, sha256: str, spec: Spec, u8: np.ndarray) -> None:
        from aigen.errors import UserError
        from aigen.io import atomic_path

        path = self.path(sha256, spec)
        try:
            with atomic_path(path, full_disk_advice=CACHE_FULL_ADVICE) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, np.ascontiguousarray(u8, dtype=np.uint8), allow_pickle=False)
        except IsADirectoryError:
            raise UserError(f"the preprocessing cache entry {path} is a folder, not a file: "
                            "remove it (everything in the cache can be deleted safely)") from None
        except OSError as exc:
            raise UserError(f"cannot write the preprocessing cache in {self.root}: {exc.strerror or exc} "
                            "(set AIGEN_CACHE_DIR to a writable folder)") from None


def decode_into_cache(data: bytes, sha256: str, specs: Iterable[Spec], cache: PreprocessCache,
                      max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict[Spec, np.ndarray]:
    """Decode `data` once and store the uint8 image for every spec; raises ImageSkip."""
    img = decode_bytes(data, max_pixels=max_pixels, min_side=DECODE_MIN_SIDE)
    out = {}
    for spec in specs:
        out[spec] = preprocess(img, spec)
        cache.put(sha256, spec, out[spec])
    return out


def check_decodes(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
    """Decode `data` as decode_into_cache would, write nothing; raises ImageSkip."""
    decode_bytes(data, max_pixels=max_pixels, min_side=DECODE_MIN_SIDE)


def dataset_arrays(dataset: "Dataset", spec: Spec, indices: Sequence[int] | np.ndarray | None = None,
                   cache: PreprocessCache | None = None) -> np.ndarray:
    """float32 (N, C, H, W) model input for dataset images (all, or `indices` in that order).

    Read from the cache that load_dataset filled; a missing or corrupt entry is recomputed from the
    file (a file whose content changed since loading is a UserError)."""
    from aigen.data.loading import read_unchanged
    from aigen.errors import UserError

    cache = cache or PreprocessCache()
    idx = np.arange(len(dataset.images)) if indices is None else np.asarray(indices, dtype=np.int64)
    u8 = np.empty((len(idx),) + spec.u8_shape, dtype=np.uint8)
    for row, i in enumerate(idx):
        info = dataset.images[int(i)]
        arr = cache.get(info.sha256, spec)
        if arr is None:
            try:
                data = read_unchanged(info.path, info.sha256)
                arr = decode_into_cache(data, info.sha256, [spec], cache, dataset.max_pixels)[spec]
            except ImageSkip as exc:
                raise UserError(f"{info.path}: {exc.reason}; reload the dataset") from None
        u8[row] = arr
    return to_model_input(u8, spec)
