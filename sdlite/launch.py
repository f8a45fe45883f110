"""`sdlite train|sample --num-processes N`: run the same command under `accelerate launch`.

The child processes get the original arguments minus `--num-processes`, and find WORLD_SIZE set,
so they do the work instead of launching again.
"""

from __future__ import annotations

import subprocess
import sys


def relaunch(num_processes: int, argv: list[str] | None = None, same_threads: bool = False) -> int:
    """Run `accelerate launch --multi_gpu --num_processes N -m sdlite ARGS`; returns its exit code.

    `--multi_gpu` is what gives N processes on CPU-only machines too (gloo); `--cpu` would run one.
    Accelerate gives each process one CPU thread unless OMP_NUM_THREADS says otherwise; `same_threads`
    keeps this process's count instead, because CPU kernels round differently with another thread count
    and `sample` promises the pixels of one process.
    """
    import os

    args = _without_num_processes(list(sys.argv[1:] if argv is None else argv))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sdlite", *args]  # fmt: skip
    env = dict(os.environ)
    if same_threads and "OMP_NUM_THREADS" not in env:
        import torch

        env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    try:
        return subprocess.run(command, check=False, env=env).returncode
    except KeyboardInterrupt:
        return 130


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
