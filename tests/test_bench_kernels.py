"""scripts/bench_kernels.py's aggregation over --runs (no timing here: synthetic results)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_kernels.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(run, lib, op, seconds, faults=0.0, allocator="warm", threads=1):
    return {"run": run, "lib": lib, "threads": threads, "batch": 64, "filters": 16, "op": op,
            "allocator": allocator, "median_s": seconds, "minor_faults_per_call": faults}


def test_ratios_are_medians_of_ratios_within_runs(bench):
    # Run 1 ran on a host twice as slow for NumPy and four times as slow for Cython. Per run the
    # ratios are 20, 10 and 18x: median 18x. The ratio of the median times would say 20x.
    results = [_result(0, "numpy", "step", 0.020, 10), _result(0, "cython", "step_out", 0.001),
               _result(1, "numpy", "step", 0.040, 40), _result(1, "cython", "step_out", 0.004),
               _result(2, "numpy", "step", 0.018, 20), _result(2, "cython", "step_out", 0.001),
               # other allocator states and thread counts are kept apart
               _result(0, "numpy", "step", 0.050, 900, allocator="cold"),
               _result(0, "cython", "step_out", 0.001, allocator="cold"),
               _result(0, "numpy", "step", 1.0, threads=2),
               _result(0, "cython", "step_out", 1.0, threads=2)]
    times = bench.per_run(results, 1)
    assert bench.median_time(times[("numpy", 64, 16, "step")]) == pytest.approx(0.020)
    assert bench.median_time(times[("cython", 64, 16, "step_out")]) == pytest.approx(0.001)
    ratios = bench.run_ratios(times[("numpy", 64, 16, "step")], times[("cython", 64, 16, "step_out")])
    assert ratios == pytest.approx([20.0, 10.0, 18.0])
    assert bench.fmt_ratio(ratios) == "18.0x (10.0-20.0)"
    assert bench.fmt_ratio([0.87, 0.91, 1.04]) == "0.91x (0.87-1.04)"  # near 1x: 2 decimals
    assert bench.fmt_ratio([2.5]) == "2.50x"  # one run: no range
    assert bench.run_ratios({0: 1.0, 1: 2.0}, {1: 1.0}) == [2.0]  # never across runs
    lines, met = bench.target_lines(results)
    assert not met and lines == [
        "  cold N=64 F=16 step, out= : cython 50.00x numpy step (target >= 20x) met",
        "  warm N=64 F=16 step, out= : cython 18.00x (10.00-20.00) numpy step (target >= 20x) "
        "MISSED"]
    assert bench.fault_lines(results) == [  # the median over runs (the mean would be 23.3)
        "  cold  N=64 F=16  layer step  numpy     900.0",
        "  cold  N=64 F=16  step, out=  cython      0.0",
        "  warm  N=64 F=16  layer step  numpy      20.0",
        "  warm  N=64 F=16  step, out=  cython      0.0"]
    # The table compares one op across libraries, the same way.
    same_op = [_result(r["run"], "cython", "step", r["median_s"]) if r["lib"] == "cython" else r
               for r in results if r["threads"] == 1 and r["allocator"] == "warm"]
    rows = bench.table(same_op, 1, ["numpy", "cython"]).splitlines()
    assert rows[2].split() == ["N=64", "F=16", "layer", "step", "20.00", "ms", "1.00", "ms",
                               "18.0x", "(10.0-20.0)"]
    # A borderline median is judged unrounded and printed so that it reads as missed.
    lines, met = bench.target_lines([_result(0, "numpy", "step", 0.01996),
                                     _result(0, "cython", "step_out", 0.001)])
    assert not met and "19.96x numpy step (target >= 20x) MISSED" in lines[0]
