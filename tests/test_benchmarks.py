"""The GPU benchmark must run unchanged when a GPU is at hand: its smoke mode runs the same code on
the tiny preset here, on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_GPU = Path(__file__).parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.mark.slow
def test_gpu_benchmark_smoke_runs_every_section(tmp_path: Path) -> None:
    env = {"SDLITE_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    if "OMP_NUM_THREADS" in os.environ:  # the test workers' thread count (see conftest.py)
        env["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]
    done = subprocess.run([sys.executable, str(BENCH_GPU), "--smoke"], capture_output=True, text=True, timeout=600,
                          env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    trained = [line for line in lines if line.startswith("no, batch 2") and "rank" not in line]
    assert [line.split("  ")[0] for line in trained] == [
        "no, batch 2, with cache", "no, batch 2, with cache, channels_last", "no, batch 2, without cache"]  # fmt: skip
    assert all(float(line.split()[-5]) > 0 and float(line.split()[-2]) > 0 for line in trained)  # images/s, estimate
    overhead = next(line.split() for line in lines if line.startswith("batch 1 "))
    assert all(float(value) > 0 for value in overhead[2:])  # sdlite, plain+PNG, plain and both ratios
    rows = [line.split() for line in lines if line.startswith(("fp16", "bf16"))]
    assert [(r[0], r[1], r[2]) for r in rows] == [("fp16", "1", "default"), ("fp16", "1", "fast")]
    assert all(float(r[3]) > 0 and float(r[4]) > 0 for r in rows)  # it/s and s/image were measured
    assert any(line.startswith("low-memory") for line in lines)
    xl = next(i for i, line in enumerate(lines) if line.startswith("SDXL 64"))  # the sdxl-tiny preset
    assert [line.split()[0] for line in lines[xl + 1 : xl + 3]] == ["default", "fast"]
    assert all(float(line.split()[1]) > 0 for line in lines[xl + 1 : xl + 3])
    lora = next(line for line in lines if line.startswith("no, batch 2, rank 16, with cache"))
    assert float(lora.split()[-3]) > 0  # images/s


def test_output_cost_benchmark_runs_and_reports_the_ratio() -> None:
    done = subprocess.run([sys.executable, str(BENCH_GPU.with_name("bench_outputs.py")), "--files", "50",
                           "--images", "4"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ratio = next(line for line in done.stdout.splitlines() if line.startswith("ratio"))
    assert float(ratio.split()[-1]) > 0


def test_data_startup_benchmark_runs_and_reports_both_ratios() -> None:
    done = subprocess.run([sys.executable, str(BENCH_GPU.with_name("bench_data.py")), "--small", "20", "--large",
                           "40"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ratios = [line for line in done.stdout.splitlines() if line.startswith("ratio")]
    assert [line.split()[1] for line in ratios] == ["cold", "warm"] and all(float(r.split()[-1]) > 0 for r in ratios)
