"""sdlite's launcher for --num-processes: the run's status is the status of the worker that failed first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest

from sdlite.launch import _outcome


def workers(tmp_path: Path, *scripts: str) -> tuple[list[subprocess.Popen[bytes]], list[IO[bytes] | None]]:
    """One process per script; every one but the first writes its stderr to a log, as spawn() does."""
    logs: list[IO[bytes] | None] = [None, *((tmp_path / f"log{r}").open("w+b") for r in range(1, len(scripts)))]
    started = [subprocess.Popen([sys.executable, "-c", script], stderr=log)
               for script, log in zip(scripts, logs, strict=True)]  # fmt: skip
    return started, logs


def test_the_first_failure_explains_the_run(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Rank 1 meets a bad image; rank 0 then fails only because its peer left (gloo: connection closed)."""
    peer_left = "import sys, time; time.sleep(0.5); sys.exit(1)"
    cause = "import sys; sys.stderr.write('warning: x\\nerror: bad.png: cannot read image\\n'); sys.exit(3)"
    assert _outcome(*workers(tmp_path, peer_left, cause)) == 3
    assert capfd.readouterr().err.splitlines() == ["error: bad.png: cannot read image"]


def test_a_mistake_every_worker_makes_is_reported_once(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    first = "import sys, time; time.sleep(0.3); sys.stderr.write('error: --steps must be at least 1\\n'); sys.exit(2)"
    other = "import sys; sys.stderr.write('error: --steps must be at least 1\\n'); sys.exit(2)"
    assert _outcome(*workers(tmp_path, first, other)) == 2
    assert capfd.readouterr().err.splitlines() == ["error: --steps must be at least 1"]


def test_all_well_is_zero_and_a_signal_is_128_plus_it(tmp_path: Path) -> None:
    assert _outcome(*workers(tmp_path, "pass", "pass")) == 0
    assert (
        _outcome(
            *workers(tmp_path, "import time; time.sleep(30)", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
        )
        == 137
    )
