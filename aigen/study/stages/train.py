"""The training stage of one input protocol: every model (the scratch CNN; per backbone the
frozen, fine-tuned and full regimes) trained for every seed, or read back when an earlier attempt
of the run (--resume) finished it. Each finished (model, seed) is persisted at once: its
checkpoint in checkpoints/, its history and predictions on every used image under resume/."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from aigen.study.stages.context import BACKBONE_REGIMES, SCRATCH_NAME, StudyContext
from aigen.study.stages.data import Splits, StudyData

SHARD_STEP = 128  # rows per step when torchrun's processes share out features and predictions


@dataclass
class ProtocolRun:
    """One protocol's trained models and, once scored, its sweep and evaluation sets."""

    protocol: Any  # aigen.study.protocols.Protocol
    default: Any  # the run's first protocol, whose models keep their plain names
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> description
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it was not trained
    runs: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)  # (name, seed) ->
    #   {"model", "history", "prob" (P(AI) of every used image)}
    X_scratch: np.ndarray | None = None  # the scratch CNN's inputs, when it trains here
    sweep: dict[str, Any] = field(default_factory=dict)
    external: dict[str, Any] = field(default_factory=lambda: {
        "sets": {}, "skipped": {}, "figures": {}})

    @property
    def specs(self) -> dict[str, Any]:
        return self.protocol.specs()

    @property
    def is_default(self) -> bool:
        return self.protocol == self.default

    def run_name(self, name: str) -> str:
        """How model `name` of this protocol names its files and rows (aigen.study.protocols)."""
        from aigen.study.protocols import run_name

        return run_name(name, self.protocol, self.default)

    def checkpoint(self, work: Path, name: str, seed: int, relative: bool = False) -> Path:
        """checkpoints/RUN_NAME_seedK.npz (scratch) or .pt of model `name`."""
        suffix = "npz" if self.models[name]["regime"] == "scratch" else "pt"
        path = Path("checkpoints") / f"{self.run_name(name)}_seed{seed}.{suffix}"
        return path if relative else work / path

    def models_by_seed(self, seeds: list[int]) -> dict[int, dict[str, Any]]:
        """{seed: {name: trained model}}: what aigen.study.evaluate.make_scorer takes."""
        return {seed: {name: self.runs[(name, seed)]["model"] for name in self.models}
                for seed in seeds}

    def regimes(self) -> dict[str, str]:
        return {name: info["regime"] for name, info in self.models.items()}

    def input_specs(self) -> dict[str, Any]:
        """{"scratch"/"backbone": Spec} of the inputs this protocol's models take (harmonised as
        the protocol says); every stage that scores images takes them from here."""
        from aigen.study.predict import needed_specs

        return needed_specs(self.regimes(), self.protocol.harmonize, self.protocol.input)


class Backbones:
    """The backbones, each loaded once for every protocol; one that cannot be loaded is recorded
    with the reason (its models are then reported as skipped)."""

    def __init__(self) -> None:
        self.loaded: dict[str, Any] = {}
        self.unavailable: dict[str, str] = {}

    def get(self, ctx: StudyContext, name: str):
        """The backbone `name`, or None when it is unavailable (see `unavailable`)."""
        from aigen import distributed
        from aigen.models.backbones import (BackboneUnavailable, load_backbone,
                                            weights_by_backbone)

        if name in self.unavailable:
            return None
        if name in self.loaded:
            return self.loaded[name]
        weights = weights_by_backbone(ctx.args.weights, ctx.args.backbones).get(name)

        def load():  # rank 0 first: it alone may download weights into torch's cache
            try:
                return load_backbone(name, weights=weights, init=ctx.args.init)
            except BackboneUnavailable as exc:
                return exc

        with ctx.timer.stage(f"load_backbone:{name}"):
            backbone = distributed.main_first(load)
            failed_here = isinstance(backbone, BackboneUnavailable)
            if failed_here or distributed.from_main(failed_here):
                self.unavailable[name] = str(backbone) if failed_here else \
                    "unavailable in the first process"
                ctx.log(f"{name} skipped: {self.unavailable[name]}")
                return None
        self.loaded[name] = backbone
        return backbone


def trains_scratch(ctx: StudyContext, protocol) -> bool:
    """The scratch CNN is never augmented: it trains in the first protocol of each
    harmonisation only."""
    first = next(p for p in ctx.protocols if p.harmonize == protocol.harmonize)
    return "scratch" in ctx.args.models and protocol == first


def train_protocol(ctx: StudyContext, data: StudyData, splits: Splits, protocol,
                   backbones: Backbones) -> ProtocolRun:
    """Every model of `protocol` for every seed, trained or read back (--resume)."""
    from aigen.data.dataset import dataset_arrays

    run = ProtocolRun(protocol, ctx.protocols[0])
    # The scratch CNN (CPU, Cython kernels) trains in the first process alone (docs/scale.md).
    if trains_scratch(ctx, protocol) and ctx.main:
        with ctx.timer.stage("scratch_inputs"):
            run.X_scratch = dataset_arrays(data.dataset, run.specs["scratch"], splits.used)
        run.models[SCRATCH_NAME] = {"regime": "scratch", "backbone": None}
        for seed in ctx.seeds:
            with ctx.timer.stage(f"train:{run.run_name(SCRATCH_NAME)}"):
                if not restore(ctx, run, backbones, SCRATCH_NAME, seed):
                    train_scratch(ctx, splits, run, seed)
    regimes = [k for k in BACKBONE_REGIMES if k in ctx.args.models]
    if not regimes:
        return run
    for name in ctx.args.backbones:
        backbone = backbones.get(ctx, name)
        if backbone is None:
            for regime in regimes:
                run.skipped[f"{name}_{regime}"] = backbones.unavailable[name]
            continue
        features = _cached_features(ctx, data, splits, run, backbone, name, regimes)
        for regime in regimes:
            model_name = f"{name}_{regime}"
            run.models[model_name] = {"regime": regime, "backbone": name}
            for seed in ctx.seeds:
                with ctx.timer.stage(f"train:{run.run_name(model_name)}"):
                    if not _restored_by_main(ctx, run, backbones, model_name, seed):
                        train_backbone(ctx, data, splits, run, name, backbone, features, regime,
                                       seed)
    return run


def _cached_features(ctx: StudyContext, data: StudyData, splits: Splits, run: ProtocolRun,
                     backbone, name: str, regimes: list[str]) -> dict[str, Any]:
    """{"prefix": prefix activations, "pooled": the frozen head's input} of every used image
    under the protocol's input, computed once for every seed and regime (the full regime runs
    its own prefix and needs neither)."""
    features: dict[str, Any] = {}
    if not {"frozen", "finetuned"} & set(regimes):
        return features
    with ctx.timer.stage(f"prefix_activations:{name}"):
        features["prefix"] = prefix_activations(ctx, data, run.specs["backbone"], backbone,
                                                splits.used)
        if "frozen" in regimes:
            features["pooled"] = in_shares(
                ctx, lambda A: backbone.pooled_features(A, ctx.device), features["prefix"])
    return features


def prefix_activations(ctx: StudyContext, data: StudyData, spec, backbone, indices: np.ndarray):
    """Prefix activations of dataset images, streamed from the store in batches, or reused from an
    earlier run on the same data and backbone (aigen.data.stream.prefix_features)."""
    from aigen.data.dataset import dataset_inputs
    from aigen.data.stream import DEFAULT_MEMORY_BUDGET, loader_workers, prefix_features

    return prefix_features(backbone, dataset_inputs(data.dataset, spec), spec, indices,
                           manifest=data.dataset.manifest_sha256(), device=ctx.device,
                           budget=getattr(ctx.args, "memory_budget", DEFAULT_MEMORY_BUDGET),
                           workers=loader_workers(ctx.device, ctx.args.workers),
                           progress=ctx.progress)


def in_shares(ctx: StudyContext, compute, A):
    """compute(A), row-wise; under torchrun each process computes its share of the rows and every
    process gets the whole result in row order (aigen.distributed.sharded_map)."""
    from aigen import distributed

    if not ctx.world.distributed:
        return compute(A)
    return distributed.sharded_map(lambda rows: compute(take(A, rows)), len(A), SHARD_STEP)


def take(A, rows):
    """Rows of prefix activations or features: a view when they are a FeatureRows (in RAM or read
    from their file per batch), else an indexed copy."""
    return A.subset(rows) if hasattr(A, "subset") else A[rows]


# -- (model, seed): recorded, read back ---------------------------------------------------------

def record(ctx: StudyContext, run: ProtocolRun, name: str, seed: int, model,
           history: list[dict], prob: np.ndarray, restored: bool = False) -> None:
    from aigen.study import runfolder

    run_name = run.run_name(name)  # unique over protocols: names its files and rows
    if not restored:  # persisted at once, so an interrupted run can skip it (--resume)
        runfolder.save_run(ctx.work, run_name, seed, history, prob, run.models[name])
        runfolder.log_history(ctx.work, ctx.args, run_name, seed, history)
    run.runs[(name, seed)] = {"model": model, "history": history, "prob": prob}


def restore(ctx: StudyContext, run: ProtocolRun, backbones: Backbones, name: str,
            seed: int) -> bool:
    """Whether an earlier attempt of this run (--resume) finished (name, seed); if so its model
    is read back from checkpoints/ and its history and predictions from resume/."""
    from aigen.study import runfolder

    state = runfolder.load_run(ctx.work, run.run_name(name), seed)
    if state is None:
        return False
    history, prob, info = state
    if info.get("regime") == "scratch":
        from aigen.models.scratch import ScratchCNN

        model = ScratchCNN.load(run.checkpoint(ctx.work, name, seed))
    else:
        from aigen.models.backbones import load_classifier

        model = load_classifier(run.checkpoint(ctx.work, name, seed),
                                backbone=backbones.loaded[info["backbone"]], device=ctx.device)
    run.models[name].update(info)
    ctx.log(f"{run.run_name(name)} seed {seed}: finished by the earlier attempt, not trained again")
    record(ctx, run, name, seed, model, history, prob, restored=True)
    return True


def _restored_by_main(ctx: StudyContext, run: ProtocolRun, backbones: Backbones, name: str,
                      seed: int) -> bool:
    """`restore` in the first process, its answer in every process (under torchrun the others
    skip what it restored; they keep no models)."""
    from aigen import distributed

    return distributed.main_first(lambda: restore(ctx, run, backbones, name, seed), others=False)


# -- the scratch CNN ----------------------------------------------------------------------------

def fit_scratch(ctx: StudyContext, splits: Splits, X: np.ndarray, seed: int, lr: float):
    """(model, history): the scratch CNN trained on `seed`'s split at `lr` (X: every used
    image's input)."""
    from aigen.repro import seed_everything
    from aigen.training import train_scratch as train

    hp = ctx.hp["scratch"]
    tr, va = splits.rows(seed, "train"), splits.rows(seed, "val")
    seed_everything(seed)
    return train(X[tr], splits.y[tr], X[va], splits.y[va], filters=hp["filters"], lr=lr,
                 epochs=hp["epochs"], batch_size=hp["batch_size"], seed=seed,
                 backend=hp["backend"], progress=ctx.progress, checkpoint=hp["checkpoint"],
                 init=hp["init"])


def train_scratch(ctx: StudyContext, splits: Splits, run: ProtocolRun, seed: int) -> None:
    from aigen.study.checkpoints import identity

    model, history = fit_scratch(ctx, splits, run.X_scratch, seed, ctx.hp["scratch"]["lr"])
    model.save(run.checkpoint(ctx.work, SCRATCH_NAME, seed),
               metadata={**identity(run.run_name(SCRATCH_NAME), "scratch", None, seed),
                         **ctx.hp["scratch"]})
    run.models[SCRATCH_NAME].update(
        weights_source="random initialisation, trained from scratch", pretrained=False,
        n_params=model.n_params, trainable_params=model.n_params,
        hyperparameters=ctx.hp["scratch"])
    record(ctx, run, SCRATCH_NAME, seed, model, history, model.predict_proba(run.X_scratch))


# -- the backbone models ------------------------------------------------------------------------

def train_backbone(ctx: StudyContext, data: StudyData, splits: Splits, run: ProtocolRun,
                   name: str, backbone, features: dict[str, Any], regime: str,
                   seed: int) -> None:
    """One backbone model of one seed: trained on the cached activations (frozen, fine-tuned,
    resized and not augmented) or from images (augmented, crops, the full regime)."""
    from aigen.repro import seed_everything
    from aigen.study import runfolder
    from aigen.study.checkpoints import identity
    from aigen.training import train_finetuned, train_frozen, train_from_images, train_full

    augment = run.protocol.augment
    spec = run.specs["backbone"]
    hp = {**ctx.hp[regime], "augment": augment}
    if spec.crop:  # (a resize model's hyperparameters are recorded as before input policies)
        hp["input"] = run.protocol.input
    # What the model is scored on: the full regime's own prefix needs the images themselves.
    A = features["pooled" if regime == "frozen" else "prefix"] if regime != "full" \
        else _model_inputs(data, splits, spec)
    tr, va = splits.rows(seed, "train"), splits.rows(seed, "val")
    seed_everything(seed)
    model_name = f"{name}_{regime}"
    if regime == "full":  # every layer trains: always from images, on the streaming path
        train = partial(train_full, lr_decay=hp["lr_decay"], weight_decay=hp["weight_decay"],
                        warmup=hp["warmup_epochs"], patience=hp["patience"])
        X_tr, X_va = (_training_images(data, splits, spec, tr, seed, augment),
                      _training_images(data, splits, spec, va, seed))
    elif augment == "none" and not spec.crop:
        train = train_frozen if regime == "frozen" else train_finetuned
        X_tr, X_va = take(A, tr), take(A, va)  # views of the cached activations
    else:  # augmented, or random crops: the whole backbone runs on every batch
        train = partial(train_from_images, regime=regime)
        X_tr, X_va = (_training_images(data, splits, spec, tr, seed, augment),
                      _training_images(data, splits, spec, va, seed))
    clf, history = train(backbone, X_tr, splits.y[tr], X_va, splits.y[va],
                         epochs=hp["epochs"], lr=hp["lr"], batch_size=hp["batch_size"],
                         seed=seed, device=ctx.device, progress=ctx.progress,
                         checkpoint=hp["checkpoint"],
                         epoch_state=runfolder.epoch_state_path(
                             ctx.work, run.run_name(model_name), seed),
                         amp=getattr(ctx.args, "amp", "off"))
    prob = _probabilities(ctx, clf, A, spec)  # a crop model: the mean over its windows
    if not ctx.main:
        return
    clf.save(run.checkpoint(ctx.work, model_name, seed),
             metadata={**identity(run.run_name(model_name), regime, name, seed), **hp})
    total, trainable = parameter_counts(clf)
    run.models[model_name].update(
        architecture=backbone.architecture, weights_source=backbone.weights_source,
        pretrained=backbone.pretrained, weights_sha256=backbone.weights_sha256,
        n_params=total, trainable_params=trainable, hyperparameters=hp)
    record(ctx, run, model_name, seed, clf, history, prob)


def _probabilities(ctx: StudyContext, clf, A, spec) -> np.ndarray:
    """P(AI) of every used image for a trained classifier (A: its prefix activations or pooled
    features; under the crop policy those of each image's fixed windows, whose probabilities are
    averaged; for a model with its own prefix, the full regime, the images, whose crops
    predict_proba averages itself)."""
    from aigen.data.preprocess import mean_over_windows, n_windows

    if clf.own_prefix:
        return in_shares(ctx, clf.predict_proba, A)
    return mean_over_windows(in_shares(ctx, clf.predict_proba_from_prefix, A), n_windows(spec))


def _model_inputs(data: StudyData, splits: Splits, spec):
    """Every used image as the backbones' input under the protocol (harmonised), read from its
    store batch by batch: what `aigen predict` gives the models."""
    from aigen.data.dataset import dataset_inputs
    from aigen.data.stream import StoreImages

    return StoreImages(dataset_inputs(data.dataset, spec), spec, splits.used)


def _training_images(data: StudyData, splits: Splits, spec, rows: np.ndarray, seed: int,
                     augment: str = "none"):
    """The images of `rows` (rows of splits.used) as the backbones' inputs under the protocol,
    made per batch (aigen.data.augment.AugmentedImages): resized ones from the unharmonised
    store, augmented (seeded per seed, epoch and image) and then harmonised; crops from the
    protocol's own (harmonised) store, a random window per image and epoch, then augmented
    (without `augment`'s draws: each image's fixed windows)."""
    from aigen.data.augment import AugmentedImages
    from aigen.data.dataset import dataset_inputs
    from aigen.data.preprocess import BACKBONE

    return AugmentedImages(dataset_inputs(data.dataset, spec if spec.crop else BACKBONE),
                           spec, splits.used[rows], augment, seed)


def parameter_counts(clf) -> tuple[int, int]:
    """(all parameters, trained parameters) of a BackboneClassifier."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    total = count(clf.prefix) + count(clf.stage) + count(clf.head)
    trained = {"frozen": count(clf.head), "finetuned": count(clf.stage) + count(clf.head),
               "full": total}[clf.regime]
    return int(total), int(trained)
