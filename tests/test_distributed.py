"""Several processes (torchrun; gloo on the CPU): the sharding helpers, DistributedDataParallel
training against one process, and a whole 2-process `aigen study --quick` against a 1-process one.

Every multi-process run goes through `python -m torch.distributed.run --standalone` (a free port
of its own) under a subprocess timeout, so a hung process group fails the test instead of hanging.
"""

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from aigen import distributed
from aigen.study import runfolder
from aigen.errors import UserError

torch = pytest.importorskip("torch")
REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 600  # seconds; a run that takes longer has hung


def _env(tmp_path, name="cache", **extra):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "AIGEN_OFFLINE": "1", "AIGEN_CACHE_DIR": str(tmp_path / name),
           "TORCH_HOME": str(tmp_path / "torch-home"), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    env.update(extra)
    return env


def torchrun(args, env, n=2):
    """`python -m torch.distributed.run --standalone --nproc_per_node=n ARGS` to completion."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={n}", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


# ----------------------------------------------------------------------------------------------
# The helpers, in one process


@pytest.fixture
def as_rank(monkeypatch):
    def set_world(rank, size):
        monkeypatch.setattr(distributed, "_WORLD", distributed.World(rank, size, rank, "gloo"))
    return set_world


@pytest.mark.parametrize("n,size", [(7, 3), (8, 2), (1, 2), (5, 1)])
def test_shard_takes_the_rows_of_torchs_distributed_sampler(as_rank, n, size):
    from torch.utils.data import DistributedSampler

    for rank in range(size):
        as_rank(rank, size)
        expected = list(DistributedSampler(range(n), num_replicas=size, rank=rank, shuffle=False))
        assert distributed.shard(n).tolist() == expected


def test_the_environment_of_torchrun():
    assert distributed.from_environment({}) == distributed.World()
    world = distributed.from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (world.rank, world.world_size, world.local_rank) == (3, 4, 1)
    assert world.distributed and not world.is_main
    for bad in ({"RANK": "4", "WORLD_SIZE": "4"}, {"RANK": "x", "WORLD_SIZE": "2"},
                {"RANK": "0", "WORLD_SIZE": "0"}):
        with pytest.raises(UserError):
            distributed.from_environment(bad)


def test_one_process_helpers_are_plain_calls():
    assert not distributed.world().distributed
    assert distributed.from_main(5) == 5 and distributed.gather_objects("a") == ["a"]
    assert distributed.all_sum(1, 2.5) == (1.0, 2.5)
    assert distributed.main_first(lambda: 7) == 7
    np.testing.assert_array_equal(distributed.sharded_map(lambda rows: rows * 2, 4), [0, 2, 4, 6])
    with distributed.session("cpu", environ={}) as world:
        assert world == distributed.World()


# ----------------------------------------------------------------------------------------------
# DistributedDataParallel training against one process

TRAIN_SCRIPT = """
    import sys
    import numpy as np
    import torch
    from aigen import distributed
    from aigen.models.backbones import load_backbone
    from aigen.training import train_finetuned, train_frozen

    folder = sys.argv[1]
    A, y = torch.from_numpy(np.load(folder + "/A.npy")), np.load(folder + "/y.npy")
    with distributed.session("cpu", 2) as world:
        lite0 = load_backbone("efficientnet_lite0")
        out = {}
        for regime, train in (("frozen", train_frozen), ("finetuned", train_finetuned)):
            clf, history = train(lite0, A[:16], y[:16], A[16:], y[16:], **KWARGS[regime])
            out[regime] = {"head": clf.head.state_dict(), "stage": clf.stage.state_dict(),
                           "history": history, "prob": clf.predict_proba_from_prefix(A)}
        # Interrupted in every process during epoch 2, then resumed from epoch 1's state.
        from aigen import training
        real_evaluate, calls = training._evaluate, []
        def evaluate(*args, **kwargs):
            result = real_evaluate(*args, **kwargs)
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return result
        training._evaluate = evaluate
        state = folder + "/state.pt"
        try:
            train_frozen(lite0, A[:16], y[:16], A[16:], y[16:], epoch_state=state, **KWARGS["frozen"])
        except KeyboardInterrupt:
            pass
        later = []
        training._evaluate = lambda *args, **kwargs: later.append(1) or real_evaluate(*args, **kwargs)
        clf, history = train_frozen(lite0, A[:16], y[:16], A[16:], y[16:], epoch_state=state,
                                    **KWARGS["frozen"])
        out["resumed"] = {"head": clf.head.state_dict(), "history": history, "epochs": len(later)}
        torch.save(out, f"{folder}/rank{world.rank}.pt")
"""
# Frozen: batches of 5 rows over 16, so the last holds one row and the second process none of
# it. Fine-tuned: the study's learning rate, 4 rows per process and batch.
TRAIN_KWARGS = {"frozen": dict(epochs=2, lr=1e-2, batch_size=5, seed=3, progress=False),
                "finetuned": dict(epochs=2, lr=1e-4, batch_size=8, seed=3, progress=False)}


def test_ddp_training_matches_one_process(tmp_path, monkeypatch):
    """Two processes see the same batches as one; the gradient sums differ only in the order of
    their float additions (frozen head: weights within 1e-5), and BatchNorm in the fine-tuned
    stage normalises with each process's half of a batch (probabilities within 0.05). Both
    processes end with identical weights, and a 2-process training interrupted in its second
    epoch resumes from the first epoch's state to the uninterrupted weights, bit for bit."""
    from aigen.models.backbones import load_backbone
    from aigen.training import train_finetuned, train_frozen

    monkeypatch.setenv("AIGEN_OFFLINE", "1")
    lite0 = load_backbone("efficientnet_lite0")
    rng = np.random.default_rng(5)
    y = np.arange(24) % 2
    X = rng.standard_normal((24, 3, 64, 64)).astype(np.float32)
    X[y == 1, 0] += 1.0
    A = lite0.prefix_activations(X)
    np.save(tmp_path / "A.npy", A.contiguous().numpy())
    np.save(tmp_path / "y.npy", y)
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(TRAIN_SCRIPT).replace("KWARGS", repr(TRAIN_KWARGS)))
    done = torchrun([script, tmp_path], _env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for rank in ranks:  # an interrupted 2-process training resumes to the uninterrupted weights
        resumed, whole = rank["resumed"], rank["frozen"]
        assert resumed["epochs"] == 1 and resumed["history"] == whole["history"]
        assert all(torch.equal(resumed["head"][k], whole["head"][k]) for k in whole["head"])
    for regime, train in (("frozen", train_frozen), ("finetuned", train_finetuned)):
        for key in ("head", "stage"):  # the processes agree exactly
            a, b = ranks[0][regime][key], ranks[1][regime][key]
            assert all(torch.equal(a[k], b[k]) for k in a), (regime, key)
        np.testing.assert_array_equal(ranks[0][regime]["prob"], ranks[1][regime]["prob"])
        one, history = train(lite0, A[:16], y[:16], A[16:], y[16:], **TRAIN_KWARGS[regime])
        two = ranks[0][regime]
        assert [h["epoch"] for h in two["history"]] == [h["epoch"] for h in history]
        prob = one.predict_proba_from_prefix(A)
        if regime == "frozen":
            for k, v in one.head.state_dict().items():
                np.testing.assert_allclose(two["head"][k].numpy(), v.numpy(), atol=1e-5)
            np.testing.assert_allclose(two["prob"], prob, atol=1e-5)
            for h1, h2 in zip(history, two["history"]):
                assert h2["train_loss"] == pytest.approx(h1["train_loss"], abs=1e-5)
                assert h2["val_acc"] == h1["val_acc"]
        else:
            print("fine-tuned, 2 processes vs 1: max |dp| =", np.abs(two["prob"] - prob).max())
            np.testing.assert_allclose(two["prob"], prob, atol=0.05)


# ----------------------------------------------------------------------------------------------
# A whole study in two processes


# `aigen` (what `python -m aigen` runs) without the shortcut audit: its dozens of random forests
# are most of a tiny study's time, and rank 0 computes it alone, as in one process.
STUDY_SCRIPT = """
    import os, sys
    from aigen import cli
    from aigen.data import explore
    explore.shortcut_audit = lambda *args, **kwargs: {}
    HOOK
    sys.exit(cli.main(sys.argv[1:]))
"""


def study_script(tmp_path, hook=""):
    path = tmp_path / "aigen_study.py"
    path.write_text(textwrap.dedent(STUDY_SCRIPT).replace("HOOK", textwrap.dedent(hook).strip()))
    return path


def test_python_dash_m_aigen_is_the_cli(tmp_path):
    from aigen import __version__

    done = subprocess.run([sys.executable, "-m", "aigen", "--version"], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"aigen {__version__}"


def _predictions(out):
    with open(out / "predictions.csv", newline="") as fh:
        return {(r["path"], r["model"], r["seed"]): float(r["prob_ai"]) for r in csv.DictReader(fh)}


def _files(out):
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))


def test_a_two_process_study_matches_one_process(tmp_path, make_study_images):
    """`torchrun --nproc_per_node=2 -m aigen study --quick --input resize crop` (gloo; here
    through a script that calls the same `aigen.cli.main`, without the shortcut audit) writes the
    same complete results folder as one process, records world_size 2, and its numbers agree: the
    scratch CNN (trained by the first process alone) exactly; the frozen head within 1e-4 (the
    same batches, gradients summed in another order; prefix activations computed in other
    batches); the fine-tuned stage within 0.05 (its BatchNorm sees each process's half of a
    batch). The same holds with native-resolution crops, where both backbones train from images
    (random windows, each process drawing the crops of its own rows) and are scored on the mean
    over the fixed test windows; the scratch CNN keeps its resized input, so it is trained in the
    resize protocol only."""
    data = make_study_images(tmp_path / "data", n_per_class=8)
    argv = ["study", "--data", data, "--quick", "--device", "cpu", "--backbones",
            "efficientnet_lite0", "--init", "random", "--scratch-lrs", "--workers", "1",
            "--no-progress", "--dist-timeout", "5", "--input", "resize", "crop"]
    script = study_script(tmp_path)
    one = subprocess.run([sys.executable, str(script), *map(str, argv), "--out",
                          str(tmp_path / "one")], env=_env(tmp_path, "cache1"),
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun([script, *argv, "--out", tmp_path / "two"], _env(tmp_path, "cache2"))
    assert two.returncode == 0, two.stderr[-3000:]

    assert _files(tmp_path / "two") == _files(tmp_path / "one")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert results["world_size"] == 2 and config["world_size"] == 2
    assert config["distributed_backend"] == "gloo"
    assert json.loads((tmp_path / "one" / "results.json").read_text())["world_size"] == 1
    p1, p2 = _predictions(tmp_path / "one"), _predictions(tmp_path / "two")
    assert list(results["protocols"]) == ["none/none", "crop/none/none"]
    backbone_models = ["efficientnet_lite0_finetuned", "efficientnet_lite0_frozen"]
    assert sorted(results["models"]) == sorted(results["protocols"]["none/none"]["models"]) == (
        backbone_models + ["scratch_cnn"])
    assert sorted(results["protocols"]["crop/none/none"]["models"]) == backbone_models
    assert sorted({model for _, model, _ in p2}) == sorted(
        backbone_models + ["scratch_cnn"] + [f"{m}@crop-none-none" for m in backbone_models])
    assert p1.keys() == p2.keys()
    tolerance = {"scratch_cnn": 0.0, "efficientnet_lite0_frozen": 1e-4,
                 "efficientnet_lite0_finetuned": 0.05}
    for key, p in p1.items():
        assert abs(p2[key] - p) <= tolerance[key[1].split("@")[0]], key
    assert two.stdout.count("report:") == 1  # the summary is printed once, by the first process


def test_a_failing_process_ends_the_run(tmp_path, make_study_images):
    """An error in the second process stops the first (torchrun stops the others) with a clear
    message; no results folder, no lock and no work folder are left."""
    data = make_study_images(tmp_path / "data", n_per_class=6)
    script = study_script(tmp_path, """
        from aigen import training
        def boom(*args, **kwargs):
            raise RuntimeError("training failed in the second process")
        if os.environ["RANK"] == "1":
            training._fit = boom
    """)
    out = tmp_path / "out"
    done = torchrun([script, "study", "--data", data, "--out", out, "--quick", "--device", "cpu",
                     "--backbones", "efficientnet_lite0", "--init", "random", "--models",
                     "frozen", "--workers", "1", "--no-progress", "--dist-timeout", "1"],
                    _env(tmp_path))
    assert done.returncode != 0
    assert "training failed in the second process" in done.stderr
    assert not out.exists()
    # Rank 0 removes its work folder unless torchrun kills it first (on a loaded machine it may
    # SIGKILL it before the removal ends); what is left then holds no finished work, so the next
    # run with the same --out clears it and starts afresh.
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert [p.name for p in left] in ([], [".out.partial"])
    if left:
        assert not runfolder._has_finished_work(left[0])
