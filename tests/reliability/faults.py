"""Helpers shared by the reliability tests: a malicious pickle, and sdlite in a fresh process."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

DRIVER = Path(__file__).with_name("driver.py")
SDLITE = [sys.executable, "-m", "sdlite"]


class Payload:
    """Unpickling this runs code: it creates the sentinel file. sdlite must never let that happen."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.sentinel),))  # type: ignore[return-value]


def write_malicious_pickle(path: Path, sentinel: Path) -> Path:
    """A file that looks like a checkpoint and creates `sentinel` when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"state_dict": {"weight": Payload(sentinel)}}, protocol=4))
    return path


def run(*args: str, fault: tuple[str, int] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`sdlite ARGS` in a fresh process, optionally under the fault driver (see driver.py)."""
    command = [sys.executable, str(DRIVER), fault[0], str(fault[1])] if fault else SDLITE
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout)


def events(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


# One global batch of 2 split two other ways: two accumulated micro-batches, and two processes of batch 1.
SPLITS = [("--batch-size", "1", "--grad-accum", "2"), ("--batch-size", "1", "--num-processes", "2")]
SPLIT_IDS = ["grad-accum", "processes"]


def step_losses(log: list[dict[str, object]]) -> list[object]:
    """The loss of every step event of a run's JSON events."""
    return [e["loss"] for e in log if e["event"] == "step"]
