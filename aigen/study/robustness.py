"""Robustness of the trained models to re-encoding and resizing of the test images.

If a model had learnt a file-level cue (compression, format, resolution) instead of image content,
its accuracy would move when only those change. Each test image is decoded exactly as the dataset
path decodes it (`aigen.data.open_image`), perturbed in memory (io.BytesIO; the data folder is only
read), then preprocessed with the same code as the dataset (`preprocess` + `to_model_input`):

- jpeg_q95, jpeg_q75, jpeg_q50: re-encoded as JPEG at that quality (Pillow defaults: 4:2:0 chroma
  subsampling, baseline), decoded again;
- downscale_half: resized to half its width and height (Lanczos; at least 1 px), so the models'
  preprocessing has to upscale it back;
- format_swap: JPEG sources saved losslessly as PNG (pixels unchanged, only the container differs),
  every other source encoded as JPEG at quality 90.

The perturbed test images of all seeds (their union) are built once; backbone prefix activations
are computed once per perturbation and shared by every seed and regime (see the study driver).
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import numpy as np

from aigen.study.metrics import summarize

PERTURBATIONS: dict[str, str] = {
    "jpeg_q95": "re-encoded as JPEG, quality 95",
    "jpeg_q75": "re-encoded as JPEG, quality 75",
    "jpeg_q50": "re-encoded as JPEG, quality 50",
    "downscale_half": "downscaled to half width and height (Lanczos)",
    "format_swap": "JPEG sources saved as PNG (lossless); other sources saved as JPEG quality 90",
}
FORMAT_SWAP_JPEG_QUALITY = 90


def _reencode(img, fmt: str, **save_args):
    from PIL import Image

    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_args)
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def perturb(img, name: str, source_format: str | None = None):
    """The RGB PIL image `img` after perturbation `name` (a key of PERTURBATIONS, or "none").

    `source_format` is the format the file was decoded from ("JPEG", "PNG", ...); only
    format_swap uses it.
    """
    from PIL import Image

    img = img.convert("RGB")
    if name == "none":
        return img
    if name.startswith("jpeg_q"):
        return _reencode(img, "JPEG", quality=int(name[len("jpeg_q"):]))
    if name == "downscale_half":
        size = (max(1, img.width // 2), max(1, img.height // 2))
        return img.resize(size, Image.Resampling.LANCZOS)
    if name == "format_swap":
        if (source_format or "").upper() in ("JPEG", "MPO"):
            return _reencode(img, "PNG")
        return _reencode(img, "JPEG", quality=FORMAT_SWAP_JPEG_QUALITY)
    raise ValueError(f"unknown perturbation {name!r}; known: {', '.join(PERTURBATIONS)}")


def perturbed_inputs(
    images: Sequence[Any],
    specs: Mapping[str, Any],
    *,
    max_pixels: int | None = None,
    perturbations: Sequence[str] = tuple(PERTURBATIONS),
    progress: bool = True,
) -> dict[str, dict[str, np.ndarray]]:
    """{perturbation: {spec key: uint8 images (N, H, W[, 3])}} for `images` (ImageInfo).

    Each image is decoded once, exactly as load_dataset decodes it (same pixel limit, same JPEG
    draft scale), and every perturbation of it is preprocessed for every spec in `specs` (e.g.
    {"scratch": SCRATCH, "backbone": BACKBONE}); `to_model_input(u8, spec)` turns a stack into
    model input (kept as uint8 here: a quarter of the memory). The perturbation "none" reproduces
    the cached dataset images exactly. A file that changed or became unreadable since it was
    loaded is a UserError: it would no longer be the test image the models were scored on.
    """
    from tqdm import tqdm

    from aigen.data.loading import ImageSkip, decode_bytes, read_unchanged
    from aigen.data.preprocess import DECODE_MIN_SIDE, preprocess
    from aigen.errors import UserError

    u8: dict[str, dict[str, list[np.ndarray]]] = {
        p: {key: [] for key in specs} for p in perturbations
    }
    for info in tqdm(images, desc="robustness: perturbing test images", unit="img",
                     disable=not progress, leave=False):
        try:
            original = decode_bytes(read_unchanged(info.path, info.sha256), max_pixels=max_pixels,
                                    min_side=DECODE_MIN_SIDE)
        except ImageSkip as exc:
            raise UserError(f"robustness: the test image {info.path} changed during the run "
                            f"({exc.reason}); leave the data folder alone while a study runs") \
                from None
        for p in perturbations:
            img = perturb(original, p, getattr(info, "format", None))
            for key, spec in specs.items():
                u8[p][key].append(preprocess(img, spec))
    return {
        p: {key: np.stack(arrays) if arrays else np.zeros((0, *specs[key].u8_shape), np.uint8)
            for key, arrays in per_spec.items()}
        for p, per_spec in u8.items()
    }


def accuracy(y_true: np.ndarray, prob_ai: np.ndarray) -> float:
    """Share of correct predictions at the study's threshold."""
    from aigen.study.metrics import predict_labels

    y_true = np.asarray(y_true)
    return float((predict_labels(prob_ai) == y_true).mean()) if y_true.size else float("nan")


def summarize_robustness(
    clean: Sequence[float], perturbed: Mapping[str, Sequence[float]]
) -> dict[str, Any]:
    """One model's robustness record from per-seed accuracies.

    Returns {"clean": summary, "perturbed": {name: summary + {"change": mean - clean mean}}},
    where a summary is metrics.summarize's {"mean", "std", "per_seed", "ci95", ...}. The sign
    convention (also the report's): change = perturbed − clean accuracy, negative = worse.
    """
    clean_summary = summarize(clean)
    out: dict[str, Any] = {"clean": clean_summary, "perturbed": {}}
    for name, values in perturbed.items():
        summary = summarize(values)
        summary["change"] = (
            None if summary["mean"] is None or clean_summary["mean"] is None
            else summary["mean"] - clean_summary["mean"] + 0.0  # + 0.0: no -0.0
        )
        out["perturbed"][name] = summary
    return out
