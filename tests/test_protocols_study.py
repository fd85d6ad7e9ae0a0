"""`aigen study --harmonize ... --augment ...` end to end on tiny generated data: every protocol's
results under its own key, distinguishable files, `aigen predict` / `aigen evaluate` with each
protocol's own preprocessing, the report's raw-vs-harmonised table, and --resume."""

import csv
import io
import json

import numpy as np
import pytest

from aigen.data import explore
from aigen.data.preprocess import BACKBONE, SCRATCH, load_model_input
from aigen.study.stages import score
from helpers import forbid_training, read_csv, run_cli, run_tiny_study

PROTOCOLS = ["none/none", "none/blurjpeg", "jpeg:96/none", "jpeg:96/blurjpeg"]
BACKBONE_MODELS = {"efficientnet_lite0_frozen", "efficientnet_lite0_finetuned"}


@pytest.fixture(scope="module")
def study(tmp_path_factory, make_study_images):
    """The issue's command with --quick, on the tiny folder (efficientnet_lite0 only)."""
    base = tmp_path_factory.mktemp("protocols")
    data = make_study_images(base / "data", n_per_class=12)
    out = base / "out"
    stdout = run_tiny_study(data, out, base / "cache", "--quick", "--backbones",
                            "efficientnet_lite0", "--harmonize", "none", "jpeg:96", "--augment",
                            "none", "blurjpeg", "--scratch-lrs", "0.01")
    return {"data": data, "out": out, "stdout": stdout, "base": base,
            "results": json.loads((out / "results.json").read_text()),
            "config": json.loads((out / "config.json").read_text())}


def test_every_protocol_has_its_own_key_and_the_default_stays_on_top(study):
    results, config = study["results"], study["config"]
    protocols = results["protocols"]
    assert list(protocols) == PROTOCOLS
    assert results["models"] == protocols["none/none"]["models"]
    assert results["sweep"] == protocols["none/none"]["sweep"]
    for key, p in protocols.items():
        assert (p["harmonize"], p["augment"]) == tuple(key.split("/"))
        assert BACKBONE_MODELS <= set(p["models"])
        # The scratch CNN is never augmented: trained once per harmonisation.
        assert ("scratch_cnn" in p["models"]) == (p["augment"] == "none")
        assert ("scratch_not_augmented" in p) == (p["augment"] != "none")
        for name, m in p["models"].items():
            assert (m["protocol"], m["harmonize"]) == (key, p["harmonize"])
            assert m["augment"] == ("none" if name == "scratch_cnn" else p["augment"])
            assert name in p["sweep"]["models"]
            assert m["test_accuracy"]["mean"] is not None
    assert config["arguments"]["harmonize"] == ["none", "jpeg:96"]
    assert config["arguments"]["augment"] == ["none", "blurjpeg"]
    assert [p["key"] for p in config["resolved"]["protocols"]] == PROTOCOLS
    assert protocols["jpeg:96/none"]["jpeg_settings"]["subsampling"] == 2


def test_files_are_distinguishable_per_protocol(study):
    out, results = study["out"], study["results"]
    run_names = set()
    for key, p in results["protocols"].items():
        tag = key.replace(":", "").replace("/", "-")
        for name, m in p["models"].items():
            expected = name if key == "none/none" else f"{name}@{tag}"
            assert m["run_name"] == expected
            assert m["checkpoints"]["0"] == f"checkpoints/{expected}_seed0." + (
                "npz" if name == "scratch_cnn" else "pt")
            assert (out / m["checkpoints"]["0"]).is_file()
            run_names.add(expected)
    assert len(run_names) == 10  # 2 scratch + 4 protocols x 2 backbone models
    predictions = read_csv(out / "predictions.csv")
    assert {r["model"] for r in predictions} == run_names
    assert {r["model"] for r in read_csv(out / "history.csv")} >= run_names
    # Augmented models differ from the unaugmented ones trained on the same split.
    prob = {(r["model"], r["path"]): float(r["prob_ai"]) for r in predictions}
    paths = {r["path"] for r in predictions}
    assert any(prob[("efficientnet_lite0_finetuned", p)]
               != prob[("efficientnet_lite0_finetuned@none-blurjpeg", p)] for p in paths)


def test_report_puts_raw_and_harmonised_side_by_side(study):
    report = (study["out"] / "report.md").read_text()
    assert "raw vs harmonised" in report
    assert "test accuracy (none)" in report and "test ROC-AUC (jpeg:96)" in report
    section = report.split("raw vs harmonised")[1]
    assert "`efficientnet_lite0_frozen` | blurjpeg" in section
    assert "`scratch_cnn` | none (never augmented)" in section
    assert "jpeg:96/blurjpeg" in study["stdout"]  # the terminal table names the protocols


def _a_test_image(study, model="efficientnet_lite0_frozen"):
    rows = [r for r in read_csv(study["out"] / "predictions.csv")
            if r["split"] == "test" and r["path"].isascii()]
    return study["data"] / rows[0]["path"], {r["model"]: float(r["prob_ai"])
                                             for r in read_csv(study["out"] / "predictions.csv")
                                             if r["path"] == rows[0]["path"]}


def test_predict_uses_each_protocols_preprocessing(study, monkeypatch):
    monkeypatch.setenv("AIGEN_CACHE_DIR", str(study["base"] / "cache"))
    monkeypatch.setenv("AIGEN_OFFLINE", "1")
    path, recorded = _a_test_image(study)
    for protocol, tag in (("none/none", ""), ("jpeg:96/none", "@jpeg96-none")):
        code, stdout, err = run_cli(["predict", "--run", str(study["out"]), "--protocol",
                                     protocol, "--no-progress", str(path)])
        assert code == 0, err
        rows = list(csv.DictReader(io.StringIO(stdout)))
        got = {r["model"]: float(r["prob_ai"]) for r in rows}
        assert set(got) == {f"{m}{tag}" for m in ("scratch_cnn", *BACKBONE_MODELS)}
        for name, p in got.items():
            assert p == pytest.approx(recorded[name], abs=1e-5)
    # The harmonised model given the raw input would score it differently: the match above is
    # the harmonisation, not a coincidence.
    from aigen.study.checkpoints import load_run_model
    from aigen.study.protocols import protocol_view

    _, _, policy, view = protocol_view(study["results"], "jpeg:96/none")
    assert policy == "resize"
    model = load_run_model(study["out"], view, "efficientnet_lite0_frozen@jpeg96-none", 0)
    raw = model.predict_proba(load_model_input(path, BACKBONE))[0]
    harmonised = model.predict_proba(load_model_input(path, BACKBONE.harmonized("jpeg:96")))[0]
    assert harmonised == pytest.approx(recorded["efficientnet_lite0_frozen@jpeg96-none"], abs=1e-5)
    assert abs(raw - harmonised) > 1e-7
    code, _, err = run_cli(["predict", "--run", str(study["out"]), "--protocol", "jpeg:50/none",
                            str(path)])
    assert code == 2 and "no protocol 'jpeg:50/none'" in err


def test_evaluate_uses_the_chosen_protocols_preprocessing(study, tmp_path, monkeypatch,
                                                          make_study_images):
    monkeypatch.setenv("AIGEN_CACHE_DIR", str(study["base"] / "cache"))
    monkeypatch.setenv("AIGEN_OFFLINE", "1")
    other = make_study_images(tmp_path / "other", n_per_class=4, seed=7)
    out = tmp_path / "eval"
    code, _, err = run_cli(["evaluate", "--run", str(study["out"]), "--data", str(other),
                            "--out", str(out), "--protocol", "jpeg:96/blurjpeg",
                            "--models", "efficientnet_lite0_frozen", "--workers", "1",
                            "--no-progress"])
    assert code == 0, err
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["protocol"] == "jpeg:96/blurjpeg"
    assert evaluation["preprocessing"]["harmonize"] == "jpeg:96"
    name = "efficientnet_lite0_frozen@jpeg96-blurjpeg"
    assert list(evaluation["models"]) == [name]
    row = next(r for r in read_csv(out / "predictions.csv") if r["path"].isascii())
    from aigen.study.checkpoints import load_run_model
    from aigen.study.protocols import protocol_view

    _, _, _, view = protocol_view(study["results"], "jpeg:96/blurjpeg")
    model = load_run_model(study["out"], view, name, 0)
    x = load_model_input(other / row["path"], BACKBONE.harmonized("jpeg:96"))
    assert float(row["prob_ai"]) == pytest.approx(model.predict_proba(x)[0], abs=1e-5)


def test_protocols_of_a_run_without_them(tmp_path):
    """A results.json written before protocols existed is one protocol, none/none."""
    from aigen.study.protocols import protocol_view

    results = {"models": {"scratch_cnn": {"regime": "scratch"}}, "seeds": [0]}
    key, harmonize, policy, view = protocol_view(results)
    assert (key, harmonize, policy, view["models"]) == ("none/none", "none", "resize",
                                                         results["models"])
    assert SCRATCH.harmonized(harmonize) == SCRATCH


def test_resume_with_protocols_trains_nothing_again(tmp_path, make_study_images, monkeypatch):
    """Interrupted after the last protocol's models: the resumed run reads every protocol's
    models back and reproduces the uninterrupted run's numbers."""
    monkeypatch.setattr(explore, "shortcut_audit", lambda *a, **k: {})
    monkeypatch.setattr(score, "degradation_sweep", no_sweep)  # not under test here
    monkeypatch.setattr(score, "diagnose", no_diagnostics)
    monkeypatch.setenv("AIGEN_OFFLINE", "1")
    data = make_study_images(tmp_path / "data", n_per_class=8)
    argv = lambda out: [  # noqa: E731
        "study", "--data", str(data), "--out", str(out), "--models", "scratch", "frozen",
        "--backbones", "efficientnet_lite0", "--init", "random", "--frozen-epochs", "1",
        "--scratch-epochs", "1", "--scratch-lrs", "0.01", "--harmonize", "jpeg:90",
        "--augment", "none", "flip", "--workers", "1", "--no-progress", "--device", "cpu"]
    code, _, err = run_cli(argv(tmp_path / "whole"))
    assert code == 0, err

    real_external = score.evaluate_sets

    def interrupt(ctx, data, splits, run):
        if run.protocol == ctx.protocols[-1]:
            raise KeyboardInterrupt
        return real_external(ctx, data, splits, run)

    monkeypatch.setattr(score, "evaluate_sets", interrupt)
    code, _, err = run_cli(argv(tmp_path / "out"))
    assert code == 130, err

    monkeypatch.setattr(score, "evaluate_sets", real_external)
    forbid_training(monkeypatch)
    code, _, err = run_cli(["study", "--resume", str(tmp_path / "out"), "--no-progress"])
    assert code == 0, err
    assert "efficientnet_lite0_frozen@jpeg90-flip seed 0: finished by the earlier attempt" in err
    assert "scratch_cnn seed 0: finished by the earlier attempt" in err
    for name in ("results.json", "predictions.csv", "history.csv"):
        whole, resumed = (tmp_path / "whole" / name).read_text(), (tmp_path / "out" / name).read_text()
        if name == "results.json":
            whole, resumed = json.loads(whole), json.loads(resumed)
        assert whole == resumed, name
    protocols = json.loads((tmp_path / "out" / "results.json").read_text())["protocols"]
    assert list(protocols) == ["jpeg:90/none", "jpeg:90/flip"]
    assert np.isfinite(protocols["jpeg:90/flip"]["models"]["efficientnet_lite0_frozen"][
        "test_accuracy"]["mean"])


def no_sweep(*args):
    return {}


def no_diagnostics(*args):
    return {}
