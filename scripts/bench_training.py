#!/usr/bin/env python
"""Time the study's three models, one seed, on a data folder: each stage and the total.

Stages: load the dataset (preprocessing cache warmed first, so this is the warm load), the seeded
split, the model-input arrays, the backbone, its prefix activations (once for all images), then
scratch CNN / frozen / fine-tuned training, each followed by its test-set predictions.

    python scripts/bench_training.py --root ../shared/data/aiart --backbone efficientnet_lite0
    taskset -c 0,1 python scripts/bench_training.py      # as on a 2-core machine
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "aiart"


def run_once(args, timings: dict[str, list[float]], accuracies: dict[str, list[float]]) -> None:
    import numpy as np

    from aigen.data import BACKBONE, SCRATCH, dataset_arrays, load_dataset, make_split
    from aigen.models.backbones import load_backbone
    from aigen.training import train_finetuned, train_frozen, train_scratch

    def timed(name, fn):
        start = time.perf_counter()
        result = fn()
        timings.setdefault(name, []).append(time.perf_counter() - start)
        return result

    total_start = time.perf_counter()
    dataset = timed("load dataset (warm cache)", lambda: load_dataset(args.root, progress=False))
    split = timed("split", lambda: make_split(dataset, args.seed))
    idx = {name: split.indices(name) for name in ("train", "val", "test")}
    order = np.concatenate([idx["train"], idx["val"], idx["test"]])
    labels = dataset.labels
    y = {name: labels[i] for name, i in idx.items()}
    bounds = np.cumsum([0, len(idx["train"]), len(idx["val"]), len(idx["test"])])

    def parts(array):
        return {name: array[bounds[k]:bounds[k + 1]] for k, name in enumerate(("train", "val", "test"))}

    gray = parts(timed("arrays scratch 32x32", lambda: dataset_arrays(dataset, SCRATCH, order)))
    rgb = timed("arrays backbone 224x224", lambda: dataset_arrays(dataset, BACKBONE, order))
    backbone = timed("load backbone", lambda: load_backbone(args.backbone, weights=args.weights,
                                                            init=args.init))
    acts = parts(timed("prefix activations", lambda: backbone.prefix_activations(
        rgb, args.device, progress=args.progress)))
    del rgb

    def accuracy(probs, truth):
        return float(np.mean((probs >= 0.5) == (truth == 1)))  # the study's threshold rule

    def scratch():
        model, _ = train_scratch(gray["train"], y["train"], gray["val"], y["val"], seed=args.seed,
                                 backend=args.backend, progress=args.progress)
        return accuracy(model.predict_proba(gray["test"]), y["test"])

    def regime(train):
        def run():
            model, _ = train(backbone, acts["train"], y["train"], acts["val"], y["val"],
                             seed=args.seed, device=args.device, progress=args.progress)
            return accuracy(model.predict_proba_from_prefix(acts["test"]), y["test"])
        return run

    for name, fn in (("scratch CNN (train + test)", scratch),
                     ("frozen (train + test)", regime(train_frozen)),
                     ("fine-tuned (train + test)", regime(train_finetuned))):
        accuracies.setdefault(name, []).append(timed(name, fn))
    timings.setdefault("total", []).append(time.perf_counter() - total_start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"data folder (default {DEFAULT_ROOT})")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default=None, help="pretrained weights file for the backbone")
    parser.add_argument("--init", default="pretrained", choices=("pretrained", "random"))
    parser.add_argument("--backend", default="cython", choices=("cython", "numpy"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"bench_training: data folder {args.root} not found (use --root)", file=sys.stderr)
        return 2

    import torch

    from aigen.data import load_dataset
    from aigen.errors import UserError

    try:
        load_dataset(args.root, progress=args.progress)  # fill the preprocessing cache, untimed
        timings: dict[str, list[float]] = {}
        accuracies: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            run_once(args, timings, accuracies)
    except UserError as exc:
        print(f"bench_training: {exc}", file=sys.stderr)
        return 2
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{args.root}: backbone {args.backbone} ({args.init}), scratch backend {args.backend}, "
          f"device {args.device}, seed {args.seed}, {args.repeats} repeat(s); {cpus} CPUs usable, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'stage':32s} {'median s':>9s} {'min s':>7s} {'max s':>7s}  test acc")
    for name, values in timings.items():
        acc = accuracies.get(name)
        acc_text = f"  {statistics.mean(acc):.3f}" if acc else ""
        print(f"{name:32s} {statistics.median(values):9.2f} {min(values):7.2f} {max(values):7.2f}"
              f"{acc_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
