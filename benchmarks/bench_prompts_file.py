"""A prompts file of short lines on the tiny preset: one batch per line (what sdlite did before prompts-file lines
filled batches) against lines filling `--batch-size` batches, side by side in one run.

    python benchmarks/bench_prompts_file.py [--lines 2000] [--batch-size 8] [--steps N] [--only filled]

Both ways run the same `sample` core on the same model and prompts (random 4-word lines, seeds continuing as a
prompts file's do) into fresh folders; each time covers the whole `sample` call (the tiny model's load, well
under a second once warm, and writing every PNG). "per-line" is the old plan, reproduced with a batch break at
every line. Prints seconds, images/s and the ratio. CPU here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import tempfile
import time
from pathlib import Path

WORDS = [
    "red",
    "green",
    "blue",
    "yellow",
    "circle",
    "square",
    "triangle",
    "star",
    "cat",
    "dog",
    "house",
    "tree",
    "small",
    "large",
    "bright",
    "dark",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    parser.add_argument("--only", choices=("per-line", "filled"), default=None, help="measure one way only")
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    root = Path(tempfile.mkdtemp(prefix="sdlite-bench-prompts-"))
    os.environ["SDLITE_CACHE_DIR"] = str(root / "cache")
    from sdlite.sampling.run import sample
    from sdlite.sampling.sources import SampleOverrides, build_sample_config
    from sdlite.testing import make_preset_model

    model = make_preset_model(root / "tiny", "tiny", seed=0)
    draw = random.Random(0)
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(" ".join(draw.choice(WORDS) for _ in range(4)) for _ in range(args.lines)) + "\n")
    settings = {"seed": 1, **({"steps": args.steps} if args.steps else {})}
    overrides = SampleOverrides(model=str(model), prompts_file=prompts, batch_size=args.batch_size, settings=settings)
    config = build_sample_config(overrides, env={})
    ways = {
        "per-line": dataclasses.replace(config, batch_breaks=tuple(range(len(config.generations)))),
        "filled": config,
    }
    sample(dataclasses.replace(config, generations=config.generations[:8], out=root / "warm-up"))
    print(f"{args.lines} lines, --batch-size {args.batch_size}, {config.generations[0].steps} steps, tiny preset")
    seconds = {}
    for name, way in ways.items():
        if args.only and name != args.only:
            continue
        start = time.perf_counter()
        run = sample(dataclasses.replace(way, out=root / name))
        seconds[name] = time.perf_counter() - start
        print(f"{name:>9}: {seconds[name]:8.1f} s  {len(run.images) / seconds[name]:6.2f} images/s", flush=True)
    if len(seconds) == 2:
        print(f"filled batches are {seconds['per-line'] / seconds['filled']:.2f}x as fast as one batch per line")


if __name__ == "__main__":
    main()
