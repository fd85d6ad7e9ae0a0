"""`aigen study --input resize crop --harmonize none jpeg:96` end to end on tiny generated data:
crop protocols beside the resize ones, the side-by-side report, resize numbers unchanged by the
crop protocols, and `aigen predict` / `aigen evaluate` scoring with the crop protocol's windows."""

import csv
import io
import json

import numpy as np
import pytest

from aigen.study.stages import score
from aigen.data.preprocess import CROP, load_model_input
from helpers import read_csv, run_cli, run_tiny_study

PROTOCOLS = ["none/none", "jpeg:96/none", "crop/none/none", "crop/jpeg:96/none"]
BACKBONE_MODELS = {"efficientnet_lite0_frozen", "efficientnet_lite0_finetuned"}


def no_diagnostics(*args):
    return {}


def _study(data, out, cache, *extra):
    with pytest.MonkeyPatch.context() as mp:
        # Grad-CAM of a crop model (its centre window) is tested in test_crops.py.
        mp.setattr(score, "diagnose", no_diagnostics)
        return run_tiny_study(data, out, cache, "--quick", "--backbones", "efficientnet_lite0",
                              "--scratch-lrs", "0.01", "--spectrum-images", "0", *extra)


@pytest.fixture(scope="module")
def study(tmp_path_factory, make_study_images):
    base = tmp_path_factory.mktemp("crops")
    data = make_study_images(base / "data", n_per_class=8)
    other = make_study_images(base / "other", n_per_class=3, seed=7)
    out = base / "out"
    stdout = _study(data, out, base / "cache", "--input", "resize", "crop", "--harmonize", "none",
                    "jpeg:96", "--sweep", "format_swap", "--eval-data", f"other={other}")
    return {"data": data, "other": other, "out": out, "stdout": stdout, "base": base,
            "results": json.loads((out / "results.json").read_text()),
            "config": json.loads((out / "config.json").read_text())}


def test_crop_protocols_have_their_own_keys_names_and_records(study):
    results, config = study["results"], study["config"]
    protocols = results["protocols"]
    assert list(protocols) == PROTOCOLS
    assert results["models"] == protocols["none/none"]["models"]
    assert config["arguments"]["input"] == ["resize", "crop"]
    for key, p in protocols.items():
        crop = key.startswith("crop/")
        assert ("input" in p) == crop  # a resize record is the one written before --input
        assert BACKBONE_MODELS <= set(p["models"])
        # The scratch CNN keeps its resized input: trained in the resize protocols only.
        assert ("scratch_cnn" in p["models"]) == (not crop)
        for name, m in p["models"].items():
            tag = key.replace(":", "").replace("/", "-")
            assert m["run_name"] == (name if key == "none/none" else f"{name}@{tag}")
            assert (study["out"] / m["checkpoints"]["0"]).is_file()
            assert m["test_accuracy"]["mean"] is not None
            assert name in p["sweep"]["models"]
            assert m.get("input") == ("crop" if crop else None)
        if crop:
            assert p["input"] == "crop" and "32x32" in p["scratch_not_augmented"]
            assert p["crop"] == {"side": 384, "window": 224,
                                 "test_windows": [[80, 80], [0, 0], [0, 160], [160, 0],
                                                  [160, 160]]}
            # Every tiny test image is smaller than 384: every one is enlarged.
            counts = p["rescaled"]["per_class"]
            assert counts["ai"]["enlarged"] == counts["ai"]["enlarged"] + counts["ai"]["kept"] \
                + counts["ai"]["reduced"] > 0
            assert p["external"]["other"]["preprocessing"]["input"] == "crop"
        else:
            assert "input" not in p["external"]["other"]["preprocessing"]
    predictions = read_csv(study["out"] / "predictions.csv")
    prob = {(r["model"], r["path"]): float(r["prob_ai"]) for r in predictions}
    paths = {r["path"] for r in predictions}
    # The crop models are other models than the resized ones trained on the same split.
    assert any(prob[("efficientnet_lite0_finetuned", p)]
               != prob[("efficientnet_lite0_finetuned@crop-none-none", p)] for p in paths)
    assert (study["out"] / "external" / "other@crop-jpeg96-none" / "predictions.csv").is_file()


def test_report_puts_resize_and_crop_side_by_side(study):
    report = (study["out"] / "report.md").read_text()
    section = report.split("resized vs native-resolution crops")[1]
    assert "| model | input | augmentation | test accuracy (none) |" in section
    assert "`efficientnet_lite0_frozen` | crop | none |" in section
    assert "`efficientnet_lite0_frozen` | resize | none |" in section
    assert "`scratch_cnn` | resize (always) | none (never augmented) |" in section
    assert "Scaling to S = 384" in section and "ai: 100% enlarged" in section
    assert "crop/jpeg:96/none" in study["stdout"]


def test_resize_protocols_are_unchanged_by_the_crop_ones(study):
    """The same study without --input gives the resize protocols' files and numbers exactly."""
    out = study["base"] / "plain"
    _study(study["data"], out, study["base"] / "cache", "--harmonize", "none", "jpeg:96",
           "--sweep", "format_swap", "--eval-data", f"other={study['other']}")
    plain = json.loads((out / "results.json").read_text())
    assert list(plain["protocols"]) == PROTOCOLS[:2]
    for key in PROTOCOLS[:2]:
        assert plain["protocols"][key] == study["results"]["protocols"][key], key
    assert plain["models"] == study["results"]["models"]
    ours = [r for r in read_csv(study["out"] / "predictions.csv")
            if "@crop" not in r["model"]]
    assert read_csv(out / "predictions.csv") == ours
    for name in ("history.csv",):
        theirs = (out / name).read_text().splitlines()
        mine = [line for line in (study["out"] / name).read_text().splitlines()
                if "@crop" not in line]
        assert theirs == mine


def _a_test_image(study):
    rows = [r for r in read_csv(study["out"] / "predictions.csv")
            if r["split"] == "test" and r["path"].isascii()]
    path = rows[0]["path"]
    return study["data"] / path, {r["model"]: float(r["prob_ai"])
                                  for r in read_csv(study["out"] / "predictions.csv")
                                  if r["path"] == path}


def test_predict_with_a_crop_protocol_agrees_with_the_run(study, monkeypatch):
    monkeypatch.setenv("AIGEN_CACHE_DIR", str(study["base"] / "cache"))
    monkeypatch.setenv("AIGEN_OFFLINE", "1")
    path, recorded = _a_test_image(study)
    for protocol, tag in (("crop/none/none", "@crop-none-none"),
                          ("crop/jpeg:96/none", "@crop-jpeg96-none")):
        code, stdout, err = run_cli(["predict", "--run", str(study["out"]), "--protocol",
                                     protocol, "--no-progress", str(path)])
        assert code == 0, err
        got = {r["model"]: float(r["prob_ai"]) for r in csv.DictReader(io.StringIO(stdout))}
        assert set(got) == {f"{m}{tag}" for m in BACKBONE_MODELS}
        for name, p in got.items():
            assert p == pytest.approx(recorded[name], abs=1e-5)
    # The crop model scored on its centre window alone gives another probability: the match
    # above is the mean over the windows, not a coincidence.
    from aigen.study.checkpoints import load_run_model
    from aigen.study.protocols import protocol_view

    name = "efficientnet_lite0_finetuned@crop-none-none"
    _, _, policy, view = protocol_view(study["results"], "crop/none/none")
    assert policy == "crop"
    model = load_run_model(study["out"], view, name, 0)
    x = load_model_input(path, CROP)
    assert x.shape == (1, 5, 3, 224, 224)
    windows = model.predict_proba(x[0])
    assert np.mean(windows) == pytest.approx(recorded[name], abs=1e-5)
    assert abs(windows[0] - recorded[name]) > 1e-7


def test_evaluate_with_a_crop_protocol(study, tmp_path, monkeypatch):
    monkeypatch.setenv("AIGEN_CACHE_DIR", str(study["base"] / "cache"))
    monkeypatch.setenv("AIGEN_OFFLINE", "1")
    out = tmp_path / "eval"
    code, _, err = run_cli(["evaluate", "--run", str(study["out"]), "--data", str(study["other"]),
                            "--out", str(out), "--protocol", "crop/jpeg:96/none",
                            "--models", "efficientnet_lite0_frozen", "--workers", "1",
                            "--no-progress"])
    assert code == 0, err
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["preprocessing"] == {"max_pixels": evaluation["preprocessing"]["max_pixels"],
                                           "harmonize": "jpeg:96", "input": "crop"}
    # The same numbers as the study's own --eval-data of that protocol.
    ours = {(r["path"], r["model"]): r["prob_ai"] for r in read_csv(out / "predictions.csv")}
    study_rows = read_csv(study["out"] / "external" / "other@crop-jpeg96-none" / "predictions.csv")
    name = "efficientnet_lite0_frozen@crop-jpeg96-none"
    assert ours and all(float(ours[(r["path"], name)]) == pytest.approx(float(r["prob_ai"]),
                                                                        abs=1e-6)
                        for r in study_rows if r["model"] == name)
