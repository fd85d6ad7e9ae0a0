"""`aigen study` (= scripts/run_study.py): the whole study, from a data folder to a results folder.

This module is the command: its options, the checks that run before anything else, the run folder,
and the chain of stages (aigen.study.stages): load + check the data -> exploration and metadata
shortcut audit -> one split per seed -> for each input protocol (--input x --harmonize x
--augment, aigen.study.protocols; one by default): train every model for every seed (backbone
prefix activations once per backbone, shared by both regimes and every seed) -> (first protocol)
scratch learning-rate study -> degradation sweep of every model (test images re-encoded, blurred,
downscaled, noised) -> (first protocol) diagnostics -> --eval-data sets; then results.json,
CSVs, figures, report.md. Everything is written into a hidden folder beside --out that is renamed
to --out only when complete (docs/study.md describes the folder); each stage's output is kept
there as soon as it is done, for --resume.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from aigen.errors import UserError
from aigen.io import check_new_folder, new_results_folder, refuse_inside
from aigen.study.stages.context import StudyContext

DEFAULT_BACKBONES = ("resnet18", "efficientnet_lite0")
MODEL_KINDS = ("scratch", "frozen", "finetuned", "full")
DEFAULT_MODELS = ("scratch", "frozen", "finetuned")


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
    from aigen.study.stages.data import data_sets_option

    data_sets = data_sets_option(args)  # checked now: a typo fails before anything else
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
            ctx = StudyContext.create(args, out=out, work=work)
            results = run_stages(ctx)
    if world.is_main:
        from aigen.study.stages.results import print_summary

        print_summary(ctx, results)
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


def run_stages(ctx: StudyContext) -> dict[str, Any] | None:
    """The study's stages in order (aigen.study.stages); returns results.json's content (None in
    the processes other than the first under torchrun, whose part ends with training)."""
    from aigen.study import runfolder
    from aigen.study.stages import data as data_stage
    from aigen.study.stages import results as results_stage
    from aigen.study.stages import score, train

    if ctx.main:
        (ctx.work / "figures").mkdir(exist_ok=True)  # exist_ok: a resumed run
        (ctx.work / "checkpoints").mkdir(exist_ok=True)
    with ctx.timer.stage("load_data"):
        data = data_stage.load_data(ctx)
    exploration = None
    if ctx.main:
        runfolder.check_same_data(ctx.work, data.dataset.manifest_sha256())
        with ctx.timer.stage("exploration"):
            exploration = data_stage.explore(ctx, data)
    with ctx.timer.stage("split"):
        splits = data_stage.make_splits(ctx, data)
    backbones = train.Backbones()  # loaded once, shared by every protocol
    runs = []
    lr_study, lr_history, diagnostics = {}, [], {}
    for protocol in ctx.protocols:
        run = train.train_protocol(ctx, data, splits, protocol, backbones)
        if not ctx.main:  # the other processes' part ends with training (docs/scale.md)
            continue
        runs.append(run)
        if run.is_default:
            if not run.models:
                reasons = "; ".join(f"{n}: {r.splitlines()[0]}" for n, r in run.skipped.items())
                raise UserError(f"no model could be trained ({reasons})")
            with ctx.timer.stage("lr_study"):
                lr_study, lr_history = score.lr_study(ctx, splits, run)
        with ctx.timer.stage("sweep"):
            run.sweep = score.degradation_sweep(ctx, data, splits, run)
        if run.is_default:  # the first protocol's models (the spectra are the data's)
            with ctx.timer.stage("diagnostics"):
                diagnostics = score.diagnose(ctx, data, splits, run)
        with ctx.timer.stage("external"):
            run.external = score.evaluate_sets(ctx, data, splits, run)
    if not ctx.main:
        return None
    return results_stage.write_results(ctx, results_stage.StudyOutputs(
        data=data, exploration=exploration, splits=splits, runs=runs, lr_study=lr_study,
        lr_history=lr_history, diagnostics=diagnostics, backbones=backbones))


