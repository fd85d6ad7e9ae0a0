"""Model inputs: the preprocessing specs, the uint8 image of a file for a spec, float arrays.

One code path for every image: `preprocess(open_image(...), spec)` gives the uint8 image that is
packed into the store (aigen.data.store) for dataset files, and `to_model_input` turns uint8
images into the float32 NCHW model input.

Input policies (`--input`, docs/study.md): "resize" (SCRATCH, BACKBONE: the whole image resized to
the model's input size) or "crop" (CROP: the image at close to its stored resolution, its short
side scaled to S and the centre S x S square kept; the backbones see 224 x 224 windows of it,
a random one per training step, the fixed ones (crop_windows) averaged everywhere else).

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

from aigen.data.loading import DEFAULT_MAX_PIXELS, decode_bytes

# Bumped whenever decoding, resizing or the cache layout changes, so old entries are never reused.
CACHE_VERSION = 2
# Dataset images are decoded (JPEG draft) so both sides stay >= this many pixels: the largest
# model input. Every resize spec derives from this one decode, whichever specs are requested
# together; a crop spec has its own decode, with the draft bounded by its side S
# (Spec.decode_min_side), so asking for it never changes another spec's bytes.
DECODE_MIN_SIDE = 224
# The crop policy: the stored square's side S (the cap on the short side), the model's window and
# the fixed test windows. S = 384 keeps most images of the Kaggle data near their stored
# resolution (median short side 512 AI / 480 real; 10% / 20% are smaller than 384 and are
# enlarged) and shrinks 512x512 Stable Diffusion / COCO images by 0.75 only (docs/data.md).
CROP_SIDE = 384
CROP_WINDOW = 224
# Every window starts on the harmonisation JPEG's 8 x 8 block grid (the square's, from its top-left
# corner), so a training window and the test windows see the blocks at the same phase. Hence S is
# a multiple of 16 (the centre window starts at (S - 224) / 2) and at most 2 x 224 (the centre
# and the four corner windows then cover the whole square).
CROP_GRID = 8
CROP_SIDES = range(CROP_WINDOW, 2 * CROP_WINDOW + 1, 2 * CROP_GRID)  # 224, 240, ..., 448
INPUT_RESIZE = "resize"
INPUT_CROP = "crop"

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


def check_input(text: str) -> str:
    """The canonical form of an input policy: "resize", "crop" (S = CROP_SIDE) or "crop:S" (S in
    CROP_SIDES: a multiple of 16 in 224..448; "crop:384" written "crop"); ValueError otherwise."""
    text = str(text).strip().lower()
    if text in (INPUT_RESIZE, INPUT_CROP):
        return text
    match = re.fullmatch(r"crop:(\d{1,4})", text)
    if not match or int(match.group(1)) not in CROP_SIDES:
        raise ValueError(
            f"input policy {text!r}: use resize, crop or crop:S with a side S that is a multiple "
            f"of {2 * CROP_GRID} in {CROP_SIDES[0]}..{CROP_SIDES[-1]} (every {CROP_WINDOW}-pixel "
            f"window then starts on the {CROP_GRID}x{CROP_GRID} JPEG grid, and the five fixed "
            "windows cover the square)")
    side = int(match.group(1))
    return INPUT_CROP if side == CROP_SIDE else f"crop:{side}"


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
    are not inputs (resampling still leaves traces of them).

    `crop` > 0 makes it a crop spec: the stored image is the short side scaled to `size` (S) and
    the centre S x S square (harmonised at that size), and the model sees `crop` x `crop` windows
    of it: `to_model_input` of stored images gives their fixed windows (crop_windows), the
    training gives random ones (random_window)."""

    name: str
    size: int
    mode: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resample: str = "bilinear"
    harmonize: str = HARMONIZE_NONE
    crop: int = 0

    def __post_init__(self):
        check_harmonize(self.harmonize)
        if self.crop and not 0 < self.crop <= self.size:
            raise ValueError(f"a crop of {self.crop} does not fit in {self.size}x{self.size}")

    @property
    def input_size(self) -> int:
        """The side of the model's input: the window of a crop spec, else the stored size."""
        return self.crop or self.size

    @property
    def decode_min_side(self) -> int:
        """JPEG draft bound of the decode this spec's rows come from (see DECODE_MIN_SIDE)."""
        return self.size if self.crop else DECODE_MIN_SIDE

    def window(self) -> "Spec":
        """The spec of one crop-sized window of this crop spec's stored images (the model input
        of a training step); a resize spec is its own window."""
        return replace(self, size=self.crop, crop=0) if self.crop else self

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
        key = f"{self.name}-{self.size}x{self.size}-{self.mode}-{self.resample}"
        if self.crop:  # short side scaled to size, centre square (the window is not in the bytes)
            key += "-shortside-centre"
        key += f"-draft{self.decode_min_side}"
        if self.harmonize != HARMONIZE_NONE:
            quality = self.harmonize.split(":")[1]
            key += f"-jpeg{quality}s420"  # the fixed settings of HARMONIZE_JPEG
        return key


SCRATCH = Spec("scratch", 32, "L", mean=(0.0,), std=(1.0,))
BACKBONE = Spec("backbone", 224, "RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD)
CROP = Spec("crop", CROP_SIDE, "RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD, crop=CROP_WINDOW)
SPECS = {SCRATCH.name: SCRATCH, BACKBONE.name: BACKBONE}


def backbone_spec(input_policy: str = INPUT_RESIZE, harmonize: str = HARMONIZE_NONE) -> Spec:
    """The backbones' input under an input policy (check_input) and a harmonisation."""
    input_policy = check_input(input_policy)
    if input_policy == INPUT_RESIZE:
        return BACKBONE.harmonized(harmonize)
    side = CROP_SIDE if input_policy == INPUT_CROP else int(input_policy.split(":")[1])
    return replace(CROP, size=side).harmonized(harmonize)


def crop_windows(spec: Spec) -> list[tuple[int, int]]:
    """(top, left) of the fixed windows of a crop spec, the views scored and averaged at test
    time: the centre, then the four corners (for the sides S of CROP_SIDES: all on the
    CROP_GRID, together covering the whole S x S square)."""
    far, mid = spec.size - spec.crop, (spec.size - spec.crop) // 2
    return [(mid, mid), (0, 0), (0, far), (far, 0), (far, far)]


def random_window(spec: Spec, rng: np.random.Generator) -> tuple[int, int]:
    """(top, left) of a training window: uniform over the positions inside the S x S square that
    are multiples of CROP_GRID (on the harmonisation JPEG's block grid, as the fixed windows are;
    two draws from `rng`, always)."""
    top, left = rng.integers(0, (spec.size - spec.crop) // CROP_GRID + 1, size=2) * CROP_GRID
    return int(top), int(left)


def cut_window(u8: np.ndarray, spec: Spec, top: int, left: int) -> np.ndarray:
    """The crop x crop window at (top, left) of one stored image (a copy)."""
    return np.array(u8[top:top + spec.crop, left:left + spec.crop], dtype=np.uint8)


def mean_over_windows(prob: np.ndarray, n_windows: int) -> np.ndarray:
    """P(AI) per image from the probabilities of its windows (n_images * n_windows values, each
    image's windows together): their mean, in float64."""
    prob = np.asarray(prob, dtype=np.float64)
    return prob.reshape(-1, n_windows).mean(axis=1) if n_windows > 1 else prob


def n_windows(spec: Spec) -> int:
    """How many model inputs one stored image gives at test time: 1, or the fixed windows."""
    return len(crop_windows(spec)) if spec.crop else 1

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR}


def preprocess(img: Image.Image, spec: Spec) -> np.ndarray:
    """The uint8 image for `spec`: RGB -> (grey via Pillow's convert("L"), ITU-R 601 luma) ->
    resize to size x size with Pillow's bilinear filter (antialiased when shrinking) ->
    harmonisation at that size (harmonize_image: nothing, or a JPEG round trip at quality Q).

    A crop spec instead scales the image so that its short side is `size` (S; the long side
    rounded, aspect ratio kept; not touched when the short side is already S, enlarged when it
    is smaller) and keeps the centre S x S square, then harmonises that square."""
    if img.mode != "RGB":
        from aigen.data.loading import to_rgb

        img = to_rgb(img)
    if spec.mode == "L":
        img = img.convert("L")
    if spec.crop:
        img = _short_side_square(img, spec)
    else:
        img = img.resize((spec.size, spec.size), _RESAMPLE[spec.resample])
    return np.array(harmonize_image(img, spec.harmonize), dtype=np.uint8)


def _short_side_square(img: Image.Image, spec: Spec) -> Image.Image:
    side = spec.size
    w, h = img.size
    if min(w, h) != side:
        scale = side / min(w, h)
        w, h = (side, max(side, round(h * scale))) if w <= h else (max(side, round(w * scale)), side)
        img = img.resize((w, h), _RESAMPLE[spec.resample])
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


def rescaling(width: int, height: int, spec: Spec) -> str:
    """What a crop spec does to an image stored at width x height: "enlarged" (short side below
    S: interpolated up), "kept" (exactly S) or "reduced"."""
    short = min(int(width), int(height))
    return "kept" if short == spec.size else "enlarged" if short < spec.size else "reduced"


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
    lookup table, which also avoids float temporaries of the whole batch).

    For a crop spec, the stored S x S images give their fixed windows (crop_windows) as
    (N, n_windows, C, crop, crop): every scorer averages the windows' probabilities."""
    u8 = np.asarray(u8)
    if u8.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {u8.dtype}")
    if u8.ndim == len(spec.u8_shape):
        u8 = u8[None]
    if u8.shape[1:] != spec.u8_shape:
        raise ValueError(f"expected images of shape {spec.u8_shape} for {spec.name}, got {u8.shape[1:]}")
    if spec.crop:
        window = spec.window()
        out = np.empty((u8.shape[0], n_windows(spec), spec.channels, spec.crop, spec.crop),
                       dtype=np.float32)
        for k, (top, left) in enumerate(crop_windows(spec)):
            out[:, k] = to_model_input(u8[:, top:top + spec.crop, left:left + spec.crop], window)
        return out
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
    """{spec: float32 (1, C, H, W)} (a crop spec: (1, n_windows, C, H, W)) for an image file
    outside a dataset, decoded exactly like dataset files: read once, decoded once per draft
    bound (raises loading.ImageSkip when the file is unusable)."""
    from aigen.data.loading import read_bytes

    data = read_bytes(path)
    return {spec: to_model_input(u8, spec)
            for spec, u8 in _decoded(data, list(specs), max_pixels).items()}


def _decoded(data: bytes, specs: list[Spec], max_pixels: int | None) -> dict[Spec, np.ndarray]:
    """{spec: uint8 image} of the file's bytes: one decode per distinct Spec.decode_min_side."""
    out = {}
    for side in dict.fromkeys(spec.decode_min_side for spec in specs):
        img = decode_bytes(data, max_pixels=max_pixels, min_side=side)
        out.update({spec: preprocess(img, spec) for spec in specs if spec.decode_min_side == side})
    return out


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
    """{spec.key: uint8 image} for the bytes of a dataset file, decoded once per draft bound
    (once, without a crop spec); raises ImageSkip."""
    return {spec.key: u8 for spec, u8 in _decoded(data, list(specs), max_pixels).items()}


def check_decodes(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
    """Decode `data` as decode_specs would, keep nothing; raises ImageSkip."""
    decode_bytes(data, max_pixels=max_pixels, min_side=DECODE_MIN_SIDE)
