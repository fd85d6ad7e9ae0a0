"""The crop input policy (`--input crop`): the crop spec's stored rows, its decode, the seeded
random training windows, the fixed test windows and the mean of their probabilities."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from aigen.data.augment import AugmentedImages, augment_image, augment_rng, crop_rng
from aigen.data.preprocess import (BACKBONE, CROP, CROP_SIDE, IMAGENET_MEAN, IMAGENET_STD,
                                   SCRATCH, Spec, backbone_spec, check_input, crop_windows,
                                   cut_window, decode_specs, mean_over_windows, n_windows,
                                   preprocess, random_window, rescaling, to_model_input)
from aigen.data.loading import decode_bytes
from aigen.data.store import RowFile, RowWriter
from helpers import SHARED

torch = pytest.importorskip("torch")


def _noise(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# ----------------------------------------------------------------------------------------------
# The crop spec and its stored rows


def test_crop_spec_keys_and_input_policies():
    assert CROP.size == CROP_SIDE == 384 and CROP.crop == 224 and CROP.input_size == 224
    assert CROP.key == "crop-384x384-RGB-bilinear-shortside-centre-draft384"
    # The resize specs keep their keys (and so their stores).
    assert BACKBONE.key == "backbone-224x224-RGB-bilinear-draft224"
    assert backbone_spec("resize") == BACKBONE
    assert backbone_spec("resize", "jpeg:96") == BACKBONE.harmonized("jpeg:96")
    assert backbone_spec("crop", "jpeg:96").key == CROP.key + "-jpeg96s420"
    assert backbone_spec("crop:448").size == 448
    assert check_input(" CROP:384 ") == "crop" and check_input("crop:448") == "crop:448"
    assert check_input("crop:224") == "crop:224" and check_input("crop:240") == "crop:240"
    for bad in ("crop:100", "crop:", "cropped", "resize:2", ""):
        with pytest.raises(ValueError, match="resize, crop or crop:S"):
            check_input(bad)
    # Sides off the 16-pixel steps or past 448 are refused, saying which are accepted.
    for bad in ("crop:208", "crop:232", "crop:392", "crop:464", "crop:512", "crop:1024"):
        with pytest.raises(ValueError, match="multiple of 16 in 224..448"):
            check_input(bad)


@pytest.mark.parametrize("side", [224, 240, 384, 432, 448])
def test_fixed_windows_lie_on_the_jpeg_grid_and_cover_the_square(side):
    spec = backbone_spec(f"crop:{side}")
    windows = crop_windows(spec)
    assert len(windows) == 5 and windows[0] == ((side - 224) // 2,) * 2
    assert all(top % 8 == 0 and left % 8 == 0 for top, left in windows)
    covered = np.zeros((side, side), bool)
    for top, left in windows:
        covered[top:top + 224, left:left + 224] = True
    assert covered.all()


def test_stored_row_is_the_centre_square_at_native_resolution():
    """An image whose short side is S is not resampled at all: the row is its centre square."""
    img = _noise(600, CROP_SIDE)
    row = preprocess(img, CROP)
    assert row.shape == (CROP_SIDE, CROP_SIDE, 3) == CROP.u8_shape
    left = (600 - CROP_SIDE) // 2
    assert np.array_equal(row, np.asarray(img)[:, left:left + CROP_SIDE])
    assert rescaling(600, CROP_SIDE, CROP) == "kept"


def test_larger_images_are_scaled_to_s_on_the_short_side_and_centred():
    # 1000 x 500: black on the left fifth, white on the right fifth, grey between; the short side
    # becomes 384 (width 768) and the centre 384 columns hold only grey.
    a = np.full((500, 1000, 3), 128, np.uint8)
    a[:, :200] = 0
    a[:, 800:] = 255
    row = preprocess(Image.fromarray(a), CROP)
    assert row.shape == CROP.u8_shape
    assert np.array_equal(row, np.full_like(row, 128))
    tall = preprocess(Image.fromarray(a.transpose(1, 0, 2).copy()), CROP)  # portrait: same
    assert np.array_equal(tall, row)
    assert rescaling(1000, 500, CROP) == "reduced"


def test_smaller_images_are_enlarged():
    img = _noise(150, 100)
    row = preprocess(img, CROP)
    assert row.shape == CROP.u8_shape
    expected = np.asarray(img.resize((576, 384), Image.Resampling.BILINEAR))[:, 96:96 + 384]
    assert np.array_equal(row, expected)
    assert rescaling(150, 100, CROP) == "enlarged"


def test_harmonisation_happens_on_the_stored_square():
    img = _noise(500, 400)
    raw, q96 = preprocess(img, CROP), preprocess(img, CROP.harmonized("jpeg:96"))
    from aigen.data.preprocess import harmonize_image

    assert np.array_equal(q96, np.asarray(harmonize_image(Image.fromarray(raw), "jpeg:96")))
    assert not np.array_equal(q96, raw)


def test_a_crop_spec_decodes_on_its_own_and_leaves_the_resize_rows_alone():
    """A large JPEG is decoded at 1/4 scale for the resize specs (draft 224) but at 1/2 for the
    crop (draft 384); asking for both together changes no resize row."""
    buf = io.BytesIO()
    _noise(1600, 1000).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    alone = decode_specs(data, [SCRATCH, BACKBONE])
    together = decode_specs(data, [SCRATCH, BACKBONE, CROP])
    for spec in (SCRATCH, BACKBONE):
        assert np.array_equal(alone[spec.key], together[spec.key])
    assert decode_bytes(data, min_side=224).size == (400, 250)
    half = decode_bytes(data, min_side=CROP_SIDE)
    assert half.size == (800, 500)
    assert np.array_equal(together[CROP.key], preprocess(half, CROP))


# ----------------------------------------------------------------------------------------------
# Windows: fixed (test) and random (training)


def test_fixed_windows_cover_the_square_and_are_the_model_input():
    assert crop_windows(CROP) == [(80, 80), (0, 0), (0, 160), (160, 0), (160, 160)]
    assert n_windows(CROP) == 5 and n_windows(BACKBONE) == 1
    covered = np.zeros((CROP_SIDE, CROP_SIDE), bool)
    for top, left in crop_windows(CROP):
        covered[top:top + 224, left:left + 224] = True
    assert covered.all()
    rows = np.stack([preprocess(_noise(400, 384, seed=s), CROP) for s in range(2)])
    x = to_model_input(rows, CROP)
    assert x.shape == (2, 5, 3, 224, 224)
    for k, (top, left) in enumerate(crop_windows(CROP)):
        assert np.array_equal(x[1, k], to_model_input(cut_window(rows[1], CROP, top, left),
                                                      CROP.window())[0])
    assert CROP.window() == Spec("crop", 224, "RGB", IMAGENET_MEAN, IMAGENET_STD)


SMALL = Spec("crop", 48, "RGB", IMAGENET_MEAN, IMAGENET_STD, crop=32)  # the same code, faster


def _store(tmp_path, spec, n=6):
    """A store of n rows whose pixels encode (image, y, x): R = image, G = y, B = x."""
    yy, xx = np.mgrid[0:spec.size, 0:spec.size]
    writer = RowWriter(tmp_path / "rows.u8")
    for i in range(n):
        writer.append(np.stack([np.full_like(yy, i), yy, xx], -1).astype(np.uint8))
    writer.commit()
    return RowFile(tmp_path / "rows.u8", spec.u8_shape)


def _pixels(x, spec):
    """uint8 (N, H, W, 3) back from model inputs (N, 3, H, W)."""
    v = x.numpy().transpose(0, 2, 3, 1) * np.asarray(spec.std) + np.asarray(spec.mean)
    return np.rint(v * 255).astype(np.int64)


def test_random_windows_are_seeded_inside_bounds_and_vary(tmp_path):
    store = _store(tmp_path, SMALL)
    rows = np.arange(6)
    ds = AugmentedImages(store, SMALL, rows, "none", seed=3)
    assert ds.shape == (6, 5, 3, 32, 32)
    first = ds.augmented(np.arange(6), 1)
    assert first.shape == (6, 3, 32, 32)
    assert torch.equal(first, AugmentedImages(store, SMALL, rows, "none", seed=3).augmented(
        np.arange(6), 1))  # reproducible
    assert torch.equal(first[[4, 1]], ds.augmented(np.array([4, 1]), 1))  # whatever the batch
    px = _pixels(first, SMALL)
    corners = set()
    for i in range(6):
        top, left = random_window(SMALL, crop_rng(3, 1, i))
        assert top in (0, 8, 16) and left in (0, 8, 16)
        corners.add((top, left))
        assert (px[i, ..., 0] == i).all()
        assert np.array_equal(px[i, :, 0, 1], np.arange(top, top + 32))  # rows top..top+31
        assert np.array_equal(px[i, 0, :, 2], np.arange(left, left + 32))
    assert len(corners) > 1
    assert not torch.equal(first, ds.augmented(np.arange(6), 2))  # another epoch
    assert not torch.equal(first, AugmentedImages(store, SMALL, rows, "none", 4).augmented(
        np.arange(6), 1))  # another seed
    # Draws cover every position on the 8-pixel grid, edges included (0, 8, ..., S - crop).
    seen = {random_window(SMALL, crop_rng(0, e, 0)) for e in range(400)}
    assert {t for t, _ in seen} == {0, 8, 16} and {l for _, l in seen} == {0, 8, 16}
    # Without augmentation's draws: each image's fixed windows.
    assert torch.equal(ds[np.array([2, 0])], torch.from_numpy(to_model_input(
        store.read([2, 0]), SMALL)))


def test_random_windows_of_the_default_square_start_on_the_jpeg_grid():
    """S = 384: every draw is a multiple of 8 in 0..160 (the harmonisation JPEG's blocks start at
    the square's corner, as the fixed windows do), and every such position is drawn."""
    seen = {random_window(CROP, crop_rng(s, e, r)) for s in range(2) for e in range(20)
            for r in range(40)}
    positions = {t for t, _ in seen} | {l for _, l in seen}
    assert positions == set(range(0, 161, 8))


def test_augmentation_is_applied_to_the_window(tmp_path):
    store = _store(tmp_path, SMALL)
    ds = AugmentedImages(store, SMALL, np.arange(6), "flip", seed=1)
    got = ds.augmented(np.arange(6), 2)
    for i, row in enumerate(store.read(np.arange(6))):
        window = cut_window(row, SMALL, *random_window(SMALL, crop_rng(1, 2, i)))
        flipped = augment_image(Image.fromarray(window), "flip", augment_rng(1, 2, i))
        assert torch.equal(got[i], torch.from_numpy(to_model_input(np.asarray(flipped),
                                                                   SMALL.window())[0]))


# ----------------------------------------------------------------------------------------------
# Scoring: the mean of the windows' probabilities


def _tiny_classifier(seed=0):
    from aigen.models.backbones import Backbone, BackboneClassifier, new_head

    torch.manual_seed(seed)
    prefix = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU())
    stage = torch.nn.Conv2d(4, 6, 1)
    backbone = Backbone("resnet18", prefix, stage, 6, weights_source="test", pretrained=False,
                        init="random")
    return BackboneClassifier(backbone, "finetuned", stage, new_head(6, seed))


def test_multi_window_score_is_the_mean_of_the_windows_probabilities():
    from aigen.study.predict import score

    clf = _tiny_classifier()
    rows = np.stack([preprocess(_noise(70, 60, seed=s), SMALL) for s in range(3)])
    x = to_model_input(rows, SMALL)  # (3, 5, 3, 32, 32)
    per_window = np.array([[clf.predict_proba(x[i, k][None])[0] for k in range(5)]
                           for i in range(3)])
    assert per_window.std(axis=1).min() > 0  # the windows do score differently
    expected = per_window.mean(axis=1)
    assert np.allclose(clf.predict_proba(x), expected, atol=1e-12)
    got = score({"m": clf}, {"models": {"m": {"regime": "finetuned"}}}, {"backbone": x})
    assert np.allclose(got["m"], expected, atol=1e-12)
    assert np.array_equal(mean_over_windows(np.arange(6.0), 3), [1.0, 4.0])


def test_validation_of_several_views_averages_their_probabilities():
    from aigen.training import _views_averaged

    forward = lambda b: b.flatten(1)[:, :2] * 3  # noqa: E731
    batch = torch.randn(4, 5, 3, 2, 2)
    out = _views_averaged(forward)(batch)
    probs = torch.softmax(forward(batch.flatten(0, 1)), 1).reshape(4, 5, 2).mean(1)
    assert torch.allclose(out.exp(), probs, atol=1e-6)
    plain = torch.randn(4, 3, 2, 2)
    assert torch.equal(_views_averaged(forward)(plain), forward(plain))


def test_gradcam_of_a_crop_model_shows_the_centre_window(tmp_path, monkeypatch):
    from aigen.study import diagnostics

    store = _store(tmp_path, SMALL)
    clf = _tiny_classifier()
    y = np.array([1, 0, 1, 0, 1, 0])
    prob = clf.predict_proba(to_model_input(store.read(np.arange(6)), SMALL))
    prob[:3] = [0.7, 0.6, 0.2]  # image-level decisions (window means) the windows need not share
    calls = []
    real = diagnostics.classifier_grad_cam

    def spy(clf, X, classes=None, device=None):
        calls.append((np.array(X), np.array(classes)))
        return real(clf, X, classes, device)

    monkeypatch.setattr(diagnostics, "classifier_grad_cam", spy)
    record = diagnostics.gradcam_diagnostic("m", clf, store, SMALL, np.arange(6), y, prob,
                                            [f"img{i}.png" for i in range(6)], 0,
                                            tmp_path / "cam.png")
    assert (tmp_path / "cam.png").is_file()
    assert sorted(e["path"] for e in record["examples"]) == [f"img{i}.png" for i in range(6)]
    assert {e["prob_ai"] for e in record["examples"]} == set(prob.tolist())
    # Each map is of the centre window and explains the image's decision (the figure's group).
    (X, classes), = calls
    order = [int(e["path"][3:-4]) for e in record["examples"]]
    top, left = crop_windows(SMALL)[0]
    rows = store.read(np.array(order))[:, top:top + 32, left:left + 32]
    np.testing.assert_array_equal(X, to_model_input(rows, SMALL.window()))
    assert classes.tolist() == [int(prob[k] >= 0.5) for k in order]


@pytest.mark.parametrize("regime", ["frozen", "finetuned", "full"])
def test_crop_training_validates_on_the_mean_of_the_fixed_windows(tmp_path, regime):
    """Random windows for training, and validation (loss, accuracy, the kept epoch) on each
    image's fixed windows averaged: what the trained model's predict_proba gives."""
    from aigen.training import best_epoch, train_from_images, train_full

    store = _store(tmp_path, SMALL, n=12)
    y = np.arange(12) % 2
    backbone = _tiny_classifier().backbone
    X_tr = AugmentedImages(store, SMALL, np.arange(8), "flip", seed=0)
    X_va = AugmentedImages(store, SMALL, np.arange(8, 12), "none", seed=0)
    kwargs = dict(epochs=2, lr=1e-2, batch_size=4, seed=0, progress=False)
    if regime == "full":
        clf, history = train_full(backbone, X_tr, y[:8], X_va, y[8:], **kwargs)
        kept = history[best_epoch(history) - 1]
    else:
        clf, history = train_from_images(backbone, X_tr, y[:8], X_va, y[8:], regime=regime,
                                         **kwargs)
        kept = history[-1]
    prob = clf.predict_proba(X_va[np.arange(4)])  # (4, 5, 3, 32, 32): the windows' mean
    assert prob.shape == (4,)
    p_true = np.where(y[8:] == 1, prob, 1 - prob)
    assert kept["val_acc"] == np.mean((prob >= 0.5) == (y[8:] == 1))
    assert kept["val_loss"] == pytest.approx(-np.mean(np.log(p_true)), abs=1e-5)


def test_a_run_with_crops_alone_says_so_in_the_report():
    from aigen.study.protocols import Protocol
    from aigen.study.report import protocols_section

    record = {**Protocol("none", "none", "crop").record(), "models": {},
              "rescaled": {"side": 384, "per_class": {
                  "ai": {"enlarged": 1, "kept": 0, "reduced": 3},
                  "real": {"enlarged": 2, "kept": 0, "reduced": 2}}}}
    text = "\n".join(protocols_section({"protocols": {"crop/none/none": record}}))
    assert "native-resolution crops" in text
    assert "ai: 25% enlarged, 0% kept, 75% reduced; real: 50% enlarged" in text
    resize = {**Protocol("none", "none").record(), "models": {}}
    assert "input" not in resize and Protocol("none", "none").key == "none/none"
    assert protocols_section({"protocols": {"none/none": resize}}) == []


# ----------------------------------------------------------------------------------------------
# The Kaggle copy's extreme files

SHARED_AIART = SHARED / "data" / "aiart"


def _extreme_files(root):
    """Relative path -> (width, height, mode) of the files at the crop policy's edges: the
    smallest and the largest short side, the most elongated, one of each non-RGB mode and the
    files whose extension does not say their format."""
    sizes = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        with Image.open(path) as im:
            sizes[path.relative_to(root).as_posix()] = (im.width, im.height, im.mode, im.format)
    short = {p: min(w, h) for p, (w, h, _, _) in sizes.items()}
    chosen = {min(short, key=short.get), max(short, key=short.get),
              max(sizes, key=lambda p: max(sizes[p][:2]) / short[p])}
    for mode in ("P", "L", "RGBA"):
        chosen.add(next(p for p, s in sizes.items() if s[2] == mode))
    formats = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".gif": "GIF"}
    chosen |= {p for p, s in sizes.items()
               if formats.get(os.path.splitext(p)[1].lower()) != s[3]}
    return {p: sizes[p][:3] for p in sorted(chosen)}


@pytest.mark.shared
@pytest.mark.skipif(not SHARED_AIART.is_dir(), reason="../shared/data/aiart is absent")
def test_crop_inputs_of_the_real_datas_extreme_files():
    """Real files through the crop policy: the smallest (enlarged) and largest (reduced, decoded
    in JPEG draft mode) short sides, the most elongated, palette / grey / alpha files and lying
    extensions each give five finite 224 x 224 windows in ImageNet normalisation; their centre
    window is the centre of the S x S square of the fully decoded image within JPEG draft
    rounding; and `rescaling` calls each image what its stored size says."""
    from aigen.data.preprocess import load_model_input

    files = _extreme_files(SHARED_AIART)
    assert len(files) >= 6
    modes = {mode for _, _, mode in files.values()}
    assert {"P", "L", "RGBA"} <= modes
    seen, window = set(), CROP.window()
    low = (0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    high = (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    for rel, (w, h, _) in files.items():
        path = SHARED_AIART / rel
        x = load_model_input(path, CROP)
        assert x.shape == (1, 5, 3, 224, 224) and np.isfinite(x).all(), rel
        assert (x.min(axis=(0, 1, 3, 4)) >= low - 1e-5).all(), rel
        assert (x.max(axis=(0, 1, 3, 4)) <= high + 1e-5).all(), rel
        # Against the fully decoded image (no JPEG draft): the same window, up to the two
        # downscalers' difference, and much closer than the window one grid step (8 px) over.
        full = preprocess(decode_bytes(path.read_bytes()), CROP)
        top, left = crop_windows(CROP)[0]
        same = to_model_input(cut_window(full, CROP, top, left), window)[0]
        shifted = to_model_input(cut_window(full, CROP, top + 8, left), window)[0]
        gap, off = (np.abs(v - x[0, 0]).mean() for v in (same, shifted))
        assert gap < 0.1 and gap < off / 3, (rel, gap, off)
        seen.add(rescaling(w, h, CROP))
    assert {"enlarged", "reduced"} <= seen
