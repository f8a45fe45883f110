"""`make bench`: every sdlite figure next to its baseline, measured side by side in one run, as one table.

Each measurement is a fresh process, so its peak memory (max RSS, from wait4) is its own; sdlite and
its baseline alternate for `--repeats` rounds and the table shows medians. In-process rows time the
faster of two calls after a warm-up one (imports and first-call costs are in the whole-process rows). Rows:

  CLI start-up           `sdlite --help`                  vs `python -c "import diffusers"`
  first image            `sdlite sample PROMPT` (built-in model, whole process)
                                                          vs a plain diffusers script, same image (pixels checked)
  sampling overhead      `sdlite.sample()` in-process     vs StableDiffusionPipeline called directly
  --fast                 `sample --fast` (DPM++ 2M Karras, 20 steps) vs the default (DDIM 50), built-in model
  --fast, equal steps    --fast with DDIM 50              vs the default: what SDPA/channels_last alone do here
  --low-memory           `sample --low-memory`            vs the default, same settings
  training               images/s with the latent/text cache vs without (tiny model)

usage: python benchmarks/bench.py [--repeats N] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
PROMPT = "a red circle on a blue background"
WARMUP_STEPS = 3  # training steps left out of images/s (allocator and cache warm-up)


@dataclass(frozen=True)
class Row:
    name: str
    ours: list[str]  # command lines (one fresh process each)
    base: list[str]
    metric: str  # "wall" (whole process, s), "seconds" (timed inside, s) or "images_per_s"
    baseline_name: str


def measure(command: list[str], env: dict[str, str]) -> tuple[float, float, dict[str, float]]:
    """Run one process; return its wall time, its peak RSS in MiB and the JSON it printed last (if any)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"failed: {' '.join(command)}\n{err.read().decode()[-2000:]}")
        out.seek(0)
        lines = [line for line in out.read().decode().splitlines() if line.startswith("{")]
    return wall, usage.ru_maxrss / 1024, json.loads(lines[-1]) if lines else {}


def worker(kind: str, args: list[str]) -> None:
    """The in-process side of a row: time the work after imports, print it as JSON."""
    if kind == "setup":
        from sdlite.testing import make_shapes_dataset, make_tiny_model

        work = Path(args[0])
        print(
            json.dumps(
                {"tiny": str(make_tiny_model(work / "tiny")), "data": str(make_shapes_dataset(work / "data", n=32))}
            )
        )
        return
    if kind == "sample":
        model, out, n, steps, guidance, scheduler, mode = args
        from sdlite.sampling.config import Generation, SampleConfig
        from sdlite.sampling.run import sample

        gen = Generation(PROMPT, seed=1000, num_images=int(n), steps=int(steps), guidance=float(guidance),
                         scheduler=scheduler)  # fmt: skip
        config = SampleConfig(model=model, generations=(gen,), out=Path(out), mode=mode)
        sample(config)  # warm-up: imports, first-call allocations, the weights' hash cache
        print(json.dumps({"seconds": _fastest(lambda: sample(config))}))
        return
    elif kind == "pipeline":
        model, out, n, steps, guidance = args
        sys.path.insert(0, str(HERE))
        from plain_diffusers import main as plain

        plain(model, out, PROMPT, 1000, int(n), int(steps), float(guidance))  # warm-up, as above
        print(
            json.dumps(
                {"seconds": _fastest(lambda: plain(model, out, PROMPT, 1000, int(n), int(steps), float(guidance)))}
            )
        )
        return
    elif kind == "train":
        model, data, out, steps, batch, cache = args
        from sdlite.training.config import TrainConfig
        from sdlite.training.unet import train

        marks: list[float] = []
        config = TrainConfig(model=model, data=data, out=out, max_steps=int(steps), batch_size=int(batch), lr=1e-4,
                             cache=cache == "1")  # fmt: skip
        train(config, on_event=lambda e: marks.append(time.perf_counter()) if e["event"] == "step" else None)
        steady = marks[WARMUP_STEPS:]
        print(json.dumps({"images_per_s": (len(steady) - 1) * int(batch) / (steady[-1] - steady[0])}))


def _fastest(call: Callable[[], object], times: int = 2) -> float:
    """The faster of `times` timed calls: the work's own cost, with less of the machine's noise."""
    best = float("inf")
    for _ in range(times):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for BENCHMARKS.md)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1:])
        return

    # This process stays small (no torch): Linux starts a child's max-RSS count at its parent's size.
    from sdlite.models.source import DEFAULT_MODEL

    work = Path(tempfile.mkdtemp(prefix="sdlite-bench-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SDLITE_CACHE_DIR": str(work / "cache")}
    me = [sys.executable, __file__, "--worker"]
    made = measure([*me, "setup", str(work)], env)[2]
    tiny, data, default = made["tiny"], made["data"], str(DEFAULT_MODEL)
    rows = [
        Row("CLI start-up (s)", [str(BIN / "sdlite"), "--help"], [sys.executable, "-c", "import diffusers"], "wall",
            "python -c 'import diffusers'"),
        Row("first image, built-in model, whole process (s)",
            [str(BIN / "sdlite"), "sample", PROMPT, "--seed", "1000", "--out", str(work / "first-ours"), "-q"],
            [sys.executable, str(HERE / "plain_diffusers.py"), default, str(work / "first-base"), PROMPT, "1000", "1",
             "50", "5"], "wall", "plain diffusers script"),
        Row("sampling in-process, tiny, 4 images x 50 steps (s)",
            [*me, "sample", tiny, str(work / "api"), "4", "50", "7.5", "ddim", "default"],
            [*me, "pipeline", tiny, str(work / "pipe"), "4", "50", "7.5"], "seconds", "StableDiffusionPipeline"),
        Row("--fast (DPM++ 2M Karras 20) vs default (DDIM 50), built-in, 4 images (s)",
            [*me, "sample", default, str(work / "fast"), "4", "20", "5", "dpm++2m-karras", "fast"],
            [*me, "sample", default, str(work / "plain"), "4", "50", "5", "ddim", "default"], "seconds",
            "sdlite default"),
        Row("--fast at equal steps (DDIM 50), built-in, 4 images (s)",
            [*me, "sample", default, str(work / "fast50"), "4", "50", "5", "ddim", "fast"],
            [*me, "sample", default, str(work / "plain50"), "4", "50", "5", "ddim", "default"], "seconds",
            "sdlite default"),
        Row("--low-memory, built-in, 4 images x 50 steps (s)",
            [*me, "sample", default, str(work / "low"), "4", "50", "5", "ddim", "low-memory"],
            [*me, "sample", default, str(work / "plain-low"), "4", "50", "5", "ddim", "default"], "seconds",
            "sdlite default"),
        Row("training, tiny, 32 images 64px, batch 8 (images/s)",
            [*me, "train", tiny, data, str(work / "cached"), "30", "8", "1"],
            [*me, "train", tiny, data, str(work / "uncached"), "30", "8", "0"], "images_per_s", "no cache"),
    ]  # fmt: skip

    results = []
    for row in rows:
        ours: list[tuple[float, float]] = []
        base: list[tuple[float, float]] = []
        for _ in range(args.repeats):
            for command, into in ((row.ours, ours), (row.base, base)):
                if row.metric == "images_per_s":
                    shutil.rmtree(work / "cache", ignore_errors=True)  # every cached run pays its own fill
                wall, peak, printed = measure(command, env)
                into.append((wall if row.metric == "wall" else printed[row.metric], peak))
        results.append((row, *(statistics.median(v for v, _ in side) for side in (ours, base)),
                        *(statistics.median(m for _, m in side) for side in (ours, base))))  # fmt: skip
    same = _same_pixels(work / "first-ours", work / "first-base")
    _print(results, args.repeats, same, args.markdown)
    shutil.rmtree(work, ignore_errors=True)


def _same_pixels(a: Path, b: Path) -> bool:
    import numpy as np
    from PIL import Image

    ours = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(a.glob("*.png"))]
    base = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(b.glob("*.png"))]
    return bool(ours) and np.array_equal(ours[0], base[0])


def _print(results: list[tuple], repeats: int, same: bool, markdown: bool) -> None:
    from importlib.metadata import version

    header = ["measurement", "sdlite", "baseline", "", "ratio", "peak MiB", "baseline MiB", "ratio"]
    lines = []
    for row, ours, base, mem_ours, mem_base in results:
        lines.append([row.name, f"{ours:.3g}", f"{base:.3g}", row.baseline_name, f"{ours / base:.3f}",
                      f"{mem_ours:.0f}", f"{mem_base:.0f}", f"{mem_ours / mem_base:.2f}"])  # fmt: skip
    cpu = platform.processor() or platform.machine()
    print(f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, torch {version('torch')}; "
          f"{repeats} interleaved repeats, medians; first-image pixels equal to plain diffusers: {same}")  # fmt: skip
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
        for line in lines:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header))]
    for line in [header, *lines]:
        print("  ".join(str(c).ljust(w) if i in (0, 3) else str(c).rjust(w) for i, (c, w) in
                        enumerate(zip(line, widths, strict=True))))  # fmt: skip


if __name__ == "__main__":
    main()
