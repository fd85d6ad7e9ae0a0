"""`aigen evaluate` and `aigen study --eval-data`: a run's models scored on other labelled folders
(the session's quick run, see the `quick_study` fixture in conftest.py), and the metrics behind
them."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import SHARED, run_cli, read_csv, snapshot

SD_COCO = SHARED / "data" / "sd_coco"
MODELS = ["scratch_cnn", "efficientnet_lite0_frozen", "efficientnet_lite0_finetuned"]
SUMMARY_KEYS = {"mean", "std", "per_seed", "ci95"}
MODEL_KEYS = {"accuracy", "balanced_accuracy", "accuracy_real", "accuracy_ai", "roc_auc",
              "average_precision", "ece", "at_val_threshold", "n", "by_source"}


@pytest.fixture(scope="module")
def external(tmp_path_factory, make_study_images, quick_study):
    """Another labelled folder: a different seed of the tiny images, the AI ones split into two
    sources (gen_a/, gen_b/), the real ones directly in real/, two unreadable files (from the
    generator) and one exact copy of a file of the run's data."""
    root = make_study_images(tmp_path_factory.mktemp("external") / "ext", seed=7)
    for k, path in enumerate(sorted(p for p in (root / "ai").iterdir() if p.is_file())):
        target = root / "ai" / ("gen_a" if k % 2 else "gen_b")
        target.mkdir(exist_ok=True)
        path.rename(target / path.name)
    shutil.copy(quick_study["data"] / "real" / "real_04.jpg", root / "real" / "copied.jpg")
    return root


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, quick_study, external):
    assert quick_study["code"] == 0, quick_study["stderr"]
    before = (snapshot(quick_study["out"]), snapshot(external))
    out = tmp_path_factory.mktemp("evaluated") / "eval"
    code, stdout, stderr = run_cli(["evaluate", "--run", str(quick_study["out"]), "--data",
                                 str(external), "--out", str(out), "--workers", "1",
                                 "--no-progress"])
    after = (snapshot(quick_study["out"]), snapshot(external))
    return {"code": code, "stdout": stdout, "stderr": stderr, "out": out,
            "unchanged": before == after}


def test_evaluation_contract(evaluated):
    assert evaluated["code"] == 0, evaluated["stderr"]
    ev = json.loads((evaluated["out"] / "evaluation.json").read_text())
    assert {"data", "overlap", "models"} <= set(ev)
    assert set(ev["models"]) == set(MODELS)
    for name, m in ev["models"].items():
        assert set(m) == MODEL_KEYS, name
        for key in MODEL_KEYS - {"at_val_threshold", "n", "by_source"}:
            assert SUMMARY_KEYS <= set(m[key]), (name, key)
            assert len(m[key]["per_seed"]) == 1
        assert set(m["at_val_threshold"]) == {"threshold", "accuracy", "balanced_accuracy"}
        for s in m["at_val_threshold"].values():
            assert SUMMARY_KEYS <= set(s)
        assert m["n"] == 40
        # per source: two AI sources below ai/, the real images directly in real/
        assert set(m["by_source"]) == {"gen_a", "gen_b", "real"}
        assert {k: v["label"] for k, v in m["by_source"].items()} == \
            {"gen_a": 1, "gen_b": 1, "real": 0}
        assert sum(v["n"] for v in m["by_source"].values()) == 40
        for v in m["by_source"].values():
            assert set(v) == {"label", "n", "accuracy"}  # no ROC-AUC for a one-class source
        acc, real, ai = (m[k]["mean"] for k in ("accuracy", "accuracy_real", "accuracy_ai"))
        assert acc == pytest.approx((real + ai) / 2)  # 20 real, 20 ai
        assert m["balanced_accuracy"]["mean"] == pytest.approx((real + ai) / 2)
        lo, hi = m["roc_auc"]["ci95"]
        assert 0 <= lo <= m["roc_auc"]["mean"] <= hi <= 1
    assert ev["data"]["n_per_class"] == {"ai": 20, "real": 20}


def test_duplicates_and_unreadable_files_are_left_out(evaluated, external):
    out = evaluated["out"]
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["overlap"]["exact_duplicates_of_training"] == 1
    assert [r["path"] for r in read_csv(out / "duplicates.csv")] == ["real/copied.jpg"]
    skipped = {Path(r["path"]).name for r in read_csv(out / "skipped.csv")}
    assert skipped == {"broken.jpg", "truncated.jpg"}
    rows = read_csv(out / "predictions.csv")
    assert list(rows[0]) == ["path", "source", "label", "model", "seed", "prob_ai"]
    assert len(rows) == 40 * len(MODELS)
    paths = {r["path"] for r in rows}
    assert "real/copied.jpg" not in paths and "ai/broken.jpg" not in paths
    assert {r["source"] for r in rows if r["path"].startswith("ai/gen_a/")} == {"gen_a"}


def test_metrics_match_the_predictions(evaluated):
    """The figures in evaluation.json are those of predictions.csv (sklearn, recomputed here)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    out = evaluated["out"]
    ev = json.loads((out / "evaluation.json").read_text())
    rows = read_csv(out / "predictions.csv")
    for name in MODELS:
        y = np.array([int(r["label"]) for r in rows if r["model"] == name])
        p = np.array([float(r["prob_ai"]) for r in rows if r["model"] == name])
        m = ev["models"][name]
        assert m["accuracy"]["mean"] == pytest.approx(np.mean((p >= 0.5) == y))
        assert m["roc_auc"]["mean"] == pytest.approx(roc_auc_score(y, p))
        assert m["average_precision"]["mean"] == pytest.approx(average_precision_score(y, p))


def test_nothing_written_into_the_run_or_the_data(evaluated):
    assert evaluated["code"] == 0
    assert evaluated["unchanged"]
    for name in ("report.md", "figures/roc.png", "figures/precision_recall.png",
                 "figures/reliability.png", "skipped.csv"):
        assert (evaluated["out"] / name).is_file(), name
    report = (evaluated["out"] / "report.md").read_text()
    assert "gen_a" in report and "threshold chosen on the run's validation split" in report


def test_one_class_set(quick_study, external, tmp_path):
    """A folder with AI images only: accuracy on them is defined, ranking metrics are not."""
    data = tmp_path / "only-ai"
    shutil.copytree(external / "ai", data / "ai")
    out = tmp_path / "eval"
    code, _, err = run_cli(["evaluate", "--run", str(quick_study["out"]), "--data", str(data),
                         "--out", str(out), "--models", "scratch_cnn", "--workers", "1",
                         "--no-progress"])
    assert code == 0, err
    m = json.loads((out / "evaluation.json").read_text())["models"]["scratch_cnn"]
    assert m["n"] == 20
    assert m["accuracy"]["mean"] == m["accuracy_ai"]["mean"] is not None
    for key in ("roc_auc", "average_precision", "balanced_accuracy", "accuracy_real"):
        assert m[key]["mean"] is None, key
    assert not (out / "figures" / "roc.png").exists()  # no curve without both classes


@pytest.mark.parametrize("damage, words", [
    ("missing", "not a finished"),
    ("seeds", "another version"),
    ("predictions", "damaged"),
    ("checkpoint", "is not the one the run wrote"),
])
def test_damaged_run_is_a_one_line_error(quick_study, external, tmp_path, damage, words):
    run = tmp_path / "run"
    shutil.copytree(quick_study["out"], run)
    if damage == "missing":
        (run / "results.json").unlink()
    elif damage == "seeds":
        results = json.loads((run / "results.json").read_text())
        del results["seeds"]
        (run / "results.json").write_text(json.dumps(results))
    elif damage == "predictions":
        (run / "predictions.csv").write_text("path,model\nx,y\n")
    else:
        (run / "checkpoints" / "scratch_cnn_seed0.npz").write_bytes(b"garbage")
    code, _, err = run_cli(["evaluate", "--run", str(run), "--data", str(external), "--out",
                         str(tmp_path / "eval"), "--workers", "1", "--no-progress"])
    assert code == 2
    assert len([line for line in err.splitlines() if "error" in line]) == 1, err
    assert words in err
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("case", ["missing", "empty", "no-images", "inside-run", "all-copies"])
def test_bad_data_is_a_one_line_error(quick_study, tmp_path, case):
    data = tmp_path / "data"
    out = tmp_path / "eval"
    if case == "empty":
        data.mkdir()
    elif case == "no-images":
        for cls in ("ai", "real"):
            (data / cls).mkdir(parents=True)
            (data / cls / "notes.txt").write_text("not an image")
    elif case == "inside-run":
        data = quick_study["data"]
        out = quick_study["out"] / "eval"
    elif case == "all-copies":
        shutil.copytree(quick_study["data"], data)
    code, _, err = run_cli(["evaluate", "--run", str(quick_study["out"]), "--data", str(data),
                         "--out", str(out), "--workers", "1", "--no-progress"])
    assert code == 2, err
    assert len([line for line in err.splitlines() if "error" in line]) == 1, err
    assert not out.exists()


# ---- aigen study --eval-data ------------------------------------------------------------------

@pytest.fixture(scope="module")
def study_with_eval(tmp_path_factory, quick_study, external):
    """A scratch-only quick study on the session's tiny data with --eval-data (fast: no backbone)."""
    base = tmp_path_factory.mktemp("study-eval")
    out = base / "run"
    argv = ["study", "--data", str(quick_study["data"]), "--out", str(out), "--quick",
            "--models", "scratch", "--scratch-lrs", "--workers", "1", "--no-progress",
            "--eval-data", f"ext={external}", "gone=" + str(base / "missing-later")]
    (base / "missing-later" / "ai").mkdir(parents=True)  # passes the early check, then
    (base / "missing-later" / "real").mkdir()            # has no images: skipped, not fatal
    code, stdout, stderr = run_cli(argv)
    return {"code": code, "stderr": stderr, "out": out}


def test_study_eval_data(study_with_eval, external, tmp_path):
    assert study_with_eval["code"] == 0, study_with_eval["stderr"]
    out = study_with_eval["out"]
    results = json.loads((out / "results.json").read_text())
    ev = results["external"]["ext"]
    assert {"data", "overlap", "models"} <= set(ev)
    assert set(ev["models"]["scratch_cnn"]) == MODEL_KEYS
    assert ev["overlap"]["exact_duplicates_of_training"] == 1
    assert "gone" in results["external_skipped"] and "gone" not in results["external"]
    assert (out / "external" / "ext" / "predictions.csv").is_file()
    report = (out / "report.md").read_text()
    assert "## Transfer to other data" in report and "`ext` (n=40)" in report
    # `aigen evaluate` on the finished run gives the same numbers: one way of evaluating.
    code, _, err = run_cli(["evaluate", "--run", str(out), "--data", str(external), "--out",
                         str(tmp_path / "eval"), "--workers", "1", "--no-progress"])
    assert code == 0, err
    again = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert again["models"] == ev["models"]


def test_study_eval_data_is_checked_before_training(quick_study, tmp_path):
    code, _, err = run_cli(["study", "--data", str(quick_study["data"]), "--out",
                         str(tmp_path / "run"), "--quick", "--models", "scratch",
                         "--eval-data", f"x={tmp_path / 'nowhere'}", "--no-progress"])
    assert code == 2 and "not found" in err
    assert not (tmp_path / "run").exists()


# ---- metrics --------------------------------------------------------------------------------

def test_fast_ranking_metrics_equal_sklearn():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from aigen.study.metrics import fast_ranking_metrics

    rng = np.random.default_rng(3)
    for n, decimals in ((6, 1), (50, 1), (300, 3)):  # rounding makes ties
        y = rng.integers(0, 2, n)
        p = np.round(rng.random(n), decimals)
        fast = fast_ranking_metrics(y, p)
        assert fast["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert fast["average_precision"] == pytest.approx(average_precision_score(y, p),
                                                          abs=1e-12)
    assert fast_ranking_metrics([1, 1], [0.2, 0.9]) == {"roc_auc": None,
                                                        "average_precision": None}


def test_threshold_metrics_and_calibration():
    from aigen.study.metrics import (choose_threshold, expected_calibration_error,
                                     threshold_metrics)

    y = np.array([0, 0, 0, 1])
    p = np.array([0.1, 0.6, 0.2, 0.7])
    m = threshold_metrics(y, p)
    assert m == {"accuracy": 0.75, "balanced_accuracy": pytest.approx((2 / 3 + 1) / 2),
                 "accuracy_real": pytest.approx(2 / 3), "accuracy_ai": 1.0}
    # ranked perfectly but miscalibrated: a threshold above 0.6 separates the classes
    assert choose_threshold(y, p) == pytest.approx(0.7)
    assert threshold_metrics(y, p, 0.7)["balanced_accuracy"] == 1.0
    assert threshold_metrics([1, 1], [0.9, 0.1])["balanced_accuracy"] is None
    assert choose_threshold([1, 1], [0.9, 0.1]) is None
    # ECE: bins [0.1,0.2) -> y 0, p .1 ; [0.2,.3) -> 0/.2 ; [.6,.7) -> 0/.6 ; [.7,.8) -> 1/.7
    assert expected_calibration_error(y, p) == pytest.approx((0.1 + 0.2 + 0.6 + 0.3) / 4)
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0


def test_bootstrap_is_seeded_and_covers_the_estimate():
    from aigen.study.metrics import bootstrap_cis, detector_metrics, summarize_bootstrap

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    probs = [np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1) for _ in range(2)]
    fn = lambda yy, pp, k: detector_metrics(yy, pp, 0.5, fast=True)  # noqa: E731
    a = bootstrap_cis(y, probs, fn, n_resamples=200)
    assert a == bootstrap_cis(y, probs, fn, n_resamples=200)
    mean_auc = np.mean([detector_metrics(y, p)["roc_auc"] for p in probs])
    assert a["roc_auc"][0] < mean_auc < a["roc_auc"][1]
    assert a["roc_auc"][1] - a["roc_auc"][0] < 0.2
    # a proportion at 1.0 gets the Wilson interval, not a zero-width one
    s = summarize_bootstrap([1.0], [1.0, 1.0], n=20)
    assert s["ci_method"] == "wilson" and s["ci95"][0] < 0.9


def test_source_of():
    from aigen.data.discover import source_of

    folders = {"ai": 1, "real/photos": 0}
    assert source_of("ai/stable_diffusion/x.png", folders) == "stable_diffusion"
    assert source_of("ai/x.png", folders) == "ai"
    assert source_of("real/photos/coco/a/b.jpg", folders) == "coco"
    assert source_of("real/photos/b.jpg", folders) == "photos"


# ---- the external set of ../shared ------------------------------------------------------------

@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.skipif(not SD_COCO.is_dir(), reason="../shared/data/sd_coco is absent")
def test_sd_coco_sources(quick_study, tmp_path):
    assert quick_study["code"] == 0
    before = snapshot(SD_COCO)
    out = tmp_path / "eval"
    code, stdout, err = run_cli(["evaluate", "--run", str(quick_study["out"]), "--data",
                              str(SD_COCO), "--out", str(out), "--models", "scratch_cnn",
                              "--no-progress"])
    assert code == 0, err
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["data"]["sources"] == {"coco": {"label": 0, "n": 150},
                                     "imagenet": {"label": 0, "n": 50},
                                     "stable_diffusion": {"label": 1, "n": 200}}
    assert ev["data"]["n_per_class"] == {"ai": 200, "real": 200}
    assert ev["overlap"]["exact_duplicates_of_training"] == 0
    m = ev["models"]["scratch_cnn"]
    assert set(m["by_source"]) == {"coco", "imagenet", "stable_diffusion"}
    assert m["n"] == 400
    assert snapshot(SD_COCO) == before
