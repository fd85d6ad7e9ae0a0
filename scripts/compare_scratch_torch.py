#!/usr/bin/env python
"""Cross-check the scratch CNN against plain PyTorch: the same architecture and protocol
(conv3x3 -> ReLU -> maxpool2 -> FC, BCE, per-sample SGD) trained with torch autograd and torch's
own initialisation (torch.manual_seed(seed)), visiting the training set in the same per-epoch
orders as aigen's ScratchCNN, on the study's seeded splits; prints test accuracy per seed beside
aigen's on the same splits, and the paired difference (aigen - torch) with a 95% t-interval.
With --scratch-init torch (the default) both models start from the same weights.

    python scripts/compare_scratch_torch.py ../shared/data/aiart --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import statistics
import sys


def aigen_orders(n: int, epochs: int, seed: int):
    """The per-epoch visiting orders train_scratch draws for this seed."""
    import numpy as np

    from aigen.training import SHUFFLE_STREAM

    rng = np.random.default_rng([SHUFFLE_STREAM, seed])
    return [rng.permutation(n) for _ in range(epochs)]


def torch_scratch(X_tr, y_tr, X_te, *, filters: int, lr: float, epochs: int, seed: int):
    """P(AI) on X_te of a torch model trained per sample, like ScratchCNN, in ScratchCNN's orders."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, filters, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(filters * 15 * 15, 1))
    optimiser = torch.optim.SGD(model.parameters(), lr=lr)
    X, y = torch.from_numpy(X_tr), torch.from_numpy(y_tr)
    for order in aigen_orders(len(y), epochs, seed):
        for i in order.tolist():
            optimiser.zero_grad()
            logit = model(X[i:i + 1])[:, 0]
            nn.functional.binary_cross_entropy_with_logits(logit, y[i:i + 1]).backward()
            optimiser.step()
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(X_te))[:, 0]).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="data folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--filters", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--scratch-init", choices=("torch", "legacy"), default="torch",
                        help="aigen's initialisation (torch: the same weights as the torch model)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from aigen.data import SCRATCH, dataset_arrays, load_dataset, make_split
    from aigen.training import train_scratch

    torch.set_num_threads(1)  # per-sample steps: threads only add overhead
    dataset = load_dataset(args.root, progress=False, specs=(SCRATCH,))
    X = dataset_arrays(dataset, SCRATCH)
    y = dataset.labels.astype(np.float32)
    accuracy = {"aigen": [], "torch": []}
    print("seed  aigen ScratchCNN  plain torch")
    for seed in args.seeds:
        split = make_split(dataset, seed)
        tr, va, te = (split.indices(name) for name in ("train", "val", "test"))
        model, _ = train_scratch(X[tr], y[tr], X[va], y[va], filters=args.filters, lr=args.lr,
                                 epochs=args.epochs, seed=seed, progress=False,
                                 init=args.scratch_init)
        probs = {"aigen": model.predict_proba(X[te]),
                 "torch": torch_scratch(X[tr], y[tr], X[te], filters=args.filters, lr=args.lr,
                                        epochs=args.epochs, seed=seed)}
        for name, p in probs.items():
            accuracy[name].append(float(((p >= 0.5) == (y[te] == 1)).mean()))
        print(f"{seed:4d}  {accuracy['aigen'][-1]:16.3f}  {accuracy['torch'][-1]:11.3f}", flush=True)
    if len(args.seeds) > 1:
        from aigen.study.metrics import t_interval

        print("mean ± std  " + "  ".join(
            f"{name} {statistics.mean(a):.3f} ± {statistics.stdev(a):.3f}" for name, a in accuracy.items()))
        diff = [a - b for a, b in zip(accuracy["aigen"], accuracy["torch"])]
        low, high = t_interval(diff)
        print(f"paired difference aigen - torch over {len(diff)} seeds: {statistics.mean(diff):+.4f} "
              f"(95% t-interval {low:+.4f} .. {high:+.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
