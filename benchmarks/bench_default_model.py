"""Speed of the built-in model at its default settings: one image in-process, and a whole command.

Targets (issue 4): one image in <= 2 s beyond process start-up, and a whole `sdlite sample` with one
prompt in <= 10 s, on the 2-core CPU machine. Interleaved repeats, medians.

usage: python benchmarks/bench_default_model.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a red circle on a blue background"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"

    from sdlite.config import DEFAULT_MODEL, SampleOverrides, build_sample_config
    from sdlite.models import load_pipeline, pick_device, pick_dtype, resolve_model
    from sdlite.sampling import sample

    work = Path(tempfile.mkdtemp(prefix="sdlite-bench-default-"))
    os.environ["SDLITE_CACHE_DIR"] = str(work / "cache")
    config = build_sample_config(SampleOverrides(prompts=(PROMPT,), settings={"seed": 0}, out=work / "api"), env={})
    gen = config.generations[0]

    # One image in-process, model already loaded (what "beyond start-up" means), vs the whole call.
    model = resolve_model(str(DEFAULT_MODEL))
    pipe = load_pipeline(model, pick_device("auto"), pick_dtype("auto", "cpu"))
    import torch

    def one_image() -> None:
        pipe(
            PROMPT,
            num_inference_steps=gen.steps,
            guidance_scale=gen.guidance,
            generator=torch.Generator().manual_seed(0),
        )

    def whole_call() -> None:
        sample(config)

    def cli() -> None:
        subprocess.run([str(Path(sys.executable).parent / "sdlite"), "sample", PROMPT, "--out", str(work / "cli"), "-q"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def startup() -> None:
        subprocess.run([sys.executable, "-c", "import diffusers, sdlite.sampling"], check=True)

    timings: dict[str, list[float]] = {"image": [], "call": [], "cli": [], "startup": []}
    one_image()  # warm-up
    for _ in range(args.repeats):
        for name, fn in (("image", one_image), ("call", whole_call), ("cli", cli), ("startup", startup)):
            start = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in timings.items()}
    print(f"built-in model, {gen.scheduler} {gen.steps} steps, guidance {gen.guidance}, {gen.height or 64}x{gen.width or 64}, "
          f"{args.repeats} interleaved repeats (medians)")  # fmt: skip
    print(f"{'one image, model loaded (target <= 2 s)':<52}{med['image']:>8.2f} s")
    print(f"{'sdlite.sample(): load + image + PNG + metadata':<52}{med['call']:>8.2f} s")
    print(f"{'whole `sdlite sample PROMPT` (target <= 10 s)':<52}{med['cli']:>8.2f} s")
    print(f"{'  of which process start + imports':<52}{med['startup']:>8.2f} s")


if __name__ == "__main__":
    main()
