"""What the models look at (aigen.study.diagnostics): Grad-CAM on a tiny model whose evidence is
in one known region, the choice of examples, the scratch CNN's activation maps, the figures."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from aigen.study import diagnostics


def _tiny_model():
    """prefix: identity; stage: 4x4 average of each input channel (stride 4, so the map is 4x
    coarser than the input); head: only channel 0 counts, towards "ai"."""
    stage = nn.Conv2d(3, 2, kernel_size=4, stride=4, bias=False)
    head = nn.Linear(2, 2)
    with torch.no_grad():
        stage.weight.zero_()
        stage.weight[0, 0] = 1 / 16
        stage.weight[1, 1] = 1 / 16
        head.weight.copy_(torch.tensor([[0.0, 0.0], [16.0, 0.0]]))
        head.bias.copy_(torch.tensor([0.0, -0.5]))
    return nn.Identity(), stage, head


def _patches(where_evidence, where_distractor, size=32, patch=8):
    x = np.zeros((1, 3, size, size), np.float32)
    (r, c), (r2, c2) = where_evidence, where_distractor
    x[0, 0, r:r + patch, c:c + patch] = 1.0  # the channel the head reads
    x[0, 1, r2:r2 + patch, c2:c2 + patch] = 1.0  # a channel it ignores
    return x


def test_grad_cam_has_the_input_size_and_points_at_the_evidence():
    prefix, stage, head = _tiny_model()
    X = np.concatenate([_patches((0, 0), (24, 24)), _patches((24, 24), (0, 0))])
    maps, prob = diagnostics.grad_cam(prefix, stage, head, X)
    assert maps.shape == (2, 32, 32) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and (maps >= 0).all()
    assert (prob > 0.5).all()  # both predicted ai, from channel 0
    for k, (r, c) in enumerate([(0, 0), (24, 24)]):
        inside = maps[k, r:r + 8, c:c + 8].mean()
        outside = (maps[k].sum() - maps[k, r:r + 8, c:c + 8].sum()) / (32 * 32 - 64)
        assert inside > 5 * outside, k  # the evidence, not the ignored patch
    # The probabilities are the model's own.
    with torch.no_grad():
        logits = head(stage(torch.from_numpy(X)).mean(dim=(2, 3)))
    assert np.allclose(prob, torch.softmax(logits.double(), 1)[:, 1].numpy())


def test_grad_cam_explains_the_predicted_class():
    """An image with no evidence is called real; its map shows what argues for real (here
    nothing: the map is zero), not the evidence for ai."""
    prefix, stage, head = _tiny_model()
    maps, prob = diagnostics.grad_cam(prefix, stage, head, np.zeros((1, 3, 32, 32), np.float32))
    assert prob[0] < 0.5 and maps.shape == (1, 32, 32) and np.all(maps == 0)


def test_grad_cam_explains_the_class_it_is_given():
    """`classes` picks the class each map argues for, whatever the input predicts: the evidence
    patch argues for ai, so asked about real the map is empty."""
    prefix, stage, head = _tiny_model()
    X = np.concatenate([_patches((0, 0), (24, 24))] * 2)
    own, prob = diagnostics.grad_cam(prefix, stage, head, X)
    assert (prob > 0.5).all() and (own > 0).any()
    given, prob_given = diagnostics.grad_cam(prefix, stage, head, X, classes=np.array([1, 0]),
                                             batch_size=1)
    np.testing.assert_allclose(given[0], own[0], rtol=1e-6)
    assert np.all(given[1] == 0) and np.allclose(prob_given, prob)


def test_pick_examples_groups_by_class_and_correctness():
    y = np.array([1, 1, 1, 0, 0, 0, 1])
    p = np.array([0.9, 0.6, 0.2, 0.1, 0.45, 0.8, 0.99])
    groups = diagnostics.pick_examples(y, p, per_group=2)
    assert [list(v) for v in groups.values()] == [[6, 0], [2], [3, 4], [5]]
    assert list(groups) == list(diagnostics.GROUPS)


def test_gradcam_figure_with_an_empty_group(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    maps = rng.uniform(0, 1, (3, 32, 32)).astype(np.float32)
    groups = {("ai", True): [0, 1], ("ai", False): [], ("real", True): [2], ("real", False): []}
    diagnostics.gradcam_figure(images, maps, np.array([0.9, 0.8, 0.1]), groups, "title",
                               tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as im:
        assert im.format == "PNG" and im.height > 400


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_scratch_activation_maps_are_the_relu_of_its_convolution(tmp_path, backend):
    from aigen.models.scratch import ScratchCNN

    model = ScratchCNN(filters=4, seed=0, backend=backend)
    X = np.random.default_rng(1).uniform(0, 1, (3, 1, 32, 32)).astype(np.float32)
    acts = model.conv_activations(X)
    assert acts.shape == (3, 4, 30, 30) and (acts >= 0).all()
    f, i, j = 2, 5, 7
    expected = max(0.0, float((X[1, 0, i:i + 3, j:j + 3] * model.conv_w[f, 0]).sum()
                              + model.conv_b[f]))
    assert acts[1, f, i, j] == pytest.approx(expected, abs=1e-5)
    record = diagnostics.scratch_diagnostic(
        model, X, np.array([1, 0, 1]), np.array([0.7, 0.3, 0.4]), ["a.png", "b.png", "c.png"], 0,
        tmp_path / "f.png", n=2)
    assert [e["path"] for e in record["examples"]] == ["a.png", "b.png"]
    with Image.open(tmp_path / "f.png") as im:
        assert im.format == "PNG" and im.width > 400
