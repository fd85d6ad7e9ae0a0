#!/usr/bin/env python
"""Cold and warm load_dataset times on a data folder (median over repeats).

cold: a fresh, empty preprocessing cache (every image decoded, both specs written);
warm: the same cache again (bytes hashed, headers probed, nothing decoded);
arrays: dataset_arrays for both specs from the warm cache.

    python scripts/bench_data.py ../shared/data/aiart --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="data folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="default: all cores")
    args = parser.parse_args(argv)

    from aigen.data.dataset import available_cores, load_dataset
    from aigen.data.dataset import dataset_arrays
    from aigen.data.preprocess import BACKBONE, SCRATCH

    times: dict[str, list[float]] = {"cold": [], "warm": [], "arrays": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="aigen-bench-cache-") as cache:
            os.environ["AIGEN_CACHE_DIR"] = cache
            t0 = time.perf_counter()
            ds = load_dataset(args.root, workers=args.workers, progress=False)
            t1 = time.perf_counter()
            ds = load_dataset(args.root, workers=args.workers, progress=False)
            t2 = time.perf_counter()
            dataset_arrays(ds, SCRATCH)
            dataset_arrays(ds, BACKBONE)
            t3 = time.perf_counter()
        times["cold"].append(t1 - t0)
        times["warm"].append(t2 - t1)
        times["arrays"].append(t3 - t2)
    workers = args.workers or available_cores()
    print(f"{len(ds.images)} images, {len(ds.skipped)} skipped, {workers} workers, {args.repeats} repeats "
          f"(median, min..max seconds)")
    for name, values in times.items():
        print(f"  {name:7s} {statistics.median(values):7.2f}  ({min(values):.2f}..{max(values):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
