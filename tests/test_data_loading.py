"""Discovery, robust decoding and load_dataset (skips, untouched data folder, CLI data options)."""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aigen.data import loading
from aigen.data.dataset import (Dataset, add_data_arguments, dataset_from_args, format_skip_summary,
                                load_dataset, read_skipped, write_skipped)
from aigen.data.discover import (LABEL_AI, LABEL_REAL, discover, find_class_folders, label_for_folder,
                                 parse_class_args)
from aigen.data.loading import ImageSkip, open_image
from aigen.errors import UserError
from helpers import SHARED, snapshot



def noise(seed: int, size=(16, 12), mode="RGB") -> Image.Image:
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def save(path: Path, img: Image.Image, fmt: str = "PNG", **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **kw)
    return path


def two_classes(root: Path, ai: str = "fake", real: str = "real", n: int = 3) -> Path:
    for i in range(n):
        save(root / ai / f"a{i}.png", noise(i))
        save(root / real / f"r{i}.png", noise(100 + i))
    return root


def rel_paths(ds: Dataset) -> list[str]:
    return [im.rel_path for im in ds.images]


# ---- discovery ---------------------------------------------------------------------------------

def test_kaggle_layout(tmp_path):
    two_classes(tmp_path, "AiArtData/AiArtData", "RealArt/RealArt")
    ds = load_dataset(tmp_path, workers=1, progress=False)
    assert ds.class_names == {LABEL_AI: "AiArtData", LABEL_REAL: "RealArt"}
    assert rel_paths(ds)[0] == "AiArtData/AiArtData/a0.png"
    assert sorted(ds.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert all(im.label == LABEL_AI for im in ds.images if im.rel_path.startswith("AiArtData/"))


@pytest.mark.parametrize("ai, real", [("fake", "real"), ("FAKE", "REAL"), ("1_fake", "0_real"),
                                      ("ai", "real"), ("AI-generated", "Photos"), ("synthetic", "Real")])
def test_general_layout_names(tmp_path, ai, real):
    two_classes(tmp_path, ai, real)
    assert find_class_folders(tmp_path) == {ai: LABEL_AI, real: LABEL_REAL}


def test_folder_name_recognition():
    assert label_for_folder("AiArtData") == LABEL_AI
    assert label_for_folder("generated") == LABEL_AI
    assert label_for_folder("RealArt") == LABEL_REAL
    assert label_for_folder("cats") is None


def test_explicit_mapping_nested_and_cli_form(tmp_path):
    two_classes(tmp_path, "set/left", "set/right")
    assert parse_class_args(["ai=set/left", "real=set/right"]) == {"set/left": 1, "set/right": 0}
    ds = load_dataset(tmp_path, class_map={"set/left": 1, "set/right": "real"}, workers=1, progress=False)
    assert {im.rel_path: im.label for im in ds.images}["set/left/a0.png"] == LABEL_AI
    assert {im.rel_path: im.label for im in ds.images}["set/right/r2.png"] == LABEL_REAL
    with pytest.raises(UserError, match="LABEL=FOLDER"):
        parse_class_args(["set/left"])
    with pytest.raises(UserError, match="unknown class label"):
        parse_class_args(["cat=set/left"])
    with pytest.raises(UserError, match="not found"):
        find_class_folders(tmp_path, {"set/left": 1, "nope": 0})
    with pytest.raises(UserError, match="no real folder"):
        find_class_folders(tmp_path, {"set/left": 1})


@pytest.mark.parametrize("folders, message", [
    (["fake", "real", "misc"], "ambiguous.*misc"),
    (["fake", "ai", "real"], "ambiguous.*several folders look AI-generated"),
    (["fake"], "only one class.*no real folder.*fake/"),
    (["cats", "dogs"], "no class folders recognised.*cats/ \\(not recognised\\)"),
])
def test_bad_roots_are_user_errors_listing_what_was_found(tmp_path, folders, message):
    for i, name in enumerate(folders):
        save(tmp_path / name / "x.png", noise(i))
    with pytest.raises(UserError, match=message):
        load_dataset(tmp_path, workers=1, progress=False)


def test_missing_empty_and_file_roots(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_dataset(tmp_path / "nope", progress=False)
    with pytest.raises(UserError, match="no subfolders"):
        load_dataset(tmp_path, progress=False)
    f = save(tmp_path / "img.png", noise(0))
    with pytest.raises(UserError, match="is a file"):
        load_dataset(f, progress=False)


def test_class_without_usable_images(tmp_path):
    save(tmp_path / "fake" / "a.png", noise(0))
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="no usable real images.*not an image"):
        load_dataset(tmp_path, workers=1, progress=False)


def test_file_names_do_not_matter(tmp_path):
    two_classes(tmp_path)
    save(tmp_path / "fake" / "lying.jpg", noise(10), "PNG")
    save(tmp_path / "fake" / "noext", noise(11), "JPEG")
    save(tmp_path / "fake" / "UPPER.JPG", noise(12), "JPEG")
    save(tmp_path / "real" / ".hidden.png", noise(13), "PNG")
    save(tmp_path / "real" / "deep" / "er" / "nested.webp", noise(14), "WEBP")
    save(tmp_path / "real" / ".git" / "objects.png", noise(15), "PNG")  # VCS folders are not data
    save(tmp_path / "real" / "__MACOSX" / "x.png", noise(16), "PNG")
    (tmp_path / "README.txt").write_text("files directly in the root are not in a class")
    ds = load_dataset(tmp_path, workers=1, progress=False)
    info = {im.rel_path: im for im in ds.images}
    assert info["fake/lying.jpg"].format == "PNG"
    assert info["fake/noext"].format == "JPEG"
    assert info["fake/UPPER.JPG"].format == "JPEG"
    assert info["real/.hidden.png"].label == LABEL_REAL
    assert info["real/deep/er/nested.webp"].format == "WEBP"
    assert not any(".git" in p or "__MACOSX" in p for p in info)
    assert len(ds.images) == 11 and ds.skipped == []
    assert (info["fake/noext"].width, info["fake/noext"].height) == (16, 12)


def test_symlink_loops_and_special_files(tmp_path):
    two_classes(tmp_path)
    os.symlink(tmp_path / "fake", tmp_path / "fake" / "loop")  # a link back up the tree
    os.symlink(tmp_path / "missing.png", tmp_path / "real" / "broken.png")
    os.mkfifo(tmp_path / "real" / "pipe")
    found = discover(tmp_path)
    assert [c.rel_path for c in found.files if c.label == LABEL_AI] == ["fake/a0.png", "fake/a1.png", "fake/a2.png"]
    reasons = {s.path.name: s.reason for s in found.skipped}
    assert reasons == {"broken.png": "broken symbolic link", "pipe": "not a regular file"}


# ---- decoding rules ----------------------------------------------------------------------------

def decoded(tmp_path: Path, img: Image.Image, fmt: str = "PNG", **kw) -> np.ndarray:
    out = open_image(save(tmp_path / f"img.{fmt.lower()}", img, fmt, **kw))
    assert out.mode == "RGB"
    return np.asarray(out).astype(int)


def test_palette_transparency_becomes_white(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.putdata([0, 1])
    a = decoded(tmp_path, img, transparency=1)
    assert a[0, 0].tolist() == [255, 0, 0] and a[0, 1].tolist() == [255, 255, 255]


def test_alpha_modes_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 0), (255, 0, 0, 255), (0, 0, 0, 128)])
    a = decoded(tmp_path, rgba)
    assert a[0, 0].tolist() == [255, 255, 255] and a[0, 1].tolist() == [255, 0, 0]
    assert np.all(np.abs(a[0, 2] - 127) <= 1)  # half-transparent black over white
    la = Image.new("LA", (2, 1))
    la.putdata([(0, 0), (0, 255)])
    assert decoded(tmp_path, la)[0].tolist() == [[255] * 3, [0] * 3]


def test_grey_and_bilevel_replicated(tmp_path):
    assert decoded(tmp_path, Image.new("L", (2, 2), 77))[0, 0].tolist() == [77, 77, 77]
    one = Image.new("1", (2, 1))
    one.putdata([0, 1])
    assert decoded(tmp_path, one)[0].tolist() == [[0] * 3, [255] * 3]


def test_cmyk_uses_pillow_conversion(tmp_path):
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putdata([(0, 0, 0, 0), (255, 0, 0, 0)])
    a = decoded(tmp_path, cmyk, "TIFF")
    assert a[0].tolist() == [[255, 255, 255], [0, 255, 255]]


def test_16bit_divided_by_257(tmp_path):
    img = Image.fromarray(np.array([[0, 128, 129, 65535]], dtype=np.uint16))
    assert img.mode == "I;16"
    assert decoded(tmp_path, img)[0, :, 0].tolist() == [0, 0, 1, 255]


def test_int32_and_float_stretched_min_to_max(tmp_path):
    i32 = Image.fromarray(np.array([[0, 100, 400]], dtype=np.int32))
    assert i32.mode == "I"
    assert decoded(tmp_path, i32, "TIFF")[0, :, 0].tolist() == [0, 64, 255]
    f32 = Image.fromarray(np.array([[-1.0, -0.5, 1.0]], dtype=np.float32))
    assert f32.mode == "F"
    assert decoded(tmp_path, f32, "TIFF")[0, :, 0].tolist() == [0, 64, 255]
    const = Image.fromarray(np.full((1, 2), 5, dtype=np.int32))
    assert decoded(tmp_path, const, "TIFF")[0, :, 0].tolist() == [5, 5]


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # stored: left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the left edge becomes the top
    a = decoded(tmp_path, img, "JPEG", exif=exif, quality=95)
    assert a.shape == (40, 20, 3)
    assert a[5, 10].tolist() == pytest.approx([255, 0, 0], abs=12)
    assert a[35, 10].tolist() == pytest.approx([0, 0, 255], abs=12)


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    a = decoded(tmp_path, frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(tmp_path / "img.gif").n_frames == 2
    assert a[4, 4].tolist() == [255, 0, 0]


def test_pixel_limit_checked_from_header(tmp_path):
    path = save(tmp_path / "big.png", noise(0, size=(100, 100)))
    with pytest.raises(ImageSkip, match=r"over the pixel limit: 100x100 = 0.0 MP"):
        open_image(path, max_pixels=5000)
    assert open_image(path, max_pixels=10000).size == (100, 100)


def test_pillow_bomb_error_is_a_skip_and_its_warning_defers_to_our_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow warns above 100, refuses above 200
    with pytest.raises(ImageSkip, match="over the pixel limit"):
        open_image(save(tmp_path / "a.png", noise(0, size=(20, 20))))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_image(save(tmp_path / "b.png", noise(0, size=(12, 12)))).size == (12, 12)


def test_unusable_files_are_skipped_with_reasons(tmp_path):
    two_classes(tmp_path)
    jpeg = save(tmp_path / "x.jpg", noise(5, size=(64, 64)), "JPEG").read_bytes()
    (tmp_path / "x.jpg").unlink()
    (tmp_path / "fake" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    png = save(tmp_path / "x.png", noise(6, size=(64, 64))).read_bytes()
    (tmp_path / "x.png").unlink()
    (tmp_path / "fake" / "truncated.png").write_bytes(png[: len(png) - 100])
    (tmp_path / "fake" / "empty.png").write_bytes(b"")
    (tmp_path / "real" / "text.jpg").write_text("this is not a picture\n")
    (tmp_path / "real" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + b"\0" * 100)
    save(tmp_path / "real" / "huge.png", noise(7, size=(300, 300)))
    ds = load_dataset(tmp_path, max_pixels=50_000, workers=1, progress=False)
    reasons = {s.path.name: s.reason for s in ds.skipped}
    assert set(reasons) == {"truncated.jpg", "truncated.png", "empty.png", "text.jpg", ".DS_Store", "huge.png"}
    assert reasons["truncated.jpg"].startswith("cannot decode: image file is truncated")
    assert reasons["truncated.png"].startswith("cannot decode:")
    assert reasons["empty.png"] == "empty file"
    assert reasons["text.jpg"].startswith("not an image")
    assert reasons[".DS_Store"].startswith("not an image")
    assert reasons["huge.png"].startswith("over the pixel limit: 300x300")
    assert len(ds.images) == 6 and ds.n_files == 12
    assert format_skip_summary(ds) == ("skipped 6 of 12 files: 2 cannot decode, 2 not an image, "
                                       "1 empty file, 1 over the pixel limit")
    write_skipped(tmp_path.parent / "skipped.csv", ds.skipped)
    assert read_skipped(tmp_path.parent / "skipped.csv") == ds.skipped


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_permission_denied_is_a_skip(tmp_path):
    two_classes(tmp_path)
    locked = save(tmp_path / "real" / "locked.png", noise(9))
    locked.chmod(0)
    ds = load_dataset(tmp_path, workers=1, progress=False)
    assert [s.reason for s in ds.skipped] == ["unreadable: Permission denied"]


def test_read_errors_are_skips(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    (tmp_path / "any.png").write_bytes(b"x")
    monkeypatch.setattr(loading, "open", denied, raising=False)
    with pytest.raises(ImageSkip, match="unreadable: Permission denied"):
        loading.read_bytes(tmp_path / "any.png")
    with pytest.raises(ImageSkip, match="unreadable: No such file or directory"):
        loading.read_bytes(tmp_path / "missing.png")


def test_data_folder_untouched_and_workers_agree(tmp_path):
    root = two_classes(tmp_path / "data", n=4)
    save(root / "real" / "sub" / ".odd.JPG", noise(50), "JPEG")
    (root / "fake" / "empty.png").write_bytes(b"")
    before = snapshot(root)
    one = load_dataset(root, workers=1, progress=False)
    two = load_dataset(root, workers=2, progress=False)  # the process-pool path, cache now warm
    assert snapshot(root) == before
    assert one.images == two.images and one.skipped == two.skipped
    assert one.manifest_sha256() == two.manifest_sha256()


def test_data_options_shared_by_commands(tmp_path, capsys):
    two_classes(tmp_path, "left", "right")
    (tmp_path / "left" / "bad.png").write_bytes(b"")
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    args = parser.parse_args([str(tmp_path), "--classes", "ai=left", "real=right", "--workers", "1",
                              "--max-pixels", "1e6"])
    ds = dataset_from_args(args, progress=False)
    assert ds.max_pixels == 1_000_000 and ds.class_names == {1: "left", 0: "right"}
    assert "skipped 1 of 7 files: 1 empty file" in capsys.readouterr().err
    args = parser.parse_args([str(tmp_path), "--data", str(tmp_path / "other")])
    with pytest.raises(UserError, match="two data folders"):
        dataset_from_args(args, progress=False)
    with pytest.raises(UserError, match="no data folder"):
        dataset_from_args(parser.parse_args([]), progress=False)
    with pytest.raises(SystemExit):
        parser.parse_args([str(tmp_path), "--workers", "0"])


# ---- the real dataset --------------------------------------------------------------------------

@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "data" / "aiart").is_dir(), reason="../shared/data/aiart is absent")
def test_real_dataset_quirks():
    from aigen.data.split import make_split

    root = SHARED / "data" / "aiart"
    before = snapshot(root)
    ds = load_dataset(root, workers=2, progress=False)
    assert ds.n_files == 960
    assert ds.skipped == []  # every quirk in this copy is decodable
    assert len(ds.images) == 960
    assert int((ds.labels == LABEL_AI).sum()) == 533 and int((ds.labels == LABEL_REAL).sum()) == 427
    info = {im.rel_path: im for im in ds.images}
    assert info["RealArt/RealArt/1707541234037"].format == "JPEG"  # no extension
    assert info["AiArtData/AiArtData/100960167.jpg"].format == "PNG"  # lying extension
    assert info["RealArt/RealArt/black-american-portraits-130.gif"].format == "JPEG"
    assert sum(p.split("/")[-1].startswith(".") for p in info) == 2
    modes = [im.mode for im in ds.images]
    assert (modes.count("P"), modes.count("L"), modes.count("RGBA")) == (4, 7, 64)
    dup = ["AiArtData/AiArtData/image33.jpg", "AiArtData/AiArtData/image34.jpg"]
    assert info[dup[0]].sha256 == info[dup[1]].sha256
    index = {im.rel_path: i for i, im in enumerate(ds.images)}
    for seed in range(5):
        split = make_split(ds, seed)
        assert split.assignment[index[dup[0]]] == split.assignment[index[dup[1]]]
    assert snapshot(root) == before
