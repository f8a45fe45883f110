"""The shipped examples run as documented (they are what users copy into their CI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SDLITE = Path(sys.executable).parent / "sdlite"


@pytest.mark.slow
def test_ci_smoke_script() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "examples" / "ci_smoke.sh"), str(SDLITE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "ok: 2 images with metadata" in result.stdout
    assert "ok: exit codes 2, 3, 4 as documented" in result.stdout


@pytest.mark.slow
def test_python_example() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python_api.py")], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("seed=")[1].split()[0] for line in lines[:3]] == ["1", "2", "100"]
    assert all(Path(line.split()[0]).is_file() for line in lines[:3])
    assert Path(lines[3].removeprefix("grid: ")).is_file()
