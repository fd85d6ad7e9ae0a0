"""Train-time augmentation of the backbones' inputs, and the image dataset they train from.

`--augment` (docs/study.md):
- none: no augmentation (the study then trains from cached activations: the fast path);
- flip: horizontal flip with probability 0.5;
- blurjpeg: the flip, then Gaussian blur with sigma ~ U[0, 3] (probability 0.5), then JPEG
  re-encoding at a quality ~ U{30..100} (probability 0.5): the recipe of Wang et al. (CVPR 2020,
  "CNN-generated images are surprisingly easy to spot... for now").

Where in the pipeline: the augmentation is applied to the image already resized to the model's
input size (the uint8 row of the store, before harmonisation), then the protocol's harmonisation
(aigen.data.preprocess.harmonize_image) and the float conversion follow, exactly as for every other
input. Resized first because a blur of sigma pixels must mean the same for every image: the two
classes differ in stored resolution, so a blur (or a JPEG block grid) at stored resolution would be
a different perturbation for each class; the recipe was also made for ~256 px images, about the
model's size. Harmonised last so that a training input carries the same final compression as
every validation, test and evaluation input. It also keeps training cheap: no file is decoded.

Every random draw comes from numpy's default_rng([AUGMENT_STREAM, seed, epoch, row]) (row = the
image's row in the dataset), so a run is reproducible whatever the batch order, and each epoch
sees other augmentations of each image.

The crop input policy (a crop spec, aigen.data.preprocess) trains on random windows of the stored
S x S images, which are already harmonised (so a training window and the test windows come from
the same compressed square): each step takes one window per image at a position drawn from
default_rng([CROP_STREAM, seed, epoch, row]) (its own stream, so the augmentation's draws are
those of the resize policy), then augments the window at its own resolution; nothing is
harmonised after that.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from aigen.data.preprocess import (HARMONIZE_NONE, Spec, cut_window, harmonize_image,
                                   n_windows, random_window, to_model_input)

AUGMENTATIONS: dict[str, str] = {
    "none": "no augmentation",
    "flip": "horizontal flip (p = 0.5)",
    "blurjpeg": ("horizontal flip (p = 0.5), Gaussian blur sigma ~ U[0, 3] (p = 0.5), JPEG "
                 "re-encoding quality ~ U{30..100} (p = 0.5), at the model's input size"),
}
AUGMENT_STREAM = 2  # default_rng([AUGMENT_STREAM, seed, epoch, row])
CROP_STREAM = 3  # default_rng([CROP_STREAM, seed, epoch, row]): the training window's position
BLUR_SIGMA_MAX = 3.0
JPEG_QUALITY_RANGE = (30, 100)


def check_augment(text: str) -> str:
    """`text` if it names an augmentation, else ValueError (saying which exist)."""
    name = str(text).strip().lower()
    if name not in AUGMENTATIONS:
        raise ValueError(f"augmentation {text!r}: use one of {', '.join(AUGMENTATIONS)}")
    return name


def augment_rng(seed: int, epoch: int, row: int) -> np.random.Generator:
    return np.random.default_rng([AUGMENT_STREAM, int(seed), int(epoch), int(row)])


def crop_rng(seed: int, epoch: int, row: int) -> np.random.Generator:
    return np.random.default_rng([CROP_STREAM, int(seed), int(epoch), int(row)])


def augment_image(img, name: str, rng: np.random.Generator):
    """The PIL image `img` after augmentation `name`, with draws from `rng` (always the same five
    draws, used or not, so one image's augmentation never depends on another's)."""
    from PIL import Image, ImageFilter

    name = check_augment(name)
    if name == "none":
        return img
    flip, blur, sigma, jpeg = rng.random(), rng.random(), rng.uniform(0, BLUR_SIGMA_MAX), rng.random()
    quality = int(rng.integers(JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1] + 1))
    if flip < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if name == "blurjpeg":
        if blur < 0.5 and sigma > 0:
            img = img.filter(ImageFilter.GaussianBlur(radius=sigma))  # Pillow: radius = sigma
        if jpeg < 0.5:
            img = harmonize_image(img, f"jpeg:{quality}")
    return img


class AugmentedImages:
    """Model inputs of dataset rows `rows`, made from images each time they are asked for.

    `store` holds the uint8 images at `spec`'s size WITHOUT harmonisation (the store of
    `spec.harmonized("none")`); each image is augmented (`augment`, seeded per (seed, epoch, row)),
    harmonised as `spec` says, and converted to float32 (C, H, W).

    With a crop spec, `store` is the spec's own store (harmonised S x S images); a training input
    is one random window per image (crop_rng), then augmented; the inputs without augmentation
    are each image's fixed windows, (n_windows, C, crop, crop) per image.

    - `ds[key]` (an index array or tensor, or a slice): the inputs without augmentation (for
      validation), identical to those of spec's own store;
    - `ds.augmented(index, epoch)`: the training inputs of epoch `epoch` (1-based).
    """

    def __init__(self, store, spec: Spec, rows: Sequence[int] | np.ndarray, augment: str = "none",
                 seed: int = 0):
        if tuple(store.row_shape) != spec.u8_shape:
            raise ValueError(f"the store holds rows of shape {store.row_shape}, {spec.name} "
                             f"needs {spec.u8_shape}")
        self.store = store
        self.spec = spec
        self.rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        self.augment = check_augment(augment)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of `self[:]`."""
        views = (n_windows(self.spec),) if self.spec.crop else ()
        side = self.spec.input_size
        return (len(self.rows),) + views + (self.spec.channels, side, side)

    def _picked(self, key) -> np.ndarray:
        if hasattr(key, "numpy"):  # a torch tensor of indices
            key = key.numpy()
        return np.atleast_1d(self.rows[key])

    def _inputs(self, rows: np.ndarray, epoch: int | None):
        import torch
        from PIL import Image

        u8 = self.store.read(rows)
        if self.spec.crop:
            return torch.from_numpy(self._windows(u8, rows, epoch))
        if epoch is not None and self.augment != "none":
            u8 = np.stack([np.asarray(augment_image(Image.fromarray(img), self.augment,
                                                    augment_rng(self.seed, epoch, row)),
                                      dtype=np.uint8)
                           for img, row in zip(u8, rows)])
        if self.spec.harmonize != HARMONIZE_NONE:
            from aigen.data.preprocess import harmonize_u8

            u8 = harmonize_u8(u8, self.spec)
        return torch.from_numpy(to_model_input(u8, self.spec))

    def _windows(self, u8: np.ndarray, rows: np.ndarray, epoch: int | None) -> np.ndarray:
        """Crop spec: the fixed windows (epoch None), else one random, augmented window each."""
        from PIL import Image

        if epoch is None:
            return to_model_input(u8, self.spec)
        windows = []
        for img, row in zip(u8, rows):
            where = random_window(self.spec, crop_rng(self.seed, epoch, row))
            window = cut_window(img, self.spec, *where)
            if self.augment != "none":
                window = np.asarray(augment_image(Image.fromarray(window), self.augment,
                                                  augment_rng(self.seed, epoch, row)), dtype=np.uint8)
            windows.append(window)
        return to_model_input(np.stack(windows), self.spec.window())

    def __getitem__(self, key):
        return self._inputs(self._picked(key), None)

    def augmented(self, key, epoch: int):
        return self._inputs(self._picked(key), int(epoch))


__all__ = ["AUGMENTATIONS", "augment_image", "augment_rng", "crop_rng", "check_augment",
           "AugmentedImages"]
