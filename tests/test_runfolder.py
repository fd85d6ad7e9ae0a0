"""The study's run-folder lifecycle (aigen.study.runfolder): the claim on --out at the start,
SIGTERM, leftovers of killed runs, `--resume` giving the numbers of an uninterrupted run, and
`--config` reruns."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aigen import io
from aigen.study import driver, runfolder
from aigen.study.stages import score, train
from helpers import forbid_training
from test_study import assert_one_line_error, audit_once, run_cli, scratch_argv  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


def two_seed_argv(data, out, *extra):
    """Two seeds and the lr study: enough finished pieces to interrupt between."""
    argv = scratch_argv(data, out, "--seeds", "0", "1", *extra)
    argv[argv.index("--scratch-lrs") + 1:argv.index("--scratch-lrs") + 2] = ["0.01", "0.05"]
    return argv


def numbers(out):
    """results.json and history.csv of a run: what must match between runs."""
    results = json.loads((out / "results.json").read_text())
    return results, (out / "history.csv").read_text(), (out / "predictions.csv").read_text()


def run_subprocess(argv, hook, tmp_path):
    """`aigen` argv in a fresh interpreter, with `hook` (Python code) run first."""
    code = textwrap.dedent("""
        import os, signal, sys
        from aigen import cli
        from aigen.study.stages import train
    """) + textwrap.dedent(hook) + "\nsys.exit(cli.main(sys.argv[1:]))\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code, *argv], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)


KILL_AT_SECOND_SEED = """
    real_train_scratch = train.train_scratch
    def _train_scratch(ctx, splits, run, seed):
        if seed == 1:
            os.kill(os.getpid(), signal.{sig})
        real_train_scratch(ctx, splits, run, seed)
    train.train_scratch = _train_scratch
"""


# ----------------------------------------------------------------------------------------------
# Resume


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, make_study_images,
                                                           audit_once, monkeypatch):
    data = make_study_images(tmp_path / "data", n_per_class=8)
    code, _, err = run_cli(two_seed_argv(data, tmp_path / "whole"))
    assert code == 0, err

    out = tmp_path / "out"
    done = run_subprocess(two_seed_argv(data, out), KILL_AT_SECOND_SEED.format(sig="SIGKILL"),
                          tmp_path)
    assert done.returncode == -signal.SIGKILL
    work = runfolder.work_path(out)
    assert not out.exists() and sorted(p.name for p in (work / "resume").glob("*.npz")) == [
        "scratch_cnn_seed0.npz"]

    trained = []
    real_train = train.train_scratch
    monkeypatch.setattr(train, "train_scratch",
                        lambda ctx, splits, run, seed: trained.append(seed)
                        or real_train(ctx, splits, run, seed))
    code, _, err = run_cli(["study", "--resume", str(out), "--no-progress"])
    assert code == 0, err
    assert trained == [1]  # seed 0 was read back, not trained again
    assert "finished by the earlier attempt" in err
    assert numbers(out) == numbers(tmp_path / "whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out", "whole"]  # no lock left
    assert not (out / "resume").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["arguments"]["seeds"] == [0, 1] and config["arguments"]["resume"] == str(out)


def test_resume_restores_models_and_finished_stages(tmp_path, make_study_images, audit_once,
                                                   monkeypatch):
    """Interrupted in the diagnostics, after every model, the learning-rate study, the
    exploration and the degradation sweep: the resumed run trains nothing, reads the finished
    stages' records back instead of computing them again, and reproduces the uninterrupted run's
    numbers."""
    from aigen.data import explore
    from aigen.study import sweep

    data = make_study_images(tmp_path / "data", n_per_class=8)
    argv = lambda out: two_seed_argv(  # noqa: E731
        data, out, "--models", "scratch", "frozen", "--backbones", "efficientnet_lite0",
        "--init", "random", "--frozen-epochs", "1", "--sweep", "jpeg", "noise")
    code, _, err = run_cli(argv(tmp_path / "whole"))
    assert code == 0, err

    real_diagnose = score.diagnose

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(score, "diagnose", interrupt)
    code, _, err = run_cli(argv(tmp_path / "out"))
    assert code == 130 and "Traceback" not in err
    assert f"aigen study --resume {tmp_path / 'out'}" in err
    assert not (tmp_path / "out").exists()
    stages = runfolder.work_path(tmp_path / "out") / "resume" / "stages"
    assert sorted(p.name for p in stages.iterdir()) == ["exploration.json", "sweep@none-none.json"]

    monkeypatch.setattr(score, "diagnose", real_diagnose)
    forbid_training(monkeypatch)
    for module, name in ((sweep, "run_sweep"), (explore, "summarize")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("a finished stage ran again"))
    code, _, err = run_cli(["study", "--resume", str(tmp_path / "out"), "--no-progress"])
    assert code == 0, err
    assert "sweep@none-none: finished by the earlier attempt" in err
    assert numbers(tmp_path / "out") == numbers(tmp_path / "whole")
    whole, resumed = ((tmp_path / d / "report.md").read_text().splitlines() for d in ("whole", "out"))
    assert whole[3:] == resumed[3:]  # the same report below its header (run time, out folder)


def test_resume_continues_a_backbone_training_from_its_last_epoch(tmp_path, make_study_images,
                                                                  audit_once, monkeypatch):
    """Interrupted after the fine-tuned model's first epoch (of 2): the resumed run trains only
    its second epoch and ends with the uninterrupted run's numbers; no epoch state is left."""
    from aigen import training

    data = make_study_images(tmp_path / "data", n_per_class=8)
    argv = lambda out: scratch_argv(  # noqa: E731
        data, out, "--models", "finetuned", "--backbones", "efficientnet_lite0", "--init",
        "random", "--finetune-epochs", "2")
    code, _, err = run_cli(argv(tmp_path / "whole"))
    assert code == 0, err

    real_save, written = training._save_epoch_state, []

    def save_then_stop(path, state):
        real_save(path, state)
        written.append(state["epoch"])
        if stop:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_epoch_state", save_then_stop)
    stop = True
    code, _, err = run_cli(argv(tmp_path / "out"))
    assert code == 130 and written == [1]
    work = runfolder.work_path(tmp_path / "out")
    assert [p.name for p in (work / "resume" / "epochs").iterdir()] == [
        "efficientnet_lite0_finetuned_seed0.pt"]
    assert f"aigen study --resume {tmp_path / 'out'}" in err

    stop, written[:] = False, []
    code, _, err = run_cli(["study", "--resume", str(tmp_path / "out"), "--no-progress"])
    assert code == 0, err
    assert written == [2]
    assert numbers(tmp_path / "out") == numbers(tmp_path / "whole")
    assert not work.exists() and not (tmp_path / "out" / "resume").exists()


def test_sigterm_exits_143_and_keeps_finished_work(tmp_path, make_study_images):
    data = make_study_images(tmp_path / "data", n_per_class=6)
    out = tmp_path / "out"
    done = run_subprocess(two_seed_argv(data, out), KILL_AT_SECOND_SEED.format(sig="SIGTERM"),
                          tmp_path)
    assert done.returncode == 143, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.rstrip().splitlines()[-1] == "aigen study: terminated (SIGTERM)"
    assert f"aigen study --resume {out}" in done.stderr
    assert (runfolder.work_path(out) / "resume" / "scratch_cnn_seed0.npz").is_file()
    assert not runfolder.lock_path(out).exists() and not out.exists()


def test_sigterm_before_anything_finished_leaves_nothing(tmp_path, make_study_images):
    data = make_study_images(tmp_path / "data", n_per_class=6)
    hook = """
        def train_protocol(*args):
            os.kill(os.getpid(), signal.SIGTERM)
        train.train_protocol = train_protocol
    """
    done = run_subprocess(scratch_argv(data, tmp_path / "out"), hook, tmp_path)
    assert done.returncode == 143 and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_new_run_refuses_a_resumable_leftover_and_clears_an_empty_one(tmp_path):
    out = tmp_path / "out"
    work = runfolder.work_path(out)
    (work / "resume").mkdir(parents=True)
    (work / "split.csv").write_text("x")  # a killed run that finished nothing
    with runfolder.claim(out, {"seeds": [0]}, resume=False) as claimed:
        assert claimed == work and not (work / "split.csv").exists()
        with pytest.raises(runfolder.UserError, match="another aigen study"):
            with runfolder.claim(out, {}, resume=False):
                pass
    assert out.is_dir() and not work.exists()
    # Interrupted with a finished model: kept, and a fresh run points at --resume.
    out2 = tmp_path / "out2"
    with pytest.raises(KeyboardInterrupt):
        with runfolder.claim(out2, {}, resume=False) as work2:
            runfolder.save_run(work2, "m", 0, [{"epoch": 1}], [0.5])
            raise KeyboardInterrupt
    with pytest.raises(runfolder.UserError, match="--resume"):
        with runfolder.claim(out2, {}, resume=False):
            pass
    assert runfolder.load_run(runfolder.work_path(out2), "m", 0)[0] == [{"epoch": 1}]


def test_resume_errors(tmp_path, make_study_images):
    code, _, err = run_cli(["study", "--resume", str(tmp_path / "never")])
    assert_one_line_error(code, err, "nothing to resume")
    code, _, err = run_cli(["study", "--resume", str(tmp_path / "x"), "--seeds", "3"])
    assert_one_line_error(code, err, "no other options", "seeds")


# ----------------------------------------------------------------------------------------------
# The claim on --out, checked before any work


@pytest.fixture
def no_study(monkeypatch, tmp_path):
    """The study must not start; returns an (empty) data folder for the command line."""
    def fail(ctx):
        raise AssertionError("the study started")

    monkeypatch.setattr(driver, "run_stages", fail)
    for cls in ("ai", "real"):
        (tmp_path / "data" / cls).mkdir(parents=True)
    return tmp_path / "data"


def test_a_second_study_on_the_same_out_fails_at_once(tmp_path, no_study):
    out = tmp_path / "out"
    with runfolder._lock(out):  # another study holds the claim
        code, _, err = run_cli(scratch_argv(no_study, out))
        assert_one_line_error(code, err, "another aigen study", f"pid {os.getpid()}")
        assert runfolder.lock_path(out).read_text().strip() == str(os.getpid())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # the lock went with its holder


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "out"
    runfolder.lock_path(out).write_text("999999999\n")  # no flock held: its holder is gone
    with runfolder.claim(out, {}, resume=False) as work:
        assert runfolder.lock_path(out).read_text().strip() == str(os.getpid())
        (work / "a").write_text("a")
    assert (out / "a").is_file() and not runfolder.lock_path(out).exists()


def test_out_on_a_mount_point_fails_at_the_start(tmp_path, no_study, monkeypatch):
    out = tmp_path / "mnt"
    out.mkdir()
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == out or real(p))
    code, _, err = run_cli(scratch_argv(no_study, out))
    assert_one_line_error(code, err, "mount point")


def test_unwritable_parent_fails_at_the_start(tmp_path, no_study, monkeypatch):
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path / "res")
    code, _, err = run_cli(scratch_argv(no_study, tmp_path / "res" / "out"))
    assert_one_line_error(code, err, "cannot write in")


def test_atomic_folder_removes_leftovers_of_dead_processes_only(tmp_path):
    dead = tmp_path / ".out.partial-999999999-abc"
    alive = tmp_path / f".out.partial-{os.getpid()}-def"
    other = tmp_path / ".other.partial-999999999-abc"
    for folder in (dead, alive, other):
        folder.mkdir()
    with io.atomic_folder(tmp_path / "out") as work:
        assert str(os.getpid()) in work.name
    assert not dead.exists() and alive.exists() and other.exists()


# ----------------------------------------------------------------------------------------------
# --config


def test_config_reruns_a_finished_run_and_options_override(tmp_path, make_study_images,
                                                         audit_once):
    data = make_study_images(tmp_path / "data", n_per_class=8)
    code, _, err = run_cli(scratch_argv(data, tmp_path / "first", "--scratch-filters", "4"))
    assert code == 0, err
    config = tmp_path / "first" / "config.json"
    code, _, err = run_cli(["study", "--config", str(config), "--out", str(tmp_path / "again")])
    assert code == 0, err
    assert numbers(tmp_path / "again") == numbers(tmp_path / "first")
    code, _, err = run_cli(["study", "--config", str(config), "--out", str(tmp_path / "seed1"),
                            "--seeds", "1"])
    assert code == 0, err
    rerun = json.loads((tmp_path / "seed1" / "config.json").read_text())["arguments"]
    assert rerun["seeds"] == [1] and rerun["scratch_filters"] == 4
    assert rerun["config"] == str(config)


def test_config_errors(tmp_path):
    code, _, err = run_cli(["study", "--config", str(tmp_path / "none.json")])
    assert_one_line_error(code, err, "does not exist")
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"arguments": {"seeds": ["x"]}}))
    code, _, err = run_cli(["study", "--config", str(bad)])
    assert_one_line_error(code, err, "--config", "seeds")
    bad.write_bytes(b"\xff\xfe binary")
    code, _, err = run_cli(["study", "--config", str(bad)])
    assert_one_line_error(code, err, "not a run's config.json")


# ----------------------------------------------------------------------------------------------
# --preset


def resolved(*options):
    """The study's arguments after --preset/--config resolution, as the CLI would hand them on."""
    from aigen import cli

    argv = ["study", "--data", "DATA", *options]
    args = cli.build_parser().parse_args(argv)
    args._argv = argv
    return runfolder.resolve_arguments(args, driver.add_arguments)


def test_preset_best_sets_its_values_and_the_command_line_wins():
    from aigen.study.presets import PRESETS

    plain = vars(resolved())
    best = vars(resolved("--preset", "best"))
    assert best["preset"] == "best"
    for key, value in PRESETS["best"].items():
        assert best[key] == value, key
    untouched = set(plain) - set(PRESETS["best"]) - {"preset", "_argv"}
    assert {k: best[k] for k in untouched} == {k: plain[k] for k in untouched}
    mine = vars(resolved("--preset", "best", "--backbones", "efficientnet_lite0", "--seeds", "3"))
    assert mine["backbones"] == ["efficientnet_lite0"] and mine["seeds"] == [3]
    others = set(PRESETS["best"]) - {"backbones"}
    assert {k: mine[k] for k in others} == {k: best[k] for k in others}


def test_preset_seed_is_the_plain_default():
    assert vars(resolved("--preset", "seed")) == {**vars(resolved()),
                                                  "_argv": ["study", "--data", "DATA", "--preset",
                                                            "seed"]}


def test_preset_errors(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"arguments": {"seeds": [0]}}))
    code, _, err = run_cli(["study", "--config", str(config), "--preset", "best"])
    assert_one_line_error(code, err, "--config", "--preset")


def test_a_preset_run_records_its_expanded_arguments(tmp_path, monkeypatch):
    """What config.json and --resume record: the preset's name and the values it gave."""
    import argparse

    seen = {}

    def stop(ctx):
        seen.update(vars(ctx.args))
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "run_stages", stop)
    data = tmp_path / "data"
    for cls in ("ai", "real"):
        (data / cls).mkdir(parents=True)
    code, _, err = run_cli(["study", "--data", str(data), "--out", str(tmp_path / "out"),
                            "--preset", "best", "--seeds", "4"])
    assert code == 130, err
    saved = runfolder.saved_arguments(argparse.Namespace(**seen))
    assert saved["preset"] == "best" and saved["seeds"] == [4]
    assert saved["backbones"] == ["efficientnet_lite1"]
