"""sdlite's cost over plain diffusers, measured side by side in one run (machines are noisy).

Prints three comparisons, each as a ratio of medians over interleaved repeats:
  1. `sdlite --help` vs `python -c "import diffusers"` (whole processes);
  2. `sdlite sample` vs a plain diffusers script making the same images from the same folder
     (whole processes; the pixels are checked equal too);
  3. in-process: `sdlite.sample(config)` vs loading and calling StableDiffusionPipeline directly.

usage: python benchmarks/bench_sample.py [--repeats N] [--images N] [--steps N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
PROMPT = "a red circle on a blue background"
SEED, GUIDANCE = 1000, 7.5


def median_pair(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Run a and b alternately `repeats` times each; return their median wall times."""
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((a, times_a), (b, times_b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times_a), statistics.median(times_b)


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pixels(folder: Path) -> list[np.ndarray]:
    return [
        np.asarray(Image.open(p).convert("RGB"))
        for p in sorted(folder.glob("*.png"), key=lambda p: p.stem.split("-")[-1])
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"

    from sdlite import Generation, SampleConfig, sample
    from sdlite.testing import make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="sdlite-bench-"))
    os.environ["SDLITE_CACHE_DIR"] = str(work / "cache")
    model = make_tiny_model(work / "tiny")
    rows: list[tuple[str, float, float]] = []

    # 1. Start-up: the CLI's help against merely importing diffusers.
    help_s, import_s = median_pair(
        lambda: run([str(BIN / "sdlite"), "--help"]),
        lambda: run([sys.executable, "-c", "import diffusers"]),
        args.repeats,
    )
    rows.append(("sdlite --help  vs  python -c 'import diffusers'", help_s, import_s))

    # 2. Whole processes making the same images.
    def cli() -> None:
        out = work / "cli"
        shutil.rmtree(out, ignore_errors=True)
        run(
            [
                str(BIN / "sdlite"),
                "sample",
                PROMPT,
                "--model",
                str(model),
                "--seed",
                str(SEED),
                "--num-images",
                str(args.images),
                "--steps",
                str(args.steps),
                "--guidance",
                str(GUIDANCE),
                "--out",
                str(out),
                "-q",
            ]
        )

    def plain() -> None:
        out = work / "plain"
        shutil.rmtree(out, ignore_errors=True)
        run(
            [
                sys.executable,
                str(HERE / "plain_diffusers.py"),
                str(model),
                str(out),
                PROMPT,
                str(SEED),
                str(args.images),
                str(args.steps),
                str(GUIDANCE),
            ]
        )

    cli_s, plain_s = median_pair(cli, plain, args.repeats)
    same = all(np.array_equal(a, b) for a, b in zip(pixels(work / "cli"), pixels(work / "plain"), strict=True))
    rows.append(
        (f"sdlite sample  vs  plain diffusers script ({args.images} images, same pixels: {same})", cli_s, plain_s)
    )

    # 3. In-process: sdlite's function against the pipeline called directly (both load, generate, save).
    config = SampleConfig(
        model=str(model),
        generations=(Generation(PROMPT, seed=SEED, steps=args.steps, guidance=GUIDANCE, num_images=args.images),),
        out=work / "api",
    )
    plain_module = _load_plain_module()
    api_s, direct_s = median_pair(
        lambda: sample(config),
        lambda: plain_module.main(str(model), str(work / "direct"), PROMPT, SEED, args.images, args.steps, GUIDANCE),
        args.repeats,
    )
    rows.append(("sdlite.sample()  vs  StableDiffusionPipeline directly (in-process)", api_s, direct_s))

    print(f"{'comparison':<78}{'sdlite s':>10}{'baseline s':>12}{'ratio':>8}")
    for name, ours, base in rows:
        print(f"{name:<78}{ours:>10.3f}{base:>12.3f}{ours / base:>8.3f}")
    shutil.rmtree(work, ignore_errors=True)


def _load_plain_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("plain_diffusers", HERE / "plain_diffusers.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


if __name__ == "__main__":
    main()
