"""Several training sets (`aigen study --data A=ROOT --data B=ROOT`), the split stratified by set
and label, per-set test metrics, and the threshold-aware metrics of the in-distribution test split."""

import collections
import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from aigen.data.dataset import Dataset, ImageInfo
from aigen.errors import UserError
from helpers import run_cli, read_csv

SPLITS = ("train", "val", "test")


def _image(rel, label, key):
    return ImageInfo(path=Path("/toy") / rel, rel_path=rel, label=label,
                     sha256=hashlib.sha256(key.encode()).hexdigest(), format="PNG", mode="RGB",
                     width=8, height=8, n_bytes=10)


def toy_dataset():
    """42 images: groups of three identical files, one content under both labels."""
    images = []
    for label, n in ((1, 23), (0, 19)):
        for i in range(n):
            key = f"{label}-{i // 3 if i < 9 else i}"
            if label == 0 and i == 18:
                key = "1-20"
            images.append(_image(f"{'ai' if label else 'real'}/{i:02d}.png", label, key))
    images.sort(key=lambda im: im.rel_path)
    return Dataset(root=Path("/toy"), images=images, skipped=[], class_names={1: "ai", 0: "real"})


# ---- the split ----------------------------------------------------------------------------------

def test_one_set_split_is_unchanged():
    """The split of one data set is the one earlier versions made (golden, r/v/t/x = train, val,
    test, excluded): naming sets changed nothing for a single one."""
    from aigen.data.split import make_split

    code = {"train": "r", "val": "v", "test": "t", "excluded": "x"}
    golden = {0: "rrrrrrrrrrrvvrttrrrtxrvrrrrrrrrrrtrvrvttvx",
              5: "rrrrrrrrrvvtrrrrrtvrxrtrrrrrrrrrrvrvvttrtx"}
    for seed, expected in golden.items():
        assert "".join(code[a] for a in make_split(toy_dataset(), seed).assignment) == expected


def joined_toy():
    """Two sets joined: A (30 ai, 10 real) and B (6 ai, 24 real); B/ai/00.png is a copy of
    A/ai/00.png."""
    images = []
    for name, n_ai, n_real in (("A", 30, 10), ("B", 6, 24)):
        for label, n in ((1, n_ai), (0, n_real)):
            for i in range(n):
                key = "A-1-0" if (name, label, i) == ("B", 1, 0) else f"{name}-{label}-{i}"
                images.append(_image(f"{name}/{'ai' if label else 'real'}/{i:02d}.png", label,
                                     key))
    images.sort(key=lambda im: im.rel_path)
    ds = Dataset(root=Path("/toy"), images=images, skipped=[], class_names={1: "ai", 0: "real"})
    ds.sets = {"A": Path("/toy/A"), "B": Path("/toy/B")}
    return ds


def test_split_is_stratified_by_set_and_label(tmp_path):
    from aigen.data.split import make_split, read_split, write_split

    ds = joined_toy()
    for seed in (0, 1, 2):
        split = make_split(ds, seed)
        # B/ai/00.png, a copy of A/ai/00.png, belongs to A's stratum (its first file)
        stratum = lambda im: "A" if im.rel_path == "B/ai/00.png" else im.rel_path[0]  # noqa
        counts = collections.Counter((stratum(im), im.label, a)
                                     for im, a in zip(ds.images, split.assignment))
        for (name, label), n in {("A", 1): 31, ("A", 0): 10, ("B", 1): 5, ("B", 0): 24}.items():
            n_val = counts[(name, label, "val")]
            n_test = counts[(name, label, "test")]
            assert n_val == max(1, round(0.15 * n)) and n_test == max(1, round(0.15 * n)), name
            assert counts[(name, label, "train")] == n - n_val - n_test
        first = dict(zip((im.rel_path for im in ds.images), split.assignment))
        assert first["A/ai/00.png"] == first["B/ai/00.png"]  # a copy across sets: one side
    write_split(tmp_path / "split.csv", ds, split)
    rows = read_csv(tmp_path / "split.csv")
    assert list(rows[0]) == ["set", "path", "sha256", "label", "split"]
    assert {(r["set"], r["path"]) for r in rows} == {tuple(im.rel_path.split("/", 1))
                                                    for im in ds.images}
    assert read_split(tmp_path / "split.csv", ds).assignment == split.assignment


def test_old_split_files_without_a_set_column(tmp_path):
    from aigen.data.split import make_split, read_split

    ds = toy_dataset()
    split = make_split(ds, 0)
    old = tmp_path / "old.csv"
    with open(old, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "sha256", "label", "split"])
        w.writerows((im.rel_path, im.sha256, im.label, a)
                    for im, a in zip(ds.images, split.assignment))
    assert read_split(old, ds).assignment == split.assignment  # one set: still fits
    with pytest.raises(UserError, match="no set column"):
        read_split(old, joined_toy())


def test_too_few_images_in_one_set_names_it():
    from aigen.data.split import make_split

    ds = joined_toy()
    ds.images = [im for im in ds.images if not (im.rel_path.startswith("B/ai/")
                                                and im.rel_path != "B/ai/01.png")]
    with pytest.raises(UserError, match="AI-generated class of the set B has 1"):
        make_split(ds, 0)
    # a set without any image of a class is fine, given the other set has them
    ds.images = [im for im in ds.images if not im.rel_path.startswith("B/ai/")]
    split = make_split(ds, 0)
    assert {a for im, a in zip(ds.images, split.assignment) if im.rel_path.startswith("B/")} \
        == set(SPLITS)


# ---- --data NAME=ROOT -----------------------------------------------------------------------

def test_parse_sets(tmp_path):
    from aigen.data.sets import parse_sets

    (tmp_path / "one").mkdir()
    (tmp_path / "two words").mkdir()
    (tmp_path / "a=b").mkdir()
    sets = parse_sets([f"x={tmp_path / 'one'}", str(tmp_path / "two words"),
                       str(tmp_path / "a=b")])
    assert sets == {"x": tmp_path / "one", "two_words": tmp_path / "two words",
                    "a_b": tmp_path / "a=b"}
    for items, words in (([f"x={tmp_path / 'one'}", f"x={tmp_path / 'a=b'}"], "twice"),
                         ([str(tmp_path / "one"), f"one={tmp_path / 'a=b'}"], "twice"),
                         (["bad name=" + str(tmp_path / "one")], "data set name"),
                         (["x="], "no folder"),
                         ([f"x={tmp_path / 'nowhere'}"], "not found")):
        with pytest.raises(UserError, match=words):
            parse_sets(items)


@pytest.mark.parametrize("form", ["duplicate", "bad-name", "empty-root", "missing"])
def test_bad_data_options_are_one_line_errors(make_study_images, tmp_path, form):
    data = make_study_images(tmp_path / "d", n_per_class=4)
    given = {"duplicate": [f"a={data}", "--data", f"a={data}"],
             "bad-name": [f"no/good={data}"],
             "empty-root": ["a="],
             "missing": [f"a={data}", f"b={tmp_path / 'nowhere'}"]}[form]
    out = tmp_path / "out"
    code, _, err = run_cli(["study", "--data", *given, "--out", str(out), "--quick",
                         "--models", "scratch", "--no-progress"])
    assert code == 2, err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    assert not out.exists()


# ---- a study on two sets --------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_sets(tmp_path_factory, make_study_images):
    """A scratch-only study (one epoch), two seeds, on two generated sets: `first` (another seed of the
    tiny images, its AI images in two sources) and `second` (with a copy of one of first's real
    images)."""
    base = tmp_path_factory.mktemp("two-sets")
    first = make_study_images(base / "first", n_per_class=14, seed=3)
    for k, path in enumerate(sorted(p for p in (first / "ai").iterdir() if p.is_file())):
        target = first / "ai" / ("gen_a" if k % 2 else "gen_b")
        target.mkdir(exist_ok=True)
        path.rename(target / path.name)
    second = make_study_images(base / "second", n_per_class=10, seed=4)
    shutil.copy(first / "real" / "real_04.jpg", second / "real" / "copy.jpg")
    out = base / "run"
    code, stdout, stderr = run_cli(["study", "--data", f"A={first}", "--data", str(second),
                                 "--out", str(out), "--scratch-epochs", "1", "--models",
                                 "scratch", "--scratch-lrs", "--seeds", "0", "1", "--workers", "1",
                                 "--no-progress"])
    return {"code": code, "stderr": stderr, "out": out, "first": first, "second": second,
            "base": base}


def test_two_sets_split_and_predictions_name_the_set(two_sets):
    assert two_sets["code"] == 0, two_sets["stderr"]
    out = two_sets["out"]
    for name in ("split.csv", "split_seed1.csv"):
        rows = read_csv(out / name)
        assert {r["set"] for r in rows} == {"A", "second"}
        strata = collections.Counter((r["set"], r["label"], r["split"]) for r in rows)
        for key in (("A", "1"), ("A", "0"), ("second", "1"), ("second", "0")):
            assert all(strata[(*key, s)] >= 1 for s in SPLITS), (name, key)
        # the two identical files (A/real/real_04.jpg, second/real/copy.jpg) share a side
        sides = {r["split"] for r in rows if (r["set"], r["path"]) in
                 {("A", "real/real_04.jpg"), ("second", "real/copy.jpg")}}
        assert len(sides) == 1
    preds = read_csv(out / "predictions.csv")
    assert list(preds[0])[:2] == ["set", "path"]
    assert {r["set"] for r in preds} == {"A", "second"}
    assert any(r["path"].startswith("ai/gen_a/") for r in preds if r["set"] == "A")
    results = json.loads((out / "results.json").read_text())
    sets = results["data"]["sets"]
    assert set(sets) == {"A", "second"}
    assert sets["A"]["n_per_class"] == {"ai": 14, "real": 14}
    assert sets["second"]["n_per_class"] == {"ai": 10, "real": 11}
    assert results["data"]["root"] is None
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["sets"] == {"A": str(two_sets["first"]),
                                      "second": str(two_sets["second"])}


def _seed_figures(rows, model, seed, part, subset=None):
    from sklearn.metrics import roc_auc_score

    chosen = [r for r in rows if r["model"] == model and r["seed"] == str(seed)
              and r["split"] == part and (subset is None or r["set"] == subset)]
    y = np.array([int(r["label"]) for r in chosen])
    p = np.array([float(r["prob_ai"]) for r in chosen])
    return len(y), float(np.mean((p >= 0.5) == y)), float(roc_auc_score(y, p)), y, p


def test_per_set_metrics_match_the_predictions(two_sets):
    from sklearn.metrics import average_precision_score, balanced_accuracy_score

    assert two_sets["code"] == 0, two_sets["stderr"]
    out = two_sets["out"]
    results = json.loads((out / "results.json").read_text())
    preds = read_csv(out / "predictions.csv")
    m = results["models"]["scratch_cnn"]
    assert set(m["per_set"]) == {"A", "second"}
    for name, record in m["per_set"].items():
        figures = [_seed_figures(preds, "scratch_cnn", seed, "test", name) for seed in (0, 1)]
        assert record["n_per_seed"] == [f[0] for f in figures]
        assert record["accuracy"]["per_seed"] == pytest.approx([f[1] for f in figures])
        assert record["roc_auc"]["mean"] == pytest.approx(np.mean([f[2] for f in figures]))
        assert record["balanced_accuracy"]["per_seed"] == pytest.approx(
            [balanced_accuracy_score(f[3], f[4] >= 0.5) for f in figures])
        assert record["average_precision"]["per_seed"] == pytest.approx(
            [average_precision_score(f[3], f[4]) for f in figures])
        lo, hi = record["accuracy"]["ci95"]
        assert lo <= record["accuracy"]["mean"] <= hi
    # per source within a set; SET/SOURCE over the whole test split
    assert set(m["per_set"]["A"]["by_source"]) == {"gen_a", "gen_b", "real"}
    assert set(m["test_evaluation"]["by_source"]) == {"A/gen_a", "A/gen_b", "A/real",
                                                      "second/ai", "second/real"}
    overall = [_seed_figures(preds, "scratch_cnn", seed, "test") for seed in (0, 1)]
    assert m["test_evaluation"]["accuracy"]["per_seed"] == pytest.approx([f[1] for f in overall])
    assert m["test_accuracy"]["per_seed"] == pytest.approx([f[1] for f in overall])
    report = (out / "report.md").read_text()
    assert "### Test split per training set" in report and "`second` (n=" in report


def test_evaluate_checks_duplicates_against_every_training_set(two_sets, make_study_images,
                                                               tmp_path):
    """`aigen evaluate` on a two-set run: copies of files of either set are left out."""
    assert two_sets["code"] == 0, two_sets["stderr"]
    ext = make_study_images(tmp_path / "ext", n_per_class=5, seed=11)
    shutil.copy(two_sets["first"] / "ai" / "gen_a" / "ai_01.jpg", ext / "ai" / "from_a.png")
    shutil.copy(two_sets["second"] / "real" / "real_02.jpg", ext / "real" / "from_b.jpg")
    out = tmp_path / "eval"
    code, _, err = run_cli(["evaluate", "--run", str(two_sets["out"]), "--data", str(ext),
                         "--out", str(out), "--workers", "1", "--no-progress"])
    assert code == 0, err
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["overlap"]["exact_duplicates_of_training"] == 2


def test_predict_on_a_two_set_run(two_sets):
    """`aigen predict` with a two-set run gives an image the probability its predictions.csv
    row (set A) records."""
    assert two_sets["code"] == 0, two_sets["stderr"]
    image = two_sets["first"] / "ai" / "gen_b" / "ai_00.png"
    code, stdout, err = run_cli(["predict", "--run", str(two_sets["out"]), str(image)])
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(stdout)))
    recorded = {r["seed"]: float(r["prob_ai"]) for r in read_csv(two_sets["out"] /
                                                                  "predictions.csv")
                if (r["set"], r["path"]) == ("A", "ai/gen_b/ai_00.png")}
    assert set(recorded) == {"0", "1"}
    assert [r["seed"] for r in rows] == ["0"]  # predict's default: the first seed
    assert float(rows[0]["prob_ai"]) == pytest.approx(recorded["0"])


def test_config_reruns_with_the_same_sets(two_sets):
    """--config of a two-set run parses back to the same sets (what --resume relies on too)."""
    import argparse

    from aigen.study import driver, runfolder

    config = two_sets["out"] / "config.json"
    args = argparse.Namespace(resume=None, config=str(config),
                              _argv=["study", "--config", str(config)])
    new = runfolder.resolve_arguments(args, driver.add_arguments)
    recorded = json.loads(config.read_text())["arguments"]["data"]
    assert new.data == recorded == [f"A={two_sets['first']}", f"second={two_sets['second']}"]


# ---- threshold-aware metrics of the in-distribution test split -------------------------------

def test_in_distribution_test_metrics_equal_sklearn(quick_study):
    from sklearn.metrics import average_precision_score, roc_auc_score

    from aigen.study.metrics import choose_threshold, expected_calibration_error

    assert quick_study["code"] == 0, quick_study["stderr"]
    out = quick_study["out"]
    results = json.loads((out / "results.json").read_text())
    preds = read_csv(out / "predictions.csv")
    assert {r["set"] for r in preds} == {quick_study["data"].name}
    for name, m in results["models"].items():
        assert "per_set" not in m  # one training set
        t = m["test_evaluation"]
        _, acc, auc, y, p = _seed_figures(preds, name, 0, "test")
        _, _, _, yv, pv = _seed_figures(preds, name, 0, "val")
        assert t["n"] == len(y) and "n_per_seed" not in t
        assert t["accuracy"]["mean"] == pytest.approx(acc) == \
            pytest.approx(m["test_accuracy"]["mean"])
        assert t["roc_auc"]["mean"] == pytest.approx(auc)
        assert t["average_precision"]["mean"] == pytest.approx(average_precision_score(y, p))
        assert t["accuracy_ai"]["mean"] == pytest.approx(np.mean(p[y == 1] >= 0.5))
        assert t["accuracy_real"]["mean"] == pytest.approx(np.mean(p[y == 0] < 0.5))
        assert t["ece"]["mean"] == pytest.approx(expected_calibration_error(y, p))
        threshold = choose_threshold(yv, pv)
        assert t["at_val_threshold"]["threshold"]["mean"] == pytest.approx(threshold)
        assert t["at_val_threshold"]["accuracy"]["mean"] == pytest.approx(
            np.mean((p >= threshold) == y))
        assert set(t["by_source"]) == {"ai", "real"}
        assert sum(s["n"] for s in t["by_source"].values()) == len(y)
        assert roc_auc_score(y, p) == pytest.approx(auc)
    report = (out / "report.md").read_text()
    assert "### Test split: threshold-aware metrics" in report
