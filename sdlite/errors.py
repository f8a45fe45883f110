"""Exception types sdlite raises on purpose, each with the exit code the CLI turns it into.

Exit codes are part of the public contract (scripts branch on them); never renumber them.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

EXIT_CODES: dict[int, str] = {
    0: "ok",
    1: "internal error (a bug: rerun with SDLITE_DEBUG=1 and report the traceback)",
    2: "usage error (bad option, value or combination)",
    3: "bad input data (an image, a prompts file, a metadata file)",
    4: "model missing, incomplete, corrupt or unsafe (pickle without --allow-pickle)",
    5: "out of memory or disk",
    6: "numerical failure (NaN or inf)",
    7: "images differ beyond tolerance (sdlite check)",
    129: "stopped by SIGHUP (the terminal closed): as 143",
    130: "interrupted (Ctrl-C)",
    141: "standard output closed by its reader (e.g. `| head`): the run stops there, quietly",
    143: "stopped by SIGTERM (Slurm, timeout, docker stop): sample writes what is finished, train checkpoints first",
}


class SdliteError(Exception):
    """Base class: a failure the user can act on, reported as one line."""

    exit_code: int = 1


class UsageError(SdliteError):
    """An option value or combination that cannot work; raised before any model loads."""

    exit_code = 2


class DataError(SdliteError):
    """Input data (images, prompt files, PNG metadata) that cannot be used."""

    exit_code = 3


class ModelError(SdliteError):
    """A model that is missing, incomplete, corrupt, not cached, or unsafe to load."""

    exit_code = 4


class ResourceError(SdliteError):
    """Out of memory or disk space, or an output location that cannot be written."""

    exit_code = 5


class NumericalError(SdliteError):
    """Non-finite values where finite ones are required (NaN latents or pixels)."""

    exit_code = 6


class ImagesDiffer(SdliteError):
    """Regenerated images differ from their goldens beyond the tolerance (the CI failure of `sdlite check`)."""

    exit_code = 7


class Interrupted(SdliteError):
    """A stop signal (Ctrl-C's SIGINT, SIGTERM from a scheduler, `timeout` or `docker stop`, SIGHUP when the
    terminal goes) ended the run; whatever could be saved was saved first. Exit 128 + the signal's number, as a
    shell reports a death by that signal: 130, 143, 129."""

    exit_code = 130

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


# The signals that stop a run cleanly: what Ctrl-C, schedulers (Slurm before preemption, `timeout`, `docker stop`)
# and a closing terminal send. SIGHUP does not exist on Windows.
STOP_SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def signal_name(signum: int) -> str:
    """`Ctrl-C` for SIGINT, else the signal's name (SIGTERM, SIGHUP)."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


@contextmanager
def sigint_to(handler: Callable[[int, Any], None]) -> Iterator[bool]:
    """Route the stop signals (Ctrl-C, SIGTERM, SIGHUP) to `handler` inside the block, then restore the previous
    handlers. Yields whether they were installed: off the main thread Python allows no signal handlers and the
    signals keep their meaning."""
    try:
        previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    except ValueError:
        yield False
        return
    try:
        yield True
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


DISK_FULL = {28: "no space left on device", 122: "disk quota exceeded", 27: "file too large for this file system"}


@contextmanager
def writing(what: str) -> Iterator[None]:
    """Turn a failed write (disk full, read-only, no permission, a path blocked by a file) into a
    ResourceError naming what could not be written, so it exits 5 with one line instead of a traceback."""
    try:
        yield
    except OSError as exc:
        reason = DISK_FULL.get(exc.errno or 0) or exc.strerror or str(exc)
        raise ResourceError(f"cannot write {what}: {reason}") from exc
    except Exception as exc:
        # safetensors reports its I/O failures as SafetensorError("... I/O error: ... (os error N)").
        if type(exc).__name__ != "SafetensorError" or "I/O error" not in str(exc):
            raise
        code = re.search(r"os error (\d+)", str(exc))
        reason = DISK_FULL.get(int(code.group(1))) if code else None
        raise ResourceError(f"cannot write {what}: {reason or str(exc).splitlines()[0]}") from exc
