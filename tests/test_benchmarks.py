"""The GPU benchmark must run unchanged when a GPU is at hand: its smoke mode runs the same code on
the tiny preset here, on CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH_GPU = Path(__file__).parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.mark.slow
def test_gpu_benchmark_smoke_runs_every_section(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH_GPU), "--smoke"], capture_output=True, text=True, timeout=600,
                          env={"SDLITE_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    rows = [line.split() for line in lines if line.startswith(("fp16", "bf16"))]
    assert [(r[0], r[1], r[2]) for r in rows] == [(d, "1", m) for d in ("fp16", "bf16") for m in ("default", "fast")]
    assert all(float(r[3]) > 0 and float(r[4]) > 0 for r in rows)  # it/s and s/image were measured
    assert any(line.startswith("low-memory") for line in lines)
    trained = [line for line in lines if "batch 2, with" in line]
    assert [line.split(",")[0] for line in trained] == ["no", "no", "no"]  # CPU: three levers' rows
    assert all(float(line.split()[-3]) > 0 for line in trained)  # images/s measured


def test_output_cost_benchmark_runs_and_reports_the_ratio() -> None:
    done = subprocess.run([sys.executable, str(BENCH_GPU.with_name("bench_outputs.py")), "--files", "50",
                           "--images", "4"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ratio = next(line for line in done.stdout.splitlines() if line.startswith("ratio"))
    assert float(ratio.split()[-1]) > 0
