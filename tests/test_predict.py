"""`aigen predict`: scoring files and folders with the checkpoints of a finished study run
(the session's quick run, see the `quick_study` fixture in conftest.py)."""

import csv
import io
from pathlib import Path

import pytest

from aigen import cli
from aigen.study import predict

MODELS = ["scratch_cnn", "efficientnet_lite0_frozen", "efficientnet_lite0_finetuned"]


@pytest.fixture(scope="module")
def run(quick_study):
    assert quick_study["code"] == 0, quick_study["stderr"]
    with open(quick_study["out"] / "predictions.csv", newline="") as f:
        study = {(r["path"], r["model"]): float(r["prob_ai"]) for r in csv.DictReader(f)
                 if r["seed"] == "0"}
    return {**quick_study, "study": study}


def predict_rows(capsys, argv):
    code = cli.main(["predict", *argv])
    captured = capsys.readouterr()
    rows = list(csv.reader(io.StringIO(captured.out)))
    return code, rows, captured.err


def test_reproduces_the_study_predictions(run, capsys):
    data = run["data"]
    files = sorted(data.rglob("*_0[0-4].*"))  # ten images, both classes, PNG and JPEG
    code, rows, err = predict_rows(capsys, ["--run", str(run["out"]), *map(str, files)])
    assert code == 0, err
    assert rows[0] == ["path", "model", "prob_ai", "label"]
    assert len(rows) - 1 == len(files) * len(MODELS)
    for path, model, prob, label in rows[1:]:
        rel = Path(path).relative_to(data).as_posix()  # printed as given: absolute here
        assert float(prob) == pytest.approx(run["study"][(rel, model)], abs=1e-5)
        assert label == ("ai" if float(prob) >= 0.5 else "real")
    assert {r[1] for r in rows[1:]} == set(MODELS)


def test_one_model_gives_three_columns(run, capsys):
    image = run["data"] / "ai" / "ai_00.png"
    code, rows, _ = predict_rows(capsys, ["--run", str(run["out"]), "--model", "scratch_cnn",
                                          str(image)])
    assert code == 0
    assert rows == [["path", "prob_ai", "label"],
                    [str(image), rows[1][1], "ai" if float(rows[1][1]) >= 0.5 else "real"]]
    assert float(rows[1][1]) == pytest.approx(run["study"][("ai/ai_00.png", "scratch_cnn")],
                                              abs=1e-6)


def test_folders_are_searched_and_bad_files_skipped_with_a_reason(run, capsys):
    code, rows, err = predict_rows(capsys, ["--run", str(run["out"]), "--model",
                                            "efficientnet_lite0_frozen", str(run["data"])])
    assert code == 0
    assert len(rows) - 1 == 40  # every good image, found recursively
    lines = [line for line in err.splitlines() if "skipped" in line]
    broken = next(line for line in lines if "broken.jpg" in line)
    truncated = next(line for line in lines if "truncated.jpg" in line)
    assert broken.split("broken.jpg: ", 1)[1]  # a reason follows the file name
    assert "truncated" in truncated or "decode" in truncated
    assert "2 file(s) skipped" in err


@pytest.mark.parametrize("argv, words", [
    (["--model", "nope"], ["no model 'nope'", "scratch_cnn"]),
    (["--model", "resnet18_frozen"], ["skipped in that run"]),
    (["--seed", "3"], ["no seed 3"]),
])
def test_bad_choices_are_user_errors(run, capsys, argv, words):
    code, _, err = predict_rows(capsys, ["--run", str(run["out"]), *argv,
                                         str(run["data"] / "ai" / "ai_00.png")])
    assert code == 2
    assert err.startswith("aigen predict: error: ") and "Traceback" not in err
    for word in words:
        assert word in err


def test_a_folder_that_is_not_a_run(tmp_path, capsys):
    code, _, err = predict_rows(capsys, ["--run", str(tmp_path), "x.png"])
    assert code == 2 and "not a finished `aigen study` results folder" in err
    code, _, err = predict_rows(capsys, ["--run", str(tmp_path / "missing"), "x.png"])
    assert code == 2 and "is not a folder" in err
    for results in ("[]", '{"models": {"m": {"regime": "scratch"}}}'):  # damaged or foreign
        (tmp_path / "results.json").write_text(results)
        (tmp_path / "config.json").write_text("{}")
        code, _, err = predict_rows(capsys, ["--run", str(tmp_path), "x.png"])
        assert code == 2 and "do not have the layout" in err and "Traceback" not in err


def test_a_fifo_is_skipped_not_read(run, capsys, tmp_path):
    """Reading a FIFO would block forever: it is skipped as not a regular file."""
    import os

    os.mkfifo(tmp_path / "pipe.jpg")
    code, rows, err = predict_rows(capsys, ["--run", str(run["out"]), "--model", "scratch_cnn",
                                            str(tmp_path)])
    assert code == 0 and len(rows) == 1  # the header only
    assert "pipe.jpg: not a regular file" in err


def test_iter_files_recurses_in_order_and_skips_hidden_folders(tmp_path):
    for rel in ("b/2.png", "b/1.png", "a.png", ".hidden/x.png", "b/c/3.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in predict.iter_files([str(tmp_path)])]
    assert found == ["a.png", "b/1.png", "b/2.png", "b/c/3.jpg"]
    assert list(predict.iter_files([str(tmp_path / "a.png")])) == [tmp_path / "a.png"]
