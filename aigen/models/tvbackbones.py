"""`torchvision:NAME` backbones: any torchvision classification CNN whose family can be split,
with its weights from a local file (docs/models.md#torchvision-backbones).

The split follows the rule the built-in backbones follow: the *stage* is the last stage of the
network, the part that runs at its final resolution (1/32 of the input), and the *prefix* is
everything before it:

* resnet (resnet*, resnext*, wide_resnet*): `layer4`;
* regnet: the last block group of `trunk_output`;
* shufflenetv2: `stage4` + `conv5`;
* efficientnet (b0-b7, v2), mobilenetv2, mobilenetv3, mnasnet, convnext, densenet: the `features`
  sequence (mnasnet: `layers`) cut before its last element that downsamples (a convolution or
  pooling with stride > 1), i.e. the last block group (+ the final 1x1 convolution where there is
  one). The stage ends as the network's own head begins: densenet with its ReLU, convnext with
  its average pooling and LayerNorm (its output is then 1x1, which aigen's pooling leaves as is).

The ImageNet classifier is dropped; `BackboneClassifier` puts its 2-logit head on the pooled
stage output. Weights: `--weights NAME=PATH` (a state_dict saved by `torch.save`), else one of
torchvision's published files for NAME in torch's hub cache. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from aigen.errors import UserError

PREFIX = "torchvision:"
# torchvision module of the model builder -> where the last stage is (see the module text).
SPLITS = {
    "resnet": "layer4",
    "regnet": "the last block group of trunk_output",
    "shufflenetv2": "stage4 + conv5",
    "efficientnet": "features from its last downsampling block group",
    "mobilenetv2": "features from its last downsampling block",
    "mobilenetv3": "features from its last downsampling block",
    "mnasnet": "layers from its last downsampling block group",
    "convnext": "features from its last downsampling layer, + pooling and LayerNorm",
    "densenet": "features from its last transition, + ReLU",
}
FAMILIES = tuple(SPLITS)
_FEATURES_ATTRIBUTE = {"mnasnet": "layers"}


def is_torchvision(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def architecture(name: str) -> str:
    """"resnet50" for "torchvision:resnet50"."""
    return name[len(PREFIX):]


@functools.cache
def _classification_models() -> dict[str, str]:
    """{model name: family} of torchvision's classification models."""
    import torchvision
    from torchvision.models import get_model_builder, list_models

    return {arch: get_model_builder(arch).__module__.rsplit(".", 1)[-1]
            for arch in list_models(module=torchvision.models)}


def family(name: str) -> str:
    """The family of `torchvision:ARCH`, checked: a torchvision classification model of a family
    that can be split. Anything else is a UserError naming what is possible."""
    arch = architecture(name)
    models = _classification_models()
    if arch not in models:
        import difflib

        near = difflib.get_close_matches(arch, list(models), n=6, cutoff=0.6)
        raise UserError(
            f"unknown backbone {name!r}: {arch!r} is not a torchvision classification model"
            + (f" (similar: {', '.join(near)})" if near else "")
            + f"; the families aigen can split: {', '.join(FAMILIES)}")
    fam = models[arch]
    if fam not in SPLITS:
        raise UserError(
            f"backbone {name!r}: aigen cannot split the {fam} family into a frozen prefix and a "
            f"last stage; supported families: " + "; ".join(
                f"{f} (e.g. {_example(models, f)})" for f in FAMILIES))
    return fam


def _example(models: dict[str, str], fam: str) -> str:
    return sorted(arch for arch, f in models.items() if f == fam)[0]


def build(name: str):
    """The architecture with torchvision's default initialisation (1000 ImageNet classes)."""
    from torchvision.models import get_model

    family(name)
    return get_model(architecture(name), weights=None)


# ----------------------------------------------------------------------------------------------
# Weights


def published(name: str) -> list[tuple[str, str, str]]:
    """(file name, sha256 prefix, description) of torchvision's published weights for the model,
    its default first. torchvision names each file `<arch>-<first 8 hex digits of sha256>.pth`."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(architecture(name))
    entries = sorted(enum, key=lambda w: w is not enum.DEFAULT)
    out = []
    for weights in entries:
        file_name = weights.url.rsplit("/", 1)[-1]
        prefix = file_name.rsplit(".", 1)[0].rsplit("-", 1)[-1]
        out.append((file_name, prefix, f"torchvision {weights}"))
    return out


def resolve_weights(name: str, weights: str | os.PathLike | None,
                    hub_dir: Path) -> tuple[Path, str, str]:
    """(path, sha256, source description): the explicit file, else a published file in `hub_dir`.

    A file named like one of torchvision's published files must have that file's sha256 prefix.
    Raises BackboneUnavailable when there is no file."""
    from aigen.io import file_sha256
    from aigen.models.backbones import BackboneUnavailable

    files = published(name)
    if weights is None:
        found = [(hub_dir / f, p, d) for f, p, d in files if (hub_dir / f).is_file()]
        if not found:
            raise BackboneUnavailable(how_to_supply(name, hub_dir, files))
        path, prefix, description = found[0]
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneUnavailable(f"{name}: weights file {path} does not exist (or is not a "
                                      "file)")
        match = [(p, d) for f, p, d in files if f == path.name]
        prefix, description = match[0] if match else (None, "weights")
    digest = file_sha256(path)
    if prefix is not None and not digest.startswith(prefix):
        raise BackboneUnavailable(
            f"{name}: weights file {path} is named like torchvision's {path.name} but its sha256 "
            f"is {digest[:16]}..., not one starting with {prefix} (damaged or another file?)")
    return path, digest, f"{description} from {path} (sha256 {digest[:12]}...)"


def how_to_supply(name: str, hub_dir: Path, files: list[tuple[str, str, str]]) -> str:
    arch = architecture(name)
    listed = ", ".join(f for f, _, _ in files) or "none"
    return (
        f"{name}: no weights file (aigen downloads no torchvision weights). Give one with "
        f"--weights {arch}=PATH (a state_dict saved with torch.save(model.state_dict())), or put "
        f"one of torchvision's published files for {arch} ({listed}) into torch's hub cache "
        f"{hub_dir}. To exercise the code path without weights use --init random (reported as "
        f"NOT pretrained).")


# ----------------------------------------------------------------------------------------------
# The split


def _downsamples(module) -> bool:
    """Whether the module holds a convolution or pooling with a stride above 1."""
    from torch import nn

    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            stride = m.stride if isinstance(m.stride, tuple) else (m.stride,)
            if max(stride) > 1:
                return True
    return False


def _first_linear(module):
    from torch import nn

    return next(m for m in module.modules() if isinstance(m, nn.Linear))


def split(name: str, network):
    """(prefix, stage, n_features): see the module text."""
    from torch import nn

    fam = family(name)
    head = network.fc if hasattr(network, "fc") else network.classifier  # the ImageNet classifier
    n_features = _first_linear(head).in_features
    if fam == "resnet":
        prefix = nn.Sequential(network.conv1, network.bn1, network.relu, network.maxpool,
                               network.layer1, network.layer2, network.layer3)
        return prefix, network.layer4, n_features
    if fam == "regnet":
        groups = list(network.trunk_output)
        return nn.Sequential(network.stem, *groups[:-1]), groups[-1], n_features
    if fam == "shufflenetv2":
        prefix = nn.Sequential(network.conv1, network.maxpool, network.stage2, network.stage3)
        return prefix, nn.Sequential(network.stage4, network.conv5), n_features
    layers = list(getattr(network, _FEATURES_ATTRIBUTE.get(fam, "features")))
    cut = max(i for i, layer in enumerate(layers) if _downsamples(layer))
    tail: list = []
    if fam == "densenet":
        tail = [nn.ReLU()]  # DenseNet.forward applies it after `features`
    elif fam == "convnext":
        tail = [nn.AdaptiveAvgPool2d(1), network.classifier[0]]  # its head's LayerNorm2d
    return nn.Sequential(*layers[:cut]), nn.Sequential(*layers[cut:], *tail), n_features
