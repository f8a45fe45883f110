"""Stopping a sample run cleanly: Ctrl-C at the next denoising step, a hard stop after a grace period, and
the step counter that reports progress and checks each step's latents.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from sdlite.errors import STOP_SIGNALS, Interrupted, sigint_to, signal_name

ProgressFn = Callable[[int, int], None]


class NonFiniteLatents(Exception):
    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


class StepCounter:
    """A pipeline step-end callback that reports overall progress across all batches and stops the
    run at the step after a Ctrl-C."""

    def __init__(self, progress: ProgressFn | None, total: int, stop: StopRequest) -> None:
        self.progress, self.total, self.done, self.stop = progress, total, 0, stop

    def skip(self, steps: int) -> None:
        """Count steps that need not run (images an interrupted run already wrote)."""
        self.done += steps
        if self.progress:
            self.progress(min(self.done, self.total), self.total)

    def __call__(self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.stop.check()
        latents = kwargs["latents"]
        # Stop at once: every later step and the decode would be wasted. On an accelerator the check
        # waits for the device, so there it runs once per batch, at the last step.
        watch = latents.device.type == "cpu" or step + 1 == pipe.num_timesteps
        if watch and not latents.isfinite().all():
            raise NonFiniteLatents(step + 1)
        self.done += latents.shape[0]
        if self.progress:
            self.progress(min(self.done, self.total), self.total)
        return kwargs


class StopRequest:
    """A stop signal during sampling (Ctrl-C, or SIGTERM/SIGHUP from a scheduler or a closing terminal): a flag the
    loop checks between denoising steps and between batches. Ctrl-C ends as KeyboardInterrupt (exit 130), the others
    as Interrupted (exit 143/129), each after the images finished before it are written.

    Python runs signal handlers only between bytecodes, so a single long torch call (one step of a huge
    image) would hold the flag back for minutes. With `grace`, a watcher thread learns of each SIGINT at
    once through the interpreter's wakeup fd; if the run has not stopped `grace` seconds after the first
    (or at a second Ctrl-C) it ends the process with status 130, after taking the write lock, so an image
    being written and reported is completed, never cut.
    """

    EXIT_CODE = 130

    def __init__(self, grace: float | None) -> None:
        self.grace, self.requested, self.signum = grace, False, 0
        self.lock = threading.Lock()
        self.finished = threading.Event()

    def check(self) -> None:
        if not self.requested:
            return
        if self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(
            f"stopped by {signal_name(self.signum)}: the images finished before it are written (--resume makes the "
            "rest)",
            self.signum,
        )

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        with self.lock:
            yield

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        with sigint_to(self._handle) as installed:
            wakeup = self._watch() if installed and self.grace is not None else None
            try:
                yield
            finally:
                self.finished.set()
                if wakeup is not None:
                    self._unwatch(wakeup)

    @staticmethod
    def _unwatch(wakeup: tuple[int, socket.socket, socket.socket]) -> None:
        """Give the wakeup fd back and close the sockets (which ends the watcher)."""
        previous_fd, writer, reader = wakeup
        signal.set_wakeup_fd(previous_fd)
        with contextlib.suppress(OSError):
            reader.shutdown(socket.SHUT_RDWR)  # wakes the watcher, which then returns
        writer.close()
        reader.close()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and self.grace is None:  # a second signal to a Python caller: now
            raise KeyboardInterrupt
        self.requested = True
        self.signum = self.signum or signum

    def _watch(self) -> tuple[int, socket.socket, socket.socket]:
        """Start the watcher thread; returns the previous wakeup fd and the socket pair to close."""
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._watcher, args=(reader,), daemon=True).start()
        return previous, writer, reader

    def _watcher(self, reader: socket.socket) -> None:
        assert self.grace is not None
        deadline = None
        try:
            while True:
                reader.settimeout(None if deadline is None else max(deadline - time.monotonic(), 0.0))
                try:
                    received = reader.recv(64)
                except TimeoutError:
                    break  # the grace period is over and the run is still busy
                if not received or self.finished.is_set():
                    return  # the run is over
                if any(signum in received for signum in STOP_SIGNALS):
                    if deadline is not None:
                        break  # a second signal
                    deadline = time.monotonic() + self.grace
        except OSError:
            return
        self._hard_stop()

    def _hard_stop(self) -> None:
        """End the process as the CLI does after KeyboardInterrupt, without waiting for the running operation."""
        locked = self.lock.acquire(timeout=30)  # an image being written and reported is finished first
        if self.finished.is_set():  # the run ended meanwhile and reports its own outcome
            if locked:
                self.lock.release()
            return
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        signum = self.signum or signal.SIGINT
        line = "interrupted" if signum == signal.SIGINT else f"stopped by {signal_name(signum)}"
        os.write(2, f"\n{line}\n".encode() if os.isatty(2) else f"{line}\n".encode())
        os._exit(128 + signum)
