"""Training loops: histories, checkpoint policy, what each regime may change, determinism, files."""

import numpy as np
import pytest

from aigen.errors import UserError
from aigen.models import load_model, model_kind
from aigen.models.backbones import (
    _module_fingerprint,
    load_backbone,
    load_classifier,
    new_head,
)
from helpers import every_progress_update, interrupt_training_after
from aigen.training import train_finetuned, train_frozen, train_scratch

torch = pytest.importorskip("torch")
HISTORY_KEYS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("AIGEN_OFFLINE", "1")


# ----------------------------------------------------------------------------------------------
# Scratch CNN


def _scratch_data(n=60, seed=0, signal=0.3):
    rng = np.random.default_rng(seed)
    X = rng.random((n, 1, 32, 32)).astype(np.float32)
    y = rng.integers(0, 2, n)
    X[y == 1, :, :16] += signal  # a learnable difference between the classes
    return X, y


def test_train_scratch_history_and_determinism():
    X, y = _scratch_data()
    kwargs = dict(epochs=3, seed=2, backend="numpy", progress=False)
    model, history = train_scratch(X[:40], y[:40], X[40:], y[40:], **kwargs)
    again, history_again = train_scratch(X[:40], y[:40], X[40:], y[40:], **kwargs)
    other, _ = train_scratch(X[:40], y[:40], X[40:], y[40:], **{**kwargs, "seed": 3})
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(set(h) == HISTORY_KEYS for h in history)
    assert history == history_again
    np.testing.assert_array_equal(model.conv_w, again.conv_w)
    assert not np.array_equal(model.conv_w, other.conv_w)
    val_loss, val_acc = model.evaluate(X[40:], y[40:])
    assert (val_loss, val_acc) == pytest.approx((history[-1]["val_loss"], history[-1]["val_acc"]))


def test_train_scratch_batches_and_filters():
    X, y = _scratch_data()
    model, history = train_scratch(X[:40], y[:40], X[40:], y[40:], filters=16, batch_size=8,
                                   epochs=2, lr=0.05, backend="numpy", progress=False)
    assert model.filters == 16 and model.n_params == 3761 and len(history) == 2


def test_best_checkpoint_keeps_the_best_validation_epoch():
    X, y = _scratch_data(n=80, seed=0, signal=0.05)  # weak: validation accuracy goes up and down
    model, history = train_scratch(X[:50], y[:50], X[50:], y[50:], epochs=6, lr=0.05, seed=1,
                                   backend="numpy", progress=False, checkpoint="best")
    best = max(history, key=lambda h: h["val_acc"])
    assert best["val_acc"] > history[-1]["val_acc"]  # so "best" differs from "last" here
    assert model.evaluate(X[50:], y[50:])[1] == pytest.approx(best["val_acc"])
    with pytest.raises(ValueError, match="checkpoint"):
        train_scratch(X, y, X, y, epochs=1, backend="numpy", progress=False, checkpoint="first")


def test_training_rejects_bad_labels_and_lengths():
    X, y = _scratch_data(n=10)
    with pytest.raises(ValueError, match="labels"):
        train_scratch(X, y[:5], X, y, backend="numpy", progress=False)
    with pytest.raises(ValueError, match="0 \\(real\\) or 1 \\(AI\\)"):
        train_scratch(X, y + 1, X, y, backend="numpy", progress=False)


# ----------------------------------------------------------------------------------------------
# Backbones (EfficientNet-Lite0 with its packaged ImageNet weights; small 64x64 inputs)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(5)
    y = np.arange(24) % 2
    X = rng.standard_normal((24, 3, 64, 64)).astype(np.float32)
    X[y == 1, 0] += 1.0  # more "red" for class 1, so there is something to learn
    return X, y


@pytest.fixture(scope="module")
def activations(lite0, images):
    return lite0.prefix_activations(images[0])


def _split(activations, images):
    y = images[1]
    return activations[:16], y[:16], activations[16:], y[16:]


def _states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_trains_only_the_head(lite0, images, activations):
    before = _module_fingerprint(lite0.prefix, lite0.stage)
    model, history = train_frozen(lite0, *_split(activations, images), seed=0, progress=False)
    assert len(history) == 3 and all(set(h) == HISTORY_KEYS for h in history)
    assert _module_fingerprint(lite0.prefix, lite0.stage) == before
    assert model.regime == "frozen" and model.stage is lite0.stage
    assert not _states_equal(model.head.state_dict(), new_head(lite0.n_features, 0).state_dict())
    # Pooled features computed once by the caller give the same model.
    features = lite0.pooled_features(activations)
    again, history_again = train_frozen(lite0, *_split(features, images), seed=0, progress=False)
    assert history_again == history
    assert _states_equal(again.head.state_dict(), model.head.state_dict())


def test_finetuned_changes_the_stage_copy_but_not_the_backbone(lite0, images, activations):
    prefix_before = {k: v.clone() for k, v in lite0.prefix.state_dict().items()}
    stage_before = {k: v.clone() for k, v in lite0.stage.state_dict().items()}
    model, history = train_finetuned(lite0, *_split(activations, images), epochs=2, seed=0,
                                     progress=False)
    assert len(history) == 2 and model.regime == "finetuned"
    model.predict_proba(images[0][:4])  # runs the prefix again, which must stay in eval mode
    assert _states_equal(lite0.prefix.state_dict(), prefix_before)  # incl. BN running stats
    assert _states_equal(lite0.stage.state_dict(), stage_before)
    trained = model.stage.state_dict()
    weights = [k for k in trained if k.endswith("weight")]
    assert all(not torch.equal(trained[k], stage_before[k]) for k in weights)
    running = [k for k in trained if k.endswith("running_mean")]
    assert running and all(not torch.equal(trained[k], stage_before[k]) for k in running)
    assert not any(p.requires_grad for p in model.stage.parameters())


def test_backbone_training_is_deterministic(lite0, images, activations):
    data = _split(activations, images)
    runs = [train_finetuned(lite0, *data, epochs=1, seed=seed, progress=False)
            for seed in (7, 7, 8)]
    (a, ha), (b, hb), (c, _) = runs
    assert ha == hb
    assert _states_equal(a.stage.state_dict(), b.stage.state_dict())
    assert _states_equal(a.head.state_dict(), b.head.state_dict())
    assert not _states_equal(a.head.state_dict(), c.head.state_dict())


def test_best_checkpoint_for_backbones(lite0, images, activations):
    A_tr, y_tr, A_val, y_val = _split(activations, images)
    model, history = train_frozen(lite0, A_tr, y_tr, A_val, y_val, epochs=4, lr=1e-2, seed=1,
                                  progress=False, checkpoint="best")
    accuracy = np.mean((model.predict_proba_from_prefix(A_val) > 0.5) == y_val)
    best = max(h["val_acc"] for h in history)
    assert best > history[-1]["val_acc"]  # so "best" differs from "last" here
    assert accuracy == pytest.approx(best)


def test_backbone_progress_moves_per_batch(lite0, images, activations, capsys, monkeypatch):
    """The bar counts batches (an epoch at scale takes minutes): 16 training rows in batches of
    4 over 2 epochs is 8 steps, each shown, with the epoch in the description."""
    every_progress_update(monkeypatch)
    train_frozen(lite0, *_split(activations, images), epochs=2, batch_size=4, seed=0,
                 progress=True)
    err = capsys.readouterr().err
    assert "8/8" in err and "batch" in err
    assert all(f"{k}/8" in err for k in range(1, 8))
    assert "(epoch 2/2)" in err


@pytest.mark.parametrize("regime", ["frozen", "finetuned"])
def test_classifier_save_and_load_round_trip(lite0, images, activations, tmp_path, regime):
    train = train_frozen if regime == "frozen" else train_finetuned
    model, _ = train(lite0, *_split(activations, images), epochs=1, seed=3, progress=False)
    X = images[0][:6]
    expected = model.predict_proba(X)
    np.testing.assert_array_equal(expected, model.predict_proba_from_prefix(activations[:6]))
    assert expected.shape == (6,) and ((expected > 0) & (expected < 1)).all()

    path = tmp_path / f"{regime}.pt"
    model.save(path, metadata={"seed": 3})
    assert model_kind(path) == "backbone"
    for loaded in (load_classifier(path), load_model(path), load_classifier(path, backbone=lite0)):
        assert loaded.regime == regime and loaded.backbone.name == "efficientnet_lite0"
        np.testing.assert_array_equal(loaded.predict_proba(X), expected)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_loading_with_different_backbone_weights_is_refused(images, tmp_path):
    random_lite0 = load_backbone("efficientnet_lite0", init="random")
    A = random_lite0.prefix_activations(images[0][:8])
    model, _ = train_frozen(random_lite0, A, images[1][:8], A, images[1][:8], epochs=1,
                            progress=False)
    path = tmp_path / "frozen.pt"
    model.save(path)
    assert "NOT pretrained" in load_classifier(path).backbone.weights_source
    with pytest.raises(UserError, match="different weights"):
        load_classifier(path, backbone=load_backbone("efficientnet_lite0"))


# ----------------------------------------------------------------------------------------------
# Epoch states: an interrupted backbone training continues to the uninterrupted result


@pytest.mark.parametrize("regime,checkpoint", [("finetuned", "last"), ("frozen", "best")])
def test_an_interrupted_training_resumes_bitwise(lite0, images, activations, tmp_path, monkeypatch,
                                                regime, checkpoint):
    train = train_frozen if regime == "frozen" else train_finetuned
    data = _split(activations, images)
    kwargs = dict(epochs=3, lr=1e-2, seed=4, progress=False, checkpoint=checkpoint)
    whole, history = train(lite0, *data, **kwargs)
    state = tmp_path / "state.pt"

    written = interrupt_training_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(lite0, *data, epoch_state=state, **kwargs)
    assert written == [1, 2] and state.is_file()
    written.clear()
    resumed, resumed_history = train(lite0, *data, epoch_state=state, **kwargs)
    assert written == [3]  # epochs 1 and 2 were read back, not trained again
    assert resumed_history == history
    assert _states_equal(resumed.head.state_dict(), whole.head.state_dict())
    assert _states_equal(resumed.stage.state_dict(), whole.stage.state_dict())
    np.testing.assert_array_equal(resumed.predict_proba_from_prefix(activations),
                                  whole.predict_proba_from_prefix(activations))


def test_an_epoch_state_of_another_training_is_not_used(lite0, images, activations, tmp_path,
                                                        monkeypatch):
    data = _split(activations, images)
    state = tmp_path / "state.pt"
    written = interrupt_training_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train_frozen(lite0, *data, epochs=2, seed=1, progress=False, epoch_state=state)
    written = interrupt_training_after(monkeypatch, None)
    train_frozen(lite0, *data, epochs=2, seed=2, progress=False, epoch_state=state)
    assert written == [1, 2]  # another seed: trained from its first epoch
    state.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="damaged"):
        train_frozen(lite0, *data, epochs=2, seed=2, progress=False, epoch_state=state)


# ----------------------------------------------------------------------------------------------
# Mixed precision (--amp)


def test_amp_off_is_the_plain_float32_loop(lite0, images, activations):
    """amp="off" (the default) is exactly the float32 loop: Adam, one seeded permutation per
    epoch, mean cross-entropy per batch."""
    import torch.nn.functional as F

    from aigen.training import deterministic_torch

    features = lite0.pooled_features(activations)
    y = torch.from_numpy(images[1].astype(np.int64))
    model, _ = train_frozen(lite0, features[:16], images[1][:16], features[16:], images[1][16:],
                            epochs=2, batch_size=5, seed=6, progress=False, amp="off")
    head = new_head(lite0.n_features, 6)
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(6)
    with deterministic_torch(6):
        for _ in range(2):
            order = torch.randperm(16, generator=generator)
            for start in range(0, 16, 5):
                idx = order[start:start + 5]
                loss = F.cross_entropy(head(features[idx]), y[idx])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
    assert _states_equal(model.head.state_dict(), head.state_dict())


def test_amp_bf16_trains_on_the_cpu(lite0, images, activations):
    data = _split(activations, images)
    plain, _ = train_finetuned(lite0, *data, epochs=1, seed=2, progress=False)
    model, history = train_finetuned(lite0, *data, epochs=1, seed=2, progress=False, amp="bf16")
    assert np.isfinite(history[0]["train_loss"]) and np.isfinite(history[0]["val_loss"])
    # Computed in bfloat16, so not the float32 weights, but close to them.
    assert not _states_equal(model.head.state_dict(), plain.head.state_dict())
    np.testing.assert_allclose(model.predict_proba_from_prefix(activations),
                               plain.predict_proba_from_prefix(activations), atol=0.1)


def test_amp_fp16_on_the_cpu_is_a_clear_error(lite0, images, activations):
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        train_frozen(lite0, *_split(activations, images), epochs=1, progress=False, amp="fp16")
    with pytest.raises(ValueError, match="amp must be one of"):
        train_frozen(lite0, *_split(activations, images), epochs=1, progress=False, amp="fp8")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_training_on_cuda(lite0, images, activations, amp):
    """The CUDA paths: pinned-memory copies, channels-last stage, autocast (fp16 with loss
    scaling); the result is close to the CPU's float32 model."""
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    data = _split(activations, images)
    cpu, _ = train_finetuned(lite0, *data, epochs=1, seed=2, progress=False)
    model, history = train_finetuned(lite0, *data, epochs=1, seed=2, progress=False,
                                     device="cuda", amp=amp)
    assert np.isfinite(history[0]["train_loss"])
    assert next(model.head.parameters()).device.type == "cuda"
    np.testing.assert_allclose(model.predict_proba_from_prefix(activations),
                               cpu.predict_proba_from_prefix(activations),
                               atol=1e-3 if amp == "off" else 0.1)


@cuda
def test_an_interrupted_cuda_training_resumes_bitwise(lite0, images, activations, tmp_path,
                                                     monkeypatch):
    data = _split(activations, images)
    kwargs = dict(epochs=2, seed=4, progress=False, device="cuda", amp="fp16")
    whole, history = train_finetuned(lite0, *data, **kwargs)
    state = tmp_path / "state.pt"
    interrupt_training_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train_finetuned(lite0, *data, epoch_state=state, **kwargs)
    resumed, resumed_history = train_finetuned(lite0, *data, epoch_state=state, **kwargs)
    assert resumed_history == history
    assert _states_equal(resumed.stage.state_dict(), whole.stage.state_dict())


def test_study_amp_fp16_on_the_cpu_is_a_one_line_error(tmp_path, make_study_images):
    from test_study import assert_one_line_error, run_cli

    data = make_study_images(tmp_path / "data", n_per_class=2)
    code, _, err = run_cli(["study", "--data", str(data), "--out", str(tmp_path / "out"),
                            "--device", "cpu", "--amp", "fp16", "--no-progress"])
    assert_one_line_error(code, err, "--amp fp16 needs a CUDA device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
