"""What every stage of a study shares: the run's settings (arguments, seeds, hyperparameters, input
protocols), its work folder, the process it is under torchrun, the device, and the stage timer."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

SCRATCH_NAME = "scratch_cnn"
BACKBONE_REGIMES = ("frozen", "finetuned", "full")
MAX_LOADER_WORKERS = 4  # DataLoader processes decoding image files (the degradation sweep)


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


def hyperparameters(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each model kind's training settings, as recorded in config.json and the checkpoints."""
    epochs = (lambda n: 1) if args.quick else (lambda n: n)
    return {
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


@dataclass
class StudyContext:
    """One study run's settings and surroundings; stages read it and never change it (except the
    timer's records)."""

    args: argparse.Namespace
    out: Path  # the results folder it will become
    work: Path  # the hidden folder everything is written into (aigen.study.runfolder)
    world: Any  # aigen.distributed.World: this process under torchrun
    device: Any  # the torch device of the backbones
    seeds: list[int]
    hp: dict[str, dict[str, Any]]
    lrs: list[float]  # the scratch CNN's learning-rate study
    protocols: list[Any]  # aigen.study.protocols.Protocol; the first is the default one
    metadata: Any = None  # the --metadata-csv override, read up front so a bad file fails early
    timer: StageTimer = field(default_factory=StageTimer)
    started: str = field(default_factory=lambda: _dt.datetime.now().astimezone().isoformat(
        timespec="seconds"))

    @classmethod
    def create(cls, args: argparse.Namespace, out: Path, work: Path) -> "StudyContext":
        from aigen import distributed
        from aigen.study.protocols import study_protocols
        from aigen.training import check_amp

        world = distributed.world()
        device = distributed.process_device(args.device, world)
        check_amp(getattr(args, "amp", "off"), device)
        metadata = None
        if args.metadata_csv:
            from aigen.data.explore import read_metadata_csv

            metadata = read_metadata_csv(args.metadata_csv)
        return cls(
            args=args, out=out, work=work, world=world, device=device,
            seeds=list(dict.fromkeys(args.seeds))[: 1 if args.quick else None],
            hp=hyperparameters(args),
            # Keyed by lr_key: values that print alike would overwrite each other's results.
            lrs=list({lr_key(lr): lr for lr in args.scratch_lrs}.values())
            if "scratch" in args.models else [],
            # Every protocol trains and evaluates on the same splits.
            protocols=study_protocols(getattr(args, "harmonize", None),
                                      getattr(args, "augment", None),
                                      getattr(args, "input", None)),
            metadata=metadata)

    @property
    def main(self) -> bool:
        """Whether this is the process that writes files (rank 0 under torchrun)."""
        return self.world.is_main

    @property
    def progress(self) -> bool:
        return bool(getattr(self.args, "progress", True)) and self.world.is_main

    def log(self, message: str) -> None:
        if self.main:
            print(f"aigen study: {message}", file=sys.stderr, flush=True)

    def loader_workers(self) -> int:
        """DataLoader processes for work that decodes image files (--workers; 0 = in-process)."""
        from aigen.data.dataset import available_cores

        workers = getattr(self.args, "workers", None) or available_cores()
        # Each process holds a couple of batches of degraded images: a few are enough.
        return 0 if workers <= 1 else min(int(workers), MAX_LOADER_WORKERS)

    def persisted(self, key: str, compute: Callable[[], Any]) -> Any:
        """compute()'s record, written to the work folder as soon as it is computed, or read back
        from there when an earlier attempt of this run (--resume) finished the stage. Either way
        the value is the JSON form of the record (numbers, lists, string keys), so a resumed run
        goes on with exactly what an uninterrupted one has."""
        from aigen.io import json_default
        from aigen.study import runfolder

        saved = runfolder.load_stage(self.work, key)
        if saved is not None:
            self.log(f"{key}: finished by the earlier attempt, not run again")
            return saved
        value = json.loads(json.dumps(compute(), default=json_default))
        runfolder.save_stage(self.work, key, value)
        return value
