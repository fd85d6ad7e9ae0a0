"""`aigen predict --run RESULTS_DIR PATH...`: score images with the saved models of a study run.

Output (CSV on stdout), whatever the number of models: `path,model,seed,prob_ai,label`, one row
per image and model. `label` is "ai" when prob_ai >= 0.5, else "real". Files that cannot be used
are reported on stderr with the reason and left out; a given path that does not exist is an error.
Each checkpoint is verified before use (aigen.study.checkpoints).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from aigen.data.preprocess import INPUT_RESIZE
from aigen.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `aigen predict`."""
    from aigen.argtypes import seed

    parser.add_argument("--run", required=True, metavar="RESULTS_DIR",
                        help="a results folder written by `aigen study`")
    parser.add_argument("--model", action="append", default=None, metavar="NAME",
                        help="model to use, e.g. efficientnet_lite0_finetuned; repeat for several "
                             "(default: every model of the run)")
    parser.add_argument("--protocol", default=None, metavar="KEY",
                        help="which input protocol's models, for a run with several (e.g. "
                             "jpeg:96/none; see docs/study.md; default: the run's first)")
    parser.add_argument("--seed", type=seed, default=None, metavar="K",
                        help="which seed's checkpoint (default: the run's first seed)")
    parser.add_argument("--weights", action="append", metavar="NAME=PATH", default=None,
                        help="a backbone's weights file, if it moved since the run: NAME=PATH "
                             "(NAME: the backbone, or ARCH of torchvision:ARCH), or a bare PATH "
                             "for resnet18; repeat for several (default: the --weights the run "
                             "recorded)")
    parser.add_argument("--device", default="cpu", metavar="auto|cpu|cuda",
                        help="torch device for backbones (default: cpu)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar on stderr")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image files or folders (searched recursively)")


def read_run(run_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(results.json, config.json) of a finished run, or a UserError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"--run {run_dir} is not a folder")
    loaded = []
    for name in ("results.json", "config.json"):
        try:
            loaded.append(json.loads((run_dir / name).read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise UserError(f"--run {run_dir} is not a finished `aigen study` results folder "
                            f"(no {name})") from None
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {run_dir / name}: {exc}") from None
    results, config = loaded
    problem = _layout_problem(results, config)
    if problem:
        raise UserError(f"--run {run_dir}: results.json/config.json do not have the layout "
                        f"`aigen study` writes ({problem})")
    return results, config


def _layout_problem(results: Any, config: Any) -> str | None:
    """What is wrong with the parts of a (perhaps hand-edited) run that predict reads, or None."""
    models = results.get("models") if isinstance(results, dict) else None
    if not isinstance(models, dict) or not all(
            isinstance(m, dict) and isinstance(m.get("checkpoints"), dict)
            and isinstance(m.get("regime"), str) for m in models.values()):
        return "models with their regime and checkpoints"
    if not all(isinstance(m.get("backbone"), (str, type(None))) for m in models.values()):
        return "a model's backbone is not a name"
    seeds = results.get("seeds", [0])
    if not isinstance(seeds, list) or not all(type(k) is int for k in seeds):
        return "seeds is not a list of whole numbers"
    for key in ("skipped_models", "data"):
        if not isinstance(results.get(key, {}), dict):
            return f"{key} is not a mapping"
    arguments = config.get("arguments", {}) if isinstance(config, dict) else None
    if not isinstance(arguments, dict):
        return "config.json has no arguments mapping"
    weights = arguments.get("weights")
    if not (weights is None or isinstance(weights, str)
            or (isinstance(weights, list) and all(isinstance(w, str) for w in weights))):
        return "the recorded --weights is not a list of paths"
    max_pixels = arguments.get("max_pixels")
    if max_pixels is not None and (type(max_pixels) is not int or max_pixels < 0):
        return "the recorded max_pixels is not a whole number"
    return None


def iter_files(paths: list[str]) -> Iterator[Path]:
    """Each given file, and every regular file below each given folder (sorted, recursive).

    Whether a file is an image is left to the decoder: extensions are not trusted. A given path
    that does not exist is a UserError (checked for all of them before any is listed).
    """
    missing = [text for text in paths if not os.path.lexists(text)]
    if missing:
        raise UserError(f"no such file or folder: {', '.join(missing)}")
    for text in paths:
        path = Path(text)
        if path.is_dir():
            for root, dirs, files in os.walk(path, followlinks=False):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield path  # a missing file is reported by the decoder like any unreadable one


def load_models(run_dir: Path, results: dict, config: dict, names: list[str] | None,
                seed: int | None, weights: list[str] | str | None, device,
                backbones: dict[str, Any] | None = None) -> dict[str, Any]:
    """{model name: loaded model} for the chosen models and seed of a run, each checkpoint
    verified first (aigen.study.checkpoints.load_run_model).

    `weights` (--weights items, NAME=PATH) replace the weights files the run recorded.

    `backbones` ({backbone name: loaded backbone}) is filled and reused, so the models of several
    seeds can share one backbone."""
    from aigen.study.checkpoints import load_run_model

    available = list(results.get("models", {}))
    if not available:
        raise UserError(f"the run {run_dir} has no trained models")
    chosen = names or available
    for name in chosen:
        if name not in available:
            skipped = results.get("skipped_models", {})
            why = " (it was skipped in that run)" if name in skipped else ""
            raise UserError(f"no model {name!r} in {run_dir}{why}; available: "
                            f"{', '.join(available)}")
    seeds = results.get("seeds") or [0]
    seed = chosen_seed(results, seed)
    if seed not in seeds:
        raise UserError(f"the run {run_dir} has no seed {seed}; its seeds: "
                        f"{', '.join(map(str, seeds))}")
    from aigen.models.backbones import weights_by_backbone

    run_backbones = sorted({m.get("backbone") for m in results["models"].values()} - {None})
    weights = {**weights_by_backbone(config.get("arguments", {}).get("weights"), run_backbones),
               **weights_by_backbone(weights, run_backbones)}
    # One backbone per name, shared by its models (and seeds, when passed in).
    backbones = {} if backbones is None else backbones
    models = {}
    for name in chosen:
        backbone_name = results["models"][name].get("backbone")
        model = load_run_model(run_dir, results, name, seed,
                               weights=weights.get(backbone_name),
                               device=device, backbone=backbones.get(backbone_name))
        if backbone_name and model.backbone.has_weights:  # a full model's holds none to share
            backbones[backbone_name] = model.backbone
        models[name] = model
    return models


def needed_specs(regimes: Mapping[str, str], harmonize: str = "none",
                 input_policy: str = INPUT_RESIZE) -> dict[str, Any]:
    """{"scratch"/"backbone": Spec} of the inputs models of these regimes take, under the
    harmonisation and input policy of their protocol (aigen.study.protocols); the scratch CNN
    always takes its resized input."""
    from aigen.data.preprocess import SCRATCH, backbone_spec

    kinds = {"scratch" if r == "scratch" else "backbone" for r in regimes.values()}
    specs = {"scratch": SCRATCH.harmonized(harmonize),
             "backbone": backbone_spec(input_policy, harmonize)}
    return {key: spec for key, spec in specs.items() if key in kinds}


BATCH = 32  # images scored together (bounds the memory of the 224x224 inputs)


def score(models: dict[str, Any], results: dict, batch: dict[str, Any],
          prefix: dict[str, Any] | None = None) -> dict[str, Any]:
    """{model name: prob_ai array} for a batch of model inputs {spec name: float32 array}.

    Backbone prefix activations are computed once per backbone and shared by its frozen and
    fine-tuned models (and by further calls on the same batch that pass the same `prefix` dict);
    so are the pooled features of its pretrained stage, the input of every frozen model's head
    (all seeds alike). A full model has its own prefix: it scores the images themselves.

    A backbone input (N, V, C, H, W) holds V views of each image (the crop policy's fixed
    windows): each image's probability is the mean of its views' (preprocess.mean_over_windows).
    """
    from aigen.data.preprocess import mean_over_windows

    prefix = {} if prefix is None else prefix
    probs = {}
    views = 1
    if "backbone" in batch and np.ndim(batch["backbone"]) == 5:
        views = batch["backbone"].shape[1]
        batch = {**batch, "backbone": batch["backbone"].reshape(
            (-1,) + tuple(batch["backbone"].shape[2:]))}
    for name, model in models.items():
        regime = results["models"][name]["regime"]
        if regime == "scratch":
            probs[name] = model.predict_proba(batch["scratch"])
            continue
        if model.own_prefix:
            probs[name] = mean_over_windows(model.predict_proba(batch["backbone"]), views)
            continue
        backbone = model.backbone
        if backbone.name not in prefix:
            prefix[backbone.name] = backbone.prefix_activations(batch["backbone"], model.device)
        inputs = prefix[backbone.name]
        if regime == "frozen":  # its stage is the backbone's own: the same features for every seed
            key = (backbone.name, "pooled")
            if key not in prefix:
                prefix[key] = backbone.pooled_features(inputs, model.device)
            inputs = prefix[key]
        probs[name] = mean_over_windows(model.predict_proba_from_prefix(inputs), views)
    return probs


def chosen_seed(results: dict, seed: int | None) -> int:
    """The seed whose checkpoints are used: `seed`, else the run's first."""
    return (results.get("seeds") or [0])[0] if seed is None else seed


def run(args: argparse.Namespace) -> int:
    """Print `path,model,seed,prob_ai,label` rows for every readable image; skips go to stderr."""
    from tqdm import tqdm

    from aigen.data.loading import ImageSkip
    from aigen.data.preprocess import load_model_inputs
    from aigen.device import resolve_device
    from aigen.io import escape_undecodable

    from aigen.study.protocols import protocol_view, resolve_names

    run_dir = Path(args.run)
    results, config = read_run(run_dir)
    # One protocol's models, under their run names, with that protocol's harmonisation and input.
    key, harmonize, input_policy, results = protocol_view(results, getattr(args, "protocol", None))
    files = list(iter_files(args.paths))  # a missing path fails now, before any model is loaded
    device = resolve_device(args.device)
    models = load_models(run_dir, results, config, resolve_names(args.model, results["models"]),
                         args.seed, args.weights, device)
    seed = chosen_seed(results, args.seed)
    if results.get("data", {}).get("kind") == "synthetic":
        print(f"aigen predict: warning: the run {run_dir} was trained on the embedded synthetic "
              "proxy data, not on real AI-generated images: its scores say nothing about real "
              "images", file=sys.stderr)
    max_pixels = config.get("arguments", {}).get("max_pixels") or None
    specs = needed_specs({n: m["regime"] for n, m in results["models"].items() if n in models},
                         harmonize, input_policy)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["path", "model", "seed", "prob_ai", "label"])  # one layout for any --model
    n_skipped = 0

    def flush(paths: list[Path], inputs: dict[str, list]) -> None:
        if not paths:
            return
        probs = score(models, results, {k: np.concatenate(v) for k, v in inputs.items()})
        for row, path in enumerate(paths):
            for name in models:
                prob = float(probs[name][row])
                label = "ai" if prob >= 0.5 else "real"
                writer.writerow([escape_undecodable(str(path)), name, seed, repr(prob), label])
        sys.stdout.flush()

    paths: list[Path] = []
    inputs: dict[str, list] = {key: [] for key in specs}
    bar = tqdm(files, desc="scoring", unit="file", file=sys.stderr,
               disable=not getattr(args, "progress", True), leave=False)
    for path in bar:
        try:
            by_spec = load_model_inputs(path, specs.values(), max_pixels)
            decoded = {key: by_spec[spec] for key, spec in specs.items()}
        except ImageSkip as exc:
            bar.write(f"aigen predict: skipped {path}: {exc.reason}", file=sys.stderr)
            n_skipped += 1
            continue
        paths.append(path)
        for key, x in decoded.items():
            inputs[key].append(x)
        if len(paths) == BATCH:
            flush(paths, inputs)
            paths, inputs = [], {key: [] for key in specs}
    flush(paths, inputs)
    bar.close()
    if n_skipped:
        print(f"aigen predict: {n_skipped} file(s) skipped", file=sys.stderr)
    return 0
