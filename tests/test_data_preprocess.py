"""Preprocessing specs, the on-disk cache (hits, invalidation, corruption) and dataset arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aigen.data import preprocess as pp
from aigen.data.dataset import load_dataset
from aigen.data.loading import open_image
from aigen.data.preprocess import (BACKBONE, DECODE_MIN_SIDE, SCRATCH, IMAGENET_MEAN, IMAGENET_STD,
                                   PreprocessCache, dataset_arrays, load_model_input, preprocess,
                                   to_model_input)


def noise_image(seed: int, size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def smooth_image(seed: int, size: tuple[int, int]) -> Image.Image:
    """Noise upsampled: photo-like content, where decoding at reduced scale visibly changes pixels."""
    return noise_image(seed, (size[0] // 16, size[1] // 16)).resize(size, Image.Resampling.BICUBIC)


def build(root: Path, n: int = 3) -> Path:
    for i in range(n):
        for cls, offset in (("fake", 0), ("real", 100)):
            p = root / cls / f"{cls}{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            noise_image(offset + i).save(p, "PNG")
    return root


@pytest.fixture
def decode_calls(monkeypatch):
    """Counts the decodes done for the cache (workers=1 runs in this process)."""
    calls: list[int] = []
    real = pp.decode_bytes

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pp, "decode_bytes", counting)
    return calls


def test_scratch_spec_is_32x32_grey_in_unit_range():
    img = noise_image(0, (50, 20))
    u8 = preprocess(img, SCRATCH)
    assert u8.shape == (32, 32) and u8.dtype == np.uint8
    expected = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BILINEAR))
    assert np.array_equal(u8, expected)  # ITU-R 601 luma, then bilinear, aspect not preserved
    x = to_model_input(u8, SCRATCH)
    assert x.shape == (1, 1, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], u8 / 255.0, rtol=0, atol=1e-7)
    assert to_model_input(np.array([0, 255] * 512, np.uint8).reshape(32, 32), SCRATCH).max() == 1.0


def test_backbone_spec_is_224_rgb_imagenet_normalised():
    img = noise_image(1, (300, 100))
    u8 = preprocess(img, BACKBONE)
    assert u8.shape == (224, 224, 3)
    assert np.array_equal(u8, np.asarray(img.resize((224, 224), Image.Resampling.BILINEAR)))
    x = to_model_input(np.stack([u8, u8]), BACKBONE)
    assert x.shape == (2, 3, 224, 224) and x.dtype == np.float32
    for c in range(3):
        expected = (u8[..., c] / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        np.testing.assert_allclose(x[1, c], expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        to_model_input(np.zeros((32, 32), np.uint8), BACKBONE)


def test_preprocess_accepts_any_mode():
    grey = Image.new("L", (10, 10), 90)
    assert np.all(preprocess(grey, BACKBONE) == 90)
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert np.all(preprocess(rgba, SCRATCH) == 255)  # transparent -> white, as in open_image


def test_dataset_and_single_image_paths_agree(tmp_path):
    root = build(tmp_path / "data")
    big = root / "real" / "big.jpg"
    smooth_image(7, (1000, 900)).save(big, "JPEG", quality=90)
    ds = load_dataset(root, workers=1, progress=False)
    picks = [i for i, im in enumerate(ds.images) if im.rel_path in ("fake/fake1.png", "real/big.jpg", "real/real2.png")]
    assert len(picks) == 3
    for spec in (SCRATCH, BACKBONE):
        arrays = dataset_arrays(ds, spec, picks)
        for row, i in enumerate(picks):
            path = ds.images[i].path
            single = to_model_input(preprocess(open_image(path, min_side=DECODE_MIN_SIDE), spec), spec)
            assert np.array_equal(arrays[row], single[0])
            assert np.array_equal(load_model_input(path, spec), single)


def test_big_jpeg_decoded_at_reduced_scale(tmp_path):
    path = tmp_path / "big.jpg"
    smooth_image(3, (2000, 1600)).save(path, "JPEG", quality=90)
    drafted = open_image(path, min_side=224)
    assert drafted.size == (500, 400)  # 1/4 scale: both sides stay >= 224
    assert open_image(path).size == (2000, 1600)
    assert open_image(path, min_side=700).size == (1000, 800)
    u8 = preprocess(drafted, BACKBONE)
    assert u8.shape == (224, 224, 3)
    # the cached dataset entry comes from the reduced decode, not the full one
    root = build(tmp_path / "data")
    (root / "real" / "big.jpg").write_bytes(path.read_bytes())
    ds = load_dataset(root, workers=1, progress=False)
    i = [im.rel_path for im in ds.images].index("real/big.jpg")
    assert (ds.images[i].width, ds.images[i].height) == (2000, 1600)
    cached = PreprocessCache().get(ds.images[i].sha256, BACKBONE)
    assert np.array_equal(cached, u8)
    assert not np.array_equal(cached, preprocess(open_image(path), BACKBONE))


def test_second_load_decodes_nothing(tmp_path, decode_calls, aigen_cache_dir):
    root = build(tmp_path / "data")
    ds = load_dataset(root, workers=1, progress=False)
    assert len(decode_calls) == 6
    files = sorted(p.relative_to(aigen_cache_dir).as_posix() for p in aigen_cache_dir.rglob("*.npy"))
    assert len(files) == 12 and all(f.startswith(f"preprocess/v{pp.CACHE_VERSION}/") for f in files)
    assert not [p for p in aigen_cache_dir.rglob("*") if p.name.endswith(".part")]
    decode_calls.clear()
    again = load_dataset(root, workers=1, progress=False)
    assert decode_calls == [] and again.images == ds.images
    dataset_arrays(again, SCRATCH)
    dataset_arrays(again, BACKBONE)
    assert decode_calls == []


def test_only_missing_specs_are_filled(tmp_path, decode_calls):
    root = build(tmp_path / "data")
    ds = load_dataset(root, workers=1, progress=False, specs=(SCRATCH,))
    cache = PreprocessCache()
    assert all(cache.has(im.sha256, SCRATCH) and not cache.has(im.sha256, BACKBONE) for im in ds.images)
    decode_calls.clear()
    load_dataset(root, workers=1, progress=False)
    assert len(decode_calls) == 6
    assert all(cache.has(im.sha256, BACKBONE) for im in ds.images)


def test_changed_file_is_read_again(tmp_path, decode_calls):
    root = build(tmp_path / "data")
    ds = load_dataset(root, workers=1, progress=False)
    noise_image(555).save(root / "fake" / "fake0.png", "PNG")
    decode_calls.clear()
    again = load_dataset(root, workers=1, progress=False)
    assert len(decode_calls) == 1
    assert again.images[0].sha256 != ds.images[0].sha256
    assert np.array_equal(dataset_arrays(again, BACKBONE, [0])[0],
                          load_model_input(root / "fake" / "fake0.png", BACKBONE)[0])


def test_corrupted_cache_entries_are_recomputed(tmp_path, decode_calls):
    root = build(tmp_path / "data")
    ds = load_dataset(root, workers=1, progress=False)
    good = dataset_arrays(ds, BACKBONE)
    cache = PreprocessCache()
    truncated = cache.path(ds.images[0].sha256, BACKBONE)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    same_size = cache.path(ds.images[1].sha256, BACKBONE)
    same_size.write_bytes(b"\x00" * same_size.stat().st_size)  # garbage that passes the size check
    decode_calls.clear()
    load_dataset(root, workers=1, progress=False)
    assert len(decode_calls) == 1  # the truncated entry, seen from its size
    assert np.array_equal(dataset_arrays(ds, BACKBONE), good)  # the other, when read
    assert len(decode_calls) == 2
    assert cache.get(ds.images[1].sha256, BACKBONE) is not None


def test_cache_key_covers_the_preprocessing_parameters():
    keys = {SCRATCH.key, BACKBONE.key, pp.Spec("scratch", 64, "L", (0.0,), (1.0,)).key}
    assert len(keys) == 3
    assert str(DECODE_MIN_SIDE) in SCRATCH.key


def test_unusable_cache_folder_is_a_user_error(tmp_path, monkeypatch):
    from aigen.errors import UserError

    root = build(tmp_path / "data")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("AIGEN_CACHE_DIR", str(tmp_path / "file" / "cache"))
    with pytest.raises(UserError, match="AIGEN_CACHE_DIR"):
        load_dataset(root, workers=1, progress=False)


def test_no_specs_writes_nothing_but_still_finds_broken_files(tmp_path, decode_calls, aigen_cache_dir):
    root = build(tmp_path / "data")
    whole = (root / "real" / "real0.png").read_bytes()
    (root / "real" / "cut.png").write_bytes(whole[: len(whole) // 2])
    ds = load_dataset(root, workers=1, progress=False, specs=())
    assert [s.path.name for s in ds.skipped] == ["cut.png"] and len(ds.images) == 6
    assert len(decode_calls) == 7 and not list(aigen_cache_dir.rglob("*.npy"))
    load_dataset(root, workers=1, progress=False)  # fills the cache
    decode_calls.clear()
    again = load_dataset(root, workers=1, progress=False, specs=())
    assert again.images == ds.images and again.skipped == ds.skipped
    assert len(decode_calls) == 1  # only the broken file, which never has a cache entry


def test_a_cache_inside_the_data_folder_is_refused(tmp_path, monkeypatch):
    """E.g. --data $HOME with the cache in ~/.cache: aigen would write into the data folder."""
    from aigen.data.dataset import load_dataset
    from aigen.errors import UserError

    for cls in ("ai", "real"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (8, 8), (1, 2, 3) if cls == "ai" else (4, 5, 6)).save(tmp_path / cls / "x.png")
    monkeypatch.setenv("AIGEN_CACHE_DIR", str(tmp_path / ".cache" / "aigen"))
    with pytest.raises(UserError, match="is inside the data folder.*AIGEN_CACHE_DIR"):
        load_dataset(tmp_path, workers=1, progress=False)
    assert not (tmp_path / ".cache").exists()
    assert len(load_dataset(tmp_path, workers=1, progress=False, specs=()).images) == 2  # reads only
    assert not (tmp_path / ".cache").exists()


def test_a_cache_entry_that_is_a_folder_is_named(tmp_path):
    from aigen.errors import UserError

    root = build(tmp_path / "data")
    ds = load_dataset(root, workers=1, progress=False)
    entry = PreprocessCache().path(ds.images[0].sha256, SCRATCH)
    entry.unlink()
    (entry / "x").mkdir(parents=True)
    with pytest.raises(UserError, match=f"cache entry {entry} is a folder, not a file: remove it"):
        load_dataset(root, workers=1, progress=False)


def test_a_full_cache_disk_says_so(tmp_path, monkeypatch, small_disk):
    """The cache on a full 32 KiB tmpfs: the message says the disk is full and where, and how to
    put the cache elsewhere, instead of calling the folder unwritable."""
    from aigen.errors import UserError

    root = build(tmp_path / "data", n=20)
    disk = small_disk(32)
    monkeypatch.setenv("AIGEN_CACHE_DIR", str(disk / "cache"))
    with pytest.raises(UserError) as info:
        load_dataset(root, workers=1, progress=False)
    message = str(info.value)
    assert message.startswith(f"cannot write into {disk / 'cache'}/") and "\n" not in message
    assert "no space left on its disk" in message and "AIGEN_CACHE_DIR to a folder on another" \
        in message and "writable" not in message
