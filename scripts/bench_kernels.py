#!/usr/bin/env python
"""Time the conv/pool kernels: the NumPy reference, the Cython kernels and torch CPU.

Ops, on the scratch CNN's shapes (x = (N, 1, 32, 32) float32, 3x3 kernels, F filters, 2x2 pool):

    conv fwd, conv bwd (dx, dw, db), pool fwd, pool bwd, ReLU + mask (the step's NumPy glue), and
    the layer step = conv fwd + ReLU + pool fwd + pool bwd + ReLU mask + conv bwd (dw, db: the
    input layer's images need no gradient, as in the scratch CNN and in torch), allocating its
    outputs, and the same step writing into buffers kept from call to call (the kernels' out=, as
    the scratch CNN's training step does: aigen/models/scratch.py); torch has no such path and runs
    its autograd step for both

for the batch (N = 64) and one sample (N = 1), F = 8 and 16, at 1 thread and at all cores.  Each
op is timed as a median over --repeats repeats (after a warm-up), a repeat being a loop long
enough to time reliably.  Every (thread count, library) pair runs in a fresh subprocess of this
script: OpenMP fixes its thread count at process start, and importing torch changes how later
large NumPy allocations behave (they page-fault), which must not be charged to NumPy or Cython.

Allocator state: "warm" workers time as a long-running process does (glibc's dynamic mmap threshold
already raised, freed blocks reused); "cold" workers fix glibc's mmap threshold at its 128 KiB
start value (mallopt), so that every multi-MB allocation is a fresh mmap that page-faults, as in a
fresh process or after something freed its memory to the OS.  Minor page faults per call (from
getrusage: a count, independent of machine load) are reported beside the times.

    python scripts/bench_kernels.py                         # the full table (a few minutes)
    python scripts/bench_kernels.py --quick                 # a rough table in well under a minute
    python scripts/bench_kernels.py --json results.json     # also write every figure as JSON
    python scripts/bench_kernels.py --allocator cold --ops step step_out   # the cold case only
    python scripts/bench_kernels.py --runs 3                # medians over 3 runs (a noisy host)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

LIBS = ("numpy", "cython", "torch")
OPS = ("conv_fwd", "conv_bwd", "pool_fwd", "pool_bwd", "relu_mask", "step", "step_out")
OP_TITLES = {"conv_fwd": "conv fwd", "conv_bwd": "conv bwd", "pool_fwd": "pool fwd",
             "pool_bwd": "pool bwd", "relu_mask": "ReLU + mask", "step": "layer step",
             "step_out": "step, out="}
ALLOCATORS = ("warm", "cold")
COLD_OPS = ("step", "step_out")  # what a cold worker times by default
GLIBC_MMAP_THRESHOLD = 128 * 1024  # glibc's M_MMAP_THRESHOLD at process start
KERNEL = 3
POOL = 2
SIDE = 32
STEP_TARGET_VS_NUMPY = 20.0  # at 1 thread: Cython >= 20x the NumPy reference for the layer step
STEP_TARGET_VS_TORCH = 1.0   # and at least as fast as torch CPU


# ------------------------------------------------------------------------------------------------
# The machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def all_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_info() -> dict:
    from importlib import metadata

    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpu": cpu_model(),
        "cores": all_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": version("numpy"),
        "torch": version("torch"),
        "cython": version("Cython"),
    }


# ------------------------------------------------------------------------------------------------
# Timing (in a worker process)


def minor_faults() -> int:
    try:
        import resource
    except ImportError:  # not POSIX
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def make_allocator_cold() -> bool:
    """Fix glibc's mmap threshold at its start value (no dynamic raise): every allocation of 128 KiB
    or more is then a fresh mmap, page-faulted on first touch.  False where this is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3
    return bool(mallopt(m_mmap_threshold, GLIBC_MMAP_THRESHOLD))


def time_op(fn, repeats: int, min_time: float, warmup: float) -> dict:
    """Median seconds per call of fn() over `repeats` repeats of `inner` calls each (inner chosen
    so that one repeat takes at least min_time), after `warmup` seconds (at least 3 calls); and
    the minor page faults per call over the timed calls."""
    start, calls = time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - start < warmup:
        fn()
        calls += 1
    per_call = (time.perf_counter() - start) / calls
    inner = max(1, int(min_time / max(per_call, 1e-9)))
    samples = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    faults = minor_faults()
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t0) / inner)
    finally:
        faults = minor_faults() - faults
        if gc_was_enabled:
            gc.enable()
    return {"median_s": statistics.median(samples), "min_s": min(samples), "repeats": repeats,
            "inner": inner, "minor_faults_per_call": faults / (repeats * inner)}


def make_inputs(batch: int, filters: int, seed: int = 0):
    """float32 x, w, b, an upstream gradient for the pooled output and one for the conv output."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.random((batch, 1, SIDE, SIDE), dtype=np.float32)
    w = (rng.standard_normal((filters, 1, KERNEL, KERNEL)) / KERNEL).astype(np.float32)
    b = (0.1 * rng.standard_normal(filters)).astype(np.float32)
    out = SIDE - KERNEL + 1
    dpooled = rng.standard_normal((batch, filters, out // POOL, out // POOL)).astype(np.float32)
    dy = rng.standard_normal((batch, filters, out, out)).astype(np.float32)
    return x, w, b, dpooled, dy


def kernel_ops(lib: str, x, w, b, dpooled, dy) -> dict:
    """{op: zero-argument callable} for the NumPy or Cython backend."""
    import numpy as np

    from aigen.kernels import get_backend

    k = get_backend(lib)
    z = k.conv2d_forward(x, w, b)
    a = np.maximum(z, 0)  # a realistic pool input: ReLU output, many ties
    m = k.maxpool2d_forward(z, POOL)
    buf = np.empty_like(dpooled)

    def relu_mask():
        # The step's two NumPy operations around the kernels (the same code for both backends),
        # on the pooled side as in the model: ReLU and max-pooling commute.
        np.maximum(m, 0)
        return np.multiply(dpooled, m > 0, out=buf)

    def step():
        # The scratch CNN's forward/backward through conv -> ReLU -> pool (aigen/models/scratch.py:
        # computed as conv -> pool -> ReLU, the same function and gradient).
        z = k.conv2d_forward(x, w, b)
        m = k.maxpool2d_forward(z, POOL)
        np.maximum(m, 0)
        dm = np.multiply(dpooled, m > 0)
        dz = k.maxpool2d_backward(dm, z, POOL)
        return k.conv2d_backward(dz, x, w, input_grad=False)  # the input layer: no dx

    n, f = dpooled.shape[:2]
    side = SIDE - KERNEL + 1
    bufs = {name: np.empty(shape, dtype=x.dtype) for name, shape in
            (("z", (n, f, side, side)), ("dz", (n, f, side, side)), ("m", dpooled.shape),
             ("a", dpooled.shape), ("dm", dpooled.shape), ("dw", w.shape), ("db", b.shape))}
    mask = np.empty(dpooled.shape, dtype=bool)

    def step_out():
        # The same step writing into buffers kept from call to call, as the scratch CNN's
        # training step does: nothing multi-MB is allocated per call.
        z = k.conv2d_forward(x, w, b, out=bufs["z"])
        m = k.maxpool2d_forward(z, POOL, out=bufs["m"])
        np.maximum(m, 0, out=bufs["a"])
        dm = np.multiply(dpooled, np.greater(m, 0, out=mask), out=bufs["dm"])
        dz = k.maxpool2d_backward(dm, z, POOL, out=bufs["dz"])
        return k.conv2d_backward(dz, x, w, out=(None, bufs["dw"], bufs["db"]), input_grad=False)

    return {
        "conv_fwd": lambda: k.conv2d_forward(x, w, b),
        "conv_bwd": lambda: k.conv2d_backward(dy, x, w),
        "pool_fwd": lambda: k.maxpool2d_forward(a, POOL),
        "pool_bwd": lambda: k.maxpool2d_backward(dpooled, a, POOL),
        "relu_mask": relu_mask,
        "step": step,
        "step_out": step_out,
    }


def torch_ops(x, w, b, dpooled, dy) -> dict:
    """The same ops in torch: explicit aten ops for the single ops (the ones autograd calls), and
    autograd for the layer step (dw and db: the input needs no gradient, as in the kernels' step)."""
    import torch
    import torch.nn.functional as tf

    xt, wt, bt = (torch.from_numpy(v) for v in (x, w, b))
    dpt, dyt = torch.from_numpy(dpooled), torch.from_numpy(dy)
    with torch.no_grad():
        zt = tf.conv2d(xt, wt, bt)
        at = torch.relu(zt)
        _, idx = torch.ops.aten.max_pool2d_with_indices(at, [POOL, POOL], [POOL, POOL])
        dat = torch.ops.aten.max_pool2d_with_indices_backward(
            dpt, at, [POOL, POOL], [POOL, POOL], [0, 0], [1, 1], False, idx)
    wg, bg = (v.clone().requires_grad_(True) for v in (wt, bt))

    def conv_fwd():
        with torch.no_grad():
            return tf.conv2d(xt, wt, bt)

    def conv_bwd():
        return torch.ops.aten.convolution_backward(dyt, xt, wt, [wt.shape[0]], [1, 1], [0, 0],
                                                   [1, 1], False, [0, 0], 1, [True, True, True])

    def pool_fwd():
        with torch.no_grad():
            return tf.max_pool2d(at, POOL)

    def pool_bwd():
        # torch routes the gradient with the indices its forward saved (the kernels recompute them).
        return torch.ops.aten.max_pool2d_with_indices_backward(
            dpt, at, [POOL, POOL], [POOL, POOL], [0, 0], [1, 1], False, idx)

    def relu_mask():
        with torch.no_grad():
            torch.relu(zt)
            return torch.ops.aten.threshold_backward(dat, zt, 0)  # what autograd runs for ReLU

    def step():
        wg.grad = bg.grad = None
        pooled = tf.max_pool2d(torch.relu(tf.conv2d(xt, wg, bg)), POOL)
        pooled.backward(dpt)
        return None, wg.grad, bg.grad

    return {"conv_fwd": conv_fwd, "conv_bwd": conv_bwd, "pool_fwd": pool_fwd,
            "pool_bwd": pool_bwd, "relu_mask": relu_mask, "step": step, "step_out": step}


def step_check(lib: str, ops: dict, x, w, b, dpooled) -> float:
    """Largest relative difference of the layer step's (dw, db), with and without out= buffers,
    from the NumPy reference."""
    import numpy as np

    ref = kernel_ops("numpy", x, w, b, dpooled, dpooled)["step"]()
    worst = 0.0
    for op in ("step", "step_out"):
        got = [np.asarray(g.detach().numpy() if hasattr(g, "detach") else g)
               for g in ops[op]()[1:]]
        worst = max(worst, *(float(np.max(np.abs(g - r)) / (np.max(np.abs(r)) + 1e-30))
                             for g, r in zip(got, ref[1:])))
    return worst


def worker(args) -> int:
    """Time one library at the thread count this process was started with; JSON to stdout."""
    threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or all_cores()
    info = {"lib": args.worker, "threads": threads, "allocator": args.allocator[0]}
    if args.allocator[0] == "cold" and not make_allocator_cold():
        raise SystemExit("--allocator cold needs glibc (mallopt)")
    if args.worker == "cython":
        from aigen.kernels import cython_backend

        info["openmp"] = cython_backend.openmp_info()
        info["simd"] = cython_backend.simd_info()
    if args.worker == "torch":
        import torch

        torch.set_num_threads(threads)
        info["torch_threads"] = torch.get_num_threads()
    results = []
    for batch in args.batches:
        for filters in args.filters:
            inputs = make_inputs(batch, filters)
            ops = torch_ops(*inputs) if args.worker == "torch" else kernel_ops(args.worker, *inputs)
            # step_check also runs the NumPy reference, whose large temporaries raise glibc's
            # dynamic mmap threshold: every library is then timed with a warm allocator, as in a
            # long-running process. (Cold, each multi-MB output of a batch-64 call comes from a
            # fresh mmap and costs ~1-2 ms of page faults, whichever library computes it.)
            check = step_check(args.worker, ops, *inputs[:4])
            for op in args.ops:
                timing = time_op(ops[op], args.repeats, args.min_time, args.warmup)
                results.append({"lib": args.worker, "threads": threads, "batch": batch,
                                "allocator": args.allocator[0],
                                "filters": filters, "op": op, "step_max_rel_diff": check, **timing})
    json.dump({"info": info, "results": results}, sys.stdout)
    return 0


# ------------------------------------------------------------------------------------------------
# The driver


def run_worker(lib: str, threads: int, args, allocator: str = "warm") -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    ops = args.ops if allocator == "warm" or args.ops_given else [op for op in args.ops if op in COLD_OPS]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", lib,
           "--repeats", str(args.repeats), "--min-time", str(args.min_time),
           "--warmup", str(args.warmup), "--batches", *map(str, args.batches),
           "--filters", *map(str, args.filters), "--ops", *ops, "--allocator", allocator]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"the {lib} worker at {threads} thread(s), {allocator} allocator, failed "
                         f"(exit {done.returncode})")
    return json.loads(done.stdout)


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def fmt_ratio(ratios: list[float], digits: int | None = None) -> str:
    """The median of per-run ratios (to `digits` decimals; default 1 from 10x up, else 2), with
    their range, to the same precision, when there are several runs."""
    if not ratios:
        return "-"
    mid = statistics.median(ratios)
    digits = (1 if mid >= 10 else 2) if digits is None else digits
    text = f"{mid:.{digits}f}x"
    if len(ratios) > 1:
        text += f" ({min(ratios):.{digits}f}-{max(ratios):.{digits}f})"
    return text


def per_run(results: list[dict], threads: int, allocator: str = "warm") -> dict:
    """{(lib, batch, filters, op): {run: median seconds per call}} for one thread count and
    allocator state."""
    out: dict = {}
    for r in results:
        if r["threads"] == threads and r.get("allocator", "warm") == allocator:
            out.setdefault((r["lib"], r["batch"], r["filters"], r["op"]), {})[r.get("run", 0)] = (
                r["median_s"])
    return out


def median_time(times: dict | None) -> float | None:
    """The median over runs of a case's per-run median time (None when it was not timed)."""
    return statistics.median(times.values()) if times else None


def run_ratios(num: dict | None, den: dict | None) -> list[float]:
    """num / den within each run both were timed in: host speed that drifts between runs then
    cancels out of each ratio."""
    if not num or not den:
        return []
    return [num[run] / den[run] for run in sorted(num) if run in den]


def table(results: list[dict], threads: int, libs, allocator: str = "warm") -> str:
    """Median over runs of each time, and of each run's ratio."""
    times = per_run(results, threads, allocator)
    cases = sorted({(r["batch"], r["filters"]) for r in results}, key=lambda c: (-c[0], c[1]))
    ops = [op for op in OPS if any(key[3] == op for key in times)]
    head = ["case", "op", *libs]
    if "cython" in libs and "numpy" in libs:
        head.append("cython vs numpy")
    if "cython" in libs and "torch" in libs:
        head.append("cython vs torch")
    rows = []
    for batch, filters in cases:
        for op in ops:
            case = {lib: times.get((lib, batch, filters, op)) for lib in libs}
            row = [f"N={batch} F={filters}", OP_TITLES[op],
                   *(fmt_time(median_time(case[lib])) for lib in libs)]
            for other in ("numpy", "torch"):
                if f"cython vs {other}" in head:
                    row.append(fmt_ratio(run_ratios(case[other], case["cython"])))
            rows.append(row)
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(h.ljust(wd) if i < 2 else h.rjust(wd) for i, (h, wd) in enumerate(zip(head, widths)))]
    lines.append("  ".join("-" * wd for wd in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(wd) if i < 2 else c.rjust(wd)
                               for i, (c, wd) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def fault_lines(results: list[dict]) -> list[str]:
    """Minor page faults per layer step at 1 thread, by allocator state (counts: load-independent;
    the median over runs)."""
    faults: dict = {}
    for r in results:
        if r["threads"] == 1 and r["op"] in COLD_OPS and r["batch"] > 1:
            key = (r.get("allocator", "warm"), -r["batch"], r["filters"], r["op"], r["lib"])
            faults.setdefault(key, []).append(r["minor_faults_per_call"])
    return [f"  {allocator:4}  N={-neg_batch} F={filters}  {OP_TITLES[op]:11} {lib:6} "
            f"{statistics.median(counts):8.1f}"
            for (allocator, neg_batch, filters, op, lib), counts in sorted(faults.items())]


def target_lines(results: list[dict]) -> tuple[list[str], bool]:
    """The Cython step (allocating, and with out= buffers) against the NumPy reference's and torch's
    step in the same allocator state, at 1 thread: the median over runs of each run's ratio."""
    lines, all_met = [], True
    for allocator in sorted(ALLOCATORS):  # cold first, as in fault_lines
        times = per_run(results, 1, allocator)
        for batch, filters, op in sorted({(b, f, o) for (lib, b, f, o) in times
                                          if lib == "cython" and o in COLD_OPS},
                                         key=lambda c: (-c[0], c[1], c[2])):
            cy = times[("cython", batch, filters, op)]
            for lib, target in (("numpy", STEP_TARGET_VS_NUMPY), ("torch", STEP_TARGET_VS_TORCH)):
                ratios = run_ratios(times.get((lib, batch, filters, "step")), cy)
                if not ratios:
                    continue
                met = statistics.median(ratios) >= target
                all_met &= met
                # Two decimals: a median of 19.96x must not print as 20.0x beside MISSED.
                lines.append(f"  {allocator:4} N={batch} F={filters} {OP_TITLES[op]:11}: cython "
                             f"{fmt_ratio(ratios, 2)} {lib} step (target >= {target:g}x) "
                             f"{'met' if met else 'MISSED'}")
    return lines, all_met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per op (default 25, --quick 7)")
    parser.add_argument("--min-time", type=float, default=None,
                        help="seconds one repeat lasts at least (default 0.005, --quick 0.002)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds per op (default 0.1, --quick 0.02)")
    parser.add_argument("--quick", action="store_true", help="fewer and shorter repeats: a rough table fast")
    parser.add_argument("--threads", nargs="+", default=["1", "all"],
                        help="thread counts to run, 'all' = every core (default: 1 all)")
    parser.add_argument("--libs", nargs="+", choices=LIBS, default=list(LIBS))
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 1])
    parser.add_argument("--filters", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--ops", nargs="+", choices=OPS, default=None,
                        help="ops to time (default: all warm; the layer steps cold)")
    parser.add_argument("--allocator", nargs="+", choices=ALLOCATORS, default=list(ALLOCATORS),
                        help="allocator states to time (default: warm cold)")
    parser.add_argument("--runs", type=int, default=1,
                        help="run every worker this many times, the libraries in turn within each "
                             "run; report medians over runs, and ratios within runs (default 1)")
    parser.add_argument("--json", metavar="PATH", help="also write all figures as JSON ('-' = print it)")
    parser.add_argument("--worker", choices=LIBS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.ops_given = args.ops is not None
    if args.ops is None:
        args.ops = list(OPS)
    if args.repeats is None:
        args.repeats = 7 if args.quick else 25
    if args.min_time is None:
        args.min_time = 0.002 if args.quick else 0.005
    if args.warmup is None:
        args.warmup = 0.02 if args.quick else 0.1
    if args.worker:
        return worker(args)
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")

    machine = machine_info()
    thread_counts = sorted({all_cores() if t == "all" else int(t) for t in args.threads})
    print(f"machine: {machine['cpu']}, {machine['cores']} cores ({machine['platform']})")
    print(f"versions: python {machine['python']}, numpy {machine['numpy']}, torch {machine['torch']}, "
          f"Cython {machine['cython']}")
    print(f"float32, x = (N, 1, {SIDE}, {SIDE}), {KERNEL}x{KERNEL} kernels, {POOL}x{POOL} pool; median of "
          f"{args.repeats} repeats (each >= {args.min_time * 1e3:g} ms) after {args.warmup:g} s warm-up"
          + (f"; {args.runs} runs: medians over runs, ratios within runs (range)"
             if args.runs > 1 else ""))
    print("layer step = conv fwd + ReLU + pool fwd + pool bwd + ReLU mask + conv bwd (dw, db)")

    results, infos = [], []
    for run in range(args.runs):
        for allocator in args.allocator:
            for threads in thread_counts:
                for lib in args.libs:
                    print(f"  timing {lib} at {threads} thread(s), {allocator} allocator"
                          + (f", run {run + 1} of {args.runs}" if args.runs > 1 else "") + " ...",
                          file=sys.stderr, flush=True)
                    out = run_worker(lib, threads, args, allocator)
                    if run == 0:
                        infos.append(out["info"])
                    results.extend({**r, "run": run} for r in out["results"])
    for info in infos:
        if info["lib"] == "cython":
            print(f"cython kernels: OpenMP {info['openmp']['openmp']}, SIMD {info['simd']['active']}")
            break
    worst = max((r["step_max_rel_diff"] for r in results), default=0.0)
    print(f"layer-step gradients agree with the NumPy reference to {worst:.1e} (max relative difference)")
    for allocator in args.allocator:
        for threads in thread_counts:
            print(f"\n{threads} thread{'s' if threads > 1 else ''}, {allocator} allocator "
                  "(median time per call)")
            print(table(results, threads, args.libs, allocator))
    faults = fault_lines(results)
    if faults:
        print("\nminor page faults per call, 1 thread:")
        print("\n".join(faults))
    lines, all_met = target_lines(results)
    if lines:
        print("\ntargets at 1 thread, layer step (against the other library's step, same allocator state):")
        print("\n".join(lines))

    document = {"machine": machine, "workers": infos,
                "settings": {"runs": args.runs, "repeats": args.repeats, "min_time_s": args.min_time,
                             "warmup_s": args.warmup, "dtype": "float32", "side": SIDE,
                             "kernel": KERNEL, "pool": POOL, "threads": thread_counts,
                             "allocators": args.allocator},
                "targets_met": all_met if lines else None, "results": results}
    if args.json == "-":
        print(json.dumps(document, indent=1))
    elif args.json:
        Path(args.json).write_text(json.dumps(document, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
