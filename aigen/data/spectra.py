"""Frequency spectra of the two classes: the field's standard look at generator artefacts.

Per class, on a seeded sample of at most `per_class` images (docs/exploration.md#frequency-spectra):
each image is decoded at its stored resolution (no reduced-scale JPEG decode: that would resample
the very pixels looked at), turned to grey (Pillow's "L"), centre-cropped to size x size (an image
with a shorter side is first enlarged, bicubic, so its short side is `size`; counted as
"upscaled"), high-pass filtered (the crop minus its Gaussian blur, sigma 1 px: what is left is the
fine detail, noise and artefacts, not the scene), multiplied by a 2-D Hann window (so the crop's
borders add no cross to the spectrum), and Fourier transformed. Two running means per class:

- the mean log-magnitude 2-D spectrum, log(|F| + 1e-6), centred (fftshift): peaks or grids that
  one class has and the other lacks are periodic artefacts (upsampling layers, JPEG's 8x8 blocks);
- the azimuthally averaged power spectrum: per image, the mean |F|^2 over rings of one frequency
  bin (1 / size cycles per pixel), log10; averaged over images (mean and standard deviation).

Images are read a batch at a time (a DataLoader over `SpectrumImages`), never all at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

SIZE = 256
PER_CLASS = 500
BLUR_SIGMA = 1.0
BATCH = 16
HIGH_FREQUENCY = 0.25  # cycles per pixel: above it, the upper half of the frequencies
# A class difference in the radial spectrum is called concentrated at high frequency when its mean
# absolute size above HIGH_FREQUENCY is at least this many times the one below, and at least
# MIN_HIGH_DIFFERENCE decades (0.05 = 12% more or less power).
HIGH_RATIO = 2.0
MIN_HIGH_DIFFERENCE = 0.05
CLASS_KEYS = {1: "ai", 0: "real"}  # label -> key in the record (aigen.data.discover's labels)


def highpass_crop(img, size: int = SIZE) -> tuple[np.ndarray, bool]:
    """(the high-pass filtered grey centre crop, float64 (size, size); whether it was upscaled)."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    grey = img.convert("L")
    upscaled = min(grey.size) < size
    if upscaled:
        scale = size / min(grey.size)
        grey = grey.resize((max(size, round(grey.width * scale)), max(size, round(grey.height * scale))),
                           Image.Resampling.BICUBIC)
    left, top = (grey.width - size) // 2, (grey.height - size) // 2
    crop = np.asarray(grey.crop((left, top, left + size, top + size)), dtype=np.float64)
    return crop - gaussian_filter(crop, BLUR_SIGMA, mode="reflect"), upscaled


def _window(size: int) -> np.ndarray:
    w = np.hanning(size)
    return np.outer(w, w)


def ring_index(size: int) -> np.ndarray:
    """(size, size) ring of every frequency of the centred spectrum: round(radius * size) with
    the radius in cycles per pixel; ring k is frequency k / size."""
    f = np.fft.fftshift(np.fft.fftfreq(size))
    return np.rint(np.hypot(*np.meshgrid(f, f, indexing="ij")) * size).astype(np.int64)


def frequencies(size: int = SIZE) -> np.ndarray:
    """Frequency (cycles per pixel) of each ring of the radial spectrum: 0, 1/size, ..., 1/2."""
    return np.arange(size // 2 + 1) / size


def spectrum(residual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centred log-magnitude 2-D spectrum, log10 azimuthal mean power per ring up to 1/2) of a
    square residual."""
    size = residual.shape[0]
    F = np.fft.fftshift(np.fft.fft2(residual * _window(size)))
    power = np.abs(F) ** 2
    rings = ring_index(size)
    n_rings = size // 2 + 1
    keep = rings < n_rings
    totals = np.bincount(rings[keep], weights=power[keep], minlength=n_rings)
    counts = np.bincount(rings[keep], minlength=n_rings)
    radial = np.log10(totals / np.maximum(counts, 1) + 1e-12)
    return np.log(np.abs(F) + 1e-6), radial


def _torch_dataset():
    import torch.utils.data

    return torch.utils.data.Dataset


class SpectrumImages(_torch_dataset()):
    """`ds[[i, j, ...]]` -> (labels, log-magnitude spectra (n, size, size) float32, radial
    spectra (n, size // 2 + 1), upscaled flags) of those images; `items` are (path, sha256,
    label); a file that changed since it was hashed raises UserError."""

    def __init__(self, items: Sequence[tuple[Any, str | None, int]], size: int = SIZE,
                 max_pixels: int | None = None):
        self.items = list(items)
        self.size = int(size)
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        from aigen.data.loading import ImageSkip, decode_bytes, read_bytes, read_unchanged
        from aigen.errors import UserError

        labels, maps, radials, upscaled = [], [], [], []
        for i in np.atleast_1d(index):
            path, sha256, label = self.items[int(i)]
            try:
                data = read_unchanged(path, sha256) if sha256 else read_bytes(path)
                img = decode_bytes(data, max_pixels=self.max_pixels)
            except ImageSkip as exc:
                raise UserError(f"{path}: {exc.reason}; leave the data folder alone while aigen "
                                "reads it") from None
            residual, up = highpass_crop(img, self.size)
            log_magnitude, radial = spectrum(residual)
            labels.append(label)
            maps.append(log_magnitude.astype(np.float32))
            radials.append(radial)
            upscaled.append(up)
        return (np.array(labels, dtype=np.int64), np.stack(maps), np.stack(radials),
                np.array(upscaled, dtype=bool))


def sample(images: Sequence[Any], per_class: int, seed: int) -> list[Any]:
    """At most `per_class` images of each label, drawn without replacement by a generator seeded
    with `seed`, in their original order (the same dataset and seed, the same sample)."""
    rng = np.random.default_rng(seed)
    chosen = []
    labels = np.array([im.label for im in images])
    for label in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == label)
        if len(idx) > per_class:
            idx = np.sort(rng.choice(idx, per_class, replace=False))
        chosen.extend(idx.tolist())
    return [images[i] for i in sorted(chosen)]


@dataclass
class Spectra:
    """Per-class running means: `maps[label]` the mean log-magnitude 2-D spectrum, and in
    `record` (JSON) the radial spectra, counts and settings."""

    size: int
    maps: dict[int, np.ndarray] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


def class_spectra(images: Sequence[Any], *, size: int = SIZE, per_class: int = PER_CLASS,
                  seed: int = 0, max_pixels: int | None = None, workers: int = 0,
                  progress: bool = True) -> Spectra:
    """The two classes' spectra from a seeded sample of `images` (ImageInfo: path, sha256,
    label). record: {"size", "per_class", "seed", "highpass", "window", "frequencies",
    "classes": {key: {"n", "n_upscaled", "radial_mean", "radial_std"}}, "difference"} (see
    `difference`)."""
    from tqdm import tqdm

    from aigen.data.stream import batches

    keys = CLASS_KEYS
    chosen = sample(images, per_class, seed)
    dataset = SpectrumImages([(im.path, im.sha256, im.label) for im in chosen], size, max_pixels)
    n_rings = size // 2 + 1
    sums = {label: np.zeros((size, size)) for label in keys}
    radial_sum = {label: np.zeros(n_rings) for label in keys}
    radial_sq = {label: np.zeros(n_rings) for label in keys}
    counts = {label: 0 for label in keys}
    upscaled = {label: 0 for label in keys}
    with tqdm(total=len(chosen), desc="frequency spectra", unit="img", disable=not progress,
              leave=False) as bar:
        for labels, maps, radials, ups in batches(dataset, BATCH, workers=workers):
            labels, maps, radials, ups = (np.asarray(a) for a in (labels, maps, radials, ups))
            for label in keys:
                mine = labels == label
                sums[label] += maps[mine].sum(axis=0, dtype=np.float64)
                radial_sum[label] += radials[mine].sum(axis=0)
                radial_sq[label] += (radials[mine] ** 2).sum(axis=0)
                counts[label] += int(mine.sum())
                upscaled[label] += int(ups[mine].sum())
            bar.update(len(labels))
    out = Spectra(size=size)
    classes = {}
    for label, key in keys.items():
        n = counts[label]
        if n == 0:
            continue
        out.maps[label] = sums[label] / n
        mean = radial_sum[label] / n
        var = np.maximum(radial_sq[label] / n - mean ** 2, 0.0) * (n / (n - 1) if n > 1 else 0.0)
        classes[key] = {"label": int(label), "n": n, "n_upscaled": upscaled[label],
                        "radial_mean": mean.tolist(), "radial_std": np.sqrt(var).tolist()}
    out.record = {
        "size": size, "per_class": per_class, "seed": seed,
        "highpass": f"the crop minus its Gaussian blur, sigma {BLUR_SIGMA:g} px",
        "window": "2-D Hann",
        "frequencies": frequencies(size).tolist(),
        "classes": classes,
    }
    out.record["difference"] = difference(out.record)
    return out


def difference(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """Where the classes' radial spectra differ: the mean absolute difference of log10 power
    (ai - real) below and above HIGH_FREQUENCY (the zero frequency left out), the frequency of
    the largest difference, and whether the difference is concentrated at high frequency."""
    classes = record.get("classes") or {}
    if not {"ai", "real"} <= set(classes):
        return None
    f = np.asarray(record["frequencies"])
    d = np.asarray(classes["ai"]["radial_mean"]) - np.asarray(classes["real"]["radial_mean"])
    low = np.abs(d[(f > 0) & (f <= HIGH_FREQUENCY)]).mean()
    high = np.abs(d[f > HIGH_FREQUENCY]).mean()
    peak = int(np.argmax(np.abs(d[1:]))) + 1
    return {"low": float(low), "high": float(high), "split_at": HIGH_FREQUENCY,
            "largest_at": float(f[peak]), "largest": float(d[peak]),
            "concentrated_at_high_frequency": bool(high >= HIGH_RATIO * low
                                                   and high >= MIN_HIGH_DIFFERENCE)}


def difference_text(diff: Mapping[str, Any] | None) -> str:
    """A plain sentence about the class difference in the radial spectrum."""
    if not diff:
        return "Only one class was sampled: no difference to show."
    size = (f"mean |difference| {diff['low']:.3f} decades of power below {diff['split_at']:g} "
            f"cycles/pixel and {diff['high']:.3f} above; largest at {diff['largest_at']:.3f} "
            f"cycles/pixel ({diff['largest']:+.3f}, ai − real)")
    if diff["concentrated_at_high_frequency"]:
        return (f"**Flag: the classes differ mostly at high frequency** ({size}): that is where "
                "compression, resampling and generator upsampling leave their traces, so a model "
                "can separate the classes by those rather than by what the images show.")
    return f"The difference is not concentrated at high frequency ({size})."


def spectra_markdown(record: Mapping[str, Any] | None, figure: str | None,
                  level: str = "###") -> list[str]:
    """The frequency spectra: what they show, how to read them, the figure and the flag
    (in the study's report.md and `aigen explore`'s exploration.md)."""
    if not record or not record.get("classes"):
        return []
    classes = record["classes"]
    counts = ", ".join(f"{key} n={c['n']}" + (f" ({c['n_upscaled']} enlarged first)"
                                               if c["n_upscaled"] else "")
                       for key, c in classes.items())
    out = [f"{level} Frequency spectra of the two classes", ""]
    out.append(
        "What the images hold at each spatial frequency once the scene is removed: per class, "
        f"the mean Fourier spectrum of the high-pass residual ({record['highpass']}) of a "
        f"{record['size']}×{record['size']} grey centre crop taken at the stored resolution, on "
        f"a seeded sample of at most {record['per_class']} images per class ({counts}). "
        "**How to read it:** in the maps (centre = coarse, edges = finest detail), bright points "
        "or a grid in one class and not the other are periodic artefacts (generator upsampling; "
        "JPEG's 8×8 blocks give points at multiples of 1/8 cycle per pixel); in the curves, a gap "
        "between the classes on the right (high frequencies) is a trace of how the images were "
        "made or stored, which a model can use without looking at what they show.")
    out.append("")
    if figure:
        out.append(f"![frequency spectra]({figure})")
        out.append("")
    out.append(difference_text(record.get("difference")))
    out.append("")
    return out


def spectra_figure(spectra: Spectra, path: str | os.PathLike, class_names: Mapping[int, str]
                   | None = None, title: str = "Frequency spectra of the high-pass residuals"):
    """Top: the mean log-magnitude spectrum of each class and their difference (ai - real);
    bottom: the azimuthally averaged power spectra of both classes (mean ± 1 std over images)
    and their difference, the high-frequency half shaded."""
    from matplotlib.figure import Figure

    from aigen.data.discover import LABEL_AI, LABEL_NAMES, LABEL_REAL
    from aigen.io import atomic_path

    record = spectra.record
    fig = Figure(figsize=(12, 7.6), dpi=110, layout="constrained")
    grid = fig.add_gridspec(2, 3, height_ratios=[1, 0.9])
    f = np.asarray(record["frequencies"])
    colours = {LABEL_AI: "tab:orange", LABEL_REAL: "tab:blue"}
    names = {label: LABEL_NAMES[label] + (f" ({class_names[label]})" if class_names and
                                          class_names.get(label) else "")
             for label in (LABEL_AI, LABEL_REAL)}
    maps = [spectra.maps.get(label) for label in (LABEL_AI, LABEL_REAL)]
    shown = [m for m in maps if m is not None]
    lo, hi = (np.percentile(np.stack(shown), [1, 99.9]) if shown else (0, 1))
    extent = (-0.5, 0.5, -0.5, 0.5)  # with origin="lower": +y up
    map_axes, im = [], None
    for k, (label, m) in enumerate(zip((LABEL_AI, LABEL_REAL), maps)):
        ax = fig.add_subplot(grid[0, k])
        map_axes.append(ax)
        if m is None:
            ax.set_axis_off()
            continue
        n = record["classes"][CLASS_KEYS[label]]["n"]
        im = ax.imshow(m, cmap="magma", vmin=lo, vmax=hi, extent=extent, origin="lower")
        ax.set(title=f"{names[label]}, n={n}: mean log |F|", xlabel="cycles/pixel (x)",
               ylabel="cycles/pixel (y)")
        ax.title.set_fontsize("small")
    if im is not None:
        fig.colorbar(im, ax=map_axes, shrink=0.8, label="log |F|")
    ax = fig.add_subplot(grid[0, 2])
    if all(m is not None for m in maps):
        d = maps[0] - maps[1]
        v = float(np.percentile(np.abs(d), 99.5)) or 1.0
        im = ax.imshow(d, cmap="RdBu_r", vmin=-v, vmax=v, extent=extent, origin="lower")
        fig.colorbar(im, ax=ax, shrink=0.8, label="log |F|, ai − real")
        ax.set(title="difference ai − real (red: more in ai)", xlabel="cycles/pixel (x)",
               ylabel="cycles/pixel (y)")
        ax.title.set_fontsize("small")
    else:
        ax.set_axis_off()
    ax = fig.add_subplot(grid[1, :2])
    for label in (LABEL_AI, LABEL_REAL):
        c = record["classes"].get(CLASS_KEYS[label])
        if not c:
            continue
        mean, std = np.asarray(c["radial_mean"]), np.asarray(c["radial_std"])
        ax.plot(f[1:], mean[1:], color=colours[label], label=f"{names[label]}, n={c['n']}")
        ax.fill_between(f[1:], (mean - std)[1:], (mean + std)[1:], color=colours[label], alpha=0.15,
                        lw=0)
    ax.axvspan(HIGH_FREQUENCY, 0.5, color="grey", alpha=0.08, lw=0)
    ax.set(xlabel=f"spatial frequency (cycles/pixel; 0.5 = finest; shaded: > {HIGH_FREQUENCY:g}, "
                  "the high frequencies)",
           ylabel="log10 power (azimuthal mean)", xlim=(0, 0.5),
           title="Azimuthally averaged power spectrum (mean ± 1 std over images)")
    ax.title.set_fontsize("small")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax = fig.add_subplot(grid[1, 2])
    diff = record.get("difference")
    if diff:
        classes = record["classes"]
        d = np.asarray(classes["ai"]["radial_mean"]) - np.asarray(classes["real"]["radial_mean"])
        ax.plot(f[1:], d[1:], color="black")
        ax.axhline(0, color="grey", lw=1, ls=":")
        ax.axvspan(HIGH_FREQUENCY, 0.5, color="grey", alpha=0.08, lw=0)
        flag = " — concentrated at high frequency" if diff["concentrated_at_high_frequency"] else ""
        ax.set(xlabel="cycles/pixel", ylabel="log10 power, ai − real", xlim=(0, 0.5),
               title=f"difference{flag}")
        ax.title.set_fontsize("small")
        ax.grid(alpha=0.3)
    else:
        ax.set_axis_off()
    upscaled = sum(c["n_upscaled"] for c in record["classes"].values())
    note = (f"; {upscaled} image(s) smaller than {record['size']} px enlarged first"
            if upscaled else "")
    fig.suptitle(f"{title} ({record['size']}×{record['size']} centre crops at stored resolution, "
                 f"sample seed {record['seed']}{note})", fontsize="medium")
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def add_argument(parser) -> None:
    """--spectrum-images, shared by `aigen explore` and `aigen study`."""
    from aigen.argtypes import non_negative_int

    parser.add_argument("--spectrum-images", type=non_negative_int, default=PER_CLASS,
                        metavar="N",
                        help=f"images per class (a seeded sample) for the frequency spectra; 0 "
                             f"skips them (default: {PER_CLASS})")
