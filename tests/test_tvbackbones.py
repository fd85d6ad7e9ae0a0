"""`torchvision:NAME` backbones: the split per family, local weights files, errors, and a study
run with one (then `aigen predict` on it)."""

import contextlib
import csv
import hashlib
import io
import json

import numpy as np
import pytest

from aigen import cli
from aigen.errors import UserError
from aigen.models import backbones
from aigen.models.backbones import BackboneUnavailable, check_weights, load_backbone, weights_by_backbone

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


@pytest.fixture(autouse=True)
def offline_empty_hub(tmp_path, monkeypatch):
    """No network, and a torch hub cache without any weights."""
    monkeypatch.setenv(backbones.OFFLINE_ENV, "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def _state_file(path, arch, seed=1):
    """A randomly initialised `arch`'s state_dict saved to `path`; returns its sha256."""
    torch.manual_seed(seed)
    torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _headless(network):
    """The network with its classifier's Linear layers (and what follows the first) removed, so
    its forward returns the pooled features its own way."""
    from torch import nn

    attr = "fc" if hasattr(network, "fc") else "classifier"
    head = getattr(network, attr)
    if isinstance(head, nn.Sequential):
        first = next(i for i, m in enumerate(head) if isinstance(m, nn.Linear))
        setattr(network, attr, head[:first])  # convnext keeps its LayerNorm2d + Flatten
    else:
        setattr(network, attr, nn.Identity())
    return network


# One small model per family that aigen splits, with the channels of its prefix output and the
# number of features, for 64x64 inputs (the prefix output is then 4x4: 1/16 of the input).
FAMILIES = [
    ("resnet18", 256, 512),
    ("regnet_x_400mf", 160, 400),
    ("shufflenet_v2_x0_5", 96, 1024),
    ("efficientnet_b0", 112, 1280),
    ("mobilenet_v2", 96, 1280),
    ("mobilenet_v3_small", 48, 576),
    ("mnasnet0_5", 48, 1280),
    ("convnext_tiny", 384, 768),
    ("densenet121", 1024, 1024),
]


@pytest.mark.parametrize("arch, prefix_channels, n_features", FAMILIES)
def test_prefix_then_stage_is_the_whole_network(arch, prefix_channels, n_features):
    name = f"torchvision:{arch}"
    backbone = load_backbone(name, init="random")
    network = backbones._load_network(name, None, "random")[0]
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 64, 64), np.float32))
    A = backbone.prefix_activations(x.numpy(), batch_size=2)
    assert tuple(A.shape) == (2, prefix_channels, 4, 4)  # the stage is the 1/32 part
    features = backbone.pooled_features(A)
    assert backbone.n_features == n_features and tuple(features.shape) == (2, n_features)
    with torch.no_grad():
        expected = _headless(network)(x)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)
    assert not backbone.pretrained and "NOT pretrained" in backbone.weights_source
    assert arch in backbone.architecture


@pytest.mark.parametrize("arch", [arch for arch, _, _ in FAMILIES])
def test_a_full_model_of_every_family_loads_without_a_weights_file(arch, tmp_path):
    """A full checkpoint holds all of its weights: it is rebuilt on the architecture alone (on the
    meta device; RegNet, which computes while it builds, on the CPU) and scores the same."""
    import copy

    from aigen.models.backbones import BackboneClassifier, load_classifier, new_head

    backbone = load_backbone(f"torchvision:{arch}", init="random")
    clf = BackboneClassifier(backbone, "full", copy.deepcopy(backbone.stage),
                             new_head(backbone.n_features, 3), prefix=copy.deepcopy(backbone.prefix))
    clf.save(tmp_path / "full.pt")
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    loaded = load_classifier(tmp_path / "full.pt")  # no weights file exists for it anywhere
    assert not loaded.backbone.has_weights and loaded.backbone.n_features == backbone.n_features
    np.testing.assert_array_equal(loaded.predict_proba(x), clf.predict_proba(x))
    # A weights file is checked against the same structure before a study starts.
    _state_file(tmp_path / "weights.pth", arch)
    check_weights(f"torchvision:{arch}", tmp_path / "weights.pth")


def test_stage_and_trained_parameters_per_regime():
    """Frozen: the new head only; fine-tuned: the last stage + head (counted as the study does)."""
    from aigen.study.stages.train import parameter_counts as _parameter_counts
    from aigen.training import train_finetuned, train_frozen

    backbone = load_backbone("torchvision:mobilenet_v3_small", init="random")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # features[9:]: the three 96-channel blocks (the first has stride 2) + the 576-channel conv
    assert count(backbone.stage) == 736_488 and count(backbone.prefix) == 190_520
    A = backbone.prefix_activations(np.zeros((4, 3, 64, 64), np.float32))
    y = np.array([0, 1, 0, 1])
    frozen, _ = train_frozen(backbone, A, y, A, y, epochs=1, seed=0, progress=False)
    tuned, _ = train_finetuned(backbone, A, y, A, y, epochs=1, seed=0, progress=False)
    head = 576 * 2 + 2
    assert _parameter_counts(frozen) == (190_520 + 736_488 + head, head)
    assert _parameter_counts(tuned) == (190_520 + 736_488 + head, 736_488 + head)
    resnet = load_backbone("torchvision:resnet18", init="random")
    assert resnet.stage is not None and count(resnet.stage) == 8_393_728  # layer4, as resnet18's


def test_local_weights_file_is_loaded_and_identified(tmp_path):
    path = tmp_path / "my-resnet.pth"
    digest = _state_file(path, "resnet18")
    backbone = load_backbone("torchvision:resnet18", weights=path)
    assert backbone.pretrained and backbone.weights_sha256 == digest
    assert str(path) in backbone.weights_source and digest[:12] in backbone.weights_source
    state = torch.load(path, weights_only=True)
    torch.testing.assert_close(backbone.stage[0].conv1.weight, state["layer4.0.conv1.weight"])
    torch.testing.assert_close(backbone.prefix[0].weight, state["conv1.weight"])
    check_weights("torchvision:resnet18", path)  # the up-front check accepts it too


def test_published_file_name_must_have_its_hash(tmp_path, monkeypatch):
    """In the hub cache (or given), a file named like torchvision's must be that file."""
    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    _state_file(hub / "mobilenet_v3_small-047dcff4.pth", "mobilenet_v3_small")
    with pytest.raises(BackboneUnavailable, match="named like torchvision's.*047dcff4"):
        load_backbone("torchvision:mobilenet_v3_small")


def test_without_weights_it_is_unavailable_with_instructions():
    with pytest.raises(BackboneUnavailable) as info:
        load_backbone("torchvision:resnet50")
    message = str(info.value)
    for needed in ("--weights resnet50=PATH", "state_dict", "resnet50-11ad3fa6.pth",
                   "hub", "--init random"):
        assert needed in message


@pytest.mark.parametrize("name, words", [
    ("torchvision:resnet51", ["not a torchvision classification model", "resnet50"]),
    ("torchvision:vit_b_16", ["cannot split the vision_transformer family", "resnet",
                              "convnext", "densenet"]),
    ("torchvision:vgg16", ["cannot split the vgg family"]),
    ("vgg16", ["unknown backbone", "torchvision:NAME"]),
])
def test_bad_names_are_user_errors(name, words):
    with pytest.raises(UserError) as info:
        load_backbone(name, init="random")
    for word in words:
        assert word in str(info.value)


def test_bad_weights_files_are_clear_errors(tmp_path):
    name = "torchvision:resnet18"
    other = tmp_path / "mobilenet.pth"
    _state_file(other, "mobilenet_v3_small")
    for check in (lambda p: load_backbone(name, weights=p), lambda p: check_weights(name, p)):
        with pytest.raises(BackboneUnavailable, match="does not fit the architecture: "
                                                      r"\d+ missing keys .*unexpected keys"):
            check(other)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(BackboneUnavailable, match="cannot read weights file"):
        check_weights(name, garbage)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(BackboneUnavailable, match="not a state_dict"):
        load_backbone(name, weights=tensor)
    with pytest.raises(BackboneUnavailable, match="does not exist"):
        check_weights(name, tmp_path / "absent.pth")


def test_weights_option_items(tmp_path):
    names = ["resnet18", "torchvision:resnet50", "efficientnet_lite1"]
    bare = tmp_path / "a=b.pth"  # an existing file is a bare path even with '=' in its name
    bare.write_bytes(b"")
    assert weights_by_backbone(["resnet50=/w/r50.pth", str(bare)], names) == {
        "torchvision:resnet50": "/w/r50.pth", "resnet18": str(bare)}
    assert weights_by_backbone(["torchvision:resnet50=x"], names) == {"torchvision:resnet50": "x"}
    assert weights_by_backbone("/old/resnet18.pth", names) == {"resnet18": "/old/resnet18.pth"}
    assert weights_by_backbone(["/old/resnet18.pth"], ["efficientnet_lite0"]) == {}
    assert weights_by_backbone(None, names) == {}
    # resnet18= is the built-in one when both are chosen
    assert weights_by_backbone(["resnet18=x"], ["resnet18", "torchvision:resnet18"]) == {
        "resnet18": "x"}
    with pytest.raises(UserError, match="'resnet34' is not one of the backbones"):
        weights_by_backbone(["resnet34=x"], names)
    with pytest.raises(UserError, match="two files for torchvision:resnet50"):
        weights_by_backbone(["resnet50=x", "torchvision:resnet50=y"], names)


# ----------------------------------------------------------------------------------------------
# A study with a torchvision backbone, then `aigen predict` on its run


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse's own exit for a bad value (e.g. of --backbones)
            code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tv_study(tmp_path_factory, make_study_images):
    base = tmp_path_factory.mktemp("tv-study")
    data = make_study_images(base / "data", n_per_class=8)
    weights = base / "weights" / "mnv3s.pth"
    weights.parent.mkdir()
    digest = _state_file(weights, "mobilenet_v3_small")
    out = base / "results"
    argv = ["study", "--data", str(data), "--out", str(out), "--quick", "--device", "cpu",
            "--models", "frozen", "finetuned", "--backbones", "torchvision:mobilenet_v3_small",
            "--weights", f"mobilenet_v3_small={weights}", "--workers", "1", "--no-progress",
            "--scratch-lrs"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIGEN_CACHE_DIR", str(base / "cache"))
        mp.setenv("AIGEN_OFFLINE", "1")
        mp.setenv("TORCH_HOME", str(base / "torch-home"))
        code, stdout, stderr = _cli(argv)
    return {"code": code, "stdout": stdout, "stderr": stderr, "out": out, "data": data,
            "weights": weights, "digest": digest}


def test_study_with_a_torchvision_backbone(tv_study):
    assert tv_study["code"] == 0, tv_study["stderr"]
    out = tv_study["out"]
    results = json.loads((out / "results.json").read_text())
    config = json.loads((out / "config.json").read_text())
    name = "torchvision:mobilenet_v3_small"
    assert set(results["models"]) == {f"{name}_frozen", f"{name}_finetuned"}
    for regime in ("frozen", "finetuned"):
        model = results["models"][f"{name}_{regime}"]
        assert model["backbone"] == name and model["pretrained"]
        assert model["weights_sha256"] == tv_study["digest"]
        assert "mobilenetv3 family" in model["architecture"]
    head = 576 * 2 + 2
    assert results["models"][f"{name}_frozen"]["trainable_params"] == head
    assert results["models"][f"{name}_finetuned"]["trainable_params"] == 736_488 + head
    assert config["backbones"][name]["weights_sha256"] == tv_study["digest"]
    assert config["arguments"]["weights"] == [f"{name}={tv_study['weights']}"]
    assert (out / "checkpoints" / f"{name}_finetuned_seed0.pt").is_file()


def test_predict_loads_the_torchvision_models_of_the_run(tv_study, capsys):
    assert tv_study["code"] == 0, tv_study["stderr"]
    with open(tv_study["out"] / "predictions.csv", newline="") as f:
        study = {(r["path"], r["model"]): float(r["prob_ai"]) for r in csv.DictReader(f)}
    files = sorted(tv_study["data"].rglob("*_0[0-2].png"))
    code = cli.main(["predict", "--run", str(tv_study["out"]), "--no-progress", *map(str, files)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = list(csv.reader(io.StringIO(captured.out)))[1:]
    assert len(rows) == 2 * len(files)
    for path, model, _, prob, _ in rows:
        rel = str(__import__("pathlib").Path(path).relative_to(tv_study["data"]).as_posix())
        assert float(prob) == pytest.approx(study[(rel, model)], abs=1e-5)


def test_predict_with_moved_weights(tv_study, tmp_path, capsys):
    """The run's weights file moved: `--weights NAME=PATH` points predict at the new place; a
    file with other weights is refused (the backbone's fingerprint differs)."""
    assert tv_study["code"] == 0, tv_study["stderr"]
    moved = tmp_path / "moved.pth"
    moved.write_bytes(tv_study["weights"].read_bytes())
    image = str(sorted(tv_study["data"].rglob("*.png"))[0])
    argv = ["predict", "--run", str(tv_study["out"]), "--no-progress", "--model",
            "torchvision:mobilenet_v3_small_frozen"]
    assert cli.main([*argv, "--weights", f"mobilenet_v3_small={moved}", image]) == 0
    other = tmp_path / "other.pth"
    _state_file(other, "mobilenet_v3_small", seed=2)
    capsys.readouterr()
    assert cli.main([*argv, "--weights", f"mobilenet_v3_small={other}", image]) == 2
    assert "different weights" in capsys.readouterr().err


@pytest.mark.parametrize("extra, words", [
    (["--backbones", "torchvision:vit_b_16"], ["cannot split the vision_transformer family"]),
    (["--backbones", "torchvision:resnet18", "--weights", "resnet18={tmp}/mnv3s.pth"],
     ["does not fit the architecture", "missing keys"]),
    (["--backbones", "torchvision:resnet18", "--weights", "resnet34={tmp}/mnv3s.pth"],
     ["'resnet34' is not one of the backbones"]),
])
def test_bad_torchvision_options_fail_before_any_work(tmp_path, make_study_images, extra, words):
    data = make_study_images(tmp_path / "data", n_per_class=3)
    _state_file(tmp_path / "mnv3s.pth", "mobilenet_v3_small")
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    argv = ["study", "--data", str(data), "--out", str(tmp_path / "out"), "--models", "frozen",
            "--no-progress", *extra]
    code, _, err = _cli(argv)
    assert code == 2 and "Traceback" not in err
    for word in words:
        assert word in err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()
