"""Robust decoding of one image file to an 8-bit RGB Pillow image (rules in docs/data.md).

A file is an image when Pillow can decode it, whatever its name. Anything unusable raises
`ImageSkip` with a one-line reason "category: detail", so callers can record it and go on.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Decompression-bomb guard: width*height from the header is checked before any pixel is decoded.
DEFAULT_MAX_PIXELS = 120_000_000

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_16BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_WHITE = (255, 255, 255, 255)


class ImageSkip(Exception):
    """The file cannot be used; `reason` is one line, "category: detail"."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Probe:
    """What the file header says, before any pixel is decoded (size as stored, before EXIF orientation)."""

    format: str
    mode: str
    width: int
    height: int


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's bytes, or ImageSkip("unreadable: ...") / ImageSkip("not a regular file")."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or a device could block or never end
            raise ImageSkip("not a regular file")
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ImageSkip(f"unreadable: {exc.strerror or _one_line(exc)}") from None


def read_unchanged(path: str | os.PathLike, sha256: str) -> bytes:
    """The file's bytes, checked against the sha256 it had when the dataset was loaded; raises
    ImageSkip when it became unreadable or its content changed."""
    import hashlib

    data = read_bytes(path)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ImageSkip("its content changed since the dataset was loaded")
    return data


def _open(data: bytes) -> Image.Image:
    if not data:
        raise ImageSkip("empty file")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageSkip("not an image: Pillow cannot identify the content") from None
    except Image.DecompressionBombError as exc:
        raise ImageSkip(f"over the pixel limit: {_one_line(exc)}") from None
    except Exception as exc:  # corrupt headers surface as many exception types
        raise ImageSkip(f"cannot decode: {_one_line(exc)}") from None


def _check_size(im: Image.Image, max_pixels: int | None) -> None:
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageSkip(f"zero-size image: {width}x{height}")
    if max_pixels and width * height > max_pixels:
        raise ImageSkip(f"over the pixel limit: {width}x{height} = {width * height / 1e6:.1f} MP "
                        f"> {max_pixels / 1e6:.1f} MP")


@contextlib.contextmanager
def _quiet_pillow() -> Iterator[None]:
    """Silence Pillow's warnings while decoding (corrupt EXIF, palette notes...): the outcome is
    either an image or a recorded skip. Its DecompressionBombWarning is covered by our own pixel
    limit, which is checked from the header."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def probe_bytes(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Probe:
    """Format, mode and size from the header only; ImageSkip if unusable by header alone."""
    with _quiet_pillow():
        with _open(data) as im:
            _check_size(im, max_pixels)
            return Probe(format=im.format or "unknown", mode=im.mode, width=im.width, height=im.height)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB by the documented rules.

    - transparency (RGBA, LA, PA, or a palette/grey/RGB image with a transparent colour): composited
      onto white, so transparent pixels become white;
    - "1", "L", and "P" without transparency: Pillow's conversion (grey replicated to R=G=B);
    - 16-bit grey ("I;16*"): value / 257, rounded (0 -> 0, 65535 -> 255);
    - 32-bit integer "I" and float "F": linearly stretched from the image's own minimum..maximum to
      0..255 (a constant image keeps its value, clipped to 0..255);
    - CMYK, YCbCr and the rest: Pillow's conversion (no colour management).
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _16BIT_MODES:
        a = np.asarray(im).astype(np.uint32)
        return Image.fromarray(((a + 128) // 257).astype(np.uint8)).convert("RGB")
    if mode in ("I", "F"):
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.clip(a, 0, 255)
        return Image.fromarray(np.round(a).astype(np.uint8)).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in im.info:
        background = Image.new("RGBA", im.size, _WHITE)
        background.alpha_composite(im.convert("RGBA"))
        return background.convert("RGB")
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageSkip(f"cannot decode: unsupported mode {mode} ({_one_line(exc)})") from None


def decode_bytes(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 min_side: int | None = None) -> Image.Image:
    """Decode image bytes to RGB (see open_image)."""
    with _quiet_pillow():
        with _open(data) as im:
            _check_size(im, max_pixels)
            try:
                if min_side:
                    # JPEG only: decode at 1/2, 1/4 or 1/8 scale while both sides stay >= min_side.
                    im.draft("RGB", (min_side, min_side))
                im.load()  # the first frame of an animated file
                if im.width <= 0 or im.height <= 0:
                    raise ImageSkip(f"zero-size image: {im.width}x{im.height}")
                try:
                    oriented = ImageOps.exif_transpose(im)
                except Exception:  # an unreadable EXIF block: keep the stored orientation
                    oriented = im
                rgb = to_rgb(oriented)
                rgb.load()
                return rgb if rgb is not im else rgb.copy()
            except ImageSkip:
                raise
            except Image.DecompressionBombError as exc:
                raise ImageSkip(f"over the pixel limit: {_one_line(exc)}") from None
            except Exception as exc:  # truncated data, broken chunks, decoder errors
                raise ImageSkip(f"cannot decode: {_one_line(exc)}") from None


def open_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               min_side: int | None = None) -> Image.Image:
    """Decode an image file to an 8-bit RGB Pillow image, or raise ImageSkip(reason).

    EXIF orientation is applied; modes are converted by `to_rgb`; an animated file gives its first
    frame; a file over `max_pixels` (width*height from the header; None or 0 = no limit) is refused
    before decoding. With `min_side`, a JPEG is decoded at reduced scale (Pillow's draft) while both
    sides stay >= min_side; the dataset pipeline uses min_side=aigen.data.preprocess.DECODE_MIN_SIDE.
    Truncated files are refused (Pillow's LOAD_TRUNCATED_IMAGES is left alone).
    """
    return decode_bytes(read_bytes(path), max_pixels=max_pixels, min_side=min_side)
