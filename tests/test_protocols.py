"""Input protocols: harmonisation (Spec.harmonize, everywhere an image becomes a model input) and
train-time augmentation (aigen.data.augment, training from images)."""

import numpy as np
import pytest
from PIL import Image

from aigen.data.augment import AugmentedImages, augment_image, augment_rng, check_augment
from aigen.data.dataset import dataset_inputs, load_dataset
from aigen.data.preprocess import (BACKBONE, IMAGENET_MEAN, IMAGENET_STD, SCRATCH, Spec,
                                   check_harmonize, harmonize_u8, load_model_inputs, preprocess,
                                   to_model_input)
from aigen.data.store import RowFile, RowWriter

torch = pytest.importorskip("torch")


def _photo(seed=0, size=(120, 90)):
    """A noisy colour image (JPEG compression visibly changes it)."""
    rng = np.random.default_rng(seed)
    pixels = rng.normal(128, 50, (size[1], size[0], 3)) + np.linspace(0, 60, size[0])[None, :, None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------------------------
# Harmonisation


def test_spec_keys_none_unchanged_and_jpeg_distinct():
    # "none" keeps the key the store has always used, so existing caches stay valid.
    assert BACKBONE.key == "backbone-224x224-RGB-bilinear-draft224"
    assert SCRATCH.key == "scratch-32x32-L-bilinear-draft224"
    assert BACKBONE.harmonized("none") == BACKBONE
    keys = {BACKBONE.key, BACKBONE.harmonized("jpeg:96").key, BACKBONE.harmonized("jpeg:50").key,
            SCRATCH.harmonized("jpeg:96").key}
    assert len(keys) == 4
    assert BACKBONE.harmonized("JPEG:096") == BACKBONE.harmonized("jpeg:96")


@pytest.mark.parametrize("bad", ["jpeg", "jpeg:0", "jpeg:101", "png:90", "jpeg:9x", ""])
def test_bad_harmonisation_is_refused(bad):
    with pytest.raises(ValueError, match="jpeg:Q"):
        check_harmonize(bad)
    with pytest.raises(ValueError):
        Spec("x", 8, "L", (0.0,), (1.0,), harmonize=bad)


@pytest.mark.parametrize("spec", [BACKBONE, SCRATCH], ids=["backbone", "scratch"])
def test_jpeg_changes_pixels_deterministically_at_the_models_size(spec):
    img = _photo()
    raw = preprocess(img, spec)
    q96 = preprocess(img, spec.harmonized("jpeg:96"))
    q30 = preprocess(img, spec.harmonized("jpeg:30"))
    assert q96.shape == raw.shape == spec.u8_shape  # harmonised at the model's own size
    assert np.array_equal(q96, preprocess(img.copy(), spec.harmonized("jpeg:96")))
    err96 = np.abs(q96.astype(int) - raw).mean()
    err30 = np.abs(q30.astype(int) - raw).mean()
    assert 0 < err96 < err30  # it changes pixels, more at a lower quality
    # The JPEG round trip applied to the unharmonised row is exactly the harmonised row.
    assert np.array_equal(harmonize_u8(raw, spec.harmonized("jpeg:96")), q96)
    assert np.array_equal(harmonize_u8(np.stack([raw, raw]), spec.harmonized("jpeg:96"))[1], q96)


def _save(img, path, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)


def test_harmonisation_is_identical_for_both_classes(tmp_path):
    """The same file bytes under ai/ in one folder and under real/ in another give the same
    harmonised inputs in the store, and the same as `aigen predict`'s path for a loose file."""
    probe = _photo(seed=9)
    spec = BACKBONE.harmonized("jpeg:90")
    scratch = SCRATCH.harmonized("jpeg:90")
    for k, (with_probe, other) in enumerate([("ai", "real"), ("real", "ai")]):
        root = tmp_path / f"set{k}"
        _save(probe, root / with_probe / "probe.jpg", "JPEG")
        for i in range(3):
            _save(_photo(seed=20 + i), root / with_probe / f"x{i}.png", "PNG")
            _save(_photo(seed=40 + i), root / other / f"y{i}.png", "PNG")
    rows = []
    for k in range(2):
        ds = load_dataset(tmp_path / f"set{k}", workers=1, progress=False,
                          specs=(BACKBONE, spec, scratch))
        i = next(n for n, im in enumerate(ds.images) if im.rel_path.endswith("probe.jpg"))
        assert ds.images[i].label == (1 if k == 0 else 0)
        rows.append({s.key: dataset_inputs(ds, s).read([i])[0] for s in (BACKBONE, spec, scratch)})
    for s in (spec, scratch):
        assert np.array_equal(rows[0][s.key], rows[1][s.key])
    assert not np.array_equal(rows[0][spec.key], rows[0][BACKBONE.key])
    loose = load_model_inputs(tmp_path / "set0" / "ai" / "probe.jpg", [spec, scratch])
    assert np.array_equal(loose[spec], to_model_input(rows[0][spec.key], spec))
    assert np.array_equal(loose[scratch], to_model_input(rows[0][scratch.key], scratch))


# ----------------------------------------------------------------------------------------------
# Augmentation


def test_augment_names():
    assert check_augment("BlurJPEG") == "blurjpeg"
    with pytest.raises(ValueError, match="none, flip, blurjpeg"):
        check_augment("mixup")


def test_augmentation_is_seeded_and_varies_across_epochs_and_images():
    img = _photo(seed=3, size=(64, 64))
    out = lambda seed, epoch, row, name="blurjpeg": np.asarray(  # noqa: E731
        augment_image(img, name, augment_rng(seed, epoch, row)))
    assert np.array_equal(out(0, 1, 5), out(0, 1, 5))
    versions = {out(0, epoch, 5).tobytes() for epoch in range(1, 9)}
    assert len(versions) >= 4  # most epochs see another augmentation
    assert len({out(seed, 1, 5).tobytes() for seed in range(8)}) >= 4
    assert np.array_equal(out(0, 1, 5, "none"), np.asarray(img))
    flips = [out(0, epoch, 5, "flip") for epoch in range(1, 9)]
    assert all(np.array_equal(f, np.asarray(img)) or np.array_equal(f, np.asarray(img)[:, ::-1])
               for f in flips)
    assert any(np.array_equal(f, np.asarray(img)[:, ::-1]) for f in flips)
    assert any(np.array_equal(f, np.asarray(img)) for f in flips)


SMALL = Spec("small", 64, "RGB", IMAGENET_MEAN, IMAGENET_STD)


def _store(tmp_path, n=24, seed=5):
    """A RowFile of n uint8 64x64 RGB images (class 1: redder) and the labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    u8 = rng.integers(0, 200, (n, 64, 64, 3)).astype(np.uint8)
    u8[y == 1, ..., 0] += 50
    writer = RowWriter(tmp_path / "rows.u8")
    for row in u8:
        writer.append(row)
    writer.commit()
    return RowFile(tmp_path / "rows.u8", SMALL.u8_shape), u8, y


def test_augmented_images_seeded_and_unaugmented_view_matches_the_store(tmp_path):
    store, u8, _ = _store(tmp_path)
    harmonised = SMALL.harmonized("jpeg:80")
    ds = AugmentedImages(store, harmonised, np.arange(4, 12), "blurjpeg", seed=3)
    plain = ds[torch.arange(3)]
    assert np.array_equal(plain.numpy(), to_model_input(harmonize_u8(u8[4:7], harmonised),
                                                         harmonised))
    assert np.array_equal(ds[0:3].numpy(), plain.numpy())
    a = ds.augmented(torch.arange(8), epoch=1)
    assert torch.equal(a, ds.augmented(torch.arange(8), epoch=1))
    assert not torch.equal(a, ds.augmented(torch.arange(8), epoch=2))
    # An image's augmentation does not depend on the batch it is in.
    assert torch.equal(a[5], ds.augmented(torch.tensor([5]), epoch=1)[0])
    other_seed = AugmentedImages(store, harmonised, np.arange(4, 12), "blurjpeg", seed=4)
    assert not torch.equal(a, other_seed.augmented(torch.arange(8), epoch=1))
    with pytest.raises(ValueError, match="shape"):
        AugmentedImages(store, BACKBONE, np.arange(3))


# ----------------------------------------------------------------------------------------------
# Training from images


@pytest.mark.parametrize("regime,epochs", [("frozen", 3), ("finetuned", 2)])
def test_training_from_images_matches_cached_activations(lite0, tmp_path, regime, epochs):
    """Without augmentation, training from images is the cached-activation training: the same
    histories and weights up to float summation order (a strong check of the new path)."""
    from aigen.training import train_finetuned, train_from_images, train_frozen

    store, u8, y = _store(tmp_path)
    X = to_model_input(u8, SMALL)
    A = lite0.prefix_activations(X)
    train = train_frozen if regime == "frozen" else train_finetuned
    kwargs = dict(epochs=epochs, lr=1e-3, batch_size=8, seed=1, progress=False)
    cached, h_cached = train(lite0, A[:16], y[:16], A[16:], y[16:], **kwargs)
    images, h_images = train_from_images(
        lite0, AugmentedImages(store, SMALL, np.arange(16)), y[:16],
        AugmentedImages(store, SMALL, np.arange(16, 24)), y[16:], regime=regime, **kwargs)
    assert [h["epoch"] for h in h_images] == list(range(1, epochs + 1))
    for a, b in zip(h_cached, h_images):
        assert a["train_acc"] == b["train_acc"] and a["val_acc"] == b["val_acc"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4, abs=1e-5)
    for k, v in cached.head.state_dict().items():
        torch.testing.assert_close(images.head.state_dict()[k], v, rtol=1e-4, atol=1e-5)
    if regime == "finetuned":
        for k, v in cached.stage.state_dict().items():
            if v.is_floating_point():
                torch.testing.assert_close(images.stage.state_dict()[k], v, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(images.predict_proba_from_prefix(A),
                               cached.predict_proba_from_prefix(A), atol=1e-4)


def test_training_with_augmentation_is_reproducible_and_differs(lite0, tmp_path):
    from aigen.training import train_from_images

    store, _, y = _store(tmp_path)

    def fit(augment):
        return train_from_images(lite0,
                                 AugmentedImages(store, SMALL, np.arange(16), augment, seed=2),
                                 y[:16], AugmentedImages(store, SMALL, np.arange(16, 24)), y[16:],
                                 regime="frozen", epochs=2, lr=1e-3, batch_size=8, seed=2, progress=False)

    (a, ha), (b, hb), (c, _) = fit("blurjpeg"), fit("blurjpeg"), fit("none")
    assert ha == hb
    assert torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, c.head.weight)


# ----------------------------------------------------------------------------------------------
# Report: raw vs harmonised


def _record(mean, ci, auc=0.9, regime="frozen"):
    return {"regime": regime, "test_accuracy": {"mean": mean, "std": 0.01, "per_seed": [mean] * 3,
                                                "ci95": ci},
            "test_roc_auc": {"mean": auc, "std": 0.01, "per_seed": [auc] * 3, "ci95": [0.8, 0.95]}}


def _results(harmonised_frozen, harmonised_tuned):
    models = lambda frozen, tuned: {"m_frozen": frozen, "m_finetuned": tuned}  # noqa: E731
    protocols = {
        "none/none": {"harmonize": "none", "augment": "none",
                      "models": models(_record(0.90, [0.85, 0.95]), _record(0.70, [0.65, 0.75]))},
        "jpeg:96/none": {"harmonize": "jpeg:96", "augment": "none",
                         "models": models(harmonised_frozen, harmonised_tuned)},
    }
    return {"protocols": protocols, "models": protocols["none/none"]["models"],
            "shortcut_audit": {"majority_baseline": 0.6}, "ci_method": "t", "seeds": [0, 1, 2]}


def test_shortcut_flags_name_a_collapse_under_harmonisation():
    from aigen.study.report import protocols_section, shortcut_flags

    # m_frozen falls by 0.15; m_finetuned by only 0.06, but its CI now reaches the majority rate.
    results = _results(_record(0.75, [0.70, 0.80]), _record(0.64, [0.58, 0.70]))
    flags = shortcut_flags(results)
    assert len(flags) == 2
    assert "`m_frozen`" in flags[0] and "falls from 0.900 to 0.750" in flags[0]
    assert "`m_finetuned`" in flags[1] and "no longer above the majority-class rate 0.600" in flags[1]
    assert "jpeg:96" in flags[0] and "shortcut" in flags[0]
    section = "\n".join(protocols_section(results))
    assert "| `m_frozen` | none | 0.900 ± 0.010 [0.850, 0.950] | 0.900 ± 0.010 [0.800, 0.950] | " \
           "0.750 ± 0.010 [0.700, 0.800] |" in section
    assert flags[0] in section
    # Small changes that stay above the majority rate: nothing flagged, and the report says so.
    calm = _results(_record(0.88, [0.83, 0.93]), _record(0.69, [0.64, 0.74]))
    assert shortcut_flags(calm) == []
    assert "none of them looks like it relied" in "\n".join(protocols_section(calm))
    # One protocol: no section at all.
    assert protocols_section({"protocols": {"none/none": calm["protocols"]["none/none"]}}) == []


def test_protocols_section_says_where_crops_are_harmonised():
    from aigen.study.report import protocols_section

    resized = "\n".join(protocols_section(_results(_record(0.75, [0.70, 0.80]),
                                                   _record(0.64, [0.58, 0.70]))))
    assert "input size and decoded again" in resized and "S×S" not in resized
    results = _results(_record(0.75, [0.70, 0.80]), _record(0.64, [0.58, 0.70]))
    results["protocols"]["crop/none/none"] = {
        "harmonize": "none", "augment": "none", "input": "crop",
        "models": {"m_frozen": _record(0.95, [0.9, 0.99])}}
    section = "\n".join(protocols_section(results))
    assert "input size (crops: of the S×S square, before any window is cut) and decoded" in section
    assert "may have gained from the files' compression" in section


def test_protocol_view_gives_each_protocols_input_policy_and_refuses_unknown_ones():
    from aigen.errors import UserError
    from aigen.study.protocols import protocol_view

    model = {"regime": "frozen", "checkpoints": {"0": "m.pt"}}
    results = {"models": {"m": model}, "protocols": {
        "none/none": {"harmonize": "none", "augment": "none", "models": {"m": model}},
        "crop/jpeg:96/none": {"harmonize": "jpeg:96", "augment": "none", "input": "crop",
                              "models": {"m@crop-jpeg96-none": model}}}}
    assert protocol_view(results)[:3] == ("none/none", "none", "resize")
    key, harmonize, policy, view = protocol_view(results, "crop/jpeg:96/none")
    assert (key, harmonize, policy, list(view["models"])) == ("crop/jpeg:96/none", "jpeg:96",
                                                             "crop", ["m@crop-jpeg96-none"])
    with pytest.raises(UserError, match="no protocol 'crop/none/none'"):
        protocol_view(results, "crop/none/none")
    results["protocols"]["crop/jpeg:96/none"]["input"] = "crop:512"  # not a side aigen takes
    with pytest.raises(UserError, match="crop/jpeg:96/none.*multiple of 16"):
        protocol_view(results, "crop/jpeg:96/none")
