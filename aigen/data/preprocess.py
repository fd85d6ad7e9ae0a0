"""Model inputs: the two preprocessing specs, the uint8 image of a file for a spec, float arrays.

One code path for every image: `preprocess(open_image(...), spec)` gives the uint8 image that is
packed into the store (aigen.data.store) for dataset files, and `to_model_input` turns uint8
images into the float32 NCHW model input.

Harmonisation (`Spec.harmonize`, docs/study.md): "none", or "jpeg:Q" = after the resize to the
model's input size, the image is JPEG-encoded at quality Q and decoded again (`harmonize_image`),
so every input of both classes carries the same, fresh compression, whatever its file held.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from aigen.data.loading import DEFAULT_MAX_PIXELS, ImageSkip, decode_bytes, open_image

# Bumped whenever decoding, resizing or the cache layout changes, so old entries are never reused.
CACHE_VERSION = 2
# Dataset images are decoded (JPEG draft) so both sides stay >= this many pixels: the largest
# model input. Every spec derives from this one decode, whichever specs are requested together.
DECODE_MIN_SIDE = 224

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

HARMONIZE_NONE = "none"
# The fixed JPEG settings of harmonisation (part of Spec.key): 4:2:0 chroma subsampling (libjpeg's
# and most cameras' default), baseline, no optimised Huffman tables; Pillow's standard tables.
HARMONIZE_JPEG = {"subsampling": 2, "optimize": False, "progressive": False}


def check_harmonize(text: str) -> str:
    """The canonical form of a harmonisation ("none" or "jpeg:Q", Q a whole number in 1..100);
    ValueError (saying what is accepted) for anything else."""
    text = str(text).strip().lower()
    if text == HARMONIZE_NONE:
        return text
    match = re.fullmatch(r"jpeg:(\d{1,3})", text)
    if not match or not 1 <= int(match.group(1)) <= 100:
        raise ValueError(f"harmonisation {text!r}: use none or jpeg:Q with a quality Q in 1..100")
    return f"jpeg:{int(match.group(1))}"


def harmonize_image(img: Image.Image, harmonize: str) -> Image.Image:
    """`img` (mode "L" or "RGB") after harmonisation: "none" leaves it alone; "jpeg:Q" encodes it
    as JPEG at quality Q with the fixed settings HARMONIZE_JPEG and decodes it again (the same
    bytes in, the same pixels out: nothing random)."""
    if harmonize == HARMONIZE_NONE:
        return img
    quality = int(check_harmonize(harmonize).split(":")[1])
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, **HARMONIZE_JPEG)
    buf.seek(0)
    with Image.open(buf) as decoded:
        decoded.load()
        return decoded.convert(img.mode)


@dataclass(frozen=True)
class Spec:
    """A model input: `mode` ("L" or "RGB") resized to size x size with `resample`, harmonised
    (`harmonize`: "none" or "jpeg:Q", see harmonize_image), then (x / 255 - mean) / std per
    channel. Aspect ratio is not preserved and nothing is cropped, so the original size and shape
    are not inputs (resampling still leaves traces of them)."""

    name: str
    size: int
    mode: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resample: str = "bilinear"
    harmonize: str = HARMONIZE_NONE

    def __post_init__(self):
        check_harmonize(self.harmonize)

    def harmonized(self, harmonize: str) -> "Spec":
        """This spec with another harmonisation (canonicalised; ValueError if not valid)."""
        return replace(self, harmonize=check_harmonize(harmonize))

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    @property
    def u8_shape(self) -> tuple[int, ...]:
        """Shape of the cached uint8 image: (H, W) for grey, (H, W, 3) for RGB."""
        return (self.size, self.size) if self.mode == "L" else (self.size, self.size, 3)

    @property
    def key(self) -> str:
        """Cache folder name: every parameter that changes the cached bytes ("none" adds nothing,
        so stores written before harmonisation existed stay valid)."""
        key = f"{self.name}-{self.size}x{self.size}-{self.mode}-{self.resample}-draft{DECODE_MIN_SIDE}"
        if self.harmonize != HARMONIZE_NONE:
            quality = self.harmonize.split(":")[1]
            key += f"-jpeg{quality}s420"  # the fixed settings of HARMONIZE_JPEG
        return key


SCRATCH = Spec("scratch", 32, "L", mean=(0.0,), std=(1.0,))
BACKBONE = Spec("backbone", 224, "RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD)
SPECS = {SCRATCH.name: SCRATCH, BACKBONE.name: BACKBONE}

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR}


def preprocess(img: Image.Image, spec: Spec) -> np.ndarray:
    """The uint8 image for `spec`: RGB -> (grey via Pillow's convert("L"), ITU-R 601 luma) ->
    resize to size x size with Pillow's bilinear filter (antialiased when shrinking) ->
    harmonisation at that size (harmonize_image: nothing, or a JPEG round trip at quality Q)."""
    if img.mode != "RGB":
        from aigen.data.loading import to_rgb

        img = to_rgb(img)
    if spec.mode == "L":
        img = img.convert("L")
    img = img.resize((spec.size, spec.size), _RESAMPLE[spec.resample])
    return np.array(harmonize_image(img, spec.harmonize), dtype=np.uint8)


def harmonize_u8(u8: np.ndarray, spec: Spec) -> np.ndarray:
    """uint8 images at `spec`'s size (one, or a batch (N, H, W[, 3])) harmonised as `spec` says:
    `preprocess` = resize, then this; so harmonising the unharmonised spec's stored rows gives
    exactly the rows of the harmonised spec."""
    if spec.harmonize == HARMONIZE_NONE:
        return u8
    u8 = np.asarray(u8, dtype=np.uint8)
    if u8.ndim == len(spec.u8_shape):
        return np.array(harmonize_image(Image.fromarray(u8), spec.harmonize))
    return np.stack([harmonize_u8(row, spec) for row in u8]) if len(u8) else u8.copy()


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


def decode_specs(data: bytes, specs: Iterable[Spec],
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict[str, np.ndarray]:
    """{spec.key: uint8 image} for the bytes of a dataset file, decoded once; raises ImageSkip."""
    img = decode_bytes(data, max_pixels=max_pixels, min_side=DECODE_MIN_SIDE)
    return {spec.key: preprocess(img, spec) for spec in specs}


def check_decodes(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
    """Decode `data` as decode_specs would, keep nothing; raises ImageSkip."""
    decode_bytes(data, max_pixels=max_pixels, min_side=DECODE_MIN_SIDE)
