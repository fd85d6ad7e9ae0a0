"""The degradation sweep (aigen.study.sweep): each perturbation, the streamed dataset of degraded
test images (stored resolution, data folder untouched), the summaries over seeds, the shortcut
flags, the figure, and every seed's models scored on their own test images in a study."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from aigen.errors import UserError
from aigen.study import figures, sweep
from helpers import every_progress_update, snapshot

SHA = "ab" * 32


def _image(w=64, h=48, seed=0):
    """Smooth structure plus mild noise: every degradation has something to change."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
    pixels = np.stack([base, base[::-1], np.full_like(base, 90.0)], -1) + rng.normal(0, 20, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _error(a, b) -> float:
    return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean())


def test_every_perturbation_changes_pixels_more_as_it_strengthens():
    img = _image()
    for key, pert in sweep.PERTURBATIONS.items():
        errors = []
        for strength in pert.strengths:
            out = sweep.perturb(img, key, strength, source_format="PNG", sha256=SHA)
            assert out.size == img.size and out.mode == "RGB", (key, strength)
            errors.append(_error(out, img))
        assert errors[0] > 0, key
        assert errors == sorted(errors), (key, errors)  # mild to severe
    assert np.array_equal(np.asarray(sweep.perturb(img, "blur", None)), np.asarray(img))
    noisy = np.asarray(sweep.perturb(img, "noise", 10, sha256=SHA), float) - np.asarray(img, float)
    assert 8 < noisy.std() < 12  # sigma 10 on 0..255 (a little less where clipped)
    with pytest.raises(ValueError, match="unknown perturbation"):
        sweep.perturb(img, "sharpen", 1)


def test_format_swap_only_where_it_changes_pixels():
    img = _image()
    assert sweep.perturb(img, "format_swap", 95, source_format="JPEG") is None
    assert sweep.perturb(img, "format_swap", 95, source_format="MPO") is None
    swapped = sweep.perturb(img, "format_swap", 95, source_format="PNG")
    assert _error(swapped, img) > 0


def test_perturbations_are_deterministic_per_seed_and_image():
    img = _image()
    for key, pert in sweep.PERTURBATIONS.items():
        for strength in pert.strengths:
            a = sweep.perturb(img, key, strength, source_format="PNG", seed=3, sha256=SHA)
            b = sweep.perturb(img, key, strength, source_format="PNG", seed=3, sha256=SHA)
            assert np.array_equal(np.asarray(a), np.asarray(b)), (key, strength)
    noise = lambda seed, sha: np.asarray(sweep.perturb(img, "noise", 5, seed=seed, sha256=sha))  # noqa: E731
    assert not np.array_equal(noise(3, SHA), noise(4, SHA))  # another seed, another draw
    assert not np.array_equal(noise(3, SHA), noise(3, "cd" * 32))  # another image, another draw


def _stripes_jpeg(path, size=1000, period=16):
    """Vertical stripes of `period` pixels: fine for a reduced-scale decode, clear at full size."""
    xx = np.arange(size)[None, :].repeat(size, 0)
    grey = (128 + 100 * np.sign(np.sin(2 * np.pi * xx / period))).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(path, format="JPEG", quality=95)


def test_sweep_images_degrade_at_stored_resolution_and_leave_the_data_alone(tmp_path):
    from aigen.data.dataset import load_dataset
    from aigen.data.loading import decode_bytes
    from aigen.data.preprocess import BACKBONE, DECODE_MIN_SIDE, SCRATCH, preprocess

    data = tmp_path / "data"
    for cls in ("ai", "real"):
        (data / cls).mkdir(parents=True)
    _stripes_jpeg(data / "ai" / "stripes.jpg")
    _image(seed=1).save(data / "real" / "small.png")
    dataset = load_dataset(data, workers=1, progress=False)
    before = snapshot(data)
    specs = {"scratch": SCRATCH, "backbone": BACKBONE}
    ds = sweep.SweepImages(dataset.images, specs, seed=0, max_pixels=dataset.max_pixels)
    batch = ds[[0, 1]]
    assert list(batch) == [sweep.condition_name(k, s) for k, s in sweep.conditions()]
    stripes = dataset.images[0]
    assert stripes.path.name == "stripes.jpg"
    full = decode_bytes(stripes.path.read_bytes())
    assert full.size == (1000, 1000)
    positions, u8 = batch["downscale:0.25"]
    assert list(np.asarray(positions)) == [0, 1]
    expected = preprocess(sweep.perturb(full, "downscale", 0.25), BACKBONE)
    got = np.asarray(u8["backbone"][0])
    assert np.array_equal(got, expected)
    # Had the image been decoded at reduced scale first (as the dataset does), the 16-pixel
    # stripes would have been 4 pixels wide and a quarter of that is gone: only the full-size
    # decode keeps them through the downscaling.
    draft = decode_bytes(stripes.path.read_bytes(), min_side=DECODE_MIN_SIDE)
    assert draft.size == (250, 250)
    lost = preprocess(sweep.perturb(draft, "downscale", 0.25), BACKBONE)
    assert got[100, :, 0].std() > 40 and got[100, :, 0].std() > 5 * lost[100, :, 0].std()
    # Every condition changed the pixels of the PNG but the clean one; format_swap skipped the JPEG.
    clean = np.asarray(batch["clean"][1]["backbone"])
    for name, (positions, u8) in batch.items():
        if name == "format_swap:95":
            assert list(np.asarray(positions)) == [1]
            continue
        changed = not np.array_equal(np.asarray(u8["backbone"])[1], clean[1])
        assert changed == (name != "clean"), name
    # The same image degrades the same way in another batch (noise keyed by seed and content).
    alone = ds[[1]]
    for name in batch:
        assert np.array_equal(np.asarray(alone[name][1]["scratch"])[-1],
                              np.asarray(batch[name][1]["scratch"])[-1]), name
    assert snapshot(data) == before
    # A test image that changed since it was loaded is refused, not degraded as another image.
    (data / "real" / "small.png").write_bytes((data / "ai" / "stripes.jpg").read_bytes())
    with pytest.raises(UserError, match="changed during the run"):
        ds[[1]]


def test_sweep_progress_moves_per_condition(tmp_path, capsys, monkeypatch):
    """The bar counts (image, condition) pairs, so it moves while one batch is scored under
    every condition (minutes on a CPU), and ends at images x conditions."""
    from aigen.data.dataset import load_dataset
    from aigen.data.preprocess import SCRATCH

    data = tmp_path / "data"
    for cls in ("ai", "real"):
        (data / cls).mkdir(parents=True)
    _image(seed=1).save(data / "ai" / "a.png")
    _image(seed=2).save(data / "real" / "b.png")
    dataset = load_dataset(data, workers=1, progress=False)
    n_conditions = len(sweep.conditions(["blur"]))
    every_progress_update(monkeypatch)
    scored = []

    def scorer(batch):
        scored.append(len(batch["scratch"]))
        return {("m", 0): np.full(len(batch["scratch"]), 0.25)}

    probs = sweep.sweep_probabilities(dataset.images, {"scratch": SCRATCH}, scorer,
                                      perturbations=["blur"], progress=True)
    total = 2 * n_conditions
    err = capsys.readouterr().err
    assert f"{total}/{total}" in err and all(f"{k}/{total}" in err for k in range(2, total, 2))
    assert scored == [2] * n_conditions and set(probs) == {
        sweep.condition_name(k, s) for k, s in sweep.conditions(["blur"])}
    assert all(np.array_equal(p[("m", 0)], [0.25, 0.25]) for p in probs.values())


def _probs(n, seeds, rng):
    return {(m, s): rng.uniform(0, 1, n) for m in ("a", "b") for s in seeds}


@pytest.mark.parametrize("seeds", [[0], [0, 1]])
def test_summarize_sweep_keys_changes_and_ci(seeds):
    rng = np.random.default_rng(0)
    n = 40
    y = np.array([0, 1] * (n // 2))
    test_pos = {s: np.sort(rng.choice(n, 24, replace=False)) for s in seeds}
    probs = {sweep.condition_name(k, st): _probs(n, seeds, rng) for k, st in sweep.conditions()}
    not_applicable = np.arange(n) % 4 == 0  # e.g. JPEG sources, left out of the format swap
    for p in probs["format_swap:95"].values():
        p[not_applicable] = np.nan
    out = sweep.summarize_sweep(probs, y, test_pos, ["a", "b"], seeds)
    assert set(out) == {"a", "b"}
    assert list(out["a"]) == list(sweep.PERTURBATIONS)
    for key, points in out["a"].items():
        assert [p["strength"] for p in points] == [None, *sweep.PERTURBATIONS[key].strengths]
        for p in points:
            assert set(p) == {"strength", "n", "accuracy", "roc_auc"}
            assert len(p["n"]) == len(seeds)
            expected_n = [int((~not_applicable[test_pos[s]]).sum()) if key == "format_swap"
                          else 24 for s in seeds]
            assert p["n"] == expected_n
            for metric in ("accuracy", "roc_auc"):
                summary = p[metric]
                assert len(summary["per_seed"]) == len(seeds)
                assert summary["change"] == pytest.approx(summary["mean"]
                                                          - points[0][metric]["mean"])
                lo_hi = summary["ci95"]
                if len(seeds) == 1 and metric == "roc_auc":
                    assert lo_hi is None  # one seed: no interval over seeds for a ranking metric
                else:  # one seed: Wilson over the test images; two: Student-t over seeds
                    assert lo_hi[0] <= summary["mean"] <= lo_hi[1]
                    # (two seeds that scored the same accuracy: Wilson over both seeds' images)
                    tie = metric == "accuracy" and summary["std"] == 0
                    assert summary["ci_method"] == ("wilson" if len(seeds) == 1 or tie else "t")
    # Per seed, the accuracy is that seed's own test images' accuracy.
    seed = seeds[-1]
    p = probs["jpeg:50"][("b", seed)][test_pos[seed]]
    acc = np.mean((p >= 0.5) == (y[test_pos[seed]] == 1))
    assert out["b"]["jpeg"][4]["accuracy"]["per_seed"][-1] == pytest.approx(acc)
    # The format swap's clean point is on its own images only.
    p = probs["clean"][("a", seed)]
    keep = test_pos[seed][~not_applicable[test_pos[seed]]]
    acc = np.mean((p[keep] >= 0.5) == (y[keep] == 1))
    assert out["a"]["format_swap"][0]["accuracy"]["per_seed"][-1] == pytest.approx(acc)


def _point(strength, acc, auc, n=40):
    return {"strength": strength, "n": [n], "accuracy": {"mean": acc, "per_seed": [acc]},
            "roc_auc": {"mean": auc, "per_seed": [auc]}}


def test_shortcut_flags_name_a_collapse_under_a_mild_degradation():
    results = {"models": {
        "shortcut": {"jpeg": [_point(None, 0.95, 0.98), _point(100, 0.94, 0.97),
                              _point(90, 0.55, 0.58), _point(75, 0.5, 0.52),
                              _point(50, 0.5, 0.5), _point(30, 0.5, 0.5)]},
        "robust": {"jpeg": [_point(None, 0.9, 0.95), _point(100, 0.9, 0.95), _point(90, 0.89, 0.94),
                            _point(75, 0.88, 0.93), _point(50, 0.6, 0.62), _point(30, 0.5, 0.5)]},
        "shifted": {"downscale": [_point(None, 0.9, 0.95), _point(0.75, 0.6, 0.93),
                                  _point(0.5, 0.55, 0.9), _point(0.25, 0.5, 0.8)]},
        "chance": {"jpeg": [_point(None, 0.55, 0.56), _point(100, 0.5, 0.5), _point(90, 0.5, 0.5),
                            _point(75, 0.5, 0.5), _point(50, 0.5, 0.5), _point(30, 0.5, 0.5)]},
    }}
    assert sweep.judged_models(results) == ["shortcut", "robust", "shifted"]  # not "chance"
    flags = sweep.shortcut_flags(results)
    # A collapse only at severe strengths (robust) or from near chance (chance) is no flag.
    assert [(f["model"], f["perturbation"], f["strength"], f["kind"]) for f in flags] == [
        ("shortcut", "jpeg", 90, "ranking"), ("shifted", "downscale", 0.75, "threshold")]
    text = sweep.flag_text(flags[0])
    assert "quality 90" in text and "compression traces" in text and "0.980" in text
    assert "threshold" in sweep.flag_text(flags[1])


@pytest.mark.parametrize("n_seeds", [1, 3])
def test_sweep_figure(tmp_path, n_seeds):
    rng = np.random.default_rng(0)

    def summary(mean):
        per_seed = list(mean + rng.normal(0, 0.02, n_seeds))
        return {"mean": float(np.mean(per_seed)), "per_seed": per_seed,
                "ci95": [mean - 0.05, mean + 0.05] if n_seeds > 1 else None}

    pert = sweep.describe()["jpeg"]
    models = {name: [{"strength": s, "n": [30] * n_seeds, "accuracy": summary(0.9 - 0.05 * k),
                      "roc_auc": summary(0.95 - 0.04 * k)}
                     for k, s in enumerate([None, *pert["strengths"]])]
              for name in ("scratch_cnn", "resnet18_frozen", "resnet18_finetuned")}
    figures.sweep_curves(pert, models, tmp_path / "sweep.png")
    with Image.open(tmp_path / "sweep.png") as im:
        assert im.format == "PNG" and im.width > 800


def test_each_seeds_models_are_scored_on_their_own_test_images(tmp_path, make_study_images,
                                                               monkeypatch):
    """The sweep's clean point (files decoded again, preprocessed, scored per backbone and seed)
    reproduces every model's test accuracy seed by seed, on two seeds with different test splits
    (the tiny images are decoded at full size by the dataset too). One perturbation (--sweep), to
    be quick."""
    from aigen.data import explore
    from test_study import _memoised_audit, run_cli

    monkeypatch.setattr(explore, "shortcut_audit", _memoised_audit(explore.shortcut_audit))

    data = make_study_images(tmp_path / "data", n_per_class=30)
    argv = ["study", "--data", str(data), "--out", str(tmp_path / "out"), "--seeds", "0", "1",
            "--models", "scratch", "frozen", "--backbones", "efficientnet_lite0",
            "--scratch-epochs", "6", "--scratch-lr", "0.05", "--scratch-lrs", "--workers", "1",
            "--no-progress", "--device", "cpu", "--spectrum-images", "0", "--sweep", "blur"]
    before = snapshot(data)
    code, _, err = run_cli(argv)
    assert code == 0, err
    assert snapshot(data) == before
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    splits = [set(r["path"] for r in csv.DictReader(open(tmp_path / "out" / f, newline=""))
                  if r["split"] == "test") for f in ("split.csv", "split_seed1.csv")]
    assert splits[0] != splits[1]
    assert results["sweep"]["n_images"] == len(splits[0] | splits[1])
    models = results["sweep"]["models"]
    assert set(models) == {"scratch_cnn", "efficientnet_lite0_frozen"}
    for name, per_pert in models.items():
        clean = per_pert["blur"][0]
        assert clean["accuracy"]["per_seed"] == results["models"][name]["test_accuracy"]["per_seed"]
        assert clean["roc_auc"]["per_seed"] == pytest.approx(
            results["models"][name]["test_roc_auc"]["per_seed"])
        assert clean["accuracy"]["ci_method"] == "t" or clean["accuracy"]["std"] == 0
    assert list(results["sweep"]["perturbations"]) == ["blur"]
    assert (tmp_path / "out" / "figures" / "sweep_blur.png").is_file()
    assert "spectra" not in results["diagnostics"]  # --spectrum-images 0


def test_sweep_without_a_value_skips_the_sweep(tmp_path, make_study_images, monkeypatch):
    from aigen.data import explore
    from test_study import _memoised_audit, run_cli, scratch_argv

    monkeypatch.setattr(explore, "shortcut_audit", _memoised_audit(explore.shortcut_audit))
    data = make_study_images(tmp_path / "data", n_per_class=8)
    code, stdout, err = run_cli(scratch_argv(data, tmp_path / "out", "--sweep"))
    assert code == 0, err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["sweep"] == {}
    assert not list((tmp_path / "out" / "figures").glob("sweep_*.png"))
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Degradation sweep" not in text and "Degradation sweep" not in text
    assert "possible shortcut: " not in stdout
