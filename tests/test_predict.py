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
    assert rows[0] == ["path", "model", "seed", "prob_ai", "label"]
    assert len(rows) - 1 == len(files) * len(MODELS)
    for path, model, seed, prob, label in rows[1:]:
        rel = Path(path).relative_to(data).as_posix()  # printed as given: absolute here
        assert seed == "0"
        assert float(prob) == pytest.approx(run["study"][(rel, model)], abs=1e-5)
        assert label == ("ai" if float(prob) >= 0.5 else "real")
    assert {r[1] for r in rows[1:]} == set(MODELS)


def test_one_model_has_the_same_columns(run, capsys):
    image = run["data"] / "ai" / "ai_00.png"
    code, rows, _ = predict_rows(capsys, ["--run", str(run["out"]), "--model", "scratch_cnn",
                                          str(image)])
    assert code == 0
    prob = rows[1][3]
    assert rows == [["path", "model", "seed", "prob_ai", "label"],
                    [str(image), "scratch_cnn", "0", prob, "ai" if float(prob) >= 0.5 else "real"]]
    assert float(prob) == pytest.approx(run["study"][("ai/ai_00.png", "scratch_cnn")], abs=1e-6)


def test_folders_are_searched_and_bad_files_skipped_with_a_reason(run, capsys):
    code, rows, err = predict_rows(capsys, ["--run", str(run["out"]), "--model",
                                            "efficientnet_lite0_frozen", str(run["data"])])
    assert code == 0
    assert len(rows) - 1 == 40  # every good image, found recursively
    # The file named b"caf\xe9_19.jpg" (not UTF-8) is scored, its name written with \xNN.
    assert [r[0] for r in rows if "caf" in r[0]] == [str(run["data"] / "ai" / "caf\\xe9_19.jpg")]
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


def test_a_path_that_does_not_exist_is_an_error(run, capsys):
    missing = run["data"] / "no-such-image.png"
    code, rows, err = predict_rows(capsys, ["--run", str(run["out"]), "--model", "scratch_cnn",
                                            str(run["data"] / "ai" / "ai_00.png"), str(missing)])
    assert code == 2 and rows == []
    assert err.strip() == f"aigen predict: error: no such file or folder: {missing}"


def test_progress_on_stderr_and_the_synthetic_data_warning(run, capsys, tmp_path):
    image = str(run["data"] / "ai" / "ai_00.png")
    code, _, err = predict_rows(capsys, ["--run", str(run["out"]), "--model", "scratch_cnn", image])
    assert code == 0 and "scoring" in err and "synthetic" not in err
    code, _, err = predict_rows(capsys, ["--run", str(run["out"]), "--model", "scratch_cnn",
                                         "--no-progress", image])
    assert code == 0 and err == ""
    copy = copy_run(run, tmp_path)
    edit_json(copy / "results.json", lambda r: r["data"].update(kind="synthetic"))
    code, _, err = predict_rows(capsys, ["--run", str(copy), "--model", "scratch_cnn",
                                         "--no-progress", image])
    assert code == 0 and "warning" in err and "synthetic proxy data" in err


# ---- checkpoints are verified before use


def copy_run(run, tmp_path):
    import shutil

    return Path(shutil.copytree(run["out"], tmp_path / "run"))


def edit_json(path, change):
    import json

    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_a_checkpoint_copied_over_another_is_refused(run, capsys, tmp_path):
    import shutil

    from aigen.io import file_sha256

    copy = copy_run(run, tmp_path)
    ckpt = copy / "checkpoints"
    image = str(run["data"] / "ai" / "ai_00.png")
    argv = ["--run", str(copy), "--model", "efficientnet_lite0_finetuned", image]
    shutil.copyfile(ckpt / "efficientnet_lite0_frozen_seed0.pt",
                    ckpt / "efficientnet_lite0_finetuned_seed0.pt")
    code, rows, err = predict_rows(capsys, argv)
    assert code == 2 and rows == [] and "Traceback" not in err
    assert "is not the one the run wrote for efficientnet_lite0_finetuned" in err
    # Even with the hash edited to match, the file's own identity gives it away.
    edit_json(copy / "results.json", lambda r: r["models"]["efficientnet_lite0_finetuned"][
        "checkpoint_sha256"].update({"0": file_sha256(ckpt / "efficientnet_lite0_finetuned_seed0.pt")}))
    code, rows, err = predict_rows(capsys, argv)
    assert code == 2 and rows == []
    assert "is not efficientnet_lite0_finetuned at seed 0" in err
    assert "model 'efficientnet_lite0_frozen'" in err and "regime 'frozen'" in err


@pytest.mark.parametrize("how", ["relative", "absolute", "symlink"])
def test_a_checkpoint_outside_the_run_folder_is_not_followed(run, capsys, tmp_path, how):
    import shutil

    copy = copy_run(run, tmp_path)
    outside = tmp_path / "outside.npz"
    shutil.copyfile(copy / "checkpoints" / "scratch_cnn_seed0.npz", outside)
    if how == "symlink":
        (copy / "checkpoints" / "scratch_cnn_seed0.npz").unlink()
        (copy / "checkpoints" / "scratch_cnn_seed0.npz").symlink_to(outside)
    else:
        target = "../outside.npz" if how == "relative" else str(outside)
        edit_json(copy / "results.json",
                  lambda r: r["models"]["scratch_cnn"]["checkpoints"].update({"0": target}))
    code, rows, err = predict_rows(capsys, ["--run", str(copy), "--model", "scratch_cnn",
                                            str(run["data"] / "ai" / "ai_00.png")])
    assert code == 2 and rows == []
    assert "is outside the results folder; refusing to load it" in err


@pytest.mark.parametrize("change", [
    lambda r, c: c.update(arguments=["not", "a", "mapping"]),
    lambda r, c: c["arguments"].update(max_pixels="lots"),
    lambda r, c: c["arguments"].update(weights=7),
    lambda r, c: r.update(seeds="0"),
    lambda r, c: r.update(data=[]),
    lambda r, c: r["models"]["scratch_cnn"].update(backbone=1),
])
def test_a_hand_edited_run_is_a_user_error(run, capsys, tmp_path, change):
    import json

    copy = copy_run(run, tmp_path)
    results = json.loads((copy / "results.json").read_text())
    config = json.loads((copy / "config.json").read_text())
    change(results, config)
    (copy / "results.json").write_text(json.dumps(results))
    (copy / "config.json").write_text(json.dumps(config))
    code, _, err = predict_rows(capsys, ["--run", str(copy), "--model", "scratch_cnn",
                                         str(run["data"] / "ai" / "ai_00.png")])
    assert code == 2 and "do not have the layout" in err and "Traceback" not in err


def test_a_closed_pipe_ends_quietly(run):
    """`aigen predict ... | head`: the reader has gone; no traceback, the SIGPIPE exit status."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "aigen.cli", "predict", "--run",
                             str(run["out"]), "--model", "scratch_cnn", "--no-progress",
                             str(run["data"])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # closed before anything is written: every write meets a broken pipe
    err = proc.stderr.read().decode()
    assert proc.wait() == 141
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err
