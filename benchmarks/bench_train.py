"""Training throughput with `--cache` against without, same model and data, side by side in one run.

Each measurement is a fresh process (so peak memory is its own), alternating cached and uncached runs;
images/s is taken over the steps after the first few (steady state), and the one-off cost of filling
the cache is reported separately.

usage: python benchmarks/bench_train.py [--repeats N] [--steps N] [--images N] [--batch-size N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARMUP_STEPS = 3


def worker(model: str, data: str, out: str, steps: int, batch_size: int, cache: bool) -> None:
    """Run one training in this process and print images/s, cache-fill time and peak RSS as JSON."""
    from sdlite.config import TrainConfig
    from sdlite.training import train

    times: list[float] = []
    marks: dict[str, float] = {"start": time.perf_counter()}

    def on_event(event: dict) -> None:
        if event["event"] == "step":
            times.append(time.perf_counter())
        elif event["event"] == "cache":
            marks["cache"] = time.perf_counter()
        elif event["event"] == "plan":
            marks["plan"] = time.perf_counter()

    config = TrainConfig(model=model, data=data, out=out, max_steps=steps, batch_size=batch_size, lr=1e-4, cache=cache)
    train(config, on_event=on_event)
    steady = times[WARMUP_STEPS:]
    images_per_s = (len(steady) - 1) * batch_size / (steady[-1] - steady[0])
    fill = marks["cache"] - marks["plan"] if "cache" in marks else 0.0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"images_per_s": images_per_s, "cache_fill_s": fill, "peak_rss_mib": peak_mib}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--worker", nargs=6, metavar=("MODEL", "DATA", "OUT", "STEPS", "BATCH", "CACHE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        model, data, out, steps, batch, cache = args.worker
        worker(model, data, out, int(steps), int(batch), cache == "1")
        return

    from sdlite.testing import make_shapes_dataset, make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="sdlite-bench-train-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SDLITE_CACHE_DIR": str(work / "cache")}
    model = make_tiny_model(work / "tiny")
    data = make_shapes_dataset(work / "data", n=args.images)
    results: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(args.repeats):
        for cache in (False, True):
            shutil.rmtree(work / "cache", ignore_errors=True)  # every cached run pays its own fill
            out = work / f"out-{int(cache)}"
            shutil.rmtree(out, ignore_errors=True)
            command = [sys.executable, __file__, "--worker", str(model), str(data), str(out), str(args.steps),
                       str(args.batch_size), str(int(cache))]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
            results[cache].append(json.loads(done.stdout.strip().splitlines()[-1]))

    def median(cache: bool, key: str) -> float:
        return statistics.median(r[key] for r in results[cache])

    print(f"tiny model, {args.images} images of 64x64, batch {args.batch_size}, {args.steps} steps, "
          f"{args.repeats} interleaved repeats (medians)")  # fmt: skip
    print(f"{'':<28}{'--cache':>12}{'no cache':>12}{'ratio':>8}")
    cached, plain = median(True, "images_per_s"), median(False, "images_per_s")
    print(f"{'training images/s':<28}{cached:>12.1f}{plain:>12.1f}{cached / plain:>8.2f}")
    mem_c, mem_p = median(True, "peak_rss_mib"), median(False, "peak_rss_mib")
    print(f"{'peak RSS (MiB)':<28}{mem_c:>12.0f}{mem_p:>12.0f}{mem_c / mem_p:>8.2f}")
    print(f"{'one-off cache fill (s)':<28}{median(True, 'cache_fill_s'):>12.2f}{'-':>12}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
