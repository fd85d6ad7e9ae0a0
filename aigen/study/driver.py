"""`aigen study` (= scripts/run_study.py): the whole study, from a data folder to a results folder.

Stages: load + check the data -> exploration and metadata shortcut audit -> one split per seed ->
for each input protocol (--input x --harmonize x --augment, aigen.study.protocols; one by default):
backbone prefix activations (once per backbone, shared by both regimes and every seed) -> train
every model for every seed -> evaluate each once on train/val/test -> (first protocol) scratch
learning-rate study -> degradation sweep of every model (test images re-encoded, blurred,
downscaled, noised) -> (first protocol) diagnostics; then results.json, CSVs, figures, report.md.
Everything is written into a hidden folder beside --out that is renamed to --out only when
complete (docs/study.md describes the folder).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as _dt
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from aigen.data.preprocess import INPUT_RESIZE
from aigen.errors import UserError
from aigen.io import check_new_folder, new_results_folder, refuse_inside

DEFAULT_BACKBONES = ("resnet18", "efficientnet_lite0")
MODEL_KINDS = ("scratch", "frozen", "finetuned", "full")
DEFAULT_MODELS = ("scratch", "frozen", "finetuned")
BACKBONE_REGIMES = ("frozen", "finetuned", "full")
SCRATCH_NAME = "scratch_cnn"
MAX_LOADER_WORKERS = 4  # DataLoader processes decoding image files (the degradation sweep)
SHARD_STEP = 128  # rows per step when torchrun's processes share out features and predictions
CI_METHOD_TEXT = (
    "95% CI of the mean test accuracy: Student-t interval over the per-seed values when there are "
    "two or more seeds (the Wilson score interval over all seeds' test images when every seed "
    "scored the same); with one seed, the Wilson score interval over the test images."
)


# ----------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `aigen study` (see docs/study.md)."""
    from aigen.argtypes import (byte_size, fraction, non_negative_float, positive_float,
                                positive_int)
    from aigen.data.stream import DEFAULT_MEMORY_BUDGET
    from aigen.argtypes import seed as seed_type
    from aigen.data.dataset import add_data_arguments
    from aigen.models.backbones import BACKBONES

    parser.description = (
        "Run the whole study: train the scratch CNN and the frozen / fine-tuned backbones on "
        "seeded splits, evaluate them, sweep degradations of the test images, and write a results folder with "
        "results.json, CSVs, figures and report.md. See docs/study.md.")
    add_data_arguments(parser, positional=False, several=True)
    run = parser.add_argument_group("run")
    run.add_argument("--out", metavar="DIR", default=None,
                     help="results folder to create (must not exist or be empty; default: "
                          "results/<timestamp> in the current folder)")
    run.add_argument("--seeds", type=seed_type, nargs="+", default=[0], metavar="K",
                     help="seeds; each gives its own split and initialisations (default: 0)")
    run.add_argument("--backbones", nargs="+", type=_backbone_name, metavar="NAME",
                     default=list(DEFAULT_BACKBONES),
                     help=f"backbones of the backbone models: {', '.join(BACKBONES)}"
                          ", or torchvision:ARCH for a torchvision classification CNN (e.g. "
                          "torchvision:resnet50, with --weights resnet50=PATH) (default: "
                          f"{' '.join(DEFAULT_BACKBONES)}; one whose weights are unavailable is "
                          "reported as skipped)")
    run.add_argument("--models", nargs="+", choices=MODEL_KINDS, default=list(DEFAULT_MODELS),
                     help="which models to train: the scratch CNN, and per backbone the frozen, "
                          "fine-tuned and full regimes (default: "
                          f"{' '.join(DEFAULT_MODELS)})")
    run.add_argument("--device", default="auto", metavar="auto|cpu|cuda",
                     help="torch device for the backbones (default: auto)")
    run.add_argument("--weights", nargs="+", metavar="NAME=PATH", default=None,
                     help="local weights files, NAME=PATH per backbone (NAME: resnet18, "
                          "efficientnet_liteN, or ARCH of torchvision:ARCH; a torchvision file is "
                          "a state_dict), or one bare PATH for resnet18 (resnet18-f37072fd.pth) "
                          "(default: none: resnet18 and torchvision:ARCH look in torch's hub "
                          "cache, the Lite backbones use their packages)")
    run.add_argument("--init", choices=("pretrained", "random"), default="pretrained",
                     help="backbone initialisation; random exercises the code path without "
                          "pretrained weights and is reported as NOT pretrained (default: "
                          "pretrained)")
    run.add_argument("--quick", action="store_true",
                     help="smoke run: first seed only, one epoch per model (all images are still "
                          "loaded and split)")
    run.add_argument("--split-file", metavar="CSV", default=None,
                     help="reuse a split.csv from an earlier run (the same split for every seed)")
    run.add_argument("--metadata-csv", metavar="CSV", default=None,
                     help="original file metadata for the exploration and shortcut audit, for "
                          "data that was re-encoded after collection (see `aigen explore --help`)")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bars on stderr")
    run.add_argument("--eval-data", nargs="+", metavar="NAME=ROOT", default=None,
                     help="labelled folders to evaluate every trained model on after training "
                          "(transfer to other data; see docs/evaluation.md); NAME= is optional")
    from aigen.data.spectra import add_argument as add_spectrum_argument
    from aigen.study import runfolder
    from aigen.study.protocols import add_arguments as add_protocol_arguments
    from aigen.study.sweep import add_argument as add_sweep_argument

    runfolder.add_arguments(run)
    from aigen.study.presets import add_argument as add_preset_argument

    add_preset_argument(run)
    add_sweep_argument(run)
    add_spectrum_argument(run)
    add_protocol_arguments(parser)
    run.add_argument("--memory-budget", type=byte_size, default=DEFAULT_MEMORY_BUDGET,
                     metavar="SIZE",
                     help="RAM for the backbones' prefix activations, reused by every seed and "
                          "regime (e.g. 512M, 4G; default 1G); above it they are read from their "
                          "file in the cache folder batch by batch (docs/scale.md)")
    from aigen import distributed
    from aigen.training import AMP_CHOICES

    run.add_argument("--amp", choices=AMP_CHOICES, default="off",
                     help="mixed precision for training the backbones: bf16 (CPU or GPU), fp16 "
                          "(CUDA, with loss scaling) or off (default: off, float32 throughout)")
    distributed.add_arguments(run)
    hyper = parser.add_argument_group("training")
    hyper.add_argument("--scratch-epochs", type=positive_int, default=20, metavar="N",
                       help="epochs of the scratch CNN (default: 20)")
    hyper.add_argument("--scratch-lr", type=positive_float, default=0.01, metavar="LR",
                       help="SGD learning rate of the scratch CNN (default: 0.01)")
    hyper.add_argument("--scratch-filters", type=positive_int, default=8, metavar="F",
                       help="convolution filters of the scratch CNN (8 or 16 in the study; default: 8)")
    hyper.add_argument("--scratch-batch-size", type=positive_int, default=1, metavar="N",
                       help="mini-batch size of the scratch CNN (default: 1, one image per step)")
    hyper.add_argument("--scratch-backend", choices=("cython", "numpy"), default="cython",
                       help="conv/pool kernels of the scratch CNN (default: the Cython ones)")
    hyper.add_argument("--scratch-init", choices=("torch", "legacy"), default="torch",
                       help="scratch CNN initialisation: torch (default: the values torch's "
                            "Conv2d/Linear get under the same seed) or legacy (NumPy's generator)")
    hyper.add_argument("--scratch-lrs", type=positive_float, nargs="*", default=[0.01, 0.1],
                       metavar="LR",
                       help="learning-rate study: the scratch CNN trained at each of these "
                            "(default: 0.01 0.1; give the option no value to skip it)")
    hyper.add_argument("--frozen-epochs", type=positive_int, default=3, metavar="N",
                       help="epochs of the frozen backbone's head (default: 3)")
    hyper.add_argument("--frozen-lr", type=positive_float, default=1e-3, metavar="LR",
                       help="Adam learning rate of the frozen backbone's head (default: 0.001)")
    hyper.add_argument("--finetune-epochs", type=positive_int, default=8, metavar="N",
                       help="epochs of the fine-tuned backbone (default: 8)")
    hyper.add_argument("--finetune-lr", type=positive_float, default=1e-4, metavar="LR",
                       help="Adam learning rate of the fine-tuned last stage and head "
                            "(default: 0.0001)")
    from aigen.training import FULL_DEFAULTS as full

    hyper.add_argument("--full-epochs", type=positive_int, default=full["epochs"], metavar="N",
                       help="most epochs of the full regime (every layer trained; early "
                            f"stopping may end it sooner) (default: {full['epochs']})")
    hyper.add_argument("--full-lr", type=positive_float, default=full["lr"], metavar="LR",
                       help="AdamW learning rate of the full regime's head; the stage gets LR x "
                            "D, the prefix LR x D^2 (D: --full-lr-decay) (default: "
                            f"{full['lr']:g})")
    hyper.add_argument("--full-lr-decay", type=fraction, default=full["lr_decay"], metavar="D",
                       help="learning-rate factor per step towards the input in the full "
                            f"regime, in (0, 1] (default: {full['lr_decay']:g})")
    hyper.add_argument("--full-weight-decay", type=non_negative_float,
                       default=full["weight_decay"], metavar="WD",
                       help="AdamW weight decay of the full regime's weights (not biases or "
                            f"BatchNorm parameters) (default: {full['weight_decay']:g})")
    hyper.add_argument("--full-warmup", type=non_negative_float, default=full["warmup"],
                       metavar="EPOCHS",
                       help="epochs of linear learning-rate warm-up before the cosine decay in "
                            f"the full regime (default: {full['warmup']:g})")
    hyper.add_argument("--full-patience", type=positive_int, default=full["patience"],
                       metavar="N",
                       help="the full regime stops after N epochs without a better validation "
                            "result and keeps its best epoch's weights (default: "
                            f"{full['patience']})")
    hyper.add_argument("--checkpoint", choices=("last", "best"), default="last",
                       help="weights each model keeps: those of the last epoch (default, the "
                            "study's fixed-epoch protocol) or of the epoch with the best "
                            "validation accuracy (the full regime always keeps its best epoch)")
    hyper.add_argument("--backbone-batch-size", type=positive_int, default=32, metavar="N",
                       help="mini-batch size of the backbone models (default: 32)")


def run(args: argparse.Namespace) -> int:
    """Run the study; returns 0. User-fixable problems raise UserError before any training."""
    from aigen.study import runfolder

    args = runfolder.resolve_arguments(args, add_arguments)  # --resume, --config
    args.backbones = list(dict.fromkeys(args.backbones))  # a name given twice trains once
    # Paths recorded absolute, for `aigen predict`, --resume and --config from another folder.
    args.weights = _recorded_weights(args)
    for key in ("split_file", "metadata_csv"):
        if getattr(args, key, None) is not None:
            setattr(args, key, str(Path(getattr(args, key)).expanduser().absolute()))
    if getattr(args, "tensorboard", False):
        runfolder.tensorboard_writer()  # missing package: say so now, not after the first model
    resume = getattr(args, "resume", None) is not None
    out = Path(args.resume) if resume else _resolve_out(args.out)
    args.out = str(out)
    data_sets = _check_data_option(args)
    _check_weights_options(args)
    if data_sets:  # recorded as NAME=ROOT with absolute roots, like the other paths
        args.data = [f"{name}={root}" for name, root in data_sets.items()]
        for root in data_sets.values():
            refuse_inside(out, root)
    if getattr(args, "eval_data", None):  # recorded absolute, like the other paths
        from aigen.study.evaluate import parse_eval_data

        args.eval_data = [f"{name}={root}" for name, root in parse_eval_data(args.eval_data).items()]
    _check_eval_data(args, out)
    from aigen import distributed

    with distributed.session(args.device, getattr(args, "dist_timeout",
                                                  distributed.DEFAULT_TIMEOUT_MINUTES)) as world:
        with _run_folder(out, args, resume) as work:
            study = Study(args, out=out, work=work)
            study.run()
    if world.is_main:
        study.print_summary()
    return 0


@contextlib.contextmanager
def _run_folder(out: Path, args: argparse.Namespace, resume: bool):
    """The work folder (aigen.study.runfolder.claim); under torchrun only rank 0 claims it, and
    the other processes get its path, to read (aigen.distributed)."""
    from aigen import distributed
    from aigen.study import runfolder

    if not distributed.is_main():
        yield distributed.main_first(lambda: None, others=False)
        return
    with contextlib.ExitStack() as stack:
        yield distributed.main_first(lambda: stack.enter_context(
            runfolder.claim(out, runfolder.saved_arguments(args), resume=resume)), others=False)


# ----------------------------------------------------------------------------------------------
# The results folder: checked up front, written into a hidden folder, renamed at the end


def _resolve_out(out: str | None) -> Path:
    return new_results_folder() if out is None else check_new_folder(out)


def _check_data_option(args: argparse.Namespace) -> dict[str, Path]:
    """The --data sets {NAME: ROOT} (none: the synthetic default), checked now so a typo fails
    before anything else happens. A run recorded before --data took several sets has a string."""
    from aigen.data.sets import parse_sets

    data = getattr(args, "data", None)
    if not data:
        return {}
    return parse_sets([data] if isinstance(data, str) else data)


def _check_eval_data(args: argparse.Namespace, out: Path) -> None:
    """The --eval-data folders, checked now (exist, class folders found; --out not inside them),
    so a typo fails before training rather than after it."""
    from aigen.data.discover import find_class_folders
    from aigen.study.evaluate import parse_eval_data

    for root in parse_eval_data(getattr(args, "eval_data", None) or []).values():
        refuse_inside(out, root)
        find_class_folders(root, both=False)


def _backbone_name(text: str) -> str:
    """--backbones' type: a built-in backbone or torchvision:ARCH of a family aigen can split."""
    from aigen.models.backbones import check_name

    try:
        return check_name(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _recorded_weights(args: argparse.Namespace) -> list[str] | None:
    """--weights as NAME=PATH items with canonical backbone names and absolute paths (recorded so,
    for `aigen predict`, --resume and --config from another folder)."""
    from aigen.models.backbones import weights_by_backbone

    weights = weights_by_backbone(args.weights, args.backbones)
    return [f"{name}={Path(path).expanduser().absolute()}"
            for name, path in weights.items()] or None


def _check_weights_options(args: argparse.Namespace) -> None:
    """Explicit --weights files are checked now (exist, right sha256 prefix; a torchvision one
    fits its architecture): a typo in one is the user's mistake to hear about at once, not a
    model quietly reported as skipped at the end."""
    from aigen.models.backbones import check_weights, weights_by_backbone

    weights = weights_by_backbone(args.weights, args.backbones)
    if weights and args.init == "random":
        raise UserError("--init random and --weights contradict each other: give one")
    for name, path in weights.items():
        check_weights(name, path)


def lr_key(lr: float) -> str:
    """How a learning rate names its runs in results.json and history.csv (e.g. "0.01")."""
    return f"{lr:.10g}"


class StageTimer:
    """Wall time per stage, in seconds, for config.json."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def stage(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] = round(timer.seconds.get(name, 0.0)
                                            + time.perf_counter() - self.t0, 3)

        return _Stage()

    def total(self) -> float:
        return round(time.perf_counter() - self._start, 3)


# ----------------------------------------------------------------------------------------------
# The study


def data_kind(root: Path) -> tuple[str, str]:
    """("synthetic", description) for an `aigen synth` output, else ("real", description)."""
    from aigen.data import synth

    manifest = synth.read_manifest(Path(root))
    if manifest is not None:
        return "synthetic", (
            f"embedded synthetic proxy dataset ({synth.GENERATOR_NAME} v"
            f"{manifest.get('generator_version')}, seed {manifest.get('seed')}, "
            f"difficulty {manifest.get('difficulty')}); not real AI-generated images")
    return "real", "image folder supplied by the user"


class Study:
    """One run of the study; `run()` fills `work` (the hidden folder) with every result file."""

    def __init__(self, args: argparse.Namespace, out: Path, work: Path):
        self.args = args
        self.out = out
        self.work = work
        from aigen import distributed

        self.world = distributed.world()  # under torchrun: this process's rank (docs/scale.md)
        self.progress = bool(getattr(args, "progress", True)) and self.world.is_main
        self.timer = StageTimer()
        self.started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        self.seeds = list(dict.fromkeys(args.seeds))[: 1 if args.quick else None]
        epochs = (lambda n: 1) if args.quick else (lambda n: n)
        self.hp = {
            "scratch": {"epochs": epochs(args.scratch_epochs), "lr": args.scratch_lr,
                        "filters": args.scratch_filters, "batch_size": args.scratch_batch_size,
                        "backend": args.scratch_backend, "checkpoint": args.checkpoint,
                        "init": args.scratch_init},
            "frozen": {"epochs": epochs(args.frozen_epochs), "lr": args.frozen_lr,
                       "batch_size": args.backbone_batch_size, "checkpoint": args.checkpoint},
            "finetuned": {"epochs": epochs(args.finetune_epochs), "lr": args.finetune_lr,
                          "batch_size": args.backbone_batch_size, "checkpoint": args.checkpoint},
            # The most epochs; early stopping keeps the best one (aigen.training.train_full).
            "full": {"epochs": epochs(args.full_epochs), "lr": args.full_lr,
                     "lr_decay": args.full_lr_decay, "weight_decay": args.full_weight_decay,
                     "warmup_epochs": args.full_warmup, "patience": args.full_patience,
                     "batch_size": args.backbone_batch_size, "checkpoint": "best",
                     "optimizer": "AdamW",
                     "schedule": "linear warm-up + cosine decay towards 0 per update"},
        }
        # Keyed by lr_key: values that print alike would overwrite each other's results.
        self.lrs = list({lr_key(lr): lr for lr in args.scratch_lrs}.values()) \
            if "scratch" in args.models else []
        from aigen.study.protocols import study_protocols

        # Every protocol trains and evaluates on the same splits; the first is the default one.
        self.protocols = study_protocols(getattr(args, "harmonize", None),
                                         getattr(args, "augment", None),
                                         getattr(args, "input", None))
        self.by_protocol: dict[str, dict[str, Any]] = {}  # key -> that protocol's state
        # The current protocol's state: models (name -> model info, filled by training), runs
        # ((name, seed) -> trained run), skipped models, degradation sweep, external evaluations.
        self._enter_protocol(self.protocols[0])
        self.backbones: dict[str, Any] = {}  # loaded once, shared by every protocol
        self._unavailable: dict[str, str] = {}  # backbone name -> why it could not be loaded
        self.history_rows: list[list[Any]] = []
        self.device = None
        self.metadata = None  # the --metadata-csv override, read now so a bad file fails early
        if args.metadata_csv:
            from aigen.data.explore import read_metadata_csv

            self.metadata = read_metadata_csv(args.metadata_csv)

    def _log(self, message: str) -> None:
        if self.world.is_main:
            print(f"aigen study: {message}", file=sys.stderr, flush=True)

    # -- stages -------------------------------------------------------------------------------

    def run(self) -> None:
        from aigen.distributed import process_device
        from aigen.training import check_amp

        self.device = process_device(self.args.device, self.world)
        check_amp(getattr(self.args, "amp", "off"), self.device)
        main = self.world.is_main  # under torchrun, only rank 0 writes files
        if main:
            (self.work / "figures").mkdir(exist_ok=True)  # exist_ok: a resumed run
            (self.work / "checkpoints").mkdir(exist_ok=True)
        with self.timer.stage("load_data"):
            self._load_data()
        from aigen.study import runfolder

        if main:
            runfolder.check_same_data(self.work, self.dataset.manifest_sha256())
            with self.timer.stage("exploration"):
                self._explore()
        with self.timer.stage("split"):
            self._make_splits()
        for protocol in self.protocols:
            self._enter_protocol(protocol)
            self._train_all()
            if not main:  # the other processes' part ends with training (docs/scale.md)
                continue
            first = protocol == self.protocols[0]
            if first:
                if not self.models:
                    reasons = "; ".join(f"{n}: {r.splitlines()[0]}"
                                        for n, r in self.skipped_models.items())
                    raise UserError(f"no model could be trained ({reasons})")
                with self.timer.stage("lr_study"):
                    self._lr_study()
            with self.timer.stage("sweep"):
                self._sweep()
            if first:  # the first protocol's models (the spectra are the data's)
                with self.timer.stage("diagnostics"):
                    self._diagnostics()
            with self.timer.stage("external"):
                self._external()
            self._save_protocol()
        if not main:
            return
        self._enter_protocol(self.protocols[0])
        self._write_results()

    # -- protocols ----------------------------------------------------------------------------

    _PROTOCOL_STATE = ("models", "skipped_models", "runs", "sweep", "external",
                       "external_skipped", "external_figures")

    def _enter_protocol(self, protocol) -> None:
        """Make `protocol` the current one: its specs, and its state (empty when it is new)."""
        from aigen.study.protocols import run_name

        self.protocol = protocol
        self.specs = protocol.specs()
        self.run_name = lambda name: run_name(name, protocol, self.protocols[0])  # noqa: E731
        saved = self.by_protocol.get(protocol.key, {})
        for attr in self._PROTOCOL_STATE:
            setattr(self, attr, saved.get(attr, {}))
        self.prefix, self.pooled = {}, {}  # activations: one protocol's at a time

    def _save_protocol(self) -> None:
        self.by_protocol[self.protocol.key] = {attr: getattr(self, attr)
                                               for attr in self._PROTOCOL_STATE}

    def _trains_scratch(self) -> bool:
        """The scratch CNN is never augmented: it trains in the first protocol of each
        harmonisation only."""
        first = next(p for p in self.protocols if p.harmonize == self.protocol.harmonize)
        return "scratch" in self.args.models and self.protocol == first

    def _load_data(self) -> None:
        from aigen import distributed
        from aigen.data.dataset import write_skipped
        from aigen.data.discover import parse_class_args
        from aigen.data.preprocess import BACKBONE, SCRATCH
        from aigen.data.sets import load_sets, parse_sets

        main = self.world.is_main
        sets = _check_data_option(self.args)
        needs_backbone = bool(self.args.backbones) and bool(set(BACKBONE_REGIMES)
                                                            & set(self.args.models))
        wanted = []  # every protocol's inputs, packed in one pass over the files
        for protocol in self.protocols:
            specs = protocol.specs()
            wanted.append(specs["scratch"])
            if needs_backbone:
                wanted.append(specs["backbone"])
                # Training from images (augmented, or the full regime) reads the unharmonised
                # rows (aigen.data.augment.AugmentedImages) of resized inputs; crops are cut
                # from the harmonised squares (their own store).
                if (protocol.augment != "none" or "full" in self.args.models) \
                        and not specs["backbone"].crop:
                    wanted.append(BACKBONE)
        specs = tuple({spec.key: spec for spec in wanted}.values())

        def load():  # rank 0 writes the cache (store, index); the others then only read it
            nonlocal sets
            if not sets:
                from aigen.data.synth import default_dataset

                self._log("no --data given: using the embedded synthetic dataset")
                sets = parse_sets([str(default_dataset(progress=self.progress))])
            return load_sets(
                sets, class_map=parse_class_args(self.args.classes) if self.args.classes else None,
                max_pixels=self.args.max_pixels or None, workers=self.args.workers,
                progress=self.progress, specs=specs if main else (),
                rehash=main and bool(getattr(self.args, "rehash", False)))

        self.dataset = distributed.main_first(load)
        self.data_sets = {name: Path(root).resolve() for name, root in self.dataset.sets.items()}
        for root in self.data_sets.values():
            refuse_inside(self.out, root)
        self.set_kinds = {name: data_kind(root) for name, root in self.data_sets.items()}
        kinds = {kind for kind, _ in self.set_kinds.values()}
        self.data_root = next(iter(self.data_sets.values())) if len(self.data_sets) == 1 else None
        if len(self.set_kinds) == 1:
            self.data_kind, self.data_description = next(iter(self.set_kinds.values()))
        else:
            self.data_kind = kinds.pop() if len(kinds) == 1 else "mixed"
            self.data_description = "; ".join(f"{name}: {description}" for name, (_, description)
                                              in self.set_kinds.items())
        self.labels = self.dataset.labels
        if main:
            write_skipped(self.work / "skipped.csv", self.dataset.skipped)

    def _explore(self) -> None:
        from aigen.data import explore

        metadata = self.metadata
        self.summary = explore.summarize(self.dataset, metadata)
        # Tables exploration.csv/.md at the top, histograms into figures/.
        written = explore.write_exploration(self.dataset, self.work, metadata=metadata,
                                            summary=self.summary)
        self.exploration_figures = sorted(path for key, path in written.items()
                                          if key.startswith("figure_"))
        self.shortcut_audit = explore.shortcut_audit(self.dataset, seed=self.seeds[0],
                                                     metadata=metadata)

    def _make_splits(self) -> None:
        from aigen.data.split import make_split, read_split, write_split

        fixed = read_split(self.args.split_file, self.dataset) if self.args.split_file else None
        self.splits = {}
        self.split_files = {}
        for k, seed in enumerate(self.seeds):
            split = fixed if fixed is not None else make_split(self.dataset, seed)
            name = "split.csv" if k == 0 else f"split_seed{seed}.csv"
            if self.world.is_main:
                write_split(self.work / name, self.dataset, split)
            self.splits[seed] = split
            self.split_files[seed] = name
        used = set()
        for split in self.splits.values():
            for part in ("train", "val", "test"):
                used.update(int(i) for i in split.indices(part))
        self.used = np.array(sorted(used), dtype=np.int64)  # images in some split of some seed
        self.row_of = {int(i): r for r, i in enumerate(self.used)}  # dataset index -> array row

    def _rows(self, seed: int, part: str) -> np.ndarray:
        return np.array([self.row_of[int(i)] for i in self.splits[seed].indices(part)],
                        dtype=np.int64)

    # -- training -----------------------------------------------------------------------------

    def _train_all(self) -> None:
        """Train (or read back, --resume) every model of the current protocol for every seed."""
        from aigen.data.dataset import dataset_arrays

        self.y_used = self.labels[self.used]
        # The scratch CNN (CPU, Cython kernels) trains in the first process alone (docs/scale.md).
        if self._trains_scratch() and self.world.is_main:
            with self.timer.stage("scratch_inputs"):
                self.X_scratch = dataset_arrays(self.dataset, self.specs["scratch"], self.used)
            self.models[SCRATCH_NAME] = {"regime": "scratch", "backbone": None}
            for seed in self.seeds:
                with self.timer.stage(f"train:{self.run_name(SCRATCH_NAME)}"):
                    if not self._restore(SCRATCH_NAME, seed):
                        self._train_scratch(seed)
        regimes = [k for k in BACKBONE_REGIMES if k in self.args.models]
        if not regimes:
            return
        for name in self.args.backbones:
            if not self._load_backbone(name, regimes):
                continue
            for regime in regimes:
                model_name = f"{name}_{regime}"
                self.models[model_name] = {"regime": regime, "backbone": name}
                for seed in self.seeds:
                    with self.timer.stage(f"train:{self.run_name(model_name)}"):
                        if not self._restored_by_main(model_name, seed):
                            self._train_backbone(name, regime, seed)

    def _load_backbone(self, name: str, regimes: list[str]) -> bool:
        """The backbone (loaded once for every protocol) and its prefix activations under the
        current protocol's input; False, with the reason recorded, when it is unavailable."""
        from aigen.models.backbones import (BackboneUnavailable, load_backbone,
                                            weights_by_backbone)

        from aigen import distributed

        weights = weights_by_backbone(self.args.weights, self.args.backbones).get(name)
        if name in self._unavailable:
            for regime in regimes:
                self.skipped_models[f"{name}_{regime}"] = self._unavailable[name]
            return False

        def load():  # rank 0 first: it alone may download weights into torch's cache
            try:
                return load_backbone(name, weights=weights, init=self.args.init)
            except BackboneUnavailable as exc:
                return exc

        if name not in self.backbones:  # loaded once, for every protocol
            with self.timer.stage(f"load_backbone:{name}"):
                backbone = distributed.main_first(load)
                if isinstance(backbone, BackboneUnavailable) or distributed.from_main(
                        isinstance(backbone, BackboneUnavailable)):
                    reason = str(backbone) if isinstance(backbone, BackboneUnavailable) else \
                        "unavailable in the first process"
                    self._unavailable[name] = reason
                    for regime in regimes:
                        self.skipped_models[f"{name}_{regime}"] = reason
                    self._log(f"{name} skipped: {reason}")
                    return False
            self.backbones[name] = backbone
        backbone = self.backbones[name]
        if not {"frozen", "finetuned"} & set(regimes):  # the full regime runs its own prefix
            return True
        with self.timer.stage(f"prefix_activations:{name}"):
            self.prefix[name] = self._prefix_activations(backbone, self.used, f"{name} prefix")
            if "frozen" in regimes:  # the frozen head's input, computed once for every seed
                self.pooled[name] = self._pooled_features(backbone, self.prefix[name])
        return True

    def _pooled_features(self, backbone, prefix):
        """The frozen backbone's pooled features of every used image."""
        return self._in_shares(lambda A: backbone.pooled_features(A, self.device), prefix)

    def _probabilities(self, clf, A) -> np.ndarray:
        """P(AI) of every used image for a trained classifier (A: its prefix activations or
        pooled features; under the crop policy those of each image's fixed windows, whose
        probabilities are averaged; for a model with its own prefix, the full regime, the
        images: see `_model_inputs`, whose crops predict_proba averages itself)."""
        from aigen.data.preprocess import mean_over_windows, n_windows

        if clf.own_prefix:
            return self._in_shares(clf.predict_proba, A)
        return mean_over_windows(self._in_shares(clf.predict_proba_from_prefix, A),
                                 n_windows(self.specs["backbone"]))

    def _model_inputs(self):
        """Every used image as the backbones' input under the current protocol (harmonised),
        read from its store batch by batch: what `aigen predict` gives the models."""
        from aigen.data.dataset import dataset_inputs
        from aigen.data.stream import StoreImages

        spec = self.specs["backbone"]
        return StoreImages(dataset_inputs(self.dataset, spec), spec, self.used)

    def _in_shares(self, compute, A):
        """compute(A), row-wise; under torchrun each process computes its share of the rows and
        every process gets the whole result in row order (aigen.distributed.sharded_map)."""
        from aigen import distributed

        if not self.world.distributed:
            return compute(A)
        return distributed.sharded_map(lambda rows: compute(_take(A, rows)), len(A), SHARD_STEP)

    def _prefix_activations(self, backbone, indices: np.ndarray, desc: str):
        """Prefix activations of dataset images, streamed from the store in batches, or reused
        from an earlier run on the same data and backbone (aigen.data.stream.prefix_features)."""
        from aigen.data.dataset import dataset_inputs
        from aigen.data.stream import DEFAULT_MEMORY_BUDGET, loader_workers, prefix_features

        spec = self.specs["backbone"]  # the current protocol's input
        return prefix_features(backbone, dataset_inputs(self.dataset, spec), spec, indices,
                               manifest=self.dataset.manifest_sha256(), device=self.device,
                               budget=getattr(self.args, "memory_budget", DEFAULT_MEMORY_BUDGET),
                               workers=loader_workers(self.device, self.args.workers),
                               progress=self.progress)

    def _record(self, name: str, seed: int, model, history: list[dict], prob: np.ndarray,
                restored: bool = False) -> None:
        from aigen.study import runfolder

        run_name = self.run_name(name)  # unique over protocols: names its files and rows
        if not restored:  # persisted at once, so an interrupted run can skip it (--resume)
            runfolder.save_run(self.work, run_name, seed, history, prob, self.models[name])
            runfolder.log_history(self.work, self.args, run_name, seed, history)
        self.runs[(name, seed)] = {"model": model, "history": history, "prob": prob}
        for h in history:
            self.history_rows.append([run_name, seed, h["epoch"], h["train_loss"], h["train_acc"],
                                      h["val_loss"], h["val_acc"]])

    def _restore(self, name: str, seed: int) -> bool:
        """Whether an earlier attempt of this run (--resume) finished (name, seed); if so its
        model is read back from checkpoints/ and its history and predictions from resume/."""
        from aigen.study import runfolder

        run_name = self.run_name(name)
        state = runfolder.load_run(self.work, run_name, seed)
        if state is None:
            return False
        history, prob, info = state
        if info.get("regime") == "scratch":
            from aigen.models.scratch import ScratchCNN

            model = ScratchCNN.load(self._checkpoint(name, seed))
        else:
            from aigen.models.backbones import load_classifier

            model = load_classifier(self._checkpoint(name, seed),
                                    backbone=self.backbones[info["backbone"]], device=self.device)
        self.models[name].update(info)
        self._log(f"{run_name} seed {seed}: finished by the earlier attempt, not trained again")
        self._record(name, seed, model, history, prob, restored=True)
        return True

    def _checkpoint(self, name: str, seed: int, relative: bool = False) -> Path:
        """checkpoints/RUN_NAME_seedK.npz (scratch) or .pt of model `name` of this protocol."""
        suffix = "npz" if self.models[name]["regime"] == "scratch" else "pt"
        path = Path("checkpoints") / f"{self.run_name(name)}_seed{seed}.{suffix}"
        return path if relative else self.work / path

    def _restored_by_main(self, name: str, seed: int) -> bool:
        """`_restore` in the first process, its answer in every process (under torchrun the
        others skip what it restored; they keep no models)."""
        from aigen import distributed

        return distributed.main_first(lambda: self._restore(name, seed), others=False)

    def _lr_run(self, seed: int, lr: float) -> tuple[list[dict], np.ndarray]:
        """(history, predictions) of the scratch CNN at `lr`: trained, or read back on --resume."""
        from aigen.study import runfolder

        name = f"{SCRATCH_NAME}_lr{lr_key(lr)}"
        state = runfolder.load_run(self.work, name, seed)
        if state is not None:
            return state[0], state[1]
        model, history = self._fit_scratch(seed, lr)
        prob = model.predict_proba(self.X_scratch)
        runfolder.save_run(self.work, name, seed, history, prob)
        runfolder.log_history(self.work, self.args, name, seed, history)
        return history, prob

    def _fit_scratch(self, seed: int, lr: float):
        from aigen.repro import seed_everything
        from aigen.training import train_scratch

        hp = self.hp["scratch"]
        tr, va = self._rows(seed, "train"), self._rows(seed, "val")
        seed_everything(seed)
        return train_scratch(self.X_scratch[tr], self.y_used[tr], self.X_scratch[va],
                             self.y_used[va], filters=hp["filters"], lr=lr, epochs=hp["epochs"],
                             batch_size=hp["batch_size"], seed=seed, backend=hp["backend"],
                             progress=self.progress, checkpoint=hp["checkpoint"], init=hp["init"])

    def _train_scratch(self, seed: int) -> None:
        from aigen.study.checkpoints import identity

        model, history = self._fit_scratch(seed, self.hp["scratch"]["lr"])
        model.save(self._checkpoint(SCRATCH_NAME, seed),
                   metadata={**identity(self.run_name(SCRATCH_NAME), "scratch", None, seed),
                             **self.hp["scratch"]})
        self.models[SCRATCH_NAME].update(
            weights_source="random initialisation, trained from scratch", pretrained=False,
            n_params=model.n_params, trainable_params=model.n_params,
            hyperparameters=self.hp["scratch"])
        self._record(SCRATCH_NAME, seed, model, history, model.predict_proba(self.X_scratch))

    def _train_backbone(self, name: str, regime: str, seed: int) -> None:
        from functools import partial

        from aigen.repro import seed_everything
        from aigen.study import runfolder
        from aigen.study.checkpoints import identity
        from aigen.training import train_finetuned, train_frozen, train_full

        backbone = self.backbones[name]
        augment = self.protocol.augment
        crop = self.specs["backbone"].crop
        hp = {**self.hp[regime], "augment": augment}
        if crop:  # (a resize model's hyperparameters are recorded as before input policies)
            hp["input"] = self.protocol.input
        # What the model is scored on: the full regime's own prefix needs the images themselves.
        A = {"frozen": self.pooled, "finetuned": self.prefix}[regime][name] \
            if regime != "full" else self._model_inputs()
        tr, va = self._rows(seed, "train"), self._rows(seed, "val")
        seed_everything(seed)
        model_name = f"{name}_{regime}"
        if regime == "full":  # every layer trains: always from images, on the streaming path
            train = partial(train_full, lr_decay=hp["lr_decay"], weight_decay=hp["weight_decay"],
                            warmup=hp["warmup_epochs"], patience=hp["patience"])
            X_tr, X_va = self._training_images(tr, seed, augment), self._training_images(va, seed)
        elif augment == "none" and not crop:
            train = train_frozen if regime == "frozen" else train_finetuned
            X_tr, X_va = _take(A, tr), _take(A, va)  # views of the cached activations
        else:  # augmented, or random crops: trained from images (the whole backbone runs on
            # every batch)
            from aigen.training import train_from_images

            train = partial(train_from_images, regime=regime)
            X_tr, X_va = self._training_images(tr, seed, augment), self._training_images(va, seed)
        clf, history = train(backbone, X_tr, self.y_used[tr], X_va, self.y_used[va],
                             epochs=hp["epochs"], lr=hp["lr"], batch_size=hp["batch_size"],
                             seed=seed, device=self.device, progress=self.progress,
                             checkpoint=hp["checkpoint"],
                             epoch_state=runfolder.epoch_state_path(
                                 self.work, self.run_name(model_name), seed),
                             amp=getattr(self.args, "amp", "off"))
        prob = self._probabilities(clf, A)  # a crop model: the mean over each image's windows
        if not self.world.is_main:
            return
        clf.save(self._checkpoint(model_name, seed),
                 metadata={**identity(self.run_name(model_name), regime, name, seed), **hp})
        total, trainable = _parameter_counts(clf)
        self.models[model_name].update(
            architecture=backbone.architecture, weights_source=backbone.weights_source,
            pretrained=backbone.pretrained, weights_sha256=backbone.weights_sha256,
            n_params=total, trainable_params=trainable, hyperparameters=hp)
        self._record(model_name, seed, clf, history, prob)

    def _training_images(self, rows: np.ndarray, seed: int, augment: str = "none"):
        """The images of `rows` (rows of self.used) as the backbones' inputs under the current
        protocol, made per batch (aigen.data.augment.AugmentedImages): resized ones from the
        unharmonised store, augmented (seeded per seed, epoch and image) and then harmonised;
        crops from the protocol's own (harmonised) store, a random window per image and epoch,
        then augmented (without `augment`'s draws: each image's fixed windows)."""
        from aigen.data.augment import AugmentedImages
        from aigen.data.dataset import dataset_inputs
        from aigen.data.preprocess import BACKBONE

        spec = self.specs["backbone"]
        return AugmentedImages(dataset_inputs(self.dataset, spec if spec.crop else BACKBONE),
                               spec, self.used[rows], augment, seed)

    # -- learning-rate study ------------------------------------------------------------------

    def _lr_study(self) -> None:
        from aigen.study.metrics import summarize

        self.lr_study: dict[str, Any] = {}
        if not self.lrs:
            return
        runs = {}
        for lr in self.lrs:
            accuracy = {part: [] for part in ("train", "val", "test")}
            counts = {part: [] for part in ("train", "val", "test")}
            final_loss = []
            one_class = []  # seeds whose model answered one class for every test image
            for seed in self.seeds:
                if lr == self.hp["scratch"]["lr"] and (SCRATCH_NAME, seed) in self.runs:
                    done = self.runs[(SCRATCH_NAME, seed)]  # the main run already trained this lr
                    model, history, prob = done["model"], done["history"], done["prob"]
                else:
                    history, prob = self._lr_run(seed, lr)
                for h in history:
                    self.history_rows.append([f"{SCRATCH_NAME}_lr{lr_key(lr)}", seed, h["epoch"],
                                              h["train_loss"], h["train_acc"], h["val_loss"],
                                              h["val_acc"]])
                for part in accuracy:
                    rows = self._rows(seed, part)
                    correct = int(((prob[rows] >= 0.5) == (self.y_used[rows] == 1)).sum())
                    accuracy[part].append(correct / len(rows))
                    counts[part].append((correct, len(rows)))
                final_loss.append(history[-1]["train_loss"])
                if len(np.unique(prob[self._rows(seed, "test")] >= 0.5)) == 1:
                    one_class.append(seed)
            runs[lr_key(lr)] = {
                "lr": lr,
                **{f"{part}_accuracy": summarize(accuracy[part], counts[part])
                   for part in accuracy},
                "final_train_loss": summarize(final_loss, bounds=None),
                "test_single_class_seeds": one_class,
            }
        hp = self.hp["scratch"]
        self.lr_study = {"epochs": hp["epochs"], "filters": hp["filters"],
                         "batch_size": hp["batch_size"], "runs": runs}

    # -- degradation sweep --------------------------------------------------------------------

    def _sweep(self) -> None:
        """Every model scored on its seed's test images degraded step by step (aigen.study.sweep):
        the union of the seeds' test images, each degraded once and scored by every seed's models."""
        from aigen.study.evaluate import make_scorer
        from aigen.study.sweep import PERTURBATIONS, run_sweep

        self.sweep: dict[str, Any] = {}
        requested = getattr(self.args, "sweep", None)  # None: a run saved before the option
        perturbations = list(PERTURBATIONS) if requested is None else list(dict.fromkeys(requested))
        if not self.models or not perturbations:
            return
        union = sorted({int(i) for s in self.splits.values() for i in s.indices("test")})
        position = {i: k for k, i in enumerate(union)}
        test_pos = {seed: np.array([position[int(i)] for i in self.splits[seed].indices("test")],
                                   dtype=np.int64) for seed in self.seeds}
        regimes = {name: info["regime"] for name, info in self.models.items()}
        models = {seed: {name: self.runs[(name, seed)]["model"] for name in self.models}
                  for seed in self.seeds}
        self.sweep = run_sweep([self.dataset.images[i] for i in union], self.labels[union],
                               test_pos, self._input_specs(), make_scorer(models, regimes),
                               list(self.models), self.seeds, max_pixels=self.dataset.max_pixels,
                               workers=self._loader_workers(), perturbations=perturbations,
                               progress=self.progress)

    def _input_specs(self) -> dict[str, Any]:
        """{"scratch"/"backbone": Spec} of the inputs the current protocol's models take
        (harmonised as the protocol says); every stage that scores images takes them from here."""
        from aigen.study.predict import needed_specs

        return needed_specs({name: info["regime"] for name, info in self.models.items()},
                            self.protocol.harmonize, self.protocol.input)

    def _loader_workers(self) -> int:
        """DataLoader processes for work that decodes image files (--workers; 0 = in-process)."""
        from aigen.data.dataset import available_cores

        workers = getattr(self.args, "workers", None) or available_cores()
        # Each process holds a couple of batches of degraded images: a few are enough.
        return 0 if workers <= 1 else min(int(workers), MAX_LOADER_WORKERS)

    # -- diagnostics: frequency spectra, Grad-CAM, the scratch CNN's filters -------------------

    def _diagnostics(self) -> None:
        """results.json's "diagnostics" and their figures (aigen.data.spectra,
        aigen.study.diagnostics): the classes' spectra on a sample of the study's images; for the
        first seed, Grad-CAM of every backbone model and the scratch CNN's filters."""
        from aigen.data.dataset import dataset_inputs
        from aigen.data.spectra import class_spectra, spectra_figure
        from aigen.study import diagnostics

        self.diagnostics: dict[str, Any] = {}
        self.diagnostic_figures: dict[str, Any] = {}
        fdir = self.work / "figures"
        per_class = getattr(self.args, "spectrum_images", 0)
        if per_class:
            spectra = class_spectra([self.dataset.images[int(i)] for i in self.used],
                                    per_class=per_class, seed=self.seeds[0],
                                    max_pixels=self.dataset.max_pixels,
                                    workers=self._loader_workers(), progress=self.progress)
            self.diagnostics["spectra"] = spectra.record
            spectra_figure(spectra, fdir / "spectra.png", self.dataset.class_names)
            self.diagnostic_figures["spectra"] = "figures/spectra.png"
        if not self.models:
            return
        seed = self.seeds[0]
        rows = self._rows(seed, "test")
        indices = self.used[rows]
        y = self.y_used[rows]
        paths = [self.dataset.images[int(i)].rel_path for i in indices]
        specs = self._input_specs()
        self.diagnostics["gradcam"] = {}
        self.diagnostic_figures["gradcam"] = {}
        for name, info in self.models.items():
            prob = self.runs[(name, seed)]["prob"][rows]
            if info["regime"] == "scratch":
                path = fdir / f"filters_{name}.png"
                self.diagnostics["scratch_filters"] = diagnostics.scratch_diagnostic(
                    self.runs[(name, seed)]["model"], self.X_scratch[rows], y, prob, paths, seed,
                    path)
                self.diagnostic_figures["scratch_filters"] = f"figures/{path.name}"
                continue
            path = fdir / f"gradcam_{name}.png"
            self.diagnostics["gradcam"][name] = diagnostics.gradcam_diagnostic(
                name, self.runs[(name, seed)]["model"], dataset_inputs(self.dataset,
                                                                       specs["backbone"]),
                specs["backbone"], indices, y, prob, paths, seed, path, device=self.device)
            self.diagnostic_figures["gradcam"][name] = f"figures/{path.name}"

    # -- evaluation on other labelled data (--eval-data) ---------------------------------------

    def _external(self) -> None:
        """Every trained model (every seed) scored on each --eval-data set, exactly as `aigen
        evaluate` scores a finished run; a set that fails is reported, not fatal."""
        from aigen.study.evaluate import (evaluate_dataset, load_eval_dataset, make_scorer,
                                          parse_eval_data, run_preprocessing, write_evaluation)

        self.external: dict[str, Any] = {}
        self.external_skipped: dict[str, str] = {}
        self.external_figures: dict[str, Any] = {}
        sets = parse_eval_data(self.args.eval_data or [])
        if not sets or not self.models:
            return
        regimes = {name: info["regime"] for name, info in self.models.items()}
        models = {seed: {name: self.runs[(name, seed)]["model"] for name in self.models}
                  for seed in self.seeds}
        val = {(name, seed): self._val_scores(name, seed)
               for name in self.models for seed in self.seeds}
        training = {im.sha256 for im in self.dataset.images}
        # The same function `aigen evaluate` applies to a run's config.json, with the protocol's
        # harmonisation.
        preprocessing = run_preprocessing({"arguments": vars(self.args)}, self.protocol.harmonize,
                                          self.protocol.input)
        # Another protocol's files are told apart by its tag: external/NAME@TAG/.
        label = (lambda n: n) if self.protocol == self.protocols[0] else \
            (lambda n: f"{n}@{self.protocol.tag}")  # noqa: E731
        for set_name, root in sets.items():
            try:
                dataset = load_eval_dataset(root, None, preprocessing, regimes,
                                            self.args.workers, self.progress)
                evaluation, rows, duplicates = evaluate_dataset(
                    dataset, make_scorer(models, regimes), regimes, self.seeds, val, training,
                    progress=self.progress, harmonize=self.protocol.harmonize,
                    input_policy=self.protocol.input)
            except UserError as exc:
                self.external_skipped[set_name] = str(exc)
                self._log(f"evaluation set {set_name} skipped: {exc}")
                continue
            for row in rows:  # predictions.csv names the models as the run's files do
                row[3] = self.run_name(row[3])
            self.external_figures[set_name] = write_evaluation(
                self.work, f"external/{label(set_name)}", label(set_name), dataset, evaluation,
                rows, duplicates)
            self.external[set_name] = {"name": set_name, "protocol": self.protocol.key,
                                       **evaluation, "preprocessing": preprocessing}

    def _val_scores(self, name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels, prob_ai) of a model on its seed's validation split (for the threshold
        chosen on validation)."""
        rows = self._rows(seed, "val")
        return self.y_used[rows], self.runs[(name, seed)]["prob"][rows]

    def _test_evaluation(self, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The in-distribution test split scored like an evaluation set (threshold-aware,
        calibration and per-source metrics with image-bootstrap CIs; aigen.study.evaluate), each
        seed on its own test split: (all test images, {set: that set's test images}, the latter
        only with several training sets). Sources are named SET/SOURCE with several sets."""
        from aigen.data.discover import source_of
        from aigen.data.sets import image_sets
        from aigen.study.metrics import choose_threshold

        if not hasattr(self, "sources_used"):
            sets = image_sets(self.dataset)
            self.sets_used = np.array([sets[int(i)] for i in self.used])
            self.sources_used = np.array([source_of(self.dataset.images[int(i)].rel_path,
                                                    self.dataset.class_folders)
                                          for i in self.used])
        several = len(self.data_sets) > 1
        thresholds = [choose_threshold(*self._val_scores(name, seed)) for seed in self.seeds]
        rows = [self._rows(seed, "test") for seed in self.seeds]
        sources = (np.array([f"{a}/{b}" for a, b in zip(self.sets_used, self.sources_used)])
                   if several else self.sources_used)
        overall = self._scored(name, rows, sources, thresholds)
        per_set = {set_name: self._scored(name, [r[self.sets_used[r] == set_name] for r in rows],
                                          self.sources_used, thresholds)
                   for set_name in self.data_sets} if several else {}
        return overall, per_set

    def _scored(self, name: str, rows: list[np.ndarray], sources: np.ndarray,
                thresholds: list[float | None]) -> dict[str, Any]:
        """model_evaluation of a model on the given rows of each seed."""
        from aigen.study.evaluate import model_evaluation

        probs = [self.runs[(name, seed)]["prob"][r] for seed, r in zip(self.seeds, rows)]
        if all(np.array_equal(r, rows[0]) for r in rows):  # one seed, or one reused split
            return model_evaluation(self.y_used[rows[0]], list(sources[rows[0]]), probs,
                                    thresholds)
        return model_evaluation([self.y_used[r] for r in rows], [list(sources[r]) for r in rows],
                                probs, thresholds)

    # -- results ------------------------------------------------------------------------------

    def _model_results(self, name: str) -> dict[str, Any]:
        from aigen.io import file_sha256
        from aigen.study.metrics import aggregate_metrics, classification_metrics, summarize

        info = self.models[name]
        per_split: dict[str, list[dict]] = {}
        for part in ("train", "val", "test"):
            per_split[part] = []
            for seed in self.seeds:
                rows = self._rows(seed, part)
                per_split[part].append(classification_metrics(
                    self.y_used[rows], self.runs[(name, seed)]["prob"][rows]))
        result = {
            "regime": info["regime"],
            "backbone": info["backbone"],
            # Its input protocol; the name of its checkpoints and of its rows in predictions.csv.
            "protocol": self.protocol.key,
            "harmonize": self.protocol.harmonize,
            "augment": "none" if info["regime"] == "scratch" else self.protocol.augment,
            # (only under another input policy than resize: a resize record is as before)
            **({"input": self.protocol.input} if self.protocol.input != INPUT_RESIZE
               and info["regime"] != "scratch" else {}),
            "run_name": self.run_name(name),
            # backbones: which network and which weights file, exactly
            **{key: info[key] for key in ("architecture", "weights_sha256") if key in info},
            "weights_source": info["weights_source"],
            "pretrained": info["pretrained"],
            "n_params": info["n_params"],
            "trainable_params": info["trainable_params"],
            "hyperparameters": info["hyperparameters"],
        }
        if info["regime"] == "full":
            result["early_stopping"] = self._early_stopping(name)
        for part, metrics in per_split.items():
            result[f"{part}_accuracy"] = summarize(
                [m["accuracy"] for m in metrics], counts=[(m["correct"], m["n"]) for m in metrics])
        result["test_roc_auc"] = summarize([m["roc_auc"] for m in per_split["test"]])
        result["test_metrics"] = {"per_seed": per_split["test"],
                                  "aggregate": aggregate_metrics(per_split["test"])}
        result["test_evaluation"], per_set = self._test_evaluation(name)
        if per_set:
            result["per_set"] = per_set
        result["val_metrics"] = {"per_seed": per_split["val"],
                                 "aggregate": aggregate_metrics(per_split["val"])}
        result["checkpoints"] = {str(seed): self._checkpoint(name, seed, relative=True).as_posix()
                                 for seed in self.seeds}
        # Checked before a checkpoint is loaded again (aigen.study.checkpoints).
        result["checkpoint_sha256"] = {seed: file_sha256(self.work / rel)
                                       for seed, rel in result["checkpoints"].items()}
        return result

    def _early_stopping(self, name: str) -> dict[str, Any]:
        """results.json's "early_stopping" of a full model: per seed, the epochs it ran, the
        epoch whose weights it kept, whether it stopped before its last epoch, and its head's
        learning rate at the end of each epoch."""
        from aigen.training import best_epoch

        hp = self.models[name]["hyperparameters"]
        per_seed = {}
        for seed in self.seeds:
            history = self.runs[(name, seed)]["history"]
            per_seed[str(seed)] = {"epochs_run": len(history), "best_epoch": best_epoch(history),
                                   "stopped_early": len(history) < hp["epochs"],
                                   "lr": [h.get("lr") for h in history]}
        return {"monitor": "validation accuracy, ties broken by the lower validation loss",
                "patience": hp["patience"], "max_epochs": hp["epochs"], "per_seed": per_seed}

    def _data_results(self) -> dict[str, Any]:
        from aigen.data.discover import LABEL_AI, LABEL_REAL

        categories = collections.Counter(s.category for s in self.dataset.skipped)
        splits = {}
        for seed, split in self.splits.items():
            counts = {part: int(len(split.indices(part)))
                      for part in ("train", "val", "test", "excluded")}
            splits[str(seed)] = {"file": self.split_files[seed], **counts}
        return {
            "root": str(self.data_root) if self.data_root is not None else None,
            "kind": self.data_kind,
            "description": self.data_description,
            "sets": self._set_records(),
            "class_folders": dict(self.dataset.class_folders),
            "n_files": self.dataset.n_files,
            "n_images": len(self.dataset.images),
            "n_per_class": {"ai": int((self.labels == LABEL_AI).sum()),
                            "real": int((self.labels == LABEL_REAL).sum())},
            "n_skipped": len(self.dataset.skipped),
            "skipped_by_reason": dict(sorted(categories.items())),
            "manifest_sha256": self.dataset.manifest_sha256(),
            "max_pixels": self.dataset.max_pixels,
            "metadata_csv": str(self.args.metadata_csv) if self.args.metadata_csv else None,
            "summary": self.summary,
            "splits": splits,
            "split_file_reused": str(self.args.split_file) if self.args.split_file else None,
        }

    def _set_records(self) -> dict[str, Any]:
        """{set: root, kind, images per class, test images per class per seed} of every
        training set (one entry with one set)."""
        from aigen.data.sets import set_counts

        images = set_counts(self.dataset)
        tests = {str(seed): set_counts(self.dataset, split.indices("test"))
                 for seed, split in self.splits.items()}
        return {name: {"root": str(root), "kind": self.set_kinds[name][0],
                       "n_images": sum(images[name].values()), "n_per_class": images[name],
                       "n_test_per_class": {seed: counts[name] for seed, counts in tests.items()}}
                for name, root in self.data_sets.items()}

    def _write_results(self) -> None:
        from aigen import io

        with self.timer.stage("evaluate"):
            protocols = self._protocol_results()
            self._enter_protocol(self.protocols[0])
            self.results = {
                "seeds": self.seeds,
                # The first protocol's, as in a run with one protocol; every protocol's below.
                "models": protocols[self.protocols[0].key]["models"],
                "skipped_models": dict(self.skipped_models),
                "data": self._data_results(),
                "shortcut_audit": self.shortcut_audit,
                "sweep": self.sweep,
                "diagnostics": self.diagnostics,
                "lr_study": self.lr_study,
                "ci_method": CI_METHOD_TEXT,
                "threshold": 0.5,
                "world_size": self.world.world_size,
                "protocols": protocols,
            }
            if self.args.eval_data:
                self.results["external"] = self.external
                self.results["external_skipped"] = self.external_skipped
            io.write_json(self.work / "results.json", self.results)
            self._write_predictions()
            io.write_csv(self.work / "history.csv",
                         ["model", "seed", "epoch", "train_loss", "train_acc", "val_loss",
                          "val_acc"], self.history_rows)
        with self.timer.stage("figures"):
            figures = self._figures()
        self.config = self._config()
        with self.timer.stage("report"):
            from aigen.study.report import build_report

            io.write_text(self.work / "report.md", build_report(self.results, self.config, figures))
        self.config["wall_seconds"] = {**self.timer.seconds, "total": self.timer.total()}
        io.write_json(self.work / "config.json", self.config)

    def _protocol_results(self) -> dict[str, Any]:
        """results.json["protocols"]: per protocol key, what it is, its models (the per-model
        records of results["models"]), skipped models, sweep and external evaluations."""
        out = {}
        for protocol in self.protocols:
            self._enter_protocol(protocol)
            record = {**protocol.record(),
                      "models": {name: self._model_results(name) for name in self.models},
                      "skipped_models": dict(self.skipped_models),
                      "sweep": self.sweep}
            if "scratch" in self.args.models and not self._trains_scratch():
                first = next(p for p in self.protocols if p.harmonize == protocol.harmonize)
                record["scratch_not_augmented"] = (
                    "the scratch CNN is not augmented: it is trained once per harmonisation, "
                    f"see protocol {first.key}") if protocol.input == first.input else (
                    "the scratch CNN is not augmented and always takes its 32x32 resized "
                    f"input: it is trained once per harmonisation, see protocol {first.key}")
            if self.specs["backbone"].crop:
                record["rescaled"] = self._rescaled(self.specs["backbone"])
            if self.args.eval_data:
                record["external"] = self.external
                record["external_skipped"] = self.external_skipped
            out[protocol.key] = record
        return out

    def _rescaled(self, spec) -> dict[str, Any]:
        """How many of the study's images per class the crop spec enlarged, kept or reduced to
        its side (resampling leaves traces of its own: a class enlarged more often is a cue)."""
        from aigen.data.discover import LABEL_AI
        from aigen.data.preprocess import rescaling

        counts = {cls: {"enlarged": 0, "kept": 0, "reduced": 0} for cls in ("ai", "real")}
        for i in self.used:
            im = self.dataset.images[int(i)]
            counts["ai" if im.label == LABEL_AI else "real"][
                rescaling(im.width, im.height, spec)] += 1
        return {"side": spec.size, "per_class": counts}

    def _write_predictions(self) -> None:
        from aigen import io

        from aigen.data.sets import image_sets, path_in_set

        sets = image_sets(self.dataset)
        rows = []
        for protocol in self.protocols:  # every protocol's models, under their run names
            self._enter_protocol(protocol)
            for (name, seed), run_ in self.runs.items():
                assignment = self.splits[seed].assignment
                for r, i in enumerate(self.used):
                    part = assignment[int(i)]
                    if part in ("train", "val", "test"):
                        im = self.dataset.images[int(i)]
                        rows.append([sets[int(i)], path_in_set(self.dataset, im.rel_path),
                                     self.run_name(name), seed, part, im.label,
                                     repr(float(run_["prob"][r]))])
        self._enter_protocol(self.protocols[0])
        io.write_csv(self.work / "predictions.csv",
                     ["set", "path", "model", "seed", "split", "label", "prob_ai"], rows)

    def _figures(self) -> dict[str, Any]:
        from aigen.study import figures as fig
        from aigen.study.report import majority_rate

        fdir = self.work / "figures"
        rel = lambda p: p.relative_to(self.work).as_posix()  # noqa: E731
        out: dict[str, Any] = {"exploration": [rel(p) for p in self.exploration_figures],
                               "curves": {}}
        history = collections.defaultdict(list)
        keys = ("model", "seed", "epoch", "train_loss", "train_acc", "val_loss", "val_acc")
        for row in self.history_rows:
            history[row[0]].append(dict(zip(keys, row)))
        for protocol in self.protocols:  # every protocol's models, under their run names
            for name, info in self.by_protocol[protocol.key]["models"].items():
                run_name = name if protocol == self.protocols[0] else f"{name}@{protocol.tag}"
                path = fdir / f"curves_{run_name}.png"
                fig.training_curves(history[run_name], f"{run_name}: training curves", path)
                out["curves"][run_name] = rel(path)
        if self.models:
            matrices = {name: m["test_metrics"]["aggregate"]["confusion_matrix"]
                        for name, m in self.results["models"].items()}
            summed = ("summed over seeds" if len(self.seeds) > 1 else
                      fig.seeds_words(self.seeds))
            fig.confusion_matrices(matrices, fdir / "confusion_matrices.png",
                                   title=f"Test confusion matrices ({summed})")
            out["confusion"] = rel(fdir / "confusion_matrices.png")
            curves = {}
            for name in self.models:
                curves[name] = []
                for seed in self.seeds:
                    rows = self._rows(seed, "test")
                    curves[name].append((self.y_used[rows], self.runs[(name, seed)]["prob"][rows]))
            per_seed = ("one line per seed" if len(self.seeds) > 1 else
                        fig.seeds_words(self.seeds))
            fig.roc_curves(curves, fdir / "roc_curves.png",
                           title=f"ROC curves (test split, {per_seed})")
            out["roc"] = rel(fdir / "roc_curves.png")
        out["external"] = self.external_figures
        out["diagnostics"] = self.diagnostic_figures
        out["sweep"] = {}
        for key, perturbation in (self.sweep.get("perturbations") or {}).items():
            path = fdir / f"sweep_{key}.png"
            fig.sweep_curves(perturbation, {m: per[key] for m, per in self.sweep["models"].items()},
                             path, seeds=self.seeds,
                             majority=majority_rate(self.results))
            out["sweep"][key] = rel(path)
        if self.lr_study.get("runs"):
            lr_history = []
            for lr in self.lr_study["runs"]:
                for row in history[f"{SCRATCH_NAME}_lr{lr}"]:
                    lr_history.append({**row, "lr": lr})
            fig.lr_study(self.lr_study["runs"], lr_history, fdir / "lr_study.png",
                         seeds=self.seeds, baseline=majority_rate(self.results))
            out["lr_study"] = rel(fdir / "lr_study.png")
        return out

    def _config(self) -> dict[str, Any]:
        from aigen.repro import environment_record

        arguments = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()
                     if not k.startswith("_")}
        return {
            "command": "aigen study",
            "argv": sys.argv,
            "arguments": arguments,
            "resolved": {"seeds": self.seeds, "hyperparameters": self.hp,
                         "scratch_lrs": self.lrs, "out": str(self.out),
                         "protocols": [p.record() for p in self.protocols]},
            "started": self.started,
            "device": str(self.device),
            "world_size": self.world.world_size,
            "distributed_backend": self.world.backend,
            "data": {"root": str(self.data_root) if self.data_root is not None else None,
                     "sets": {name: str(root) for name, root in self.data_sets.items()},
                     "kind": self.data_kind, "manifest_sha256": self.dataset.manifest_sha256()},
            "backbones": {name: {"architecture": b.architecture,
                                 "weights_source": b.weights_source, "pretrained": b.pretrained,
                                 "init": b.init, "weights_sha256": b.weights_sha256,
                                 "fingerprint": b.fingerprint}
                          for name, b in self.backbones.items()},
            "environment": environment_record(),
        }

    # -- terminal -----------------------------------------------------------------------------

    def print_summary(self) -> None:
        """The comparison table and the report's path, on stdout."""
        from aigen.study.metrics import format_summary
        from aigen.study.report import audit_cells

        several = len(self.protocols) > 1  # then each model is named with its protocol
        rows = [(f"{name} [{key}]" if several else name, format_summary(m["train_accuracy"]),
                 format_summary(m["val_accuracy"]), format_summary(m["test_accuracy"]))
                for key, record in self.results["protocols"].items()
                for name, m in record["models"].items()]
        audit = self.results["shortcut_audit"] or {}
        rows.append(("metadata only (audit)", "–", "–", audit_cells(audit)["accuracy"]))
        # The audit's forest can sit below the majority rate on imbalanced data: show both.
        if isinstance(audit.get("majority_baseline"), (int, float)):
            rows.append(("majority class (baseline)", "–", "–", f"{audit['majority_baseline']:.3f}"))
        header = ("model", "train", "val", "test")
        widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(4)]
        line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa
        from aigen.study.report import cell_words

        print(f"accuracy on each split, {cell_words(self.seeds)}; data: {self.data_kind}")
        print(line(header))
        print(line(["-" * w for w in widths]))
        for r in rows:
            print(line(r))
        for name, reason in self.results["skipped_models"].items():
            print(f"skipped {name}: {reason.splitlines()[0][:160]}")
        from aigen.study.sweep import shortcut_flags

        for flag in shortcut_flags(self.results.get("sweep") or {}):
            print(f"possible shortcut: {flag['model']} under {flag['perturbation']} "
                  f"{flag['strength']:g}: {'ROC-AUC' if flag['kind'] == 'ranking' else 'accuracy'}"
                  f" {flag['clean']:.3f} -> {flag['perturbed']:.3f} (see the report)")
        print(f"report: {self.out / 'report.md'}")


def _take(A, rows):
    """Rows of prefix activations or features: a view when they are a FeatureRows (in RAM or read
    from their file per batch), else an indexed copy."""
    return A.subset(rows) if hasattr(A, "subset") else A[rows]


def _parameter_counts(clf) -> tuple[int, int]:
    """(all parameters, trained parameters) of a BackboneClassifier."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    total = count(clf.prefix) + count(clf.stage) + count(clf.head)
    trained = {"frozen": count(clf.head), "finetuned": count(clf.stage) + count(clf.head),
               "full": total}[clf.regime]
    return int(total), int(trained)
