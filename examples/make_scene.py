"""Write a rendered scene and the mask of its background, the inputs of `make demo`'s image-to-image part.

    python examples/make_scene.py OUT_DIR
writes OUT_DIR/red-circle.png ("a red circle on a blue background", 64x64, drawn exactly, not generated)
and OUT_DIR/background-mask.png (white = the background, to repaint; black = the circle, kept).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sdlite.data.shapes import COLORS, Scene, render


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    image = render(Scene("red", "circle", "blue", size=0.5, x=0.5, y=0.5), 64)
    background = np.all(np.asarray(image) == COLORS["blue"], axis=2)
    image.save(out / "red-circle.png")
    Image.fromarray(np.where(background, 255, 0).astype(np.uint8)).save(out / "background-mask.png")
    print(out / "red-circle.png", out / "background-mask.png")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "build/demo/inputs"))
