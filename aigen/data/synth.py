"""The embedded synthetic dataset: a two-class *proxy* that needs no download.

`aigen synth OUT_DIR` writes a deterministic dataset in the Kaggle layout the study expects
(`OUT_DIR/AiArtData/AiArtData/`, `OUT_DIR/RealArt/RealArt/`). It exists so the whole study can run
anywhere, offline, in minutes. It is NOT evidence about real image generators or real cameras: the
two "processes" below are caricatures chosen to have the same *kinds* of differences the study is
about, with a knob for how large those differences are.

Both classes show the same kind of scene: a "dead leaves" picture of occluding discs, ellipses and
rectangles whose sizes follow a power law (which gives natural-image-like 1/f spectra), each filled
with a 1/f^beta texture or a periodic pattern, under smooth lighting. They differ in how the scene
becomes pixels:

* "real" (camera-like): many small shapes with crisp edges and rough textures; lens blur, lateral
  chromatic aberration and vignetting; a Bayer mosaic with bilinear demosaicing; signal-dependent
  shot noise plus read noise; gamma; usually saved as JPEG.
* "AI" (generator-like): fewer, larger, soft-edged shapes with smooth, more often periodic
  ("over-regular") textures; synthesised at a quarter of the resolution and brought up by two
  learned-style 2x upsamplings (zero insertion + a 3-tap kernel whose phases do not sum alike,
  i.e. the checkerboard artefact of transposed convolutions) with a little haloing sharpening;
  saturated colours; no sensor noise.

Some of these cues survive the scratch model's 32x32 grayscale input (shape density, texture
roughness, periodic textures, vignetting); the finer ones (noise, demosaicing, checkerboard, halos)
only reach the 224 px RGB backbones.

`difficulty` d in [0, 1] moves every content parameter of each class a fraction d/2 of the way
towards the other class: at 0 the processes are as above, at 1 both classes are rendered by the
very same process and only the metadata differs. Per-image random variation makes the classes
overlap at every setting.

The metadata is deliberately skewed the way web-scraped data often is: AI images are more often
PNG (sometimes RGBA), smaller and more often square; real images are more often JPEG (sometimes
grayscale), larger and 4:3 or 3:2. That is the shortcut `aigen explore` should find; the content
difference is what the models are meant to learn.

Every image is seeded from (seed, index), so the output is byte-identical whatever the number of
worker processes. A `manifest.json` and a `SYNTHETIC.md` at the dataset root (never inside the
class folders) record the generator version and parameters.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aigen.errors import UserError

# Bump whenever the output for given parameters changes: it names the cache folder.
GENERATOR_VERSION = 1
GENERATOR_NAME = "aigen synth"
DEFAULT_N_IMAGES = 1000
DEFAULT_DIFFICULTY = 0.3  # the default study's proxy; docs/synthetic-data.md describes the knob
AI_SHARE = 0.55  # class balance of the real dataset (533 AI, 427 real)
MANIFEST_NAME = "manifest.json"
README_NAME = "SYNTHETIC.md"
AI_DIR = ("AiArtData", "AiArtData")
REAL_DIR = ("RealArt", "RealArt")
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
LEAF_COVERAGE = 2.5  # shapes cover the frame about this many times over
MAX_LEAVES = 500  # bounds the rendering time of scenes made of very small shapes
TEXTURE_REF_PERIOD = 128  # px; textures of every slope share their power at this scale


@dataclass(frozen=True)
class Look:
    """Content parameters of one rendering process (see the module docstring)."""

    leaf_min_radius: float  # smallest occluding shape, fraction of the short side
    edge_width: float  # px over which a shape edge goes from inside to outside
    texture_slope: float  # beta of the 1/f^beta texture spectrum: larger is smoother
    texture_amount: float  # contrast of the texture inside shapes
    pattern_share: float  # share of shapes filled with a periodic ("over-regular") pattern
    lowres_mix: float  # weight of the quarter-resolution, upsampled rendering
    checkerboard: float  # phase imbalance of the 2x upsampling kernel
    sharpen: float  # unsharp-mask gain of the upsampler (halos)
    saturation: float  # colour saturation factor
    blur_sigma: float  # lens blur, px
    chromatic_aberration: float  # lateral red/blue shift at the corners, px
    vignetting: float  # light fall-off at the corners (0 = none)
    mosaic: float  # weight of Bayer mosaic + bilinear demosaic
    read_noise: float  # std of signal-independent noise (linear light, 0..1)
    shot_noise: float  # variance per unit signal of signal-dependent noise


CAMERA = Look(
    leaf_min_radius=0.02, edge_width=0.8, texture_slope=1.6, texture_amount=0.2,
    pattern_share=0.03, lowres_mix=0.0, checkerboard=0.0, sharpen=0.0, saturation=1.0,
    blur_sigma=0.9, chromatic_aberration=1.0, vignetting=0.5, mosaic=1.0,
    read_noise=0.01, shot_noise=0.0015,
)
GENERATOR = Look(
    leaf_min_radius=0.1, edge_width=4.0, texture_slope=2.6, texture_amount=0.15,
    pattern_share=0.4, lowres_mix=1.0, checkerboard=0.04, sharpen=0.6, saturation=1.35,
    blur_sigma=0.0, chromatic_aberration=0.0, vignetting=0.0, mosaic=0.0,
    read_noise=0.0, shot_noise=0.0,
)


def look_for(is_ai: bool, difficulty: float) -> Look:
    """The process of one class at `difficulty`: d/2 of the way from its own look to the other's."""
    own, other = (GENERATOR, CAMERA) if is_ai else (CAMERA, GENERATOR)
    t = difficulty / 2.0
    return Look(**{f.name: (1 - t) * getattr(own, f.name) + t * getattr(other, f.name)
                   for f in dataclasses.fields(Look)})


# --------------------------------------------------------------------------------------------
# Metadata: size, format and colour mode (the shortcut), drawn per class.

@dataclass(frozen=True)
class FileSpec:
    width: int
    height: int
    format: str  # "JPEG" | "PNG" | "WEBP"
    mode: str  # "RGB" | "RGBA" | "L"
    quality: int  # JPEG/WEBP quality (ignored for PNG)


def _file_spec(rng: np.random.Generator, is_ai: bool) -> FileSpec:
    if is_ai:
        # Generators emit a few fixed canvases, many square, often kept as PNG; some images were
        # cropped or resized on their way to the web.
        if rng.random() < 0.6:
            long_side = int(rng.choice([256, 320, 384, 448, 512], p=[0.25, 0.25, 0.25, 0.15, 0.1]))
        else:
            long_side = int(rng.integers(256 // 8, 512 // 8 + 1)) * 8
        aspect = float(rng.choice([1.0, 1.5, 16 / 9, 4 / 3], p=[0.45, 0.2, 0.15, 0.2]))
        portrait = rng.random() < 0.15
        fmt = str(rng.choice(["PNG", "JPEG", "WEBP"], p=[0.4, 0.45, 0.15]))
        mode = "RGBA" if fmt == "PNG" and rng.random() < 0.15 else "RGB"
        quality = int(rng.integers(75, 96))
    else:
        # Cameras: somewhat larger 4:3 / 3:2 frames in either orientation, JPEG from the camera.
        long_side = int(rng.integers(288 // 8, 576 // 8 + 1)) * 8
        aspect = float(rng.choice([4 / 3, 1.5, 16 / 9, 1.0], p=[0.35, 0.35, 0.15, 0.15]))
        portrait = rng.random() < 0.25
        fmt = str(rng.choice(["JPEG", "PNG", "WEBP"], p=[0.8, 0.12, 0.08]))
        mode = "L" if fmt == "JPEG" and rng.random() < 0.04 else "RGB"
        quality = int(rng.integers(85, 97))
    # Multiples of 8 keep the quarter-resolution rendering exact.
    short_side = max(8, int(round(long_side / aspect / 8)) * 8)
    width, height = (short_side, long_side) if portrait else (long_side, short_side)
    return FileSpec(width, height, fmt, mode, quality)


# --------------------------------------------------------------------------------------------
# Content: the shared scene model and the two rendering pipelines.

def _jittered(rng: np.random.Generator, look: Look) -> Look:
    """Per-image variation so that the classes overlap instead of forming two points."""
    def scale(value: float, spread: float) -> float:
        return value * float(np.exp(rng.normal(0.0, spread)))
    return dataclasses.replace(
        look,
        leaf_min_radius=scale(look.leaf_min_radius, 0.35),
        edge_width=scale(look.edge_width, 0.3),
        texture_slope=look.texture_slope + float(rng.normal(0.0, 0.3)),
        texture_amount=scale(look.texture_amount, 0.4),
        blur_sigma=scale(look.blur_sigma, 0.3),
        vignetting=scale(look.vignetting, 0.5),
        read_noise=scale(look.read_noise, 0.4),
        shot_noise=scale(look.shot_noise, 0.4),
        saturation=scale(look.saturation, 0.1),
    )


def _texture(rng: np.random.Generator, h: int, w: int, slope: float) -> np.ndarray:
    """Gaussian noise with a 1/f^slope power spectrum.

    The amplitude is pinned at a coarse scale (TEXTURE_REF_PERIOD px) rather than normalised to
    unit variance, so a steeper slope means less fine detail, not more coarse variation; at slope 2
    the standard deviation is about 1.
    """
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    rel = f * TEXTURE_REF_PERIOD
    amplitude = rel ** (-slope / 2.0)
    amplitude[0, 0] = 0.0
    # Scale so that slope 2 has unit variance; other slopes keep the same coarse-scale power.
    reference = rel ** -1.0
    reference[0, 0] = 0.0
    amplitude /= np.sqrt((reference ** 2).sum() / (h * w))
    spectrum = rng.standard_normal((h, w // 2 + 1)) + 1j * rng.standard_normal((h, w // 2 + 1))
    field = np.fft.irfft2(spectrum * amplitude, s=(h, w))
    return (field * (np.sqrt(h * w) / 2.0)).astype(np.float32)


def _render_scene(rng: np.random.Generator, h: int, w: int, look: Look) -> np.ndarray:
    """A dead-leaves scene in linear light, (h, w, 3) float32 roughly in [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    palette = rng.uniform(0.05, 0.9, size=(5, 3)).astype(np.float32)
    # Background: a smooth two-colour gradient in a random direction.
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(theta) * (xx / w - 0.5) + np.sin(theta) * (yy / h - 0.5) + 0.5)[..., None]
    c0, c1 = palette[rng.integers(5)], palette[rng.integers(5)]
    img = (1 - ramp) * c0 + ramp * c1
    textures = [_texture(rng, h, w, look.texture_slope) for _ in range(2)]

    # Radii with density ~ r^-3 (scale invariance), by inverse CDF; as many shapes as it takes
    # to cover the frame about LEAF_COVERAGE times, painted in random order (they occlude).
    short = min(h, w)
    r_min = max(1.5, look.leaf_min_radius * short)
    r_max = max(r_min * 1.5, 0.45 * short)
    u = rng.random(MAX_LEAVES)
    radii = (r_min ** -2 - u * (r_min ** -2 - r_max ** -2)) ** -0.5
    area = np.cumsum(np.pi * radii ** 2)
    n = int(min(MAX_LEAVES, np.searchsorted(area, LEAF_COVERAGE * h * w) + 1))
    radii = radii[:n]
    # All random draws at once: fewer calls, and each shape's values stay fixed by (seed, index).
    # Python floats (via tolist) keep the float32 arithmetic below in float32.
    cy, cx = (rng.uniform(-0.1, 1.1, n) * h).tolist(), (rng.uniform(-0.1, 1.1, n) * w).tolist()
    kind, phi = rng.random(n).tolist(), rng.uniform(0, np.pi, n).tolist()
    squash = rng.uniform(0.3, 1.0, n).tolist()
    colours = np.clip(palette[rng.integers(0, 5, n)] * rng.uniform(0.7, 1.3, (n, 3)), 0, 1)
    colours = colours.astype(np.float32)
    patterned = (rng.random(n) < look.pattern_share).tolist()
    period, psi = rng.uniform(8, 32, n).tolist(), rng.uniform(0, np.pi, n).tolist()
    gains = rng.normal(0, 1, (n, 2))
    gains = (gains / (np.sqrt((gains ** 2).sum(axis=1, keepdims=True)) + 1e-6)).tolist()
    shading = rng.uniform(-0.3, 0.3, n).tolist()
    edge = max(look.edge_width, 1e-3)
    amount = look.texture_amount
    for i, r in enumerate(radii.tolist()):
        rectangle = kind[i] >= 0.75
        reach = r * (1.42 if rectangle else 1.0) + edge / 2 + 1  # half-size of the bounding box
        y0, y1 = max(0, int(cy[i] - reach)), min(h, int(cy[i] + reach) + 1)
        x0, x1 = max(0, int(cx[i] - reach)), min(w, int(cx[i] + reach) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        window = (slice(y0, y1), slice(x0, x1))
        dy, dx = yy[window] - cy[i], xx[window] - cx[i]
        if kind[i] < 0.5:  # disc
            dist = np.sqrt(dx * dx + dy * dy) - r
        else:  # rotated ellipse or rectangle: signed distance (approximate for the ellipse)
            a, b = r, r * squash[i]
            cos, sin = math.cos(phi[i]), math.sin(phi[i])
            u_, v_ = cos * dx + sin * dy, cos * dy - sin * dx
            if rectangle:
                dist = np.maximum(np.abs(u_) - a, np.abs(v_) - b)
            else:
                dist = (np.sqrt((u_ / a) ** 2 + (v_ / b) ** 2) - 1.0) * b
        alpha = np.clip(0.5 - dist / edge, 0.0, 1.0)[..., None]
        if patterned[i]:
            phase = (math.cos(psi[i]) * xx[window] + math.sin(psi[i]) * yy[window]) / period[i]
            modulation = 1.0 + 0.3 * np.sin(2 * math.pi * phase)
        else:
            tex = gains[i][0] * textures[0][window] + gains[i][1] * textures[1][window]
            modulation = 1.0 + amount * tex
        modulation *= 1.0 + shading[i] / (r + 1) * dx  # a little 3-D look
        img[window] += alpha * (colours[i] * modulation[..., None] - img[window])
    # Overall lighting.
    light = 1.0 + rng.uniform(-0.25, 0.25) * (xx / w - 0.5) + rng.uniform(-0.25, 0.25) * (yy / h - 0.5)
    return np.clip(img * light[..., None], 0.0, 1.0).astype(np.float32)


def _upsample2x(img: np.ndarray, checkerboard: float) -> np.ndarray:
    """Transposed-convolution-style 2x upsampling: zero insertion, then a 3-tap kernel per axis.

    A bilinear kernel [.5, 1, .5] gives the same total weight to even and odd output pixels;
    shifting weight between the centre tap and the side taps by `checkerboard` does not, which
    leaves the period-2 pattern that trained transposed convolutions are known for.
    """
    from scipy.ndimage import correlate1d

    c = checkerboard
    kernel = np.array([(1 - c) / 2, 1 + c, (1 - c) / 2], dtype=np.float32)
    h, w = img.shape[:2]
    up = np.zeros((2 * h, 2 * w) + img.shape[2:], dtype=np.float32)
    up[::2, ::2] = img
    up = correlate1d(up, kernel, axis=0, mode="mirror")
    return correlate1d(up, kernel, axis=1, mode="mirror")


def _render(rng: np.random.Generator, spec: FileSpec, look: Look) -> np.ndarray:
    """Scene -> generator stage -> optics -> sensor -> 8-bit display values (h, w, 3)."""
    from scipy.ndimage import gaussian_filter

    h, w = spec.height, spec.width
    img = _render_scene(rng, h, w, look)

    if look.lowres_mix > 0:
        # The generator works at a quarter of the resolution (box average stands in for it).
        low = img.reshape(h // 4, 4, w // 4, 4, 3).mean(axis=(1, 3))
        up = _upsample2x(_upsample2x(low, look.checkerboard), look.checkerboard)
        if look.sharpen > 0:
            up = up + look.sharpen * (up - gaussian_filter(up, (1.5, 1.5, 0)))
        img = (1 - look.lowres_mix) * img + look.lowres_mix * up

    grey = img.mean(axis=2, keepdims=True)
    img = np.clip(grey + look.saturation * (img - grey), 0.0, 1.0)

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ry, rx = (yy - (h - 1) / 2) / (max(h, w) / 2), (xx - (w - 1) / 2) / (max(h, w) / 2)
    if look.blur_sigma > 0.05:
        img = gaussian_filter(img, (look.blur_sigma, look.blur_sigma, 0))
    if look.chromatic_aberration > 0.05:
        # Lateral CA: red magnified, blue shrunk about the centre by `ca` px at the corners.
        from scipy.ndimage import affine_transform

        centre = np.array([(h - 1) / 2, (w - 1) / 2])
        k = look.chromatic_aberration / (max(h, w) / 2)
        for channel, sign in ((0, 1.0), (2, -1.0)):
            scale = 1.0 / (1.0 + sign * k)  # output pixel p samples the input at c + (p - c) * scale
            img[..., channel] = affine_transform(img[..., channel], [scale, scale],
                                                 offset=centre * (1 - scale), order=1, mode="nearest")
    if look.vignetting > 0:
        img = img * (1.0 - look.vignetting * np.clip(rx * rx + ry * ry, 0, 2) / 2)[..., None]
    if look.mosaic > 0:
        img = (1 - look.mosaic) * img + look.mosaic * _bayer_roundtrip(img)
    if look.read_noise > 0 or look.shot_noise > 0:
        var = look.read_noise ** 2 + look.shot_noise * np.clip(img, 0, None)
        img = img + np.sqrt(var) * rng.standard_normal(img.shape).astype(np.float32)
    img = np.clip(img, 0.0, 1.0) ** (1 / 2.2)
    return (img * 255.0 + 0.5).astype(np.uint8)


def _bayer_roundtrip(img: np.ndarray) -> np.ndarray:
    """Sample an RGGB Bayer mosaic and reconstruct it by bilinear demosaicing."""
    from scipy.ndimage import convolve

    h, w = img.shape[:2]
    masks = np.zeros((h, w, 3), dtype=np.float32)
    masks[0::2, 0::2, 0] = 1
    masks[0::2, 1::2, 1] = 1
    masks[1::2, 0::2, 1] = 1
    masks[1::2, 1::2, 2] = 1
    k_rb = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 4
    k_g = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=np.float32) / 4
    out = np.empty_like(img)
    for c, kernel in ((0, k_rb), (1, k_g), (2, k_rb)):
        out[..., c] = convolve(img[..., c] * masks[..., c], kernel, mode="mirror")
    return out


def _encode(pixels: np.ndarray, spec: FileSpec) -> bytes:
    from PIL import Image

    im = Image.fromarray(pixels, "RGB")
    if spec.mode == "L":
        im = im.convert("L")
    elif spec.mode == "RGBA":
        im.putalpha(255)  # an opaque alpha channel, as many generator front-ends save
    buf = io.BytesIO()
    # Fast encoder settings keep generation quick; the files stay typical of their format.
    if spec.format == "JPEG":
        im.save(buf, "JPEG", quality=spec.quality)
    elif spec.format == "WEBP":
        im.save(buf, "WEBP", quality=spec.quality, method=2)
    else:
        im.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def render_image(seed: int, index: int, is_ai: bool, difficulty: float) -> tuple[FileSpec, bytes]:
    """Render one image: its file spec and encoded bytes, a pure function of the arguments."""
    rng = np.random.default_rng([seed, index, int(is_ai)])
    spec = _file_spec(rng, is_ai)
    look = _jittered(rng, look_for(is_ai, difficulty))
    return spec, _encode(_render(rng, spec, look), spec)


# --------------------------------------------------------------------------------------------
# Writing a dataset.

def _class_of(index: int, n_images: int) -> bool:
    """True (AI) for the first AI_SHARE of the indices."""
    return index < round(AI_SHARE * n_images)


def _write_one(job: tuple[Path, int, int, float, int]) -> tuple[int, bool, str]:
    root, seed, index, difficulty, n_images = job
    is_ai = _class_of(index, n_images)
    spec, data = render_image(seed, index, is_ai, difficulty)
    folder = root.joinpath(*(AI_DIR if is_ai else REAL_DIR))
    name = f"{'ai' if is_ai else 'photo'}_{index:05d}.{EXTENSIONS[spec.format]}"
    (folder / name).write_bytes(data)
    return index, is_ai, spec.format


def _check_params(n_images: int, difficulty: float) -> None:
    if n_images < 4:
        raise UserError(f"need at least 4 images (2 per class), got n_images={n_images}")
    if not 0.0 <= difficulty <= 1.0:
        raise UserError(f"difficulty must be in [0, 1], got {difficulty}")


def read_manifest(folder: Path) -> dict | None:
    """The manifest of an `aigen synth` output folder, or None for any other folder."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("generator") == GENERATOR_NAME else None


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def generate(out_dir: str | os.PathLike, n_images: int = DEFAULT_N_IMAGES, seed: int = 0,
             difficulty: float = DEFAULT_DIFFICULTY, workers: int | None = None,
             progress: bool = True) -> Path:
    """Write the synthetic dataset to `out_dir` (Kaggle layout) and return its path.

    `out_dir` must be absent, empty, or a previous `aigen synth` output (which is replaced).
    Images are rendered in a process pool into a temporary folder beside `out_dir` that is renamed
    into place at the end, so an interrupted run leaves nothing half-written. The result depends
    only on (n_images, seed, difficulty), not on `workers`.
    """
    from tqdm import tqdm

    _check_params(n_images, difficulty)
    out = Path(out_dir).expanduser().absolute()
    if out.exists():
        if not out.is_dir():
            raise UserError(f"{out} exists and is not a folder")
        if any(out.iterdir()) and read_manifest(out) is None:
            raise UserError(f"{out} is not empty and is not an `aigen synth` output; "
                            "choose a new or empty folder")
    workers = _default_workers() if workers is None else max(1, int(workers))

    from aigen.io import atomic_folder, full_disk_is_user_error

    with atomic_folder(out, tag="synth-part", replace=True) as tmp, \
            full_disk_is_user_error(out.parent):
        for parts in (AI_DIR, REAL_DIR):
            tmp.joinpath(*parts).mkdir(parents=True)
        jobs = [(tmp, seed, i, float(difficulty), n_images) for i in range(n_images)]
        started = time.perf_counter()
        bar = tqdm(total=n_images, desc="aigen synth", unit="img", disable=not progress)
        results = []
        if workers == 1:
            for job in jobs:
                results.append(_write_one(job))
                bar.update(1)
        else:
            import multiprocessing

            from aigen.errors import plain_worker_signals

            with multiprocessing.Pool(min(workers, n_images),
                                      initializer=plain_worker_signals) as pool:
                for result in pool.imap_unordered(_write_one, jobs, chunksize=4):
                    results.append(result)
                    bar.update(1)
        bar.close()
        _write_description(tmp, results, n_images, seed, difficulty, time.perf_counter() - started)
    return out


def _write_description(root: Path, results: list, n_images: int, seed: int, difficulty: float,
                       seconds: float) -> None:
    from aigen.io import write_json, write_text

    counts = {"AiArtData": sum(r[1] for r in results), "RealArt": sum(not r[1] for r in results)}
    manifest = {
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "n_images": n_images,
        "difficulty": difficulty,
        "classes": counts,
        "generation_seconds": round(seconds, 2),
        "note": "synthetic proxy data; not evidence about real image generators or cameras",
    }
    write_json(root / MANIFEST_NAME, manifest)
    write_text(root / README_NAME, _README.format(**manifest, ai=counts["AiArtData"],
                                                   real=counts["RealArt"]))


_README = """# Synthetic proxy dataset

Written by `{generator}` (generator version {generator_version}) with seed {seed},
{n_images} images ({ai} in AiArtData/AiArtData, {real} in RealArt/RealArt), difficulty {difficulty}.

This is a *proxy*: "real" images come from a simulated camera (dead-leaves scenes, lens blur,
chromatic aberration, vignetting, Bayer demosaicing, sensor noise, JPEG) and "AI" images from a
simulated generator (smoother, more regular scenes synthesised at low resolution and upsampled with
checkerboard-prone kernels, saturated colours, no noise). File formats and sizes are skewed per
class on purpose, to exercise the metadata shortcut audit. Results on this data say nothing about
real image generators. Regenerate it with:

    aigen synth OUT_DIR --n {n_images} --seed {seed} --difficulty {difficulty}
"""


def default_dataset(n_images: int = DEFAULT_N_IMAGES, seed: int = 0,
                    difficulty: float = DEFAULT_DIFFICULTY, progress: bool = True) -> Path:
    """The cached embedded dataset for these parameters, generated on first use.

    Lives under `aigen.paths.cache_dir()/synth/v<version>-n<n>-s<seed>-d<difficulty>/`.
    """
    from aigen.paths import cache_dir

    _check_params(n_images, difficulty)
    folder = cache_dir() / "synth" / f"v{GENERATOR_VERSION}-n{n_images}-s{seed}-d{difficulty:g}"
    manifest = read_manifest(folder)
    if manifest and manifest.get("generator_version") == GENERATOR_VERSION:
        return folder
    if manifest is None and folder.is_dir():
        # Our own cache entry without a valid manifest is damaged (a finished one always has it):
        # rebuild it rather than refuse it as a foreign non-empty folder.
        shutil.rmtree(folder, ignore_errors=True)
    try:
        return generate(folder, n_images=n_images, seed=seed, difficulty=difficulty,
                        progress=progress)
    except OSError:
        # Another process may have finished the same folder first; that copy is as good.
        if read_manifest(folder):
            return folder
        raise


# --------------------------------------------------------------------------------------------
# CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Generate the embedded synthetic two-class dataset (a proxy for AI-generated vs real "
        "images, not evidence about real generators) in the Kaggle folder layout. "
        "See docs/synthetic-data.md.")
    from aigen.argtypes import positive_int, seed

    parser.add_argument("out_dir", metavar="OUT_DIR",
                        help="folder to create (must be new, empty, or a previous synth output)")
    parser.add_argument("--n", dest="n_images", type=positive_int, default=DEFAULT_N_IMAGES,
                        help=f"number of images (default {DEFAULT_N_IMAGES}; {AI_SHARE:.0%}% AI)")  # %% for argparse
    parser.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    parser.add_argument("--difficulty", type=float, default=DEFAULT_DIFFICULTY,
                        help="0 = easy, 1 = both classes rendered alike, only metadata differs "
                             f"(default {DEFAULT_DIFFICULTY})")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="worker processes (default: all CPUs); does not change the output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = generate(args.out_dir, n_images=args.n_images, seed=args.seed,
                   difficulty=args.difficulty, workers=args.workers, progress=not args.quiet)
    manifest = read_manifest(out) or {}
    classes = manifest.get("classes", {})
    print(f"wrote {args.n_images} images ({classes.get('AiArtData', '?')} AI, "
          f"{classes.get('RealArt', '?')} real) to {out} in {time.perf_counter() - started:.1f} s")
    return 0
