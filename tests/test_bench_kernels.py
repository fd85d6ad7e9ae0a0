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


def _result(run, lib, op, seconds, faults=0.0, allocator="warm"):
    return {"run": run, "lib": lib, "threads": 1, "batch": 64, "filters": 16, "op": op,
            "allocator": allocator, "median_s": seconds, "minor_faults_per_call": faults}


def test_ratios_are_taken_within_runs_and_summarised_by_the_median(bench):
    # Run 1 ran on a host twice as slow for everything: each run's ratio is still 20x.
    results = [_result(0, "numpy", "step", 0.020, 10), _result(0, "cython", "step_out", 0.001),
               _result(1, "numpy", "step", 0.040, 30), _result(1, "cython", "step_out", 0.002),
               _result(2, "numpy", "step", 0.018, 20), _result(2, "cython", "step_out", 0.001)]
    times = bench.per_run(results, 1)
    assert bench.median_time(times[("numpy", 64, 16, "step")]) == pytest.approx(0.020)
    ratios = bench.run_ratios(times[("numpy", 64, 16, "step")], times[("cython", 64, 16, "step_out")])
    assert ratios == pytest.approx([20.0, 20.0, 18.0])
    assert bench.fmt_ratio(ratios) == "20.0x (18.0-20.0)"
    assert bench.fmt_ratio([2.5]) == "2.50x"  # one run: no range
    # The ratio of the medians would say 0.020 / 0.001 = 20x too, but not in general: a run is
    # never paired with another run's time.
    assert bench.run_ratios({0: 1.0, 1: 2.0}, {1: 1.0}) == [2.0]
    lines, met = bench.target_lines(results)
    assert met and lines == ["  warm N=64 F=16 step, out= : cython 20.0x (18.0-20.0) numpy step "
                             "(target >= 20x) met"]
    assert bench.fault_lines(results) == [
        "  warm  N=64 F=16  layer step  numpy      20.0",
        "  warm  N=64 F=16  step, out=  cython      0.0"]
    results.append(_result(3, "numpy", "step", 0.010))
    results.append(_result(3, "cython", "step_out", 0.001))
    results.append(_result(4, "numpy", "step", 0.010))
    results.append(_result(4, "cython", "step_out", 0.001))
    lines, met = bench.target_lines(results)  # 10, 10, 18, 20, 20: the median is 18x
    assert not met and "18.0x (10.0-20.0)" in lines[0] and lines[0].endswith("MISSED")
