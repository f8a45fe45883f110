"""A training run's start-up work per image against dataset size: checking every image and hashing it
(what the latent cache is keyed by), before and after the first run has remembered both.

    python benchmarks/bench_data.py [--small 2000] [--large 8000] [--side 64]

Both sizes are measured in the same run, each in a fresh cache folder; the per-image cost of the large
set over the small one is printed for the first (cold) and the second (warm) run: 1.0 means the cost
grows linearly with the dataset. CPU only; the images are sdlite's shapes at --side pixels.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def startup(folder: Path) -> float:
    """Seconds for what `train` does per image before its first step (without the VAE encodes)."""
    from sdlite.data.examples import discover
    from sdlite.data.images import check_images, example_sha256

    start = time.perf_counter()
    dataset = check_images(discover(folder, "text", False), False)
    for example in dataset.examples:
        example_sha256(example)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=8000)
    parser.add_argument("--side", type=int, default=64)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from sdlite.testing import make_shapes_dataset

    root = Path(tempfile.mkdtemp(prefix="sdlite-bench-data-"))
    per_image: dict[tuple[int, str], float] = {}
    for n in (args.small, args.large):
        folder = make_shapes_dataset(root / f"data-{n}", n=n, size=args.side)
        os.environ["SDLITE_CACHE_DIR"] = str(root / f"cache-{n}")
        for run in ("cold", "warm"):
            per_image[(n, run)] = startup(folder) / n
            print(f"{n:>7} images, {run}: {per_image[(n, run)] * 1e3:.3f} ms per image", flush=True)
    for run in ("cold", "warm"):
        ratio = per_image[(args.large, run)] / per_image[(args.small, run)]
        print(f"ratio {run} ({args.large} vs {args.small} images, per image): {ratio:.2f}")


if __name__ == "__main__":
    main()
