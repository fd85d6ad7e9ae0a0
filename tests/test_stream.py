"""Streaming: Datasets over the store and over files, feature arrays within a memory budget,
features reused across runs, and a study whose prefix activations live in a file."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image

from aigen.data.dataset import dataset_arrays, dataset_inputs, load_dataset
from aigen.data.preprocess import BACKBONE, SCRATCH
from aigen.data.stream import FeatureRows, ImageFiles, StoreImages, batches, prefix_features


def build(root, n=5):
    rng = np.random.default_rng(0)
    for cls in ("fake", "real"):
        for i in range(n):
            p = root / cls / f"{cls}{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            h, w = int(rng.integers(30, 70)), int(rng.integers(30, 70))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
    return root


@pytest.fixture
def dataset(tmp_path):
    return load_dataset(build(tmp_path / "data"), workers=1, progress=False)


@pytest.fixture(scope="module")
def backbone():
    from aigen.models.backbones import load_backbone

    return load_backbone("efficientnet_lite0", init="random")


def test_store_batches_equal_the_whole_array(dataset):
    for spec in (SCRATCH, BACKBONE):
        rows = np.array([7, 1, 3, 3, 0])
        ds = StoreImages(dataset_inputs(dataset, spec), spec, rows)
        got = np.concatenate([b.numpy() for b in batches(ds, 2)])
        assert np.array_equal(got, dataset_arrays(dataset, spec, rows))
        assert np.array_equal(ds[2].numpy(), got[2])


def test_image_files_decode_like_the_store_and_apply_the_transform(dataset):
    items = [(im.path, im.sha256) for im in dataset.images]
    same = ImageFiles(items, BACKBONE, max_pixels=dataset.max_pixels)
    assert np.array_equal(same[[0, 4]].numpy(), dataset_arrays(dataset, BACKBONE, [0, 4]))
    flipped = ImageFiles(items, BACKBONE, transform=lambda im: im.transpose(Image.FLIP_LEFT_RIGHT))
    assert np.array_equal(flipped[0].numpy(), dataset_arrays(dataset, BACKBONE, [0])[0][..., ::-1])


def test_image_files_refuse_a_changed_file(dataset):
    from aigen.errors import UserError

    im = dataset.images[0]
    Image.new("RGB", (9, 9)).save(im.path)
    with pytest.raises(UserError, match="content changed"):
        ImageFiles([(im.path, im.sha256)], SCRATCH)[0]


def test_feature_rows_in_ram_and_in_a_file_agree(tmp_path):
    import torch

    from aigen.data.store import RowFile

    a = np.random.default_rng(1).standard_normal((6, 2, 3, 3)).astype(np.float32)
    (tmp_path / "a.f32").write_bytes(a.tobytes())
    ram, disk = FeatureRows(a), FeatureRows(RowFile(tmp_path / "a.f32", (2, 3, 3), np.float32))
    assert disk.shape == ram.shape == (6, 2, 3, 3) and disk.ndim == 4 and not disk.in_memory
    for view in (ram.subset([5, 0, 2]), disk.subset([5, 0, 2])):
        assert view.shape == (3, 2, 3, 3)
        assert np.array_equal(view[torch.tensor([2, 0])].numpy(), a[[2, 5]])
        assert np.array_equal(view[1:3].numpy(), a[[0, 2]])


def test_spilled_features_are_identical_and_reused(dataset, backbone, monkeypatch):
    rows = np.arange(len(dataset.images))[::-1].copy()
    store = dataset_inputs(dataset, BACKBONE)
    before = backbone.prefix_activations(dataset_arrays(dataset, BACKBONE, rows), "cpu")
    calls = []
    real = backbone.prefix_activations
    monkeypatch.setattr(backbone, "prefix_activations",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    kw = dict(manifest=dataset.manifest_sha256(), device="cpu")
    ram = prefix_features(backbone, store, BACKBONE, rows, **kw)
    assert ram.in_memory and calls  # computed, kept in RAM (within the default budget)
    calls.clear()
    spilled = prefix_features(backbone, store, BACKBONE, rows, budget=0, **kw)
    assert not spilled.in_memory and calls == []  # reused from the cache, read from its file
    whole = slice(0, len(rows))
    assert torch_equal(ram[whole], before) and torch_equal(spilled[whole], before)
    other = prefix_features(backbone, store, BACKBONE, rows[:3], budget=0, **kw)
    assert calls and torch_equal(other[0:3], before[:3])  # other rows: another key, computed


def torch_equal(a, b) -> bool:
    return bool((a.contiguous() == b.contiguous()).all()) and a.shape == b.shape


def test_training_from_a_file_matches_training_from_ram(dataset, backbone):
    from aigen.training import train_finetuned, train_frozen

    rows = np.arange(len(dataset.images))
    store = dataset_inputs(dataset, BACKBONE)
    kw = dict(manifest=dataset.manifest_sha256(), device="cpu")
    ram = prefix_features(backbone, store, BACKBONE, rows, **kw)
    disk = prefix_features(backbone, store, BACKBONE, rows, budget=0, **kw)
    y = dataset.labels
    tr, va = np.arange(0, 10, 2), np.arange(1, 10, 2)
    for train in (train_frozen, train_finetuned):
        results = []
        for A in (ram, disk):
            clf, history = train(backbone, A.subset(tr), y[tr], A.subset(va), y[va], epochs=2,
                                 batch_size=2, seed=3, progress=False)
            results.append((history, clf.predict_proba_from_prefix(A)))
        assert results[0][0] == results[1][0]
        assert np.array_equal(results[0][1], results[1][1])


def test_byte_size():
    from aigen.argtypes import byte_size

    assert byte_size("512M") == 512 << 20 and byte_size("1.5G") == 3 << 29
    assert byte_size("0") == 0 and byte_size("2GiB") == 2 << 30 and byte_size("10kb") == 10240
    with pytest.raises(argparse.ArgumentTypeError):
        byte_size("lots")


def test_study_with_spilled_features_gives_the_same_results(quick_study, tmp_path):
    """The quick study again, prefix activations read from their file instead of RAM (and reused
    from the first run's cache): every prediction is identical."""
    import contextlib
    import io
    import os

    from aigen import cli

    out = tmp_path / "spilled"
    argv = [a if a != str(quick_study["out"]) else str(out) for a in quick_study["argv"]]
    env = {"AIGEN_CACHE_DIR": str(quick_study["cache"]), "AIGEN_OFFLINE": "1",
           "TORCH_HOME": str(quick_study["cache"].parent / "torch-home")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert cli.main(argv + ["--memory-budget", "0"]) == 0
    features = list((quick_study["cache"] / "features").rglob("*.f32"))
    assert len(features) == 1 and os.path.getsize(features[0]) > 0  # one array, reused
    first = (quick_study["out"] / "predictions.csv").read_text()
    assert (out / "predictions.csv").read_text() == first
