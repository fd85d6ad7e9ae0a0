"""The full regime (aigen.training.train_full): every layer of a backbone copy trained with AdamW,
layer-wise learning rates, weight decay on the weights only, warm-up + cosine schedule and early
stopping; its checkpoints, its scoring from images, and `aigen study --models full` end to end."""

import copy
import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from aigen import training
from aigen.errors import UserError
from aigen.models import backbones
from aigen.models.backbones import (BackboneClassifier, BackboneUnavailable, _module_fingerprint,
                                    load_backbone, load_classifier, new_head, pool,
                                    read_checkpoint)
from aigen.training import (_fit, best_epoch, full_param_groups, lr_factor, train_finetuned,
                            train_full)
from helpers import interrupt_training_after, read_csv, run_cli, run_tiny_study

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("AIGEN_OFFLINE", "1")


@pytest.fixture(scope="module")
def images():
    """16 small images (32x32: every layer runs, cheaply), 10 to train, 6 to validate."""
    rng = np.random.default_rng(5)
    y = np.arange(16) % 2
    X = rng.standard_normal((16, 3, 32, 32)).astype(np.float32)
    X[y == 1, 0] += 1.0
    return X[:10], y[:10], X[10:], y[10:]


@pytest.fixture(scope="module")
def tiny():
    """A two-layer stand-in backbone (conv + BatchNorm in prefix and stage): the training loop's
    mechanics at a fraction of Lite0's cost."""
    from torch import nn

    from aigen.models.backbones import Backbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        prefix = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU())
        stage = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU())
    return Backbone("efficientnet_lite0", prefix, stage, 8, weights_source="test",
                    pretrained=False, init="random")


def _states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# The recipe's parts


def test_param_groups_have_the_layerwise_learning_rates_and_decay_only_weights(lite0):
    prefix, stage = copy.deepcopy(lite0.prefix), copy.deepcopy(lite0.stage)
    for p in list(prefix.parameters()) + list(stage.parameters()):
        p.requires_grad_(True)
    head = new_head(lite0.n_features, 0)
    groups = full_param_groups(prefix, stage, head, lr=1e-3, lr_decay=0.5, weight_decay=0.1)
    by_name = {g["name"]: g for g in groups}
    assert list(by_name) == ["head", "head (no decay)", "stage", "stage (no decay)", "prefix",
                             "prefix (no decay)"]
    for name, lr in (("head", 1e-3), ("stage", 5e-4), ("prefix", 2.5e-4)):
        for key in (name, f"{name} (no decay)"):
            assert by_name[key]["lr"] == by_name[key]["base_lr"] == pytest.approx(lr)
        assert by_name[name]["weight_decay"] == 0.1
        assert by_name[f"{name} (no decay)"]["weight_decay"] == 0.0
        # weights (kernels) decay; biases and BatchNorm parameters (1-D) do not
        assert all(p.ndim > 1 for p in by_name[name]["params"])
        assert all(p.ndim == 1 for p in by_name[f"{name} (no decay)"]["params"])
    grouped = [id(p) for g in groups for p in g["params"]]
    every = [id(p) for m in (head, stage, prefix) for p in m.parameters()]
    assert sorted(grouped) == sorted(every) and len(set(grouped)) == len(grouped)
    assert by_name["head (no decay)"]["params"] == [head.bias]
    # The BatchNorm of the prefix's stem is among the prefix's undecayed parameters.
    bn = lite0.prefix[1]
    assert isinstance(bn, torch.nn.BatchNorm2d)
    assert {id(prefix[1].weight), id(prefix[1].bias)} <= {
        id(p) for p in by_name["prefix (no decay)"]["params"]}


def test_schedule_warms_up_linearly_then_decays_as_a_cosine():
    W, T = 4, 20
    assert [lr_factor(s, W, T) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, W, T) == 1.0  # the cosine starts at its top
    assert lr_factor(12, W, T) == pytest.approx(0.5)  # half-way through the cosine
    assert lr_factor(19, W, T) == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 16)))
    assert 0 < lr_factor(19, W, T) < 0.01
    factors = [lr_factor(s, W, T) for s in range(W, T)]
    assert all(a > b for a, b in zip(factors, factors[1:]))  # strictly decreasing
    assert lr_factor(0, 0, 10) == 1.0  # no warm-up
    assert [lr_factor(s, 3, 3) for s in range(3)] == [1 / 3, 2 / 3, 1.0]  # warm-up only


def _scripted_evaluate(monkeypatch, results):
    """_fit's validation returns (loss, accuracy) from `results`, one pair per epoch."""
    results = list(results)
    monkeypatch.setattr(training, "_evaluate", lambda *args, **kwargs: results.pop(0))


def _tiny_fit(**kwargs):
    """A linear model on 2-D features, trained by _fit; -> (module, history)."""
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.standard_normal((12, 4)).astype(np.float32))
    y = np.arange(12) % 2
    module = new_head(4, 0)
    history = _fit([module], module, X, y, X[:4], y[:4], lr=0.05, batch_size=4, seed=1,
                   device=torch.device("cpu"), progress=False, desc="tiny", **kwargs)
    return module, history


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience(monkeypatch):
    # Epoch 3 ties epoch 2's accuracy with a lower loss (better); 4 and 5 are worse: stop after 5.
    _scripted_evaluate(monkeypatch, [(0.7, 0.5), (0.6, 0.75), (0.5, 0.75), (0.4, 0.5),
                                     (0.3, 0.5), (0.2, 1.0)])
    model, history = _tiny_fit(epochs=6, checkpoint="last", patience=2)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert best_epoch(history) == 3
    _scripted_evaluate(monkeypatch, [(0.7, 0.5), (0.6, 0.75), (0.5, 0.75)])
    three, _ = _tiny_fit(epochs=3, checkpoint="last")
    assert _states_equal(model.state_dict(), three.state_dict())  # epoch 3's weights exactly
    # A later equal accuracy with a higher loss is not better: stopped after the patience.
    _scripted_evaluate(monkeypatch, [(0.5, 0.75), (0.6, 0.75), (0.6, 0.5)])
    _, history = _tiny_fit(epochs=6, checkpoint="last", patience=2)
    assert len(history) == 3 and best_epoch(history) == 1


def test_one_full_step_is_plain_adamw_with_the_group_learning_rates(lite0, images):
    X_tr, y_tr = images[0][:8], images[1][:8]
    kwargs = dict(lr=1e-3, lr_decay=0.5, weight_decay=0.1)
    clf, history = train_full(lite0, X_tr, y_tr, *images[2:], epochs=1, batch_size=8, seed=3,
                              warmup=0, progress=False, **kwargs)
    assert len(history) == 1 and history[0]["lr"] == 1e-3  # one update, at the cosine's top
    # The same update written out with plain torch.
    prefix, stage = copy.deepcopy(lite0.prefix), copy.deepcopy(lite0.stage)
    for layer in _batchnorms(prefix) + _batchnorms(stage):  # the full regime's, not Lite's 0.01
        layer.momentum = 0.1
    head = new_head(lite0.n_features, 3)
    modules = (prefix, stage, head)
    groups = []
    for module, lr in ((head, 1e-3), (stage, 5e-4), (prefix, 2.5e-4)):
        for p in module.parameters():
            p.requires_grad_(True)
        groups.append({"params": [p for p in module.parameters() if p.ndim > 1], "lr": lr,
                       "weight_decay": 0.1})
        groups.append({"params": [p for p in module.parameters() if p.ndim == 1], "lr": lr,
                       "weight_decay": 0.0})
    optimiser = torch.optim.AdamW(groups)
    for m in modules:
        m.train()
    order = torch.randperm(8, generator=torch.Generator().manual_seed(3))  # _fit's batch order
    x = torch.from_numpy(X_tr)[order].contiguous(memory_format=torch.channels_last)
    with training.deterministic_torch(3):  # the kernels train_full runs with
        loss = torch.nn.functional.cross_entropy(head(pool(stage(prefix(x)))),
                                                 torch.from_numpy(y_tr.astype(np.int64))[order])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert history[0]["train_loss"] == pytest.approx(float(loss.detach()), rel=1e-6)
    for mine, theirs in ((prefix, clf.prefix), (stage, clf.stage), (head, clf.head)):
        expected, got = mine.state_dict(), theirs.state_dict()
        assert expected.keys() == got.keys()
        for key in expected:  # weights and BatchNorm running statistics alike
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    moved = [k for k, v in clf.prefix.state_dict().items()
             if k.endswith("weight") and not torch.equal(v, lite0.prefix.state_dict()[k])]
    assert moved  # the prefix did train


# ----------------------------------------------------------------------------------------------
# The trained model: the backbone untouched, its own prefix, save / load, resume


def test_full_trains_a_copy_and_round_trips_through_its_checkpoint(lite0, images, tmp_path):
    before = _module_fingerprint(lite0.prefix, lite0.stage)
    clf, history = train_full(lite0, *images, epochs=2, batch_size=5, seed=1, progress=False)
    assert _module_fingerprint(lite0.prefix, lite0.stage) == before  # other models share it
    assert clf.regime == "full" and clf.own_prefix
    assert clf.prefix is not lite0.prefix and clf.stage is not lite0.stage
    assert not any(p.requires_grad for m in (clf.prefix, clf.stage) for p in m.parameters())
    assert {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"} == set(history[0])
    # Its BatchNorm layers' running averages follow torch's default momentum; the pretrained
    # backbone keeps EfficientNet-Lite's own (the frozen and fine-tuned regimes use it).
    trained = _batchnorms(clf.prefix) + _batchnorms(clf.stage)
    assert trained and {layer.momentum for layer in trained} == {0.1}
    pretrained = _batchnorms(lite0.prefix) + _batchnorms(lite0.stage)
    assert len(pretrained) == len(trained)
    assert all(layer.momentum == pytest.approx(0.01) for layer in pretrained)  # 1 - 0.99
    X = np.concatenate([images[0], images[2]])
    expected = clf.predict_proba(X)
    assert expected.shape == (16,) and ((expected > 0) & (expected < 1)).all()
    # Batch by batch from a dataset (the study's StoreImages) gives the same numbers.
    np.testing.assert_allclose(clf.predict_proba(_Rows(X), batch_size=3), expected, atol=1e-6)
    with pytest.raises(ValueError, match="own prefix"):
        clf.predict_proba_from_prefix(lite0.prefix_activations(X))

    path = tmp_path / "full.pt"
    clf.save(path, metadata={"seed": 1})
    checkpoint = read_checkpoint(path)
    assert checkpoint["format_version"] == 2 and checkpoint["prefix"] is not None
    for loaded in (load_classifier(path), load_classifier(path, backbone=lite0)):
        assert loaded.regime == "full" and loaded.prefix is not lite0.prefix
        np.testing.assert_array_equal(loaded.predict_proba(X), expected)
    assert _module_fingerprint(lite0.prefix, lite0.stage) == before


def _no_weights_anywhere(monkeypatch):
    def unavailable(name, weights=None):
        raise BackboneUnavailable(f"{name}: no weights file here")

    monkeypatch.setattr(backbones, "resolve_weights", unavailable)
    with pytest.raises(BackboneUnavailable):
        load_backbone("efficientnet_lite0")


def test_a_full_model_loads_and_scores_without_the_pretrained_weights(lite0, images, tmp_path,
                                                                      monkeypatch):
    clf, _ = train_full(lite0, *images[:2], *images[:2], epochs=1, batch_size=5, seed=2,
                        progress=False)
    clf.save(tmp_path / "full.pt")
    frozen = BackboneClassifier(lite0, "frozen", lite0.stage, new_head(lite0.n_features, 0))
    frozen.save(tmp_path / "frozen.pt")
    X = images[2]
    expected = clf.predict_proba(X)
    _no_weights_anywhere(monkeypatch)

    # The checkpoint holds every weight: no weights file is read, not even a given one.
    loaded = load_classifier(tmp_path / "full.pt", weights=tmp_path / "missing.pt")
    np.testing.assert_array_equal(loaded.predict_proba(X), expected)
    shell = loaded.backbone
    assert not shell.has_weights and shell.fingerprint == lite0.fingerprint
    assert (shell.weights_source, shell.weights_sha256) == (lite0.weights_source,
                                                            lite0.weights_sha256)
    # Saved again, it records the pretrained backbone it came from, as the original did.
    loaded.save(tmp_path / "again.pt")
    again, original = read_checkpoint(tmp_path / "again.pt"), read_checkpoint(tmp_path / "full.pt")
    for key in ("backbone_fingerprint", "weights_source", "weights_sha256", "init", "pretrained"):
        assert again[key] == original[key]
    assert _states_equal(again["prefix"], original["prefix"])
    # The structure computes nothing, and no other model can use it as its backbone.
    with pytest.raises(ValueError, match="holds no weights"):
        shell.prefix_activations(X)
    with pytest.raises(ValueError, match="holds no weights"):
        train_full(shell, *images, epochs=1, progress=False)
    with pytest.raises(ValueError, match="holds no weights"):
        train_finetuned(shell, X, images[3], X, images[3], epochs=1, progress=False)
    with pytest.raises(ValueError, match="needs a backbone with weights"):
        load_classifier(tmp_path / "frozen.pt", backbone=shell)
    with pytest.raises(BackboneUnavailable):  # a frozen model does need the weights file
        load_classifier(tmp_path / "frozen.pt")
    # A damaged full checkpoint (a prefix tensor missing) is an error, not a meta tensor.
    checkpoint = torch.load(tmp_path / "full.pt", weights_only=True)
    checkpoint["prefix"].pop(next(iter(checkpoint["prefix"])))
    torch.save(checkpoint, tmp_path / "damaged.pt")
    with pytest.raises(UserError, match="damaged checkpoint"):
        load_classifier(tmp_path / "damaged.pt")
    checkpoint = torch.load(tmp_path / "full.pt", weights_only=True)
    checkpoint["head"]["weight"] = checkpoint["head"]["weight"][:1]
    torch.save(checkpoint, tmp_path / "bad-head.pt")
    with pytest.raises(UserError, match="damaged checkpoint"):
        load_classifier(tmp_path / "bad-head.pt")
    del checkpoint["backbone_fingerprint"]
    torch.save(checkpoint, tmp_path / "no-fingerprint.pt")
    with pytest.raises(UserError, match="damaged checkpoint .no backbone_fingerprint"):
        load_classifier(tmp_path / "no-fingerprint.pt")


def _batchnorms(module):
    return [layer for layer in module.modules()
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm)]


class _Rows:
    """A dataset giving a batch for an array of row numbers, as StoreImages does."""

    def __init__(self, X):
        self.X = X

    def __len__(self):
        return len(self.X)

    def __getitem__(self, rows):
        assert isinstance(rows, np.ndarray)
        return torch.from_numpy(self.X[rows])


def test_checkpoint_versions(lite0, images, tmp_path):
    A = lite0.prefix_activations(images[0])
    clf, _ = train_finetuned(lite0, A, images[1], A, images[1], epochs=1, progress=False)
    path = tmp_path / "finetuned.pt"
    clf.save(path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["format_version"] == 2 and checkpoint["prefix"] is None
    # A version 1 file (before the full regime: no "prefix") is still read.
    del checkpoint["prefix"]
    checkpoint["format_version"] = 1
    torch.save(checkpoint, tmp_path / "v1.pt")
    np.testing.assert_array_equal(load_classifier(tmp_path / "v1.pt").predict_proba(images[0]),
                                  clf.predict_proba(images[0]))
    checkpoint["format_version"] = 3
    torch.save(checkpoint, tmp_path / "v3.pt")
    with pytest.raises(UserError, match="version 3.*reads versions 1, 2"):
        load_classifier(tmp_path / "v3.pt")
    checkpoint.update(format_version=2, regime="full", prefix=None)
    torch.save(checkpoint, tmp_path / "no-prefix.pt")
    with pytest.raises(UserError, match="damaged"):
        load_classifier(tmp_path / "no-prefix.pt")


@pytest.mark.parametrize("interrupt, patience", [(2, 5), (3, 1)])
def test_an_interrupted_full_training_resumes_bitwise(tiny, images, tmp_path, monkeypatch,
                                                      interrupt, patience):
    """Interrupted mid-schedule (patience 5: no stop), or right after the epoch at which early
    stopping ended it (patience 1, with scripted validation results: epoch 3 is no better than
    epoch 2): the resumed training ends exactly as the uninterrupted one."""
    kwargs = dict(epochs=4, lr=1e-3, batch_size=4, seed=2, warmup=0.5, patience=patience,
                  progress=False)
    scripted = [(0.6, 0.5), (0.5, 0.75), (0.5, 0.5), (0.1, 1.0)] if patience == 1 else None
    queue = []
    if scripted:
        monkeypatch.setattr(training, "_evaluate", lambda *args, **kw: queue.pop(0))
    queue[:] = scripted or []
    whole, history = train_full(tiny, *images, **kwargs)
    assert len(history) == (4 if patience == 5 else 3)
    state = tmp_path / "state.pt"
    queue[:] = scripted or []
    written = interrupt_training_after(monkeypatch, interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_full(tiny, *images, epoch_state=state, **kwargs)
    written.clear()
    queue[:] = (scripted or [])[interrupt:]
    resumed, resumed_history = train_full(tiny, *images, epoch_state=state, **kwargs)
    assert written == list(range(interrupt + 1, len(history) + 1))  # nothing trained twice
    assert resumed_history == history
    for a, b in ((resumed.prefix, whole.prefix), (resumed.stage, whole.stage),
                 (resumed.head, whole.head)):
        assert _states_equal(a.state_dict(), b.state_dict())
    if patience == 1:  # the kept weights are epoch 2's, not the stopping epoch's
        assert best_epoch(history) == 2


DDP_SCRIPT = """
    import sys
    import numpy as np
    import torch
    from aigen import distributed
    from aigen.models.backbones import load_backbone
    from aigen.training import train_full

    folder = sys.argv[1]
    X, y = np.load(folder + "/X.npy"), np.load(folder + "/y.npy")
    with distributed.session("cpu", 2) as world:
        lite0 = load_backbone("efficientnet_lite0")
        clf, history = train_full(lite0, X[:12], y[:12], X[12:], y[12:], **KWARGS)
        torch.save({"states": [m.state_dict() for m in (clf.prefix, clf.stage, clf.head)],
                    "history": history, "prob": clf.predict_proba(X)},
                   f"{folder}/rank{world.rank}.pt")
"""
DDP_KWARGS = dict(epochs=2, lr=1e-3, batch_size=6, seed=4, warmup=0.5, progress=False)


def test_two_processes_train_the_full_network_alike(lite0, tmp_path):
    """Under torchrun (gloo, CPU) both processes end with identical weights and history, and
    close to one process's model (BatchNorm normalises with each process's half of a batch)."""
    import textwrap

    from test_distributed import _env, torchrun

    rng = np.random.default_rng(5)
    y = np.arange(16) % 2
    X = rng.standard_normal((16, 3, 32, 32)).astype(np.float32)
    X[y == 1, 0] += 1.0
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT).replace("KWARGS", repr(DDP_KWARGS)))
    done = torchrun([script, tmp_path], _env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for a, b in zip(ranks[0]["states"], ranks[1]["states"]):
        assert _states_equal(a, b)
    assert ranks[0]["history"] == ranks[1]["history"]
    np.testing.assert_array_equal(ranks[0]["prob"], ranks[1]["prob"])
    one, history = train_full(lite0, X[:12], y[:12], X[12:], y[12:], **DDP_KWARGS)
    assert [h["lr"] for h in ranks[0]["history"]] == [h["lr"] for h in history]
    np.testing.assert_allclose(ranks[0]["prob"], one.predict_proba(X), atol=0.05)


# ----------------------------------------------------------------------------------------------
# `aigen study --models full` end to end


@pytest.fixture(scope="module")
def full_study(tmp_path_factory, make_study_images):
    base = tmp_path_factory.mktemp("full-study")
    data = make_study_images(base / "data", n_per_class=12)
    out = base / "out"
    stdout = run_tiny_study(data, out, base / "cache", "--models", "frozen", "full", "--backbones",
                            "efficientnet_lite0", "--full-epochs", "2", "--spectrum-images", "0",
                            "--sweep", "jpeg")
    return {"data": data, "out": out, "stdout": stdout, "base": base,
            "results": json.loads((out / "results.json").read_text()),
            "config": json.loads((out / "config.json").read_text())}


def test_study_reports_the_full_model_like_the_others(full_study):
    results, out = full_study["results"], full_study["out"]
    assert list(results["models"]) == ["efficientnet_lite0_frozen", "efficientnet_lite0_full"]
    m = results["models"]["efficientnet_lite0_full"]
    assert m["regime"] == "full" and m["backbone"] == "efficientnet_lite0"
    assert m["trainable_params"] == m["n_params"] > 3_000_000  # every parameter trains
    hp = m["hyperparameters"]
    assert (hp["epochs"], hp["lr"], hp["lr_decay"], hp["weight_decay"], hp["warmup_epochs"],
            hp["patience"], hp["checkpoint"]) == (2, 3e-4, 0.3, 0.05, 1.0, 3, "best")
    assert full_study["config"]["resolved"]["hyperparameters"]["full"]["epochs"] == 2
    assert full_study["config"]["arguments"]["full_lr"] == 3e-4
    stopping = m["early_stopping"]["per_seed"]["0"]
    assert stopping["epochs_run"] == 2 and stopping["best_epoch"] in (1, 2)
    assert stopping["lr"][0] == pytest.approx(3e-4)  # the top, after one epoch of warm-up
    history = [r for r in read_csv(out / "history.csv") if r["model"] == "efficientnet_lite0_full"]
    assert len(history) == 2
    # The kept epoch's validation accuracy is the one reported.
    assert m["val_accuracy"]["mean"] == pytest.approx(
        float(history[stopping["best_epoch"] - 1]["val_acc"]))
    for part in ("train", "val", "test"):
        assert m[f"{part}_accuracy"]["mean"] is not None
    assert "efficientnet_lite0_full" in results["sweep"]["models"]
    assert "efficientnet_lite0_full" in results["diagnostics"]["gradcam"]
    report = (out / "report.md").read_text()
    assert "`efficientnet_lite0_full`" in report and "fully trained" in report
    assert "early stopping" in report
    assert (out / "figures" / "curves_efficientnet_lite0_full.png").is_file()
    assert (out / "checkpoints" / "efficientnet_lite0_full_seed0.pt").is_file()


def _predict_rows(out, files, *models):
    code, stdout, stderr = run_cli(["predict", "--run", str(out), "--no-progress",
                                    *(f"--model={m}" for m in models), *map(str, files)])
    assert code == 0, stderr
    return list(csv.reader(io.StringIO(stdout)))[1:]


def test_predict_reproduces_the_study_predictions_of_the_full_model(full_study, monkeypatch):
    data, out = full_study["data"], full_study["out"]
    study = {(r["path"], r["model"]): float(r["prob_ai"])
             for r in read_csv(out / "predictions.csv")}
    files = sorted(data.rglob("*_0[0-3].*"))
    full, frozen = "efficientnet_lite0_full", "efficientnet_lite0_frozen"
    # The full model first: its backbone has no weights to share, so the frozen model, loaded
    # next, must load the pretrained backbone itself.
    rows = _predict_rows(out, files, full, frozen)
    assert len(rows) == 2 * len(files) == 16
    for path, model, seed, prob, label in rows:
        rel = Path(path).relative_to(data).as_posix()
        assert float(prob) == pytest.approx(study[(rel, model)], abs=1e-5)
    assert {row[1] for row in rows} == {full, frozen}
    # Without the pretrained weights: the checkpoint holds all of a full model's.
    _no_weights_anywhere(monkeypatch)
    assert _predict_rows(out, files, full) == [row for row in rows if row[1] == full]


def test_evaluate_scores_the_full_model(full_study, tmp_path, make_study_images, monkeypatch):
    other = make_study_images(tmp_path / "other", n_per_class=4, seed=9)
    _no_weights_anywhere(monkeypatch)  # not needed for a full model
    code, stdout, stderr = run_cli(["evaluate", "--run", str(full_study["out"]), "--data",
                                    str(other), "--out", str(tmp_path / "eval"), "--workers",
                                    "1", "--no-progress", "--models", "efficientnet_lite0_full"])
    assert code == 0, stderr
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["models"]["efficientnet_lite0_full"]["accuracy"]["mean"] is not None
