"""Using sdlite from Python: build a config, call the function, get data back (nothing is printed).

usage: python examples/python_api.py [MODEL]   (default: builds a tiny random model in a temp folder)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from sdlite import Generation, SampleConfig, sample
from sdlite.testing import make_tiny_model


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="sdlite-example-"))
    model = sys.argv[1] if len(sys.argv) > 1 else str(make_tiny_model(work / "model"))
    config = SampleConfig(
        model=model,
        generations=(
            Generation("a red circle on a blue background", seed=1, num_images=2, steps=20),
            Generation("a yellow triangle on a black background", seed=100, steps=20, scheduler="dpm++2m"),
        ),
        out=work / "images",
        batch_size=2,
        grid=True,
    )
    run = sample(config, progress=lambda done, total: None)
    for image in run.images:
        print(f"{image.path}  seed={image.seed}  {image.scheduler}  '{image.prompt}'")
    print(f"grid: {run.grid}")


if __name__ == "__main__":
    main()
