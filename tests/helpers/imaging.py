"""Image helpers shared by the data tests and the reliability suite's image-mode matrix."""

from __future__ import annotations

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
