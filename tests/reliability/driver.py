"""Runs `sdlite` with one fault injected at an exact point, for the reliability tests.

    python driver.py FAULT STEP SDLITE-ARGS...

kill-after-step N       SIGKILL right after step N is logged (before its checkpoint, if one is due)
kill-in-checkpoint N    SIGKILL while checkpoint N is half written (weights on disk, no manifest yet)
disk-full-after-checkpoint N
                        after checkpoint N is complete, cap file sizes at 64 KiB (RLIMIT_FSIZE): every
                        later weights file fails in the kernel with EFBIG, as on a full disk
The faults are real (a real SIGKILL, a real kernel write failure); only their timing is arranged.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
from typing import Any

from sdlite.training import reporting


def main() -> None:
    from sdlite.cli.app import app
    from sdlite.training import checkpoints

    fault, at, *args = sys.argv[1:]
    step_at = int(at)
    if fault == "kill-after-step":
        add = reporting.LossLog.add

        def add_then_kill(self: Any, step: int, loss: float, lr: float) -> None:
            add(self, step, loss, lr)
            if step == step_at:
                os.kill(os.getpid(), signal.SIGKILL)

        reporting.LossLog.add = add_then_kill  # type: ignore[method-assign]
    elif fault == "kill-in-checkpoint":
        write_manifest = checkpoints.write_manifest

        def kill_before_manifest(folder: Any, step: int, fingerprint: Any) -> None:
            if step == step_at:
                os.kill(os.getpid(), signal.SIGKILL)
            write_manifest(folder, step, fingerprint)

        checkpoints.write_manifest = kill_before_manifest
    elif fault == "disk-full-after-checkpoint":
        prune = checkpoints.prune

        def prune_then_fill(out: Any, keep: Any, step: int) -> Any:
            removed = prune(out, keep, step)
            if step == step_at:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of dying
                resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
            return removed

        checkpoints.prune = prune_then_fill
    else:
        raise SystemExit(f"unknown fault {fault}")
    sys.argv = ["sdlite", *args]
    app()


if __name__ == "__main__":
    main()
