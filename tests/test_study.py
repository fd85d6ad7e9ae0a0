"""The study end to end (`aigen study`): the results-folder contract, seeds, bad input, interrupts;
and the study's parts (figures, report) on small inputs; the degradation sweep is in test_sweep.py.

The expensive run (`--quick` with efficientnet_lite0) happens once per session: the `quick_study`
fixture in conftest.py. Further runs here train only the scratch CNN for an epoch or two.
"""

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from aigen import cli
from aigen.study import figures, report, sweep
from aigen.study.stages import data as data_stage
from aigen.study.stages import train as train_stage
from helpers import read_csv, run_cli

MODELS = {"scratch_cnn", "efficientnet_lite0_frozen", "efficientnet_lite0_finetuned"}
N_PER_CLASS = 20  # good images per class in the generated folder


_AUDITS = {}


def _memoised_audit(real_audit):
    """The real shortcut audit, computed once per dataset content and seed: the cheap runs below
    all use the same generated images, and the audit (dozens of random forests) dominates them."""
    def audit(dataset, seed=0, folds=5, metadata=None, progress=False):
        key = (dataset.manifest_sha256(), seed, folds, metadata is None)
        if key not in _AUDITS:
            _AUDITS[key] = real_audit(dataset, seed=seed, folds=folds, metadata=metadata)
        return _AUDITS[key]
    return audit


@pytest.fixture
def audit_once(monkeypatch):
    from aigen.data import explore

    monkeypatch.setattr(explore, "shortcut_audit", _memoised_audit(explore.shortcut_audit))


def scratch_argv(data, out, *extra):
    """A cheap study: the scratch CNN only, tiny epochs, no progress bars, no spectra."""
    return ["study", "--data", str(data), "--out", str(out), "--models", "scratch",
            "--scratch-epochs", "1", "--scratch-lrs", "0.01", "--workers", "1", "--no-progress",
            "--device", "cpu", "--spectrum-images", "0", *extra]


# ----------------------------------------------------------------------------------------------
# The quick run: every file of the results folder


@pytest.fixture(scope="module")
def run(quick_study):
    assert quick_study["code"] == 0, quick_study["stderr"]
    out = quick_study["out"]
    return {**quick_study,
            "results": json.loads((out / "results.json").read_text()),
            "config": json.loads((out / "config.json").read_text()),
            "split": read_csv(out / "split.csv"),
            "predictions": read_csv(out / "predictions.csv"),
            "history": read_csv(out / "history.csv")}


def test_every_file_of_the_contract_is_there(run):
    out = run["out"]
    for name in ("results.json", "config.json", "report.md", "split.csv", "skipped.csv",
                 "predictions.csv", "history.csv"):
        assert (out / name).is_file(), name
    for name in ("confusion_matrices.png", "roc_curves.png", "lr_study.png", "spectra.png",
                 "filters_scratch_cnn.png", *(f"gradcam_{m}.png" for m in MODELS - {"scratch_cnn"}),
                 *(f"sweep_{p}.png" for p in sweep.PERTURBATIONS),
                 *(f"curves_{m}.png" for m in MODELS)):
        with Image.open(out / "figures" / name) as im:
            assert im.width > 200 and im.height > 200
    for model in MODELS:
        suffix = "npz" if model == "scratch_cnn" else "pt"
        assert (out / "checkpoints" / f"{model}_seed0.{suffix}").is_file()
    # The hidden working folder was renamed into place: nothing else is left beside it.
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []
    assert not list(out.rglob("*.part"))


def test_terminal_shows_the_table_and_the_report(run):
    stdout = run["stdout"]
    for model in MODELS:
        assert model in stdout
    assert "metadata only" in stdout
    # the majority-class rate beside the audit's classifier, as in report.md
    results = json.loads((run["out"] / "results.json").read_text())
    majority = results["shortcut_audit"]["majority_baseline"]
    assert re.search(rf"majority class \(baseline\)\s+–\s+–\s+{majority:.3f}", stdout)
    assert f"report: {run['out'] / 'report.md'}" in stdout
    assert "skipped resnet18_frozen" in stdout


def test_results_models_and_skipped_backbone(run):
    results = run["results"]
    assert set(results["models"]) == MODELS
    assert set(results["skipped_models"]) == {"resnet18_frozen", "resnet18_finetuned"}
    assert "weights" in results["skipped_models"]["resnet18_frozen"]
    assert results["seeds"] == [0]
    for name, m in results["models"].items():
        for part in ("train", "val", "test"):
            acc = m[f"{part}_accuracy"]
            assert set(acc) >= {"mean", "std", "per_seed", "ci95"}
            assert len(acc["per_seed"]) == 1 and acc["std"] == 0.0
            lo, hi = acc["ci95"]  # one seed: Wilson interval over the split's images
            assert 0.0 <= lo <= acc["mean"] <= hi <= 1.0
        assert 0 < m["trainable_params"] <= m["n_params"]
        assert m["weights_source"]
    scratch = results["models"]["scratch_cnn"]
    assert scratch["n_params"] == scratch["trainable_params"] == 8 * 9 + 8 + 225 * 8 + 1
    frozen = results["models"]["efficientnet_lite0_frozen"]
    finetuned = results["models"]["efficientnet_lite0_finetuned"]
    assert frozen["pretrained"] and "ImageNet" in frozen["weights_source"]
    assert frozen["trainable_params"] < finetuned["trainable_params"] < finetuned["n_params"]


def test_metrics_agree_with_the_predictions_file(run):
    results, preds = run["results"], run["predictions"]
    n_test = sum(row["split"] == "test" for row in run["split"])
    for name, m in results["models"].items():
        rows = [r for r in preds if r["model"] == name and r["split"] == "test"]
        assert len(rows) == n_test
        correct = sum((float(r["prob_ai"]) >= 0.5) == (r["label"] == "1") for r in rows)
        assert m["test_accuracy"]["per_seed"] == [pytest.approx(correct / n_test)]
        cm = np.array(m["test_metrics"]["aggregate"]["confusion_matrix"])
        assert cm.sum() == n_test
        assert cm[1].sum() == sum(r["label"] == "1" for r in rows)  # row 1: true ai
        per_seed = m["test_metrics"]["per_seed"][0]
        assert set(per_seed["per_class"]) == {"ai", "real"}
        assert per_seed["roc_auc"] is None or 0.0 <= per_seed["roc_auc"] <= 1.0


def test_split_covers_exactly_the_loaded_images(run):
    from aigen.io import escape_undecodable

    data = run["data"]
    good = sorted(escape_undecodable(p.relative_to(data).as_posix())
                  for p in data.rglob("*_[0-9][0-9].*"))
    rows = run["split"]
    assert list(rows[0]) == ["set", "path", "sha256", "label", "split"]
    assert {r["set"] for r in rows} == {data.name}  # one training set, named after its folder
    assert sorted(r["path"] for r in rows) == good
    assert "ai/caf\\xe9_19.jpg" in good  # the file name that is not UTF-8, its byte as \xNN
    for r in rows[:5]:
        assert r["sha256"] == hashlib.sha256((data / r["path"]).read_bytes()).hexdigest()
    for label in ("0", "1"):
        counts = {s: sum(r["label"] == label and r["split"] == s for r in rows)
                  for s in ("train", "val", "test")}
        assert counts == {"train": 14, "val": 3, "test": 3}  # 70/15/15 of 20 per class


def test_skipped_csv_lists_the_broken_files(run):
    rows = read_csv(run["out"] / "skipped.csv")
    assert sorted(Path(r["path"]).name for r in rows) == ["broken.jpg", "truncated.jpg"]
    assert all(r["reason"] for r in rows)
    assert run["results"]["data"]["n_skipped"] == 2
    assert run["results"]["data"]["n_images"] == 2 * N_PER_CLASS


def test_predictions_cover_images_models_and_seeds(run):
    preds = run["predictions"]
    assert list(preds[0]) == ["set", "path", "model", "seed", "split", "label", "prob_ai"]
    assert len(preds) == 2 * N_PER_CLASS * len(MODELS) * 1
    split = {r["path"]: (r["split"], r["label"]) for r in run["split"]}
    for r in preds:
        assert (r["split"], r["label"]) == split[r["path"]]
        assert 0.0 <= float(r["prob_ai"]) <= 1.0
    assert len({(r["path"], r["model"], r["seed"]) for r in preds}) == len(preds)


def test_history_has_one_row_per_epoch(run):
    history = run["history"]
    assert list(history[0]) == ["model", "seed", "epoch", "train_loss", "train_acc", "val_loss",
                                "val_acc"]
    for model in MODELS:  # --quick: one epoch
        rows = [r for r in history if r["model"] == model]
        assert [(r["seed"], r["epoch"]) for r in rows] == [("0", "1")]
        assert np.isfinite(float(rows[0]["train_loss"])) and 0 <= float(rows[0]["val_acc"]) <= 1
    assert {r["model"] for r in history} - MODELS == {"scratch_cnn_lr0.01", "scratch_cnn_lr0.1"}


def test_config_records_the_environment(run):
    config, results = run["config"], run["results"]
    env = config["environment"]
    assert env["packages"]["torch"] and env["packages"]["numpy"] and env["python"]
    assert "commit" in env["git"]  # a sha in a git checkout, None elsewhere
    assert env["threads"]["cpu_count"] >= 1
    assert config["data"]["manifest_sha256"] == results["data"]["manifest_sha256"]
    assert len(config["data"]["manifest_sha256"]) == 64
    assert config["arguments"]["quick"] is True and config["arguments"]["init"] == "pretrained"
    assert config["resolved"]["hyperparameters"]["finetuned"]["epochs"] == 1
    assert config["device"] == "cpu"
    assert config["wall_seconds"]["total"] > 0
    assert "efficientnet_lite0" in config["backbones"]


def test_report_states_the_data_and_the_skipped_backbone(run):
    text = (run["out"] / "report.md").read_text()
    assert "user-supplied image folder" in text
    assert "resnet18_frozen" in text and "Skipped models" in text
    assert "metadata only (shortcut audit)" in text
    assert "Quick smoke run" in text
    assert "## Degradation sweep" in text and "How to read it" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) >= 7
    for link in links:
        assert (run["out"] / link).is_file(), link


def test_sweep_and_lr_study(run):
    results = run["results"]
    swept = results["sweep"]
    n_test = sum(row["split"] == "test" for row in run["split"])
    assert swept["n_images"] == n_test
    assert set(swept["models"]) == MODELS
    assert list(swept["perturbations"]) == list(sweep.PERTURBATIONS)
    n_non_jpeg = sum(row["split"] == "test" and not row["path"].endswith(".jpg")
                     for row in run["split"])
    for name, per_pert in swept["models"].items():
        for key, points in per_pert.items():
            assert [p["strength"] for p in points] == [None, *sweep.PERTURBATIONS[key].strengths]
            assert all(p["n"] == [n_non_jpeg if key == "format_swap" else n_test] for p in points)
            for p in points:
                assert 0.0 <= p["accuracy"]["mean"] <= 1.0
                assert p["accuracy"]["change"] == pytest.approx(
                    p["accuracy"]["mean"] - points[0]["accuracy"]["mean"])
        # The tiny images are decoded at full size by the dataset too: the clean points are the
        # comparison table's test accuracy.
        assert per_pert["jpeg"][0]["accuracy"]["per_seed"] == \
            results["models"][name]["test_accuracy"]["per_seed"]
    runs = results["lr_study"]["runs"]
    assert set(runs) == {"0.01", "0.1"}
    # The main scratch run already used lr 0.01: the study reuses it rather than retraining.
    assert runs["0.01"]["test_accuracy"]["mean"] == pytest.approx(
        results["models"]["scratch_cnn"]["test_accuracy"]["mean"])


def test_diagnostics(run):
    diag = run["results"]["diagnostics"]
    spectra = diag["spectra"]
    assert {k: c["n"] for k, c in spectra["classes"].items()} == {"ai": N_PER_CLASS,
                                                                  "real": N_PER_CLASS}
    assert isinstance(spectra["difference"]["concentrated_at_high_frequency"], bool)
    assert set(diag["gradcam"]) == MODELS - {"scratch_cnn"}
    test = {r["path"]: r["label"] for r in run["split"] if r["split"] == "test"}
    for name, g in diag["gradcam"].items():
        assert g["seed"] == 0 and g["examples"]
        for e in g["examples"]:  # test images, each in the group its prediction puts it in
            assert str(e["label"]) == test[e["path"]]
            correct = (e["prob_ai"] >= 0.5) == (e["label"] == 1)
            assert e["group"] == f"{'ai' if e['label'] == 1 else 'real'}, " \
                f"{'correct' if correct else 'wrong'}"
    scratch = diag["scratch_filters"]
    assert scratch["filters"] == 8 and len(scratch["examples"]) == 4
    assert {e["label"] for e in scratch["examples"]} == {0, 1}
    text = (run["out"] / "report.md").read_text()
    for heading in ("## What the models look at", "### Frequency spectra of the two classes",
                    "### Grad-CAM heat maps", "### The scratch CNN's filters"):
        assert heading in text
    assert "(figures/gradcam_efficientnet_lite0_frozen.png)" in text
    assert "(figures/filters_scratch_cnn.png)" in text and "(figures/spectra.png)" in text


def test_synthetic_data_is_stated_plainly(run):
    results = json.loads(json.dumps(run["results"]))
    results["data"]["kind"] = "synthetic"
    text = report.build_report(results, run["config"], {})
    assert "synthetic proxy" in text and "nothing about real AI-generated images" in text


# ----------------------------------------------------------------------------------------------
# Seeds, reproducibility, reuse of a split


@pytest.fixture(scope="module")
def two_seed_runs(tmp_path_factory, make_study_images):
    """The same two-seed scratch study twice (for mean/std and reproducibility)."""
    base = tmp_path_factory.mktemp("two-seeds")
    data = make_study_images(base / "data")
    outs = []
    with pytest.MonkeyPatch.context() as mp:
        from aigen.data import explore

        mp.setattr(explore, "shortcut_audit", _memoised_audit(explore.shortcut_audit))
        mp.setenv("AIGEN_CACHE_DIR", str(base / "cache"))
        for k in range(2):
            out = base / f"out{k}"
            code, _, err = run_cli(scratch_argv(data, out, "--seeds", "0", "1",
                                                "--scratch-epochs", "2"))
            assert code == 0, err
            outs.append(out)
    return data, outs


def test_two_seeds_mean_std_and_interval(two_seed_runs):
    _, (out, _) = two_seed_runs
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1]
    preds = read_csv(out / "predictions.csv")
    assert len(preds) == 2 * N_PER_CLASS * 1 * 2
    per_seed = []
    for seed in ("0", "1"):
        rows = [r for r in preds if r["seed"] == seed and r["split"] == "test"]
        per_seed.append(np.mean([(float(r["prob_ai"]) >= 0.5) == (r["label"] == "1")
                                 for r in rows]))
    acc = results["models"]["scratch_cnn"]["test_accuracy"]
    assert acc["per_seed"] == pytest.approx(per_seed)
    assert acc["mean"] == pytest.approx(np.mean(per_seed))
    assert acc["std"] == pytest.approx(np.std(per_seed, ddof=1))
    if acc["std"] > 0:
        lo, hi = stats.t.interval(0.95, 1, loc=np.mean(per_seed), scale=stats.sem(per_seed))
        assert acc["ci95"] == pytest.approx([max(0.0, lo), min(1.0, hi)])
    cm = results["models"]["scratch_cnn"]["test_metrics"]["aggregate"]["confusion_matrix"]
    assert np.sum(cm) == sum(r["split"] == "test" for r in preds)
    history = read_csv(out / "history.csv")
    assert len([r for r in history if r["model"] == "scratch_cnn"]) == 2 * 2  # seeds x epochs


def test_each_seed_has_its_own_split_file(two_seed_runs):
    _, (out, _) = two_seed_runs
    first, second = read_csv(out / "split.csv"), read_csv(out / "split_seed1.csv")
    assert [r["path"] for r in first] == [r["path"] for r in second]
    assert [r["split"] for r in first] != [r["split"] for r in second]
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["splits"]["1"]["file"] == "split_seed1.csv"


def test_same_seeds_give_identical_results(two_seed_runs):
    _, (a, b) = two_seed_runs
    assert (a / "results.json").read_text() == (b / "results.json").read_text()
    assert (a / "predictions.csv").read_text() == (b / "predictions.csv").read_text()
    assert (a / "history.csv").read_text() == (b / "history.csv").read_text()


def test_split_file_is_reused_exactly(two_seed_runs, tmp_path, audit_once):
    data, (first, _) = two_seed_runs
    out = tmp_path / "reuse"
    # Seed 0 with seed 1's split: the split comes from the file, not from the seed.
    code, _, err = run_cli(scratch_argv(data, out, "--seeds", "0", "--split-file",
                                        str(first / "split_seed1.csv")))
    assert code == 0, err
    assert (out / "split.csv").read_text() == (first / "split_seed1.csv").read_text()
    assert (out / "split.csv").read_text() != (first / "split.csv").read_text()


# ----------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit code 2, nothing left behind


def assert_one_line_error(code, err, *words):
    assert code == 2
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert lines[-1].startswith("aigen study: error: ")
    for word in words:
        assert word in lines[-1]


def test_missing_data_folder(tmp_path):
    code, _, err = run_cli(scratch_argv(tmp_path / "nope", tmp_path / "out"))
    assert_one_line_error(code, err, "not found", "nope")
    assert not (tmp_path / "out").exists()


def test_empty_dataset(tmp_path):
    for cls in ("ai", "real"):
        (tmp_path / "data" / cls).mkdir(parents=True)
    (tmp_path / "data" / "ai" / "junk.png").write_bytes(b"junk")
    code, _, err = run_cli(scratch_argv(tmp_path / "data", tmp_path / "out"))
    assert_one_line_error(code, err, "no usable")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no results, no partial


def test_best_checkpoint_reports_the_best_validation_epoch(tmp_path, make_study_images):
    # With these settings validation accuracy peaks at epoch 2 or 3 and falls back by epoch 5, so
    # "best" and "last" give different models.
    data = make_study_images(tmp_path / "data", n_per_class=30)
    argv = scratch_argv(data, tmp_path / "out", "--checkpoint", "best", "--scratch-lr", "0.05")
    argv[argv.index("--scratch-epochs") + 1] = "5"
    argv[argv.index("--scratch-lrs") + 1] = "0.05"
    code, _, err = run_cli(argv)
    assert code == 0, err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    model = results["models"]["scratch_cnn"]
    assert model["hyperparameters"]["checkpoint"] == "best"
    with open(tmp_path / "out" / "history.csv", newline="") as f:
        val_accs = [float(r["val_acc"]) for r in csv.DictReader(f) if r["model"] == "scratch_cnn"]
    assert len(val_accs) == 5 and max(val_accs) > val_accs[-1]
    assert model["val_accuracy"]["mean"] == pytest.approx(max(val_accs))


@pytest.mark.parametrize("extra, words", [
    (["--weights", "{tmp}/missing.pth"], ["does not exist", "missing.pth"]),
    (["--weights", "{tmp}/wrong.pth"], ["f37072fd"]),
    (["--weights", "{tmp}/wrong.pth", "--init", "random"], ["contradict"]),
])
def test_bad_weights_options_fail_before_any_work(tmp_path, make_study_images, extra, words):
    data = make_study_images(tmp_path / "data", n_per_class=3)
    (tmp_path / "wrong.pth").write_bytes(b"not resnet18 weights")
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    argv = ["study", "--data", str(data), "--out", str(tmp_path / "out"), "--models", "frozen",
            "--backbones", "resnet18", "--no-progress", *extra]
    code, _, err = run_cli(argv)
    assert_one_line_error(code, err, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "wrong.pth"]


def test_unwritable_out(tmp_path, make_study_images):
    data = make_study_images(tmp_path / "data", n_per_class=3)
    (tmp_path / "file").write_text("a file, not a folder")
    code, _, err = run_cli(scratch_argv(data, tmp_path / "file" / "out"))
    assert_one_line_error(code, err, "cannot write the folder")


@pytest.mark.parametrize("size_kib", [64, 256])
def test_a_full_disk_under_out_is_a_one_line_error(tmp_path, make_study_images, small_disk,
                                                   audit_once, size_kib):
    """--out on a full tmpfs: a small disk fills while the exploration figures are written, a
    larger one later (checkpoints, results); either way one line naming the folder. Nothing is
    left on the disk but, when a model had finished, the partial folder to resume from."""
    data = make_study_images(tmp_path / "data", n_per_class=6)
    disk = small_disk(size_kib)
    code, _, err = run_cli(scratch_argv(data, disk / "out"))
    assert_one_line_error(code, err, f"cannot write into {disk}/.out.", "no space left on its disk")
    left = list(disk.iterdir())
    assert left in ([], [disk / ".out.partial"])
    if left:
        assert f"aigen study --resume {disk / 'out'}" in err


def test_out_holding_results_is_refused(tmp_path, make_study_images):
    data = make_study_images(tmp_path / "data", n_per_class=3)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.json").write_text("{}")
    code, _, err = run_cli(scratch_argv(data, tmp_path / "out"))
    assert_one_line_error(code, err, "non-empty folder", "never overwritten")
    assert (tmp_path / "out" / "results.json").read_text() == "{}"


def test_a_run_where_no_model_can_be_trained_is_an_error(tmp_path, make_study_images, monkeypatch):
    data = make_study_images(tmp_path / "data", n_per_class=3)
    monkeypatch.setenv("AIGEN_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    code, _, err = run_cli(["study", "--data", str(data), "--out", str(tmp_path / "out"),
                            "--models", "frozen", "--backbones", "resnet18", "--workers", "1",
                            "--no-progress", "--device", "cpu"])
    assert_one_line_error(code, err, "no model could be trained", "resnet18_frozen")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))  # nothing left


def test_lr_study_keys_and_repeated_options(tmp_path, make_study_images):
    data = make_study_images(tmp_path / "data", n_per_class=6)
    argv = scratch_argv(data, tmp_path / "out")
    argv[argv.index("--scratch-lrs") + 1: argv.index("--scratch-lrs") + 2] = [
        "0.01", "0.0100001", "0.01"]
    code, _, err = run_cli(argv)
    assert code == 0, err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(results["lr_study"]["runs"]) == ["0.01", "0.0100001"]  # distinct, none lost
    with open(tmp_path / "out" / "history.csv", newline="") as f:
        names = {r["model"] for r in csv.DictReader(f)}
    assert names == {"scratch_cnn", "scratch_cnn_lr0.01", "scratch_cnn_lr0.0100001"}


def test_out_inside_the_data_folder_is_refused(tmp_path, make_study_images):
    data = make_study_images(tmp_path / "data", n_per_class=3)
    code, _, err = run_cli(scratch_argv(data, data / "results"))
    assert_one_line_error(code, err, "inside the data folder")
    assert not (data / "results").exists()


def test_interrupted_run_leaves_nothing(tmp_path, make_study_images, monkeypatch, audit_once):
    data = make_study_images(tmp_path / "data")

    def interrupt(ctx, *args):  # after the data, exploration and split files have been written
        assert (ctx.work / "split.csv").is_file() and (ctx.work / "skipped.csv").is_file()
        raise KeyboardInterrupt

    monkeypatch.setattr(train_stage, "train_protocol", interrupt)
    code, _, err = run_cli(scratch_argv(data, tmp_path / "out"))
    assert code == 130 and "interrupted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# ----------------------------------------------------------------------------------------------
# Parts


def test_data_kind_recognises_the_synthetic_dataset(tmp_path):
    from aigen.data import synth

    assert data_stage.data_kind(tmp_path)[0] == "real"
    (tmp_path / synth.MANIFEST_NAME).write_text(json.dumps(
        {"generator": synth.GENERATOR_NAME, "generator_version": 1, "seed": 0,
         "difficulty": 0.5}))
    kind, description = data_stage.data_kind(tmp_path)
    assert kind == "synthetic" and "proxy" in description


def test_figures_from_plain_data(tmp_path):
    history = [{"seed": s, "epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e,
                "train_acc": 0.5 + e / 10, "val_acc": 0.5 + e / 20} for s in (0, 1)
               for e in (1, 2, 3)]
    figures.training_curves(history, "model", tmp_path / "curves.png")
    figures.confusion_matrices({"a": [[5, 1], [2, 4]], "b": [[6, 0], [0, 6]]},
                               tmp_path / "cm.png")
    y = np.array([0, 0, 1, 1, 1])
    figures.roc_curves({"a": [(y, np.array([0.1, 0.6, 0.4, 0.8, 0.9]))],
                        "one class": [(np.ones(3), np.array([0.2, 0.5, 0.9]))]},
                       tmp_path / "roc.png")
    summary = lambda m: {"mean": m, "std": 0.01, "per_seed": [m]}  # noqa: E731
    lr_runs = {lr: {f"{p}_accuracy": summary(0.6) for p in ("train", "val", "test")}
               for lr in ("0.01", "0.1")}
    figures.lr_study(lr_runs, [{**h, "lr": "0.01"} for h in history], tmp_path / "lr.png")
    for name in ("curves", "cm", "roc", "lr"):
        with Image.open(tmp_path / f"{name}.png") as im:
            assert im.format == "PNG" and im.width > 300


def test_every_option_has_help_that_shows_its_default():
    """`aigen COMMAND --help`: no option without help text, and every option with a value says
    its default; the top-level description says what aigen does."""
    import argparse

    parser = cli.build_parser()
    assert "AI-generated images from real photographs" in parser.description
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, (name, action.option_strings)
            flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
            if action.default not in (None, argparse.SUPPRESS) and not flag:
                assert "default" in action.help, (name, action.option_strings)
