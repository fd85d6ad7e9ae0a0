"""The embedded synthetic proxy dataset (`aigen synth`, aigen.data.synth)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aigen import cli
from aigen.data import synth
from aigen.data.dataset import load_dataset
from aigen.data.discover import LABEL_AI, LABEL_REAL
from aigen.errors import UserError

N = 40  # images in the shared proxy below: 22 AI, 18 real
EXTENSION_OF = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}


def hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by POSIX path relative to root."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and p.name not in (synth.MANIFEST_NAME, synth.README_NAME))


def mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def leftovers(parent: Path) -> list[str]:
    """Temporary folders generate() may leave beside its output."""
    return sorted(p.name for p in parent.iterdir() if "synth-part" in p.name or ".old-" in p.name)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory) -> Path:
    """A 40-image proxy (seed 0, default difficulty), generated in this process."""
    out = tmp_path_factory.mktemp("synth") / "proxy"
    return synth.generate(out, n_images=N, seed=0, workers=1, progress=False)


@pytest.fixture(scope="module")
def proxy_dataset(proxy, tmp_path_factory):
    """The proxy as load_dataset sees it (header information only: specs=() writes nothing)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIGEN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return load_dataset(proxy, workers=1, progress=False, specs=())


# ---- determinism -------------------------------------------------------------------------------

def test_same_parameters_give_byte_identical_files_whatever_the_workers(proxy, tmp_path):
    again = synth.generate(tmp_path / "again", n_images=N, seed=0, workers=2, progress=False)
    first, second = hashes(proxy), hashes(again)
    assert sorted(first) == sorted(second)
    assert len(first) == N + 2  # the images, manifest.json and SYNTHETIC.md
    differing = [p for p in first if first[p] != second[p]]
    # manifest.json records the generation time; everything else is byte-identical.
    assert differing in ([], [synth.MANIFEST_NAME])
    m1 = json.loads((proxy / synth.MANIFEST_NAME).read_text())
    m2 = json.loads((again / synth.MANIFEST_NAME).read_text())
    m1.pop("generation_seconds"), m2.pop("generation_seconds")
    assert m1 == m2


def test_render_image_is_a_pure_function():
    a = synth.render_image(7, 3, True, 0.3)
    b = synth.render_image(7, 3, True, 0.3)
    assert a == b
    assert synth.render_image(7, 3, False, 0.3)[1] != a[1]  # the class is part of the seed
    assert synth.render_image(7, 4, True, 0.3)[1] != a[1]  # and so is the index


def test_different_seed_gives_different_images(tmp_path):
    one = synth.generate(tmp_path / "s0", n_images=8, seed=0, workers=1, progress=False)
    two = synth.generate(tmp_path / "s1", n_images=8, seed=1, workers=1, progress=False)
    h1 = {hashes(one)[p.relative_to(one).as_posix()] for p in image_files(one)}
    h2 = {hashes(two)[p.relative_to(two).as_posix()] for p in image_files(two)}
    assert len(h1) == len(h2) == 8
    assert not h1 & h2  # not a single image in common
    assert json.loads((two / synth.MANIFEST_NAME).read_text())["seed"] == 1


# ---- layout, labels, balance -------------------------------------------------------------------

def test_kaggle_layout_and_labels(proxy, proxy_dataset):
    assert sorted(p.name for p in proxy.iterdir()) == sorted(
        ["AiArtData", "RealArt", synth.MANIFEST_NAME, synth.README_NAME])
    assert [p.name for p in (proxy / "AiArtData").iterdir()] == ["AiArtData"]
    assert [p.name for p in (proxy / "RealArt").iterdir()] == ["RealArt"]
    for p in image_files(proxy):
        assert p.parent.relative_to(proxy).as_posix() in ("AiArtData/AiArtData", "RealArt/RealArt")

    ds = proxy_dataset
    assert ds.skipped == [] and len(ds.images) == N == ds.n_files
    assert ds.class_folders == {"AiArtData": LABEL_AI, "RealArt": LABEL_REAL}
    for im in ds.images:
        in_ai = im.rel_path.startswith("AiArtData/AiArtData/")
        assert im.label == (LABEL_AI if in_ai else LABEL_REAL)
        assert Path(im.rel_path).name.startswith("ai_" if in_ai else "photo_")
        assert Path(im.rel_path).suffix == EXTENSION_OF[im.format]  # names tell the truth here


def test_class_balance_is_as_requested(proxy, proxy_dataset):
    n_ai = round(synth.AI_SHARE * N)
    assert n_ai == 22
    assert int((proxy_dataset.labels == LABEL_AI).sum()) == n_ai
    assert int((proxy_dataset.labels == LABEL_REAL).sum()) == N - n_ai
    manifest = json.loads((proxy / synth.MANIFEST_NAME).read_text())
    assert manifest["classes"] == {"AiArtData": n_ai, "RealArt": N - n_ai}
    assert (manifest["generator"], manifest["generator_version"]) == (synth.GENERATOR_NAME,
                                                                      synth.GENERATOR_VERSION)
    assert (manifest["n_images"], manifest["seed"], manifest["difficulty"]) == (N, 0,
                                                                                synth.DEFAULT_DIFFICULTY)
    assert f"{n_ai} in AiArtData/AiArtData, {N - n_ai} in RealArt/RealArt" in \
        (proxy / synth.README_NAME).read_text()
    # the split rule itself, including the smallest allowed dataset
    for n in (4, 5, 11, 1000):
        ai = sum(synth._class_of(i, n) for i in range(n))
        assert ai == round(synth.AI_SHARE * n) and ai >= 2 and n - ai >= 2


def test_metadata_skew(proxy_dataset):
    ai = [im for im in proxy_dataset.images if im.label == LABEL_AI]
    real = [im for im in proxy_dataset.images if im.label == LABEL_REAL]

    def share(images, fmt):
        return sum(im.format == fmt for im in images) / len(images)

    formats = {im.format for im in proxy_dataset.images}
    assert formats == {"JPEG", "PNG", "WEBP"}  # by content
    assert {"JPEG", "PNG"} <= {im.format for im in ai}
    assert share(ai, "PNG") > share(real, "PNG") + 0.15
    assert share(real, "JPEG") > share(ai, "JPEG") + 0.15
    pixels = {k: np.mean([im.width * im.height for im in v]) for k, v in (("ai", ai), ("real", real))}
    assert pixels["ai"] < pixels["real"]
    long_side = {k: np.mean([max(im.width, im.height) for im in v]) for k, v in (("ai", ai), ("real", real))}
    assert long_side["ai"] < long_side["real"]
    square = {k: np.mean([im.width == im.height for im in v]) for k, v in (("ai", ai), ("real", real))}
    assert square["ai"] > square["real"]
    # every side a multiple of 8 (the quarter-resolution rendering needs it); sizes in range
    for im in proxy_dataset.images:
        assert im.width % 8 == 0 and im.height % 8 == 0
        assert 256 <= max(im.width, im.height) <= 576
    # colour modes as documented: RGBA only in AI PNGs, grey only in real JPEGs
    assert all(im.format == "PNG" and im.label == LABEL_AI
               for im in proxy_dataset.images if im.mode == "RGBA")
    assert all(im.format == "JPEG" and im.label == LABEL_REAL
               for im in proxy_dataset.images if im.mode == "L")


def test_file_spec_skew_in_expectation():
    """Over many draws (no rendering), the documented skew holds clearly."""
    rng = np.random.default_rng(0)
    specs = {c: [synth._file_spec(rng, c) for _ in range(3000)] for c in (True, False)}
    png = {c: np.mean([s.format == "PNG" for s in v]) for c, v in specs.items()}
    pixels = {c: np.mean([s.width * s.height for s in v]) for c, v in specs.items()}
    assert png[True] == pytest.approx(0.40, abs=0.03) and png[False] == pytest.approx(0.12, abs=0.03)
    assert pixels[True] < 0.9 * pixels[False]


# ---- difficulty --------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [-0.01, 1.01, 2.0, float("nan")])
def test_difficulty_out_of_range_is_a_clear_error(tmp_path, bad):
    with pytest.raises(UserError, match=r"difficulty must be in \[0, 1\]"):
        synth.generate(tmp_path / "out", n_images=8, difficulty=bad, workers=1, progress=False)
    with pytest.raises(UserError, match=r"difficulty must be in \[0, 1\]"):
        synth.default_dataset(n_images=8, difficulty=bad, progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_too_few_images_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="at least 4 images"):
        synth.generate(tmp_path / "out", n_images=3, workers=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_difficulty_changes_the_content_not_the_metadata():
    for index, is_ai in ((0, True), (1, False)):
        spec0, data0 = synth.render_image(0, index, is_ai, 0.0)
        spec1, data1 = synth.render_image(0, index, is_ai, 1.0)
        assert spec0 == spec1  # same size, format, mode, quality
        assert data0 != data1
        a0 = np.asarray(Image.open(io.BytesIO(data0)).convert("RGB"), dtype=np.float64)
        a1 = np.asarray(Image.open(io.BytesIO(data1)).convert("RGB"), dtype=np.float64)
        assert a0.shape == a1.shape == (spec0.height, spec0.width, 3)
        assert np.abs(a0 - a1).mean() > 2.0  # a visibly different picture, not a rounding change


def test_difficulty_moves_each_class_towards_the_other():
    assert synth.look_for(True, 0.0) == synth.GENERATOR
    assert synth.look_for(False, 0.0) == synth.CAMERA
    assert synth.look_for(True, 1.0) == synth.look_for(False, 1.0)  # one process for both
    half = synth.look_for(True, 0.5)
    for f in dataclasses.fields(synth.Look):
        g, c = getattr(synth.GENERATOR, f.name), getattr(synth.CAMERA, f.name)
        assert getattr(half, f.name) == pytest.approx(0.75 * g + 0.25 * c)
    # the distance between the classes shrinks monotonically with the difficulty
    def gap(d):
        a, b = synth.look_for(True, d), synth.look_for(False, d)
        return sum(abs(getattr(a, f.name) - getattr(b, f.name)) for f in dataclasses.fields(synth.Look))
    gaps = [gap(d) for d in (0.0, 0.3, 0.7, 1.0)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] == 0 and gaps[0] > 0


# ---- existing output folders -------------------------------------------------------------------

def test_refuses_a_non_empty_folder_that_is_not_a_synth_output(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty and is not an `aigen synth` output"):
        synth.generate(out, n_images=4, workers=1, progress=False)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"
    assert leftovers(tmp_path) == []

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        synth.generate(a_file, n_images=4, workers=1, progress=False)
    assert a_file.read_text() == "x"


def test_fills_an_empty_folder_and_replaces_a_previous_output(tmp_path):
    out = tmp_path / "proxy"
    out.mkdir()
    assert synth.generate(out, n_images=6, seed=0, workers=1, progress=False) == out.absolute()
    assert len(image_files(out)) == 6
    stray = out / "AiArtData" / "AiArtData" / "stray.txt"
    stray.write_text("left over")

    synth.generate(out, n_images=4, seed=1, workers=1, progress=False)
    assert not stray.exists()  # the old output is replaced as a whole, not merged
    assert len(image_files(out)) == 4
    manifest = json.loads((out / synth.MANIFEST_NAME).read_text())
    assert (manifest["n_images"], manifest["seed"]) == (4, 1)
    assert leftovers(tmp_path) == []  # no temporary or old folder left beside it


# ---- the cached default dataset ----------------------------------------------------------------

def test_default_dataset_is_generated_once_and_cached(aigen_cache_dir, monkeypatch):
    path = synth.default_dataset(n_images=6, seed=0, difficulty=0.3, progress=False)
    assert path == aigen_cache_dir / "synth" / f"v{synth.GENERATOR_VERSION}-n6-s0-d0.3"
    assert len(image_files(path)) == 6
    before = mtimes(path)

    def no_regeneration(*args, **kwargs):
        raise AssertionError("default_dataset regenerated a cached dataset")

    with monkeypatch.context() as mp:
        mp.setattr(synth, "generate", no_regeneration)
        assert synth.default_dataset(n_images=6, seed=0, difficulty=0.3, progress=False) == path
    assert mtimes(path) == before

    # other parameters: another folder
    other = synth.default_dataset(n_images=6, seed=1, difficulty=0.3, progress=False)
    assert other != path and other.parent == path.parent
    assert mtimes(path) == before

    # a folder without a valid manifest is not trusted: it is generated again, identically
    images_before = {k: v for k, v in hashes(path).items() if k != synth.MANIFEST_NAME}
    (path / synth.MANIFEST_NAME).write_text("{not json")
    assert synth.default_dataset(n_images=6, seed=0, difficulty=0.3, progress=False) == path
    assert json.loads((path / synth.MANIFEST_NAME).read_text())["generator"] == synth.GENERATOR_NAME
    after = mtimes(path)
    assert all(after[k] != before[k] for k in images_before)  # rewritten...
    assert {k: v for k, v in hashes(path).items() if k != synth.MANIFEST_NAME} == images_before


# ---- CLI ---------------------------------------------------------------------------------------

def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "proxy"
    code = cli.main(["synth", str(out), "--n", "8", "--seed", "3", "--difficulty", "0.5",
                     "--workers", "1", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0
    assert f"wrote 8 images (4 AI, 4 real) to {out}" in captured.out
    assert captured.err == ""  # --quiet: no progress bar
    manifest = json.loads((out / synth.MANIFEST_NAME).read_text())
    assert (manifest["n_images"], manifest["seed"], manifest["difficulty"]) == (8, 3, 0.5)
    assert len(list((out / "AiArtData" / "AiArtData").iterdir())) == 4
    assert len(list((out / "RealArt" / "RealArt").iterdir())) == 4
    # the same images as the library call with the same parameters
    lib = synth.generate(tmp_path / "lib", n_images=8, seed=3, difficulty=0.5, workers=1, progress=False)
    assert [hashes(out)[p.relative_to(out).as_posix()] for p in image_files(out)] == \
        [hashes(lib)[p.relative_to(lib).as_posix()] for p in image_files(lib)]


def test_cli_synth_with_worker_processes_ends_quietly(tmp_path):
    """The pool's workers end on the SIGTERM that closes the pool, without a traceback."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "aigen.cli", "synth", str(tmp_path / "proxy"),
                           "--n", "16", "--workers", "2", "--quiet"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "wrote 16 images" in done.stdout


@pytest.mark.parametrize("args, message", [
    (["--difficulty", "1.5"], "aigen synth: error: difficulty must be in [0, 1], got 1.5"),
    (["--n", "3"], "aigen synth: error: need at least 4 images (2 per class), got n_images=3"),
])
def test_cli_synth_bad_values(tmp_path, capsys, args, message):
    out = tmp_path / "proxy"
    assert cli.main(["synth", str(out), "--quiet", "--workers", "1", *args]) == 2
    err = capsys.readouterr().err
    assert err.strip() == message  # one line, no traceback
    assert not out.exists()


def test_cli_synth_refuses_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "data.txt").write_text("mine")
    assert cli.main(["synth", str(tmp_path), "--n", "4", "--quiet", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aigen synth: error: ") and "not an `aigen synth` output" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["data.txt"]


@pytest.mark.parametrize("args, fragment", [
    (["--n", "many"], "not a whole number: 'many'"),
    (["--n", "0"], "must be at least 1"),
    (["--seed", "-1"], "a seed must be in [0, 2**32)"),
    (["--workers", "0"], "must be at least 1"),
    (["--difficulty", "hard"], "invalid float value: 'hard'"),
    ([], "the following arguments are required: OUT_DIR"),
])
def test_cli_synth_unparseable_arguments(tmp_path, capsys, args, fragment):
    argv = ["synth", *([str(tmp_path / "x")] if args else []), *args]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
