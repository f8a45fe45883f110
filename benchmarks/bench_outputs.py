"""Per-image output cost against folder size: writing into a folder of 20,000 files vs an empty one.

    python benchmarks/bench_outputs.py [--files 20000] [--images 200]

Measures what sdlite does for each finished image outside the GPU: the PNG encode with both metadata
chunks, the name (no folder scan per image) and the whole-file write (temp file + hard link). Both
folders are timed in the same run, interleaved, and the ratio is printed; one folder scan per run is
reported on its own line. CPU only; the pixels are a fixed 512x512 RGB picture.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sdlite.formats import png_record


def main() -> None:
    import numpy as np
    from PIL import Image

    from sdlite.sampling.outputs import Numbering, write_png

    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8))
    record = {"settings": {"prompt": "a red circle on a blue background", "seed": 0}, "model": {"hash": "0" * 64}}
    info = png_record.png_info("a red circle on a blue background\nSteps: 50, Seed: 0", record)
    with tempfile.TemporaryDirectory() as root:
        empty, full = Path(root, "empty"), Path(root, "full")
        empty.mkdir()
        full.mkdir()
        for i in range(args.files):
            (full / f"{i:05d}-{i}.png").write_bytes(b"")
        scans = {}
        numberings = {}
        for name, folder in (("empty", empty), ("full", full)):
            start = time.perf_counter()
            numberings[name] = Numbering(folder)
            scans[name] = time.perf_counter() - start
        times: dict[str, list[float]] = {"empty": [], "full": []}
        for n in range(args.images):
            for name, folder in (("empty", empty), ("full", full)) if n % 2 else (("full", full), ("empty", empty)):
                start = time.perf_counter()
                write_png(folder, numberings[name], n, image, info)
                times[name].append(time.perf_counter() - start)
    empty_ms, full_ms = (statistics.median(times[k]) * 1000 for k in ("empty", "full"))
    print(f"per image, empty folder:            {empty_ms:.2f} ms (median of {args.images})")
    print(f"per image, folder of {args.files:,} files:  {full_ms:.2f} ms")
    print(f"ratio full / empty:                 {full_ms / empty_ms:.3f}")
    print(
        f"one folder scan per run:            {scans['empty'] * 1000:.2f} ms empty, {scans['full'] * 1000:.1f} ms full"
    )


if __name__ == "__main__":
    main()
