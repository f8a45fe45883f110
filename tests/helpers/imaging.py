"""Image helpers shared by the data, sampling and training tests and the reliability suite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def save(path: Path, image: Image.Image | None = None, **params: object) -> Path:
    """Write an image (a 4x4 gray square by default), creating folders on the way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    (image if image is not None else Image.new("RGB", (4, 4), (128, 128, 128))).save(path, **params)
    return path


def rgb(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def scene_and_mask(folder: Path) -> tuple[Path, Path]:
    """A red circle on blue (64x64) and the mask of its background (white = repaint), saved in `folder`."""
    from PIL import ImageDraw

    image = Image.new("RGB", (64, 64), (30, 60, 200))
    ImageDraw.Draw(image).ellipse((16, 16, 47, 47), fill=(220, 30, 30))
    mask = Image.new("L", (64, 64), 255)
    ImageDraw.Draw(mask).ellipse((16, 16, 47, 47), fill=0)
    image.save(folder / "scene.png")
    mask.save(folder / "mask.png")
    return folder / "scene.png", folder / "mask.png"


def mixed_aspect_dataset(folder: Path, sizes: list[tuple[int, int]], side: int) -> Path:
    """A captioned folder of rendered scenes, image n resized to sizes[n] (width, height) from a `side` render."""
    from sdlite.data.shapes import Scene, caption, render

    rows = []
    colors = ["red", "green", "blue", "yellow"]
    for n, (w, h) in enumerate(sizes):
        scene = Scene(colors[n % 4], ["circle", "square", "triangle"][n % 3], colors[(n + 1) % 4], 0.5, 0.5, 0.5)
        render(scene, side).resize((w, h)).save(folder / f"{n:02d}.png")
        rows.append({"file_name": f"{n:02d}.png", "text": caption(scene.color, scene.shape, scene.background)})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder
