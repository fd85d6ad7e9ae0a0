"""The scratch CNN: gradients, agreement with torch autograd, backends, files, learning."""

import numpy as np
import pytest

from aigen.errors import UserError
from aigen.kernels import KernelBuildError, get_backend
from aigen.models import load_model, model_kind
from aigen.models.scratch import PARAM_NAMES, ScratchCNN, bce_with_logits
from aigen.training import train_scratch


def _cython_missing_reason():
    try:
        get_backend("cython")
    except KernelBuildError as exc:
        return f"the Cython kernels are not built: {exc}"
    return None


CYTHON_MISSING = _cython_missing_reason()
BACKENDS = [
    "numpy",
    pytest.param("cython", marks=pytest.mark.skipif(CYTHON_MISSING is not None,
                                                    reason=str(CYTHON_MISSING))),
]


def _images(n, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).random((n, 1, 32, 32)).astype(dtype)


def _torch_twin(model):
    """nn.Sequential with the same architecture and a copy of the model's weights (float64)."""
    import torch
    from torch import nn

    twin = nn.Sequential(nn.Conv2d(1, model.filters, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(model.n_fc_inputs, 1)).double()
    with torch.no_grad():
        twin[0].weight.copy_(torch.from_numpy(model.conv_w.astype(np.float64)))
        twin[0].bias.copy_(torch.from_numpy(model.conv_b.astype(np.float64)))
        twin[4].weight.copy_(torch.from_numpy(model.fc_w.astype(np.float64)[None, :]))
        twin[4].bias.copy_(torch.from_numpy(model.fc_b.astype(np.float64)))
    return twin


@pytest.mark.parametrize("filters, expected", [(8, 1881), (16, 3761)])
def test_parameter_count_is_true_and_matches_torch(filters, expected):
    model = ScratchCNN(filters=filters, backend="numpy")
    twin = _torch_twin(model)
    assert model.n_params == expected
    assert model.n_params == sum(p.numel() for p in twin.parameters())


def test_initialisation_is_seeded_and_bounded():
    a, b, c = (ScratchCNN(seed=s, backend="numpy") for s in (3, 3, 4))
    for name in PARAM_NAMES:
        np.testing.assert_array_equal(a.params[name], b.params[name])
    assert not np.array_equal(a.fc_w, c.fc_w)
    assert np.abs(a.conv_w).max() <= 1 / 3 and np.abs(a.fc_w).max() <= 1 / np.sqrt(1800)
    assert a.conv_w.dtype == np.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_finite_differences(backend):
    """Central differences in float64 over every parameter of the whole model."""
    model = ScratchCNN(filters=3, seed=1, backend=backend, dtype=np.float64)
    x = _images(3, seed=2, dtype=np.float64)
    y = np.array([1.0, 0.0, 1.0])
    _, grads = model.loss_and_grads(x, y)
    eps = 1e-6
    for name in PARAM_NAMES:
        param = getattr(model, name)
        numeric = np.empty_like(param)
        for i in np.ndindex(param.shape):
            saved = param[i]
            param[i] = saved + eps
            up = bce_with_logits(model.forward(x), y).mean()
            param[i] = saved - eps
            down = bce_with_logits(model.forward(x), y).mean()
            param[i] = saved
            numeric[i] = (up - down) / (2 * eps)
        assert grads[name].shape == param.shape
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-5, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 4])
def test_sgd_step_matches_torch_autograd(backend, batch):
    import torch

    model = ScratchCNN(filters=8, seed=5, backend=backend, dtype=np.float64)
    twin = _torch_twin(model)
    x = _images(batch, seed=6, dtype=np.float64)
    y = np.array([1.0, 0.0, 0.0, 1.0])[:batch]
    lr = 0.05

    loss = model.sgd_step(x, y, lr)

    optimiser = torch.optim.SGD(twin.parameters(), lr=lr)
    torch_loss = torch.nn.functional.binary_cross_entropy_with_logits(
        twin(torch.from_numpy(x)).reshape(-1), torch.from_numpy(y))  # mean over the batch
    optimiser.zero_grad()
    torch_loss.backward()
    optimiser.step()

    assert loss == pytest.approx(torch_loss.item(), rel=1e-12)
    expected = {"conv_w": twin[0].weight, "conv_b": twin[0].bias,
                "fc_w": twin[4].weight.reshape(-1), "fc_b": twin[4].bias}
    for name, tensor in expected.items():
        np.testing.assert_allclose(model.params[name], tensor.detach().numpy(), rtol=1e-10,
                                   atol=1e-13, err_msg=name)


def test_float32_sgd_step_matches_torch_closely():
    import torch

    model = ScratchCNN(filters=8, seed=7, backend="numpy")
    twin = _torch_twin(model).float()
    x = _images(4, seed=8)
    y = np.array([1, 0, 1, 1], dtype=np.float32)
    model.sgd_step(x, y, 0.01)
    torch.nn.functional.binary_cross_entropy_with_logits(
        twin(torch.from_numpy(x)).reshape(-1), torch.from_numpy(y)).backward()
    with torch.no_grad():
        for p in twin.parameters():
            p -= 0.01 * p.grad
    np.testing.assert_allclose(model.conv_w, twin[0].weight.detach().numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.fc_w, twin[4].weight.detach().numpy()[0], rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(CYTHON_MISSING is not None, reason=str(CYTHON_MISSING))
def test_numpy_and_cython_backends_train_to_the_same_weights():
    rng = np.random.default_rng(9)
    X = _images(40, seed=9)
    y = rng.integers(0, 2, 40)
    models = [train_scratch(X, y, X[:10], y[:10], epochs=2, seed=3, backend=backend,
                            progress=False)[0] for backend in ("numpy", "cython")]
    for name in PARAM_NAMES:
        np.testing.assert_allclose(models[0].params[name], models[1].params[name], rtol=1e-5,
                                   atol=1e-6, err_msg=name)
    assert not np.allclose(models[0].fc_w, ScratchCNN(seed=3, backend="numpy").fc_w)


def test_bce_from_logits_is_stable_for_extreme_logits():
    z = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise"):
        loss_if_ai = bce_with_logits(z, np.ones_like(z))
        loss_if_real = bce_with_logits(z, np.zeros_like(z))
    np.testing.assert_allclose(loss_if_ai, [1000, 50, np.log(2), 0, 0], atol=1e-6)
    np.testing.assert_allclose(loss_if_real, [0, 0, np.log(2), 50, 1000], atol=1e-6)


@pytest.mark.parametrize("filters", [8, 16])
def test_save_and_load_round_trip(tmp_path, filters):
    model = ScratchCNN(filters=filters, seed=11, backend="numpy")
    X = _images(5, seed=12)
    model.sgd_step(X, np.array([1, 0, 1, 0, 1]), 0.1)
    path = tmp_path / "scratch.npz"
    model.save(path, metadata={"split_seed": 4})
    assert model_kind(path) == "scratch"
    again, header = ScratchCNN.load_with_header(path)
    assert (again.filters, again.seed, again.backend, again.dtype) == (filters, 11, "numpy", np.float32)
    assert header["metadata"] == {"split_seed": 4} and header["n_params"] == model.n_params
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))
    np.testing.assert_array_equal(load_model(path).predict_proba(X), model.predict_proba(X))
    assert [p.name for p in tmp_path.iterdir()] == ["scratch.npz"]  # nothing left behind


def test_loading_something_else_is_a_user_error(tmp_path):
    bad = tmp_path / "notes.npz"
    bad.write_text("not a model")
    with pytest.raises(UserError, match="not a saved aigen model"):
        load_model(bad)
    with pytest.raises(UserError, match="not a scratch CNN"):
        ScratchCNN.load(bad)
    other = tmp_path / "arrays.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(UserError, match="not a scratch CNN"):
        ScratchCNN.load(other)
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "missing.npz")


def test_bad_arguments_are_rejected_clearly():
    with pytest.raises(ValueError, match="filters"):
        ScratchCNN(filters=0, backend="numpy")
    with pytest.raises(ValueError, match="dtype"):
        ScratchCNN(backend="numpy", dtype=np.int32)
    with pytest.raises(ValueError, match="backend"):
        ScratchCNN(backend="fortran")
    model = ScratchCNN(backend="numpy")
    with pytest.raises(ValueError, match=r"\(N, 1, 32, 32\)"):
        model.forward(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="labels"):
        model.sgd_step(_images(2), [1], 0.01)


@pytest.mark.parametrize("backend", BACKENDS)
def test_learns_a_trivially_separable_task(backend):
    """AI = a bright square top-left, real = bottom-right, on noise: near-perfect after training."""
    rng = np.random.default_rng(13)
    n = 160
    X = rng.random((n, 1, 32, 32)).astype(np.float32) * 0.3
    y = rng.integers(0, 2, n)
    for img, label in zip(X, y):
        r, c = (4, 4) if label == 1 else (20, 20)
        img[0, r:r + 8, c:c + 8] += 0.7
    model, history = train_scratch(X[:120], y[:120], X[120:], y[120:], epochs=4, seed=0,
                                   backend=backend, progress=False)
    accuracy = np.mean((model.predict_proba(X[120:]) > 0.5) == y[120:])
    assert accuracy >= 0.95
    assert history[-1]["val_acc"] == pytest.approx(accuracy)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_confident_probabilities_do_not_saturate():
    """A logit of 25 is P = 1 - 1.4e-11 in float64, but exactly 1.0 in float32: predictions are
    computed in float64 so that ROC-AUC does not see spurious ties among confident images."""
    from aigen.models.scratch import ScratchCNN

    model = ScratchCNN(filters=2, seed=0, backend="numpy")
    model.fc_w[:] = 0
    model.fc_b[:] = 25.0
    p = model.predict_proba(np.zeros((2, 1, 32, 32), dtype=np.float32))
    assert p.dtype == np.float64 and np.all(p < 1.0) and np.all(p > 1 - 1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_steps_reuse_a_workspace_and_match_the_allocating_path(backend, monkeypatch):
    """sgd_step writes into per-batch-size buffers (the kernels' out=) and gives the same weights,
    bit for bit, as steps taken through loss_and_grads, which allocates fresh arrays."""
    from aigen.models import scratch

    small = ScratchCNN(filters=8, backend=backend)
    small.sgd_step(_images(1), [1], lr=0.1)
    assert small._workspaces == {}  # one sample: cheaper to allocate
    small.sgd_step(_images(64), np.ones(64), lr=0.1)
    assert list(small._workspaces) == [64]  # a batch: its conv output alone is 1.8 MB
    monkeypatch.setattr(scratch, "WORKSPACE_MIN_BYTES", 0)
    a = ScratchCNN(filters=3, seed=5, backend=backend)
    b = ScratchCNN(filters=3, seed=5, backend=backend)
    rng = np.random.default_rng(1)
    batches = [(_images(n, seed=s), rng.integers(0, 2, n)) for s, n in enumerate([6, 6, 4, 6, 1])]
    for x, y in batches:
        a.sgd_step(x, y, lr=0.1)
        _, grads = b.loss_and_grads(x, y)
        for name, grad in grads.items():
            param = getattr(b, name)
            param -= np.float32(0.1) * grad
    for name in PARAM_NAMES:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert b._workspaces == {}  # the public gradient path hands out arrays the caller may keep
    assert sorted(a._workspaces) == [1, 4, 6]
    six = a._workspaces[6]
    held = {name: arr for name, arr in six.items()}
    assert {"z1", "dz1", "m1", "dw", "db"} <= set(held) and "dx" not in held  # no input gradient
    a.sgd_step(*batches[0], lr=0.1)
    assert all(a._workspaces[6][name] is arr for name, arr in held.items())  # reused, not reallocated
    for n in range(7, 7 + 4):  # only the most recent batch sizes are kept
        a.forward(_images(n))
    assert len(a._workspaces) == 4 and 6 not in a._workspaces


@pytest.mark.parametrize("seed,filters", [(0, 8), (7, 16), (123, 3)])
def test_torch_initialisation_reproduces_torch_layers_under_the_same_seed(seed, filters):
    import torch
    from torch import nn

    model = ScratchCNN(filters=filters, seed=seed, backend="numpy")  # init="torch" by default
    assert model.init == "torch"
    torch.manual_seed(seed)
    conv, fc = nn.Conv2d(1, filters, 3), nn.Linear(filters * 225, 1)
    for ours, theirs in ((model.conv_w, conv.weight), (model.conv_b, conv.bias),
                         (model.fc_w, fc.weight[0]), (model.fc_b, fc.bias)):
        np.testing.assert_array_equal(ours, theirs.detach().numpy())
    # Drawn from its own generator: the global torch RNG is left alone.
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    ScratchCNN(filters=2, seed=seed, backend="numpy")
    assert torch.equal(torch.rand(3), expected)


def test_legacy_initialisation_is_numpys_and_survives_a_round_trip(tmp_path):
    legacy = ScratchCNN(filters=4, seed=3, backend="numpy", init="legacy")
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(legacy.conv_w, rng.uniform(-1 / 3, 1 / 3, (4, 1, 3, 3)).astype(np.float32))
    assert not np.array_equal(legacy.conv_w, ScratchCNN(filters=4, seed=3, backend="numpy").conv_w)
    legacy.save(tmp_path / "m.npz")
    back = ScratchCNN.load(tmp_path / "m.npz")
    assert back.init == "legacy"
    np.testing.assert_array_equal(back.fc_w, legacy.fc_w)
    with pytest.raises(ValueError, match="init must be one of"):
        ScratchCNN(init="kaiming")
