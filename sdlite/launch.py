"""`sdlite train|sample --num-processes N`: the same command in N processes.

The child processes get the original arguments minus `--num-processes`, and find WORLD_SIZE set, so they
do the work instead of launching again. sdlite starts them itself with the environment torchrun gives
(RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT), which Accelerate and torch.distributed read, so the run
keeps its own exit status and one-line errors. No worker outlives the command: each dies with its parent
(Linux), so a SIGKILL of `sdlite` never leaves workers writing. (`accelerate launch`/`torchrun` run by the
user work as well: the processes then find WORLD_SIZE set already.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import IO

LAUNCHED = "SDLITE_LAUNCHED"  # set in every process sdlite starts, so each ties its life to its parent's
POLL = 0.05  # seconds between looks at the workers
GRACE = 30.0  # seconds the workers get to finish the images in hand after Ctrl-C
ALIKE = 2.0  # seconds the first process gets to fail like another that failed first


def spawn(num_processes: int, argv: list[str] | None = None, same_threads: bool = True) -> int:
    """Run N processes of this command as one torch.distributed group (env://, as torchrun sets it up) and
    return the run's status.

    The first process writes to this terminal (progress, its errors); the others' stderr is kept and shown
    only when one of them fails first, whose status the run then ends with: every user error stays one line
    with its own exit code. When any process fails the others are stopped, so none waits forever for an
    image that will not come. Ctrl-C reaches every process (one process group): they finish the images in
    hand and the run ends with 130; SIGTERM and SIGHUP sent to this process are passed on to every worker. With `same_threads` each process keeps this one's CPU thread count,
    because CPU kernels round differently with another (`sample` promises the pixels of one process);
    otherwise each gets one thread, as torchrun gives them.
    """
    args = _without_num_processes(list(sys.argv[1:] if argv is None else argv))
    with socket.socket() as probe:  # a free port for the group's rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    common = {
        **_child_env(same_threads),
        "WORLD_SIZE": str(num_processes),
        "LOCAL_WORLD_SIZE": str(num_processes),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    with contextlib.ExitStack() as stack:
        logs = [None, *(stack.enter_context(tempfile.TemporaryFile()) for _ in range(1, num_processes))]
        workers: list[subprocess.Popen[bytes]] = []
        for rank in range(num_processes):
            env = {**common, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "sdlite", *args], env=env, stderr=logs[rank], preexec_fn=die_with_parent
                )
            )
        try:
            with _forwarding(workers):
                return _outcome(workers, logs)
        except KeyboardInterrupt:
            for worker in workers:  # they got the same SIGINT: let them write what they finished
                _stop(worker, GRACE)
            return 130
        finally:
            for worker in workers:
                _stop(worker, 0)


@contextlib.contextmanager
def _forwarding(workers: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    """Pass SIGTERM and SIGHUP on to every worker: a scheduler (Slurm, `timeout`, `docker stop`) signals this
    process alone, while Ctrl-C reaches the whole process group by itself. The workers then stop as they would
    themselves (training checkpoints first) and the run ends with their status (143, 129)."""

    def forward(signum: int, frame: object) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    names = [name for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    try:
        previous = {getattr(signal, name): signal.signal(getattr(signal, name), forward) for name in names}
    except ValueError:  # not the main thread: nothing to forward from
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _outcome(workers: list[subprocess.Popen[bytes]], logs: list[IO[bytes] | None]) -> int:
    """Wait for every worker; on the first failure stop the rest and return the status of the one that failed
    first (the others often fail only because it left: gloo's "connection closed by peer"). A user's mistake
    makes every worker fail alike, with the same status: the first process's words are then already on the
    terminal, and stand alone."""
    while True:
        codes = [w.poll() for w in workers]
        if all(code == 0 for code in codes):
            return 0
        failed = [r for r, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            break
        time.sleep(POLL)
    rank = failed[0]  # the first process when several failed at once
    if rank != 0:  # a mistake every worker makes: the first process fails alike a moment later, in its words
        with contextlib.suppress(subprocess.TimeoutExpired):
            workers[0].wait(timeout=ALIKE)
        if workers[0].returncode == workers[rank].returncode:
            rank = 0
    for worker in workers:
        _stop(worker, 0)
    log = logs[rank]
    if log is not None:  # another worker's last words: its one-line error
        log.seek(0)
        lines = [line for line in log.read().decode(errors="replace").splitlines() if line.strip()]
        if lines:
            sys.stderr.write(lines[-1] + "\n")
    return _status(workers[rank].returncode)


def _status(code: int | None) -> int:
    """A child's exit status as a shell reports it (128 + N for a death by signal N)."""
    if code is None:
        return 1
    return 128 - code if code < 0 else code


def _stop(worker: subprocess.Popen[bytes], grace: float) -> None:
    if worker.poll() is not None:
        return
    try:
        worker.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def _child_env(same_threads: bool) -> dict[str, str]:
    env = {**os.environ, LAUNCHED: "1"}
    if "OMP_NUM_THREADS" not in env:
        import torch

        env["OMP_NUM_THREADS"] = str(torch.get_num_threads()) if same_threads else "1"
    return env


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG); elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def tie_to_parent() -> None:
    """In a worker sdlite started (possibly through a launcher that gives it a session of its own): die with
    the process that started it, and at once if that one is already gone."""
    if os.environ.get(LAUNCHED) != "1":
        return
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(128 + signal.SIGKILL)


def _without_num_processes(args: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--num-processes":
            skip = True
        elif not arg.startswith("--num-processes="):
            kept.append(arg)
    return kept
