"""Preprocessing specs, the packed store and the hash index (hits, invalidation, corruption),
dataset arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aigen.data import preprocess as pp
from aigen.data import dataset as dataset_module
from aigen.data.dataset import dataset_arrays, dataset_inputs, load_dataset
from aigen.data.loading import open_image
from aigen.data.preprocess import (BACKBONE, DECODE_MIN_SIDE, SCRATCH, IMAGENET_MEAN, IMAGENET_STD,
                                   load_model_input, preprocess, to_model_input)
from aigen.data.store import RowFile, open_store, store_path


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
    """Counts the decodes done for the store (workers=1 runs in this process)."""
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
    cached = dataset_inputs(ds, BACKBONE).read([i])[0]
    assert np.array_equal(cached, u8)
    assert not np.array_equal(cached, preprocess(open_image(path), BACKBONE))


@pytest.fixture
def read_calls(monkeypatch):
    """Paths the loader reads and hashes (workers=1 runs in this process)."""
    calls: list[str] = []
    real = dataset_module.read_bytes

    def counting(path):
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(dataset_module, "read_bytes", counting)
    return calls


def _store_files(cache: Path) -> list[str]:
    return sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*.u8"))


def test_second_load_reads_nothing(tmp_path, decode_calls, read_calls, aigen_cache_dir):
    root = build(tmp_path / "data")
    ds = load_dataset(root, workers=1, progress=False)
    assert len(decode_calls) == 6 and len(read_calls) == 6  # one decode per file for both specs
    manifest = ds.manifest_sha256()
    assert _store_files(aigen_cache_dir) == sorted(
        f"preprocess/v{pp.CACHE_VERSION}/store/{spec.key}/{manifest}.u8" for spec in (SCRATCH, BACKBONE))
    assert not [p for p in aigen_cache_dir.rglob("*") if p.name.endswith(".part")]
    assert not any((aigen_cache_dir / f"preprocess/v{pp.CACHE_VERSION}/scratch").iterdir())
    decode_calls.clear()
    read_calls.clear()
    again = load_dataset(root, workers=1, progress=False)
    assert decode_calls == [] and read_calls == [] and again.images == ds.images
    dataset_arrays(again, SCRATCH)
    dataset_arrays(again, BACKBONE)
    assert decode_calls == [] and read_calls == []


def test_store_round_trip_and_reopen(tmp_path):
    root = build(tmp_path / "data")
    ds = load_dataset(root, workers=1, progress=False)
    for spec in (SCRATCH, BACKBONE):
        store = dataset_inputs(ds, spec)
        assert isinstance(store, RowFile) and len(store) == len(ds.images)
        expected = np.stack([preprocess(open_image(im.path, min_side=DECODE_MIN_SIDE), spec)
                             for im in ds.images])
        assert np.array_equal(store.read(range(len(ds.images))), expected)
        assert np.array_equal(store.read([4, 0, 4, 2]), expected[[4, 0, 4, 2]])  # any order, repeats
        with pytest.raises(IndexError):
            store.read([len(ds.images)])
        import pickle

        again = pickle.loads(pickle.dumps(store))  # what a DataLoader worker gets: a path
        assert np.array_equal(again.read([1, 2]), expected[[1, 2]])


def test_reopen_is_one_stat_whatever_the_size(tmp_path, monkeypatch):
    """Opening a store reads none of its rows: the cost does not grow with the number of images."""
    root = build(tmp_path / "data")
    ds = load_dataset(root, workers=1, progress=False)
    base = pp.cache_root()
    path = store_path(base, BACKBONE, ds.manifest_sha256())
    opened = []
    real_open = __import__("os").open
    monkeypatch.setattr("os.open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    store = open_store(base, BACKBONE, ds.manifest_sha256(), len(ds.images))
    assert store is not None and opened == []  # nothing opened or read until rows are asked for
    store.read([0])
    assert opened == [path]


def test_only_missing_specs_are_filled(tmp_path, decode_calls, read_calls, aigen_cache_dir):
    root = build(tmp_path / "data")
    ds = load_dataset(root, workers=1, progress=False, specs=(SCRATCH,))
    assert [Path(p).name for p in _store_files(aigen_cache_dir)] == [f"{ds.manifest_sha256()}.u8"]
    decode_calls.clear()
    read_calls.clear()
    load_dataset(root, workers=1, progress=False)
    assert len(decode_calls) == 6 and read_calls == []  # hashes known; decoded for the new spec only
    assert len(_store_files(aigen_cache_dir)) == 2


def test_changed_file_is_read_again(tmp_path, decode_calls, read_calls):
    root = build(tmp_path / "data")
    ds = load_dataset(root, workers=1, progress=False)
    noise_image(555, (41, 30)).save(root / "fake" / "fake0.png", "PNG")  # new size and mtime
    read_calls.clear()
    again = load_dataset(root, workers=1, progress=False)
    assert read_calls == ["fake0.png"]  # only the changed file is hashed again
    assert again.images[0].sha256 != ds.images[0].sha256
    assert np.array_equal(dataset_arrays(again, BACKBONE, [0])[0],
                          load_model_input(root / "fake" / "fake0.png", BACKBONE)[0])


def test_same_size_and_mtime_change_needs_rehash(tmp_path, read_calls):
    """The index trusts (size, mtime); --rehash catches a content change that kept both."""
    import os

    root = build(tmp_path / "data")
    ds = load_dataset(root, workers=1, progress=False)
    path = root / "real" / "real1.png"
    st = path.stat()
    other = (root / "real" / "real2.png").read_bytes()
    data = bytearray(path.read_bytes())
    assert len(other) == len(data)  # same-size PNGs: swap the content, keep size and mtime
    path.write_bytes(other)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    stale = load_dataset(root, workers=1, progress=False)
    assert stale.images == ds.images  # trusted: not read
    read_calls.clear()
    fresh = load_dataset(root, workers=1, progress=False, rehash=True)
    assert len(read_calls) == 6
    i = [im.rel_path for im in fresh.images].index("real/real1.png")
    assert fresh.images[i].sha256 != ds.images[i].sha256
    assert np.array_equal(dataset_arrays(fresh, BACKBONE, [i])[0], load_model_input(path, BACKBONE)[0])
    read_calls.clear()
    assert load_dataset(root, workers=1, progress=False).images == fresh.images  # index updated
    assert read_calls == []


def test_damaged_store_is_rebuilt(tmp_path, decode_calls):
    root = build(tmp_path / "data")
    ds = load_dataset(root, workers=1, progress=False)
    good = dataset_arrays(ds, BACKBONE)
    path = store_path(pp.cache_root(), BACKBONE, ds.manifest_sha256())
    path.write_bytes(path.read_bytes()[:1000])  # truncated: seen from its size
    decode_calls.clear()
    load_dataset(root, workers=1, progress=False)
    assert len(decode_calls) == 6 and np.array_equal(dataset_arrays(ds, BACKBONE), good)
    path.write_bytes(b"\x00" * path.stat().st_size)  # garbage of the right size: --rehash rebuilds
    load_dataset(root, workers=1, progress=False, rehash=True)
    assert np.array_equal(dataset_arrays(ds, BACKBONE), good)


def test_store_entry_that_is_a_folder_is_a_user_error(tmp_path):
    from aigen.errors import UserError

    root = build(tmp_path / "data")
    ds = load_dataset(root, workers=1, progress=False, specs=(SCRATCH,))
    path = store_path(pp.cache_root(), BACKBONE, ds.manifest_sha256())
    path.mkdir(parents=True)
    with pytest.raises(UserError, match="not a file; remove it"):
        load_dataset(root, workers=1, progress=False)


def test_file_changed_before_packing_is_a_user_error(tmp_path):
    from aigen.errors import UserError

    root = build(tmp_path / "data")
    ds = load_dataset(root, workers=1, progress=False, specs=(SCRATCH,))
    noise_image(999).save(root / "fake" / "fake2.png", "PNG")
    with pytest.raises(UserError, match="fake2.png: its content changed.*reload the dataset"):
        dataset_arrays(ds, BACKBONE)


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
    assert len(decode_calls) == 7 and not list(aigen_cache_dir.rglob("*"))
    load_dataset(root, workers=1, progress=False)  # fills the index and the stores
    decode_calls.clear()
    again = load_dataset(root, workers=1, progress=False, specs=())
    assert again.images == ds.images and again.skipped == ds.skipped
    assert decode_calls == []  # the index (read only) knows every file, the broken one too


def test_a_cache_inside_the_data_folder_is_refused(tmp_path, monkeypatch):
    """E.g. --data $HOME with the cache in ~/.cache: aigen would write into the data folder."""
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
