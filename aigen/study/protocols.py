"""The study's input protocols: an input policy (`--input`) x a harmonisation (`--harmonize`) x a
train-time augmentation (`--augment`), each combination trained and evaluated on the same splits
(docs/study.md).

- A protocol's key is "HARMONIZE/AUGMENT" (e.g. "none/none", "jpeg:96/blurjpeg") under the resize
  policy, as before input policies existed, and "INPUT/HARMONIZE/AUGMENT" under another
  ("crop/jpeg:96/none"): the key of results.json["protocols"]; its tag ("jpeg96-blurjpeg",
  "crop-jpeg96-none") is the file-safe form.
- The first protocol (first --input x first --harmonize x first --augment value) is the run's
  default: its models keep their plain names ("efficientnet_lite0_frozen") and fill
  results.json["models"], as in a run without protocols. Every other protocol's models are named
  "NAME@TAG" (e.g. "efficientnet_lite0_frozen@jpeg96-blurjpeg") in checkpoints/, predictions.csv
  and history.csv.
- The scratch CNN is never augmented and always takes its 32x32 resized input: it is trained once
  per harmonisation, in the first protocol with that harmonisation, and left out of that
  harmonisation's other protocols.
- `protocol_view(results, key)` is how a reader (`aigen predict`, `aigen evaluate`) gets one
  protocol's models, its harmonisation and its input policy; a run written before protocols
  existed is one protocol, "none/none" (resized inputs).
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from aigen.data.preprocess import INPUT_RESIZE
from aigen.errors import UserError

DEFAULT_KEY = "none/none"


@dataclass(frozen=True)
class Protocol:
    harmonize: str  # "none" or "jpeg:Q" (canonical)
    augment: str  # a key of aigen.data.augment.AUGMENTATIONS
    input: str = INPUT_RESIZE  # "resize", "crop" or "crop:S" (preprocess.check_input)

    @property
    def key(self) -> str:
        base = f"{self.harmonize}/{self.augment}"
        return base if self.input == INPUT_RESIZE else f"{self.input}/{base}"

    @property
    def tag(self) -> str:
        return self.key.replace(":", "").replace("/", "-")

    def specs(self) -> dict[str, Any]:
        """{"scratch": Spec, "backbone": Spec}: the model inputs of this protocol (the scratch
        CNN's is resized under every input policy)."""
        from aigen.data.preprocess import SCRATCH, backbone_spec

        return {"scratch": SCRATCH.harmonized(self.harmonize),
                "backbone": backbone_spec(self.input, self.harmonize)}

    def record(self) -> dict[str, Any]:
        """What results.json says about the protocol."""
        from aigen.data.augment import AUGMENTATIONS
        from aigen.data.preprocess import HARMONIZE_JPEG, crop_windows

        spec = self.specs()["backbone"]
        where = ("after the resize to the model's input size" if not spec.crop else
                 f"after the scaling to {spec.size}x{spec.size}, before the crops (the scratch "
                 "CNN's input: after its resize)")
        harmonize = ((f"none: inputs are the {'resized' if not spec.crop else 'cropped'} decoded "
                      "files") if self.harmonize == "none"
                     else f"{self.harmonize}: every input of both classes JPEG-encoded at quality "
                          f"{self.harmonize.split(':')[1]} (Pillow, subsampling 4:2:0, baseline, "
                          f"not optimised) {where}, and decoded again")
        record = {"key": self.key, "tag": self.tag, "harmonize": self.harmonize,
                  "augment": self.augment, "harmonize_text": harmonize,
                  "augment_text": AUGMENTATIONS[self.augment],
                  "jpeg_settings": None if self.harmonize == "none" else dict(HARMONIZE_JPEG)}
        if spec.crop:  # a resize protocol's record is the one written before input policies
            record.update(input=self.input, input_text=input_text(spec),
                          crop={"side": spec.size, "window": spec.crop,
                                "test_windows": [list(w) for w in crop_windows(spec)]})
        return record


def input_text(spec) -> str:
    """The backbones' input policy in words."""
    if not spec.crop:
        return ("resize: the whole image resized to 224x224 (aspect ratio not kept, nothing "
                "cropped)")
    from aigen.data.preprocess import n_windows

    return (f"crop: the short side scaled to {spec.size} (enlarged when smaller) and the centre "
            f"{spec.size}x{spec.size} square kept; training on one random {spec.crop}x{spec.crop} "
            f"window per image and epoch, scoring by the mean probability of {n_windows(spec)} "
            "fixed windows (centre and four corners); the scratch CNN keeps its 32x32 resize")


def harmonize_arg(text: str) -> str:
    """argparse type of --harmonize: "none" or "jpeg:Q" (1 <= Q <= 100)."""
    from aigen.data.preprocess import check_harmonize

    try:
        return check_harmonize(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def augment_arg(text: str) -> str:
    """argparse type of --augment: none, flip or blurjpeg."""
    from aigen.data.augment import check_augment

    try:
        return check_augment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def input_arg(text: str) -> str:
    """argparse type of --input: resize, crop or crop:S."""
    from aigen.data.preprocess import check_input

    try:
        return check_input(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def study_protocols(harmonize: Sequence[str] | None, augment: Sequence[str] | None,
                    inputs: Sequence[str] | None = None) -> list[Protocol]:
    """Every (input, harmonize, augment) combination, input outermost, then harmonisation, in
    the order given (duplicates dropped); the first is the default protocol."""
    ins = list(dict.fromkeys(inputs or [INPUT_RESIZE]))
    hs = list(dict.fromkeys(harmonize or ["none"]))
    augs = list(dict.fromkeys(augment or ["none"]))
    return [Protocol(h, a, i) for i, h, a in itertools.product(ins, hs, augs)]


def run_name(name: str, protocol: Protocol, default: Protocol) -> str:
    """How model `name` of `protocol` is named in the run's files (see the module text)."""
    return name if protocol == default else f"{name}@{protocol.tag}"


def protocol_keys(results: Mapping[str, Any]) -> list[str]:
    """The run's protocol keys, the default first (["none/none"] for a run without protocols)."""
    protocols = results.get("protocols")
    if isinstance(protocols, dict) and protocols:
        return list(protocols)
    return [DEFAULT_KEY]


def protocol_models(results: Mapping[str, Any], key: str | None = None
                    ) -> tuple[str, str, str, dict[str, Any]]:
    """(key, harmonisation, input policy, {run name: model record}) of protocol `key` (default:
    the run's first; UserError for a key the run does not have). The records are results.json's;
    run names are those of the checkpoints' identities and of predictions.csv. A protocol
    recorded without an input policy (and a run written before protocols) resized its inputs."""
    keys = protocol_keys(results)
    key = keys[0] if key is None else key
    if key not in keys:
        raise UserError(f"the run has no protocol {key!r}; its protocols: {', '.join(keys)}")
    protocols = results.get("protocols")
    if not isinstance(protocols, dict) or not protocols:
        return key, "none", INPUT_RESIZE, dict(results.get("models") or {})
    record = protocols[key]
    if not isinstance(record, dict) or not isinstance(record.get("models"), dict):
        raise UserError(f"results.json: protocol {key!r} has no models (damaged, or written by "
                        "another version of aigen)")
    from aigen.data.preprocess import check_harmonize, check_input

    try:
        harmonize = check_harmonize(record.get("harmonize", "none"))
        input_policy = check_input(record.get("input", INPUT_RESIZE))
    except ValueError as exc:
        raise UserError(f"results.json: protocol {key!r}: {exc} (damaged, or written by another "
                        "version of aigen)") from None
    # The first protocol's models are results["models"] (what a run with one protocol has and
    # every reader of that key sees); the others are under their run names.
    source = (results.get("models") or {}) if key == keys[0] else record["models"]
    if not all(isinstance(m, dict) and isinstance(m.get("regime"), str)
               and isinstance(m.get("checkpoints"), dict) for m in source.values()):
        raise UserError(f"results.json: protocol {key!r} has models without their regime and "
                        "checkpoints (damaged, or written by another version of aigen)")
    models = {m.get("run_name", name): m for name, m in source.items()}
    return key, harmonize, input_policy, models


def protocol_view(results: Mapping[str, Any], key: str | None = None
                  ) -> tuple[str, str, str, dict[str, Any]]:
    """(key, harmonisation, input policy, results) where results["models"] are protocol `key`'s
    models under their run names: what predict and evaluate read, whichever protocol is
    chosen."""
    key, harmonize, input_policy, models = protocol_models(results, key)
    return key, harmonize, input_policy, {**results, "models": models}


def resolve_names(names: Sequence[str] | None, models: Mapping[str, Any]) -> list[str] | None:
    """Model names as given (`--model`), each a run name of `models` or a plain name standing
    for the one run name NAME@TAG of the chosen protocol; others are left for the caller's
    error message."""
    if not names:
        return None
    plain = {run.split("@", 1)[0]: run for run in models}
    return [name if name in models else plain.get(name, name) for name in names]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--input, --harmonize and --augment of `aigen study`, in a group of their own."""
    protocol = parser.add_argument_group("input protocols (docs/study.md)")
    protocol.add_argument("--input", nargs="+", type=input_arg, default=[INPUT_RESIZE],
                          metavar="resize|crop",
                          help="the backbones' input: resize (the whole image resized to "
                               "224x224) or crop (short side scaled to 384, centre square, "
                               "random 224x224 windows for training, the mean over 5 fixed "
                               "windows for scoring: keeps high-frequency traces; crop:S for "
                               "another side S, a multiple of 16 in 224..448); the scratch CNN "
                               "keeps its 32x32 resize; several values: each is a protocol "
                               "trained on the same splits (default: resize)")
    protocol.add_argument("--harmonize", nargs="+", type=harmonize_arg, default=["none"],
                          metavar="none|jpeg:Q",
                          help="jpeg:Q: every input of both classes (training, evaluation, "
                               "degradation sweep, prediction) is JPEG-encoded at quality Q after the "
                               "resize to the model's size (crops: of the S x S square) and "
                               "decoded again; several values: "
                               "each is a protocol trained on the same splits (default: none)")
    protocol.add_argument("--augment", nargs="+", type=augment_arg, default=["none"],
                          metavar="none|flip|blurjpeg",
                          help="train-time augmentation of the backbone models (flip; blurjpeg: "
                               "flip, Gaussian blur, JPEG re-encoding), which then train from "
                               "images; several values: an ablation on the same splits; the "
                               "scratch CNN is not augmented (default: none)")


__all__ = ["add_arguments", "resolve_names", "Protocol", "study_protocols", "run_name", "harmonize_arg", "augment_arg",
           "input_arg", "protocol_keys", "protocol_models", "protocol_view",
           "input_text", "DEFAULT_KEY"]

