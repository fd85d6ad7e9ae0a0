"""The degradation sweep: every model's test accuracy and ROC-AUC as the test images of both
classes are degraded step by step (docs/study.md#degradation-sweep).

A model that learnt image content keeps most of its accuracy under mild degradations; a model that
relies on the traces compression or resampling leave in the pixels falls towards chance as soon
as those traces change. Each test image is read again from the data folder (checked against the
sha256 it had when loaded; the folder is only read), decoded at its stored resolution (no JPEG
draft scaling; the pixel limit still applies), degraded in memory, then turned into model input
by the same `preprocess` as every other image. The "clean" point of every curve is the same
full-resolution decode without degradation, so a curve's changes are the degradation's alone.

The test images of all seeds (their union) are degraded once, a batch at a time (a torch
DataLoader over `SweepImages`, `--workers` processes): never more than a batch of degraded images
is held. Each seed's models are then scored on that seed's own test images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from aigen.data.preprocess import harmonize_image
from aigen.study.metrics import summarize

BATCH = 16  # test images degraded and scored together
JPEG_SOURCES = frozenset({"JPEG", "MPO"})  # formats whose pixels a JPEG decoder produced
FORMAT_SWAP_QUALITY = 95


@dataclass(frozen=True)
class Perturbation:
    """One kind of degradation; `strengths` are ordered from mild to severe."""

    key: str
    title: str  # figure title and table label
    parameter: str  # what a strength is ("quality", "sigma", ...)
    strengths: tuple
    description: str

    def label(self, strength) -> str:
        """'quality 75', 'sigma 0.5', ... ('clean' for None)."""
        return "clean" if strength is None else f"{self.parameter} {strength:g}"


PERTURBATIONS: dict[str, Perturbation] = {p.key: p for p in (
    Perturbation("jpeg", "JPEG re-encoding", "quality", (100, 90, 75, 50, 30),
                 "re-encoded as JPEG at that quality (Pillow's defaults: 4:2:0 chroma "
                 "subsampling, baseline) and decoded again"),
    Perturbation("blur", "Gaussian blur", "sigma", (0.5, 1, 2, 3),
                 "Gaussian blur of that standard deviation in pixels (Pillow's GaussianBlur)"),
    Perturbation("downscale", "Downscaling", "factor", (0.75, 0.5, 0.25),
                 "shrunk to that fraction of its width and height (Lanczos, antialiased), then "
                 "enlarged back to its stored size (bicubic): the detail is lost, the size kept"),
    Perturbation("noise", "Gaussian noise", "sigma", (2, 5, 10),
                 "additive Gaussian noise of that standard deviation on the 0-255 scale, per "
                 "pixel and channel, rounded and clipped; drawn from a generator seeded by the "
                 "run's first seed, the image's sha256 and sigma"),
    Perturbation("format_swap", "Format swap (non-JPEG sources to JPEG)", "quality",
                 (FORMAT_SWAP_QUALITY,),
                 f"images stored in another format than JPEG (PNG, WebP...) saved as JPEG at "
                 f"quality {FORMAT_SWAP_QUALITY}; JPEG sources are left out, since saving them "
                 "in a lossless format would not change a pixel. Scored on the non-JPEG test "
                 "images only (its clean point too)"),
)}


def noise_generator(seed: int, sha256: str, sigma: float) -> np.random.Generator:
    """The generator of one image's noise: the same (seed, image content, sigma), the same noise,
    whatever the order, batch or worker the image is processed in."""
    words = [int(seed), int(sha256[:16], 16), int(round(float(sigma) * 1000))]
    return np.random.default_rng(words)


def _noise(img, sigma: float, rng: np.random.Generator, rows_per_block: int = 256):
    """`img` plus N(0, sigma) per pixel and channel, rounded, clipped to 0..255; computed a block
    of rows at a time (float32), so a large image does not need a float copy of itself."""
    from PIL import Image

    a = np.array(img, dtype=np.uint8)
    for top in range(0, a.shape[0], rows_per_block):
        block = a[top:top + rows_per_block]
        noisy = block + rng.standard_normal(block.shape, dtype=np.float32) * np.float32(sigma)
        block[...] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return Image.fromarray(a)


def perturb(img, key: str, strength, *, source_format: str | None = None, seed: int = 0,
            sha256: str = "0" * 16):
    """The RGB PIL image `img` degraded by perturbation `key` at `strength` (None: unchanged),
    or None when the perturbation does not apply to this image (format_swap of a JPEG source).

    `source_format` is the format the file was decoded from; `seed` and `sha256` seed the noise.
    """
    from PIL import Image, ImageFilter

    img = img if img.mode == "RGB" else img.convert("RGB")
    if key not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {key!r}; known: {', '.join(PERTURBATIONS)}")
    if key == "format_swap" and (source_format or "").upper() in JPEG_SOURCES:
        return None
    if strength is None:
        return img
    if key in ("jpeg", "format_swap"):  # the same fixed JPEG round trip as --harmonize
        return harmonize_image(img, f"jpeg:{int(strength)}")
    if key == "blur":
        return img.filter(ImageFilter.GaussianBlur(radius=float(strength)))
    if key == "downscale":
        small = (max(1, round(img.width * strength)), max(1, round(img.height * strength)))
        return img.resize(small, Image.Resampling.LANCZOS).resize(img.size,
                                                                   Image.Resampling.BICUBIC)
    return _noise(img, float(strength), noise_generator(seed, sha256, strength))


def conditions(perturbations: Sequence[str] | None = None) -> list[tuple[str, Any]]:
    """(perturbation, strength) pairs scored: ("clean", None) first, then every strength (of
    every perturbation when `perturbations` is None)."""
    perturbations = list(PERTURBATIONS) if perturbations is None else perturbations
    return [("clean", None)] + [(key, s) for key in perturbations
                                for s in PERTURBATIONS[key].strengths]


def condition_name(key: str, strength) -> str:
    return "clean" if strength is None else f"{key}:{strength:g}"


def _torch_dataset():
    import torch.utils.data

    return torch.utils.data.Dataset


class SweepImages(_torch_dataset()):
    """Degraded test images as uint8 model inputs: `ds[[i, j, ...]]` decodes those images at
    their stored resolution, applies every condition and preprocesses each result for every spec.

    Returns {condition name: (positions, {spec key: uint8 (n, ...)})}: the positions (within the
    batch) of the images the condition applies to. `images` are aigen.data.dataset.ImageInfo.
    Pickles as plain data, for DataLoader workers."""

    def __init__(self, images: Sequence[Any], specs: Mapping[str, Any], *, seed: int = 0,
                 max_pixels: int | None = None,
                 perturbations: Sequence[str] | None = None):
        self.items = [(im.path, im.sha256, getattr(im, "format", None)) for im in images]
        self.specs = dict(specs)
        self.seed = int(seed)
        self.max_pixels = max_pixels
        self.conditions = conditions(perturbations)

    def __len__(self) -> int:
        return len(self.items)

    def decode(self, i: int):
        """Image `i` decoded at its stored resolution (RGB), checked against its sha256."""
        from aigen.data.loading import ImageSkip, decode_bytes, read_unchanged
        from aigen.errors import UserError

        path, sha256, _ = self.items[i]
        try:
            return decode_bytes(read_unchanged(path, sha256), max_pixels=self.max_pixels)
        except ImageSkip as exc:
            raise UserError(f"degradation sweep: the test image {path} changed during the run "
                            f"({exc.reason}); leave the data folder alone while a study runs") \
                from None

    def __getitem__(self, index):
        from aigen.data.preprocess import preprocess

        indices = [int(i) for i in np.atleast_1d(index)]
        u8: dict[str, tuple[list[int], dict[str, list[np.ndarray]]]] = {
            condition_name(k, s): ([], {key: [] for key in self.specs})
            for k, s in self.conditions}
        for pos, i in enumerate(indices):
            original = self.decode(i)
            _, sha256, fmt = self.items[i]
            for key, strength in self.conditions:
                img = original if key == "clean" else perturb(
                    original, key, strength, source_format=fmt, seed=self.seed, sha256=sha256)
                if img is None:
                    continue
                positions, arrays = u8[condition_name(key, strength)]
                positions.append(pos)
                for spec_key, spec in self.specs.items():
                    arrays[spec_key].append(preprocess(img, spec))
        return {name: (np.array(positions, dtype=np.int64),
                       {k: (np.stack(v) if v else np.zeros((0, *self.specs[k].u8_shape), np.uint8))
                        for k, v in arrays.items()})
                for name, (positions, arrays) in u8.items()}


Scorer = Callable[[dict[str, np.ndarray]], Mapping[tuple[str, int], np.ndarray]]


def sweep_probabilities(images: Sequence[Any], specs: Mapping[str, Any], scorer: Scorer, *,
                        seed: int = 0, max_pixels: int | None = None, workers: int = 0,
                        perturbations: Sequence[str] | None = None,
                        progress: bool = True) -> dict[str, dict[tuple[str, int], np.ndarray]]:
    """{condition name: {(model, seed): prob_ai (len(images),), NaN where not applicable}}.

    `scorer` maps a batch {spec key: float32 model inputs} to {(model, seed): prob_ai}, as
    aigen.study.evaluate.make_scorer builds it."""
    from tqdm import tqdm

    from aigen.data.preprocess import to_model_input
    from aigen.data.stream import batches

    dataset = SweepImages(images, specs, seed=seed, max_pixels=max_pixels,
                          perturbations=perturbations)
    probs: dict[str, dict[tuple[str, int], np.ndarray]] = {}
    start = 0
    # Counted per image and condition: one batch is scored under every condition (minutes on a
    # CPU), so the bar moves as each condition is done.
    with tqdm(total=len(images) * len(dataset.conditions), desc="degradation sweep",
              unit="img×condition", disable=not progress, leave=False) as bar:
        for batch in batches(dataset, BATCH, workers=workers):
            n = len(np.asarray(batch["clean"][0]))  # every image of the batch, unperturbed
            for name, (positions, u8) in batch.items():
                positions = np.asarray(positions)
                if len(positions):  # (a condition may apply to none of the batch's images)
                    scores = scorer({k: to_model_input(np.asarray(v), specs[k])
                                     for k, v in u8.items()})
                    for model_seed, p in scores.items():
                        out = probs.setdefault(name, {}).setdefault(
                            model_seed, np.full(len(images), np.nan))
                        out[start + positions] = p
                bar.update(n)
            start += n
    return probs


def _metric_points(y: np.ndarray, probs: Mapping[int, np.ndarray],
                   test_pos: Mapping[int, np.ndarray]) -> dict[str, Any]:
    """Accuracy and ROC-AUC summaries over seeds of one model under one condition; each seed
    scored on its own test images where the condition applies (prob not NaN)."""
    from sklearn.metrics import roc_auc_score

    from aigen.study.metrics import predict_labels

    acc, auc, counts, n = [], [], [], []
    for seed, p in probs.items():
        pos = test_pos[seed]
        keep = pos[~np.isnan(p[pos])]
        correct = int((predict_labels(p[keep]) == y[keep]).sum())
        acc.append(correct / len(keep) if len(keep) else None)
        auc.append(float(roc_auc_score(y[keep], p[keep])) if len(np.unique(y[keep])) == 2
                   else None)
        counts.append((correct, int(len(keep))))
        n.append(int(len(keep)))
    return {"n": n, "accuracy": summarize(acc, counts=counts), "roc_auc": summarize(auc)}


def _with_change(point: dict[str, Any], clean: dict[str, Any]) -> dict[str, Any]:
    """`point` with "change" = perturbed mean - clean mean (negative: worse) per metric."""
    for metric in ("accuracy", "roc_auc"):
        a, b = point[metric]["mean"], clean[metric]["mean"]
        point[metric]["change"] = None if a is None or b is None else a - b + 0.0
    return point


def summarize_sweep(probs: Mapping[str, Mapping[tuple[str, int], np.ndarray]], y: np.ndarray,
                    test_pos: Mapping[int, np.ndarray], models: Sequence[str],
                    seeds: Sequence[int],
                    perturbations: Sequence[str] | None = None) -> dict[str, Any]:
    """{model: {perturbation: [point, ...]}}: the first point is the clean one (strength None),
    then one per strength. A point is {"strength", "n" (test images per seed), "accuracy",
    "roc_auc"}; each metric is a metrics.summarize summary plus "change" (perturbed mean - clean
    mean; negative = worse). A perturbation that applies to a subset (format_swap) has its own
    clean point on that subset."""
    out: dict[str, Any] = {}
    perturbations = list(PERTURBATIONS) if perturbations is None else perturbations
    for model in models:
        out[model] = {}
        for key in perturbations:
            pert = PERTURBATIONS[key]
            # The clean point on the images this perturbation applies to (all of them, but for
            # format_swap): those its first strength scored.
            first = probs.get(condition_name(key, pert.strengths[0]), {}).get((model, seeds[0]))
            applies = (np.zeros(len(y), bool) if first is None else ~np.isnan(first))
            clean_probs = {seed: np.where(applies, probs["clean"][(model, seed)], np.nan)
                           for seed in seeds}
            clean = {"strength": None, **_metric_points(y, clean_probs, test_pos)}
            points = [_with_change(clean, clean)]
            for strength in pert.strengths:
                per_seed = probs.get(condition_name(key, strength), {})
                p = {seed: per_seed.get((model, seed), np.full(len(y), np.nan)) for seed in seeds}
                points.append(_with_change({"strength": strength,
                                            **_metric_points(y, p, test_pos)}, clean))
            out[model][key] = points
    return out


def describe(perturbations: Sequence[str] | None = None) -> dict[str, Any]:
    """results.json's sweep["perturbations"]: what each perturbation does."""
    perturbations = list(PERTURBATIONS) if perturbations is None else perturbations
    return {key: {"title": PERTURBATIONS[key].title, "parameter": PERTURBATIONS[key].parameter,
                  "strengths": list(PERTURBATIONS[key].strengths),
                  "description": PERTURBATIONS[key].description}
            for key in perturbations}


def run_sweep(images: Sequence[Any], labels: np.ndarray, test_pos: Mapping[int, np.ndarray],
              specs: Mapping[str, Any], scorer: Scorer, models: Sequence[str],
              seeds: Sequence[int], *, max_pixels: int | None = None, workers: int = 0,
              perturbations: Sequence[str] | None = None,
              progress: bool = True) -> dict[str, Any]:
    """results.json's "sweep": every model scored under every condition on each seed's test
    images. `images` (ImageInfo) is the union of the seeds' test images, `labels` theirs,
    `test_pos[seed]` the positions of that seed's test images in `images`."""
    perturbations = list(PERTURBATIONS) if perturbations is None else perturbations
    probs = sweep_probabilities(images, specs, scorer, seed=seeds[0], max_pixels=max_pixels,
                                workers=workers, perturbations=perturbations, progress=progress)
    return {"n_images": len(images), "noise_seed": int(seeds[0]),
            "perturbations": describe(perturbations),
            "models": summarize_sweep(probs, np.asarray(labels), test_pos, models, seeds,
                                      perturbations)}



# Strengths a model that learnt image content should shrug off; a collapse there is a shortcut.
MILD = {"jpeg": (100, 90, 75), "downscale": (0.75, 0.5), "blur": (0.5, 1), "noise": (2, 5),
        "format_swap": (FORMAT_SWAP_QUALITY,)}
TRACES = {
    "jpeg": "JPEG compression traces",
    "format_swap": "the compression traces that tell JPEG from losslessly stored pixels",
    "downscale": "resampling traces or pixel-level detail",
    "blur": "the finest pixel-level detail",
    "noise": "pixel-level noise statistics",
}
MIN_MARGIN = 0.1  # a model closer than this to chance has no margin worth flagging


def judged_models(sweep: Mapping[str, Any]) -> list[str]:
    """Models the shortcut flags can judge: clean accuracy or ROC-AUC on all test images at
    least MIN_MARGIN above chance (0.5); the format swap's clean point (on its subset) counts only
    when it is the one perturbation swept."""
    judged = []
    for model, per_pert in (sweep.get("models") or {}).items():
        whole = {k: p for k, p in per_pert.items() if k != "format_swap"} or per_pert
        means = [points[0][m]["mean"] for points in whole.values()
                 for m in ("accuracy", "roc_auc")]
        if any(v is not None and v - 0.5 >= MIN_MARGIN for v in means):
            judged.append(model)
    return judged


def shortcut_flags(sweep: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The sweep's warnings, for the report and the terminal: at a mild strength (MILD) a judged
    model (judged_models) lost more than half its margin over chance (0.5) -
    - "ranking": in ROC-AUC: its scores no longer rank AI above real images, so it likely relied
      on the traces that perturbation removes (TRACES);
    - "threshold": in accuracy only, its ROC-AUC keeping more than half its margin: the ranking
      survives but its scores shifted, so the threshold 0.5 no longer fits.
    Each flag: {"model", "perturbation", "strength", "kind", "metric", "clean", "perturbed"}; the
    first (mildest) flagged strength per model, perturbation and kind."""
    flags = []
    judged = set(judged_models(sweep))
    for model, per_pert in (sweep.get("models") or {}).items():
        if model not in judged:
            continue
        for key, points in per_pert.items():
            clean = points[0]
            seen = set()
            for point in points[1:]:
                if point["strength"] not in MILD.get(key, ()):
                    continue
                lost = {}
                for metric in ("roc_auc", "accuracy"):
                    a, b = clean[metric]["mean"], point[metric]["mean"]
                    if a is None or b is None or a - 0.5 < MIN_MARGIN:
                        continue
                    lost[metric] = (b - 0.5) < (a - 0.5) / 2
                kind = ("ranking" if lost.get("roc_auc") else
                        "threshold" if lost.get("accuracy") and lost.get("roc_auc") is False
                        else None)
                if kind is None or kind in seen:
                    continue
                seen.add(kind)
                metric = "roc_auc" if kind == "ranking" else "accuracy"
                flags.append({"model": model, "perturbation": key, "strength": point["strength"],
                              "kind": kind, "metric": metric, "clean": clean[metric]["mean"],
                              "perturbed": point[metric]["mean"]})
    return flags


def flag_text(flag: Mapping[str, Any]) -> str:
    """One plain sentence for a shortcut flag."""
    pert = PERTURBATIONS[flag["perturbation"]]
    where = f"{pert.title.lower()} at {pert.label(flag['strength'])} (a mild degradation)"
    if flag["kind"] == "ranking":
        return (f"`{flag['model']}`: under {where} its ROC-AUC falls from {flag['clean']:.3f} to "
                f"{flag['perturbed']:.3f}, more than half of its margin over chance lost: it "
                f"likely relies on {TRACES[flag['perturbation']]}, not on what the image shows.")
    return (f"`{flag['model']}`: under {where} its accuracy falls from {flag['clean']:.3f} to "
            f"{flag['perturbed']:.3f} while its ROC-AUC holds: its scores moved (the threshold "
            "0.5 no longer fits) though they still rank the images, so they depend partly on "
            f"{TRACES[flag['perturbation']]}.")


def add_argument(parser) -> None:
    """--sweep of `aigen study`: which perturbations (all by default; none skips the sweep)."""
    parser.add_argument("--sweep", nargs="*", choices=list(PERTURBATIONS),
                        default=list(PERTURBATIONS), metavar="KIND",
                        help="degradations of the test images to sweep, each at every strength: "
                             f"{' '.join(PERTURBATIONS)} (default: all; give the option no value "
                             "to skip the sweep, which scores every test image about 17 times)")
