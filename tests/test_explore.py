"""Dataset summary, figures/tables and the metadata shortcut audit (`aigen explore`,
aigen.data.explore)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aigen import cli
from aigen.data import explore
from aigen.data.dataset import load_dataset
from aigen.errors import UserError
from helpers import SHARED, every_progress_update, snapshot

SHARED_DATA = SHARED / "data" / "aiart"
SHARED_MANIFEST = SHARED / "data" / "aiart_manifest.csv"
FIGURES = ("width", "height", "aspect", "n_bytes", "bytes_per_pixel", "format", "mode")


def noise(seed: int, width: int, height: int, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "L": 1}[mode]
    shape = (height, width, channels) if channels > 1 else (height, width)
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def save(path: Path, img: Image.Image, fmt: str, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **kw)
    return path


def load(root: Path):
    return load_dataset(root, workers=1, progress=False, specs=())


@pytest.fixture(scope="module")
def separable(tmp_path_factory) -> Path:
    """Metadata separates the classes perfectly: fake/ = 20 x 64x64 PNG, real/ = 20 x 200x150 JPEG;
    random-noise content."""
    root = tmp_path_factory.mktemp("separable")
    for i in range(20):
        save(root / "fake" / f"f{i:02d}.png", noise(i, 64, 64), "PNG")
        save(root / "real" / f"r{i:02d}.jpg", noise(1000 + i, 200, 150), "JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def separable_dataset(separable, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIGEN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return load(separable)


def run_cli(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- summary -----------------------------------------------------------------------------------

def test_summary_counts_formats_and_sizes_by_content(tmp_path):
    root = tmp_path / "data"
    ai, real = root / "fake", root / "real"
    save(ai / "a0.png", noise(0, 40, 30), "PNG")
    save(ai / "a1.png", noise(1, 40, 30), "PNG")
    save(ai / "lying.jpg", noise(2, 40, 30), "PNG")  # PNG data behind a .jpg name
    save(ai / "a3.jpg", noise(3, 80, 20), "JPEG")
    save(ai / "grey.jpg", noise(4, 80, 20, "L"), "JPEG")
    for i in range(3):
        save(real / f"r{i}.jpg", noise(10 + i, 60, 45), "JPEG")
    save(real / "webp-as.png", noise(20, 60, 45), "WEBP")  # WEBP data behind a .png name
    (real / "notes.txt").write_text("not an image")  # skipped
    dup = save(ai / "dup.png", noise(30, 16, 16), "PNG")  # the same content under both classes
    (real / "dup-copy.png").write_bytes(dup.read_bytes())

    ds = load(root)
    summary = explore.summarize(ds)
    ai_c, real_c = summary["classes"]["ai"], summary["classes"]["real"]
    assert (ai_c["count"], real_c["count"]) == (5, 4)  # the cross-class duplicate is left out
    assert summary["n_images"] == 9 and summary["n_skipped"] == 3  # notes.txt + both duplicates
    assert (ai_c["label"], real_c["label"], ai_c["folder"], real_c["folder"]) == (1, 0, "fake", "real")
    assert ai_c["formats"] == {"PNG": 3, "JPEG": 2}  # by content: lying.jpg is a PNG
    assert real_c["formats"] == {"JPEG": 3, "WEBP": 1}
    assert ai_c["modes"] == {"RGB": 4, "L": 1}
    assert real_c["modes"] == {"RGB": 4}
    assert summary["metadata_source"] == "files"

    assert ai_c["width"]["min"] == 40 and ai_c["width"]["max"] == 80 and ai_c["width"]["median"] == 40
    assert ai_c["height"]["min"] == 20 and ai_c["height"]["max"] == 30
    assert ai_c["aspect"]["max"] == pytest.approx(4.0) and ai_c["aspect"]["min"] == pytest.approx(4 / 3)
    assert real_c["aspect"]["min"] == real_c["aspect"]["max"] == pytest.approx(4 / 3)
    sizes = [p.stat().st_size for p in real.iterdir() if p.suffix in (".jpg", ".png")
             and p.name != "dup-copy.png"]
    assert real_c["n_bytes"]["mean"] == pytest.approx(np.mean(sizes))
    assert real_c["n_bytes"]["max"] == max(sizes)
    assert real_c["bytes_per_pixel"]["mean"] == pytest.approx(np.mean(sizes) / (60 * 45))

    text = explore.format_summary(summary)
    assert "9 images, 3 skipped" in text and "PNG 60%, JPEG 40%" in text and "JPEG 75%, WEBP 25%" in text
    md = explore.format_summary_markdown(summary)
    # file sizes: the label's unit is the values' unit (kB), one unit per row
    assert "file size (bytes)" not in md
    row = next(line for line in md.splitlines() if line.startswith("| real") and "file size" in line)
    assert "| file size (kB) |" in row and " B " not in row and "MB" not in row
    assert row.rstrip(" |").endswith(f"{max(sizes) / 1e3:.1f}")  # the max, in kB
    assert "| AI-generated | PNG 60%, JPEG 40% | RGB 80%, L 20% |" in md
    assert "| real | JPEG 75%, WEBP 25% | RGB 100% |" in md


# ---- shortcut audit ----------------------------------------------------------------------------

def test_audit_finds_metadata_that_separates_the_classes(separable_dataset):
    audit = explore.shortcut_audit(separable_dataset, seed=0, folds=3)
    assert (audit["n_images"], audit["n_ai"], audit["n_real"], audit["folds"]) == (40, 20, 20, 3)
    assert audit["majority_baseline"] == 0.5
    assert audit["accuracy"] >= 0.95 and audit["roc_auc"] >= 0.95
    lo, hi = audit["accuracy_ci95"]
    assert 0.0 <= lo <= audit["accuracy"] <= hi <= 1.0
    assert len(audit["accuracy_per_fold"]) == 3
    assert audit["logistic"]["accuracy"] >= 0.95
    for cue in ("width", "height", "aspect", "format"):  # each of these alone gives it away
        assert audit["single_feature"][cue]["accuracy"] >= 0.95
    assert audit["single_feature"]["mode"]["accuracy"] <= 0.6  # both classes are RGB
    assert audit["importance"]["mode"] == 0.0
    assert sum(audit["importance"].values()) == pytest.approx(1.0)
    assert audit["leading_cue"] in explore.FEATURE_GROUPS and audit["leading_cue"] != "mode"
    assert {"format=PNG", "format=JPEG", "mode=RGB"} <= set(audit["features"])
    # seeded: the same call gives the same numbers
    assert explore.shortcut_audit(separable_dataset, seed=0, folds=3)["accuracy_per_fold"] == \
        audit["accuracy_per_fold"]
    text = explore.format_audit(audit)
    assert "3-fold stratified CV grouped by content" in text and f"accuracy {audit['accuracy']:.3f}" in text
    if audit["accuracy"] == 1.0:  # every fold perfect: not a zero-width interval
        assert lo < hi == 1.0


def test_accuracy_interval_never_has_zero_width():
    from aigen.study.metrics import wilson_interval

    assert explore._accuracy_interval([1.0, 1.0, 1.0], 12) == wilson_interval(12, 12)
    lo, hi = explore._accuracy_interval([1.0, 1.0, 1.0], 12)
    assert lo < 0.8 and hi == 1.0
    assert explore._accuracy_interval([0.5, 0.75], 8) == explore._t_interval([0.5, 0.75])


def test_audit_progress_moves_per_cross_validation(separable_dataset, capsys, monkeypatch):
    """The audit's forests take ~30 s at 16k images: its bar moves after each cross-validated
    model (forest, logistic regression, one forest per feature group)."""
    every_progress_update(monkeypatch)
    explore.shortcut_audit(separable_dataset, seed=0, progress=True)
    total = 2 + len(explore.FEATURE_GROUPS)
    err = capsys.readouterr().err
    assert "metadata shortcut audit" in err
    assert all(f"{k}/{total}" in err for k in range(1, total + 1))
    explore.shortcut_audit(separable_dataset, seed=0)
    assert capsys.readouterr().err == ""


def test_audit_is_at_chance_when_metadata_is_identical(tmp_path):
    root = tmp_path / "data"
    for i in range(20):  # uncompressed PNG: every file has exactly the same size
        save(root / "fake" / f"f{i:02d}.png", noise(i, 48, 48), "PNG", compress_level=0)
        save(root / "real" / f"r{i:02d}.png", noise(500 + i, 48, 48), "PNG", compress_level=0)
    ds = load(root)
    assert len({im.n_bytes for im in ds.images}) == 1 and len({im.width for im in ds.images}) == 1
    audit = explore.shortcut_audit(ds, seed=0, folds=5)
    assert audit["accuracy"] < 0.75 and abs(audit["accuracy"] - 0.5) <= 0.1
    assert audit["roc_auc"] == pytest.approx(0.5)
    lo, hi = audit["accuracy_ci95"]
    assert 0.0 <= lo <= hi <= 1.0


def test_audit_keeps_exact_duplicates_in_one_fold(tmp_path):
    """Every image is stored four times (same bytes) and each content has its own size, unrelated
    to the class. Folds that split the copies would let the forest recognise the copies' size
    (accuracy far above chance); folds grouped by content leave it at chance."""
    root = tmp_path / "data"
    sizes = np.random.default_rng(0).permutation(np.arange(16, 56))
    for i, side in enumerate(sizes):
        cls = "fake" if i % 2 else "real"
        img = noise(i, int(side), int(side))
        for copy in "abcd":
            save(root / cls / f"{i:02d}{copy}.png", img, "PNG", compress_level=0)
    ds = load(root)
    assert len(ds.images) == 160 and len({im.sha256 for im in ds.images}) == 40
    audit = explore.shortcut_audit(ds, seed=0, folds=5)
    assert audit["accuracy"] < 0.7


def test_audit_uses_the_metadata_override(separable_dataset):
    same = {im.rel_path: {"width": 100, "height": 100, "n_bytes": 5000, "format": "PNG", "mode": "RGB"}
            for im in separable_dataset.images}
    audit = explore.shortcut_audit(separable_dataset, seed=0, folds=5, metadata=same)
    assert audit["metadata_source"] == "metadata CSV"
    assert audit["accuracy"] < 0.75  # the override hides every cue the files had
    with pytest.raises(UserError, match="none of the 1 paths"):
        explore.shortcut_audit(separable_dataset, metadata={"elsewhere/x.png": same[next(iter(same))]})


def test_audit_needs_two_images_per_class_and_two_folds(tmp_path, separable_dataset):
    with pytest.raises(UserError, match="at least 2 folds"):
        explore.shortcut_audit(separable_dataset, folds=1)
    root = tmp_path / "data"
    save(root / "fake" / "f.png", noise(0, 8, 8), "PNG")
    for i in range(3):
        save(root / "real" / f"r{i}.png", noise(1 + i, 8, 8), "PNG")
    with pytest.raises(UserError, match="at least 2 distinct images per class, got 1"):
        explore.shortcut_audit(load(root))
    save(root / "fake" / "f_copy.png", noise(0, 8, 8), "PNG")  # two files, one content
    with pytest.raises(UserError, match="at least 2 distinct images per class, got 1"):
        explore.shortcut_audit(load(root))


# ---- metadata CSV ------------------------------------------------------------------------------

def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_read_metadata_csv_prefers_orig_columns(tmp_path):
    path = write_csv(tmp_path / "m.csv",
                     ["path", "width", "orig_width", "height", "orig_height", "bytes", "orig_bytes",
                      "format", "orig_format", "mode"],
                     [["fake/a.png", 10, 1000, 20, 2000, 30, 3000, "png", "jpeg", "RGB"]])
    assert explore.read_metadata_csv(path) == {
        "fake/a.png": {"width": 1000, "height": 2000, "n_bytes": 3000, "format": "JPEG", "mode": "RGB"}}
    bad = write_csv(tmp_path / "bad.csv", ["path", "width", "height"], [["a", 1, 2]])
    with pytest.raises(UserError, match=r"lacks the column\(s\) \(orig_\)bytes/\(orig_\)n_bytes"):
        explore.read_metadata_csv(bad)
    nonint = write_csv(tmp_path / "nonint.csv", ["path", "width", "height", "n_bytes", "format", "mode"],
                       [["a", "wide", 2, 3, "PNG", "RGB"]])
    with pytest.raises(UserError, match="line 2: width, height and bytes must be whole numbers"):
        explore.read_metadata_csv(nonint)
    with pytest.raises(UserError, match="cannot read metadata CSV"):
        explore.read_metadata_csv(tmp_path / "missing.csv")


def test_cli_metadata_csv_overrides_the_summary(separable, separable_dataset, tmp_path, capsys):
    images = sorted(p.relative_to(separable).as_posix() for p in separable.rglob("*") if p.is_file())
    rows = [[p, 999 if p.startswith("fake/") else 200, 150, 12345, "JPEG", "RGB"] for p in images[:-1]]
    csv_path = write_csv(tmp_path / "orig.csv", ["path", "width", "height", "bytes", "format", "mode"], rows)

    with_csv = tmp_path / "with-csv"
    common = ["--workers", "1", "--quiet", "--folds", "3"]
    code, out, err = run_cli(["explore", str(separable), "--out", str(with_csv), *common,
                              "--metadata-csv", str(csv_path)], capsys)
    assert code == 0, err
    plain = explore.summarize(separable_dataset)
    assert plain["classes"]["ai"]["width"]["median"] == 64
    assert plain["classes"]["ai"]["formats"] == {"PNG": 20}
    assert plain["metadata_source"] == "files"
    b = json.loads((with_csv / "exploration.json").read_text())
    assert b["summary"]["classes"]["ai"]["width"]["median"] == 999
    assert b["summary"]["classes"]["ai"]["formats"] == {"JPEG": 20}
    assert b["summary"]["classes"]["real"]["n_bytes"]["median"] == 12345  # 19 of 20 overridden
    assert b["summary"]["metadata_source"] == "metadata CSV for 39 of 40 images, files for the rest"
    assert b["metadata_csv"] == str(csv_path)
    assert "metadata from metadata CSV for 39 of 40 images" in out

    bad = write_csv(tmp_path / "bad.csv", ["path", "width"], [["fake/f00.png", 1]])
    code, _, err = run_cli(["explore", str(separable), "--out", str(tmp_path / "o3"), *common,
                            "--metadata-csv", str(bad)], capsys)
    assert code == 2 and err.startswith("aigen explore: error: metadata CSV") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o3").exists()


# ---- CLI ---------------------------------------------------------------------------------------

def test_cli_writes_to_out_and_never_into_the_data(separable, tmp_path, capsys, monkeypatch):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(separable, data)
    (data / "real" / "broken.jpg").write_bytes(b"not an image")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    before = snapshot(data)
    out = tmp_path / "explore-out"
    code, stdout, err = run_cli(["explore", str(data), "--out", str(out), "--workers", "1",
                                 "--quiet", "--folds", "3", "--seed", "1"], capsys)
    assert code == 0, err
    assert snapshot(data) == before
    assert list(work.iterdir()) == []  # no default results/ folder either

    expected = {"exploration.csv", "exploration.md", "exploration.json", "skipped.csv",
                *(f"figures/{name}.png" for name in (*FIGURES, "spectra"))}
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == expected
    for name in FIGURES:
        with Image.open(out / "figures" / f"{name}.png") as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100
    result = json.loads((out / "exploration.json").read_text())
    assert Path(result["data_root"]).resolve() == data.resolve()
    assert result["summary"]["classes"]["ai"]["count"] == 20 and result["summary"]["n_skipped"] == 1
    assert result["shortcut_audit"]["folds"] == 3 and result["shortcut_audit"]["seed"] == 1
    assert result["shortcut_audit"]["accuracy"] >= 0.95
    assert all((out / p).is_file() for p in result["files"].values())
    with open(out / "skipped.csv", newline="") as f:
        skipped = list(csv.DictReader(f))
    assert len(skipped) == 1 and skipped[0]["path"].endswith("broken.jpg")
    assert skipped[0]["reason"].startswith("not an image")
    with open(out / "exploration.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"class": "ai", "variable": "count", "statistic": "n", "value": "20"} in rows
    assert {"class": "real", "variable": "format", "statistic": "JPEG", "value": "20"} in rows
    assert "| AI-generated (n=20) | width (px) | 64 | 64 | 64 | 64 | 64 | 64 |" in \
        (out / "exploration.md").read_text()
    assert "metadata shortcut audit (3-fold" in stdout and f"to {out}" in stdout
    # The frequency spectra: both classes, every image (fewer than the default 500 per class),
    # all smaller than the 256-pixel crop so enlarged first; the figure, the numbers, the text.
    spectra = result["spectra"]
    assert {k: (c["n"], c["n_upscaled"]) for k, c in spectra["classes"].items()} == \
        {"ai": (20, 20), "real": (20, 20)}
    assert len(spectra["classes"]["ai"]["radial_mean"]) == len(spectra["frequencies"]) == 129
    assert spectra["seed"] == 1 and result["files"]["figure_spectra"] == "figures/spectra.png"
    md = (out / "exploration.md").read_text()
    assert "## Frequency spectra of the two classes" in md and "(figures/spectra.png)" in md
    assert "frequency spectra: " in stdout
    assert "skipped 1 of 41 files: 1 not an image" in err


def test_cli_refuses_an_out_folder_inside_the_data(separable, capsys):
    before = snapshot(separable)
    code, _, err = run_cli(["explore", str(separable), "--out", str(separable / "results"),
                            "--workers", "1", "--quiet"], capsys)
    assert code == 2 and "is inside the data folder" in err
    assert snapshot(separable) == before


def test_cli_never_writes_over_an_existing_folder(separable, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "exploration.md").write_text("the user's own notes")
    before = snapshot(out)
    code, _, err = run_cli(["explore", str(separable), "--out", str(out), "--workers", "1",
                            "--quiet"], capsys)
    assert code == 2 and "non-empty folder" in err and "Traceback" not in err
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no hidden partial folder left


@pytest.mark.parametrize("make_root, message", [
    (lambda tmp: tmp / "missing", "data folder not found"),
    (lambda tmp: save(tmp / "a-file.png", noise(0, 8, 8), "PNG"), "data folder not found"),
    (lambda tmp: save(tmp / "d" / "fake" / "x.png", noise(0, 8, 8), "PNG").parents[1],
     "only one class found (no real folder)"),
])
def test_cli_bad_data_folder(tmp_path, capsys, make_root, message):
    root = make_root(tmp_path)
    out = tmp_path / "out"
    code, _, err = run_cli(["explore", str(root), "--out", str(out), "--workers", "1", "--quiet"], capsys)
    assert code == 2
    assert err.startswith("aigen explore: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


# ---- the real dataset --------------------------------------------------------------------------

@pytest.mark.shared
@pytest.mark.skipif(not (SHARED_DATA.is_dir() and SHARED_MANIFEST.is_file()),
                    reason="../shared/data/aiart or ../shared/data/aiart_manifest.csv is absent")
def test_real_dataset_summary_and_audit_with_original_metadata():
    ds = load_dataset(SHARED_DATA, workers=2, progress=False, specs=())
    metadata = explore.read_metadata_csv(SHARED_MANIFEST)
    assert len(metadata) == 960

    # nothing is skipped on this copy, and the duplicate pair lies within the AI class, so every
    # file counts: 533 AI, 427 real
    assert ds.skipped == [] and ds.n_files == 960
    files = explore.summarize(ds)
    summary = explore.summarize(ds, metadata)
    for s in (files, summary):
        assert s["classes"]["ai"]["count"] == 533 and s["classes"]["real"]["count"] == 427
        assert s["n_images"] == 960 and s["n_skipped"] == 0
    assert files["metadata_source"] == "files" and summary["metadata_source"] == "metadata CSV"

    # the files here were downscaled to 768 px; the manifest has the sizes as published
    with open(SHARED_MANIFEST, newline="") as f:
        rows = list(csv.DictReader(f))
    for key, cls in (("ai", "AiArtData"), ("real", "RealArt")):
        widths = [int(r["orig_width"]) for r in rows if r["cls"] == cls]
        n_bytes = [int(r["orig_bytes"]) for r in rows if r["cls"] == cls]
        assert summary["classes"][key]["width"]["max"] == max(widths) > 768
        assert summary["classes"][key]["n_bytes"]["mean"] == pytest.approx(np.mean(n_bytes))
        assert max(files["classes"][key]["width"]["max"], files["classes"][key]["height"]["max"]) <= 768
    assert sum(summary["classes"]["ai"]["formats"].values()) == 533

    audit = explore.shortcut_audit(ds, seed=0, folds=3, metadata=metadata)
    assert (audit["n_images"], audit["n_ai"], audit["n_real"]) == (960, 533, 427)
    assert audit["majority_baseline"] == pytest.approx(533 / 960)
    lo, hi = audit["accuracy_ci95"]
    assert 0.0 <= lo <= audit["accuracy"] <= hi <= 1.0
    # the original metadata leaks: clearly better than always answering "AI"
    assert audit["accuracy"] > audit["majority_baseline"] + 0.03
