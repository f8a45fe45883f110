"""The synthetic shapes world sdlite's built-in model is trained on: scenes, their captions, their pictures,
and `sdlite data shapes`, which writes a captioned dataset of them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlite.errors import UsageError

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
    "orange": (245, 140, 30),
    "purple": (140, 50, 180),
}


SHAPES = ("circle", "square", "triangle")


def caption(color: str, shape: str, background: str) -> str:
    return f"a {color} {shape} on a {background} background"


def all_triples() -> list[tuple[str, str, str]]:
    return [(c, s, b) for c in COLORS for s in SHAPES for b in COLORS if b != c]


def held_out() -> set[tuple[str, str, str]]:
    """13 of the 168 triples never shown in training; every color, shape and background still is."""
    names = list(COLORS)
    return {
        (c, s, b)
        for c, s, b in all_triples()
        if (names.index(c) * 3 + SHAPES.index(s) * 5 + names.index(b) * 7) % 14 == 0
    }


@dataclass(frozen=True)
class Scene:
    color: str
    shape: str
    background: str
    size: float  # shape extent as a fraction of the image side
    x: float  # top-left corner, as a fraction of the free space
    y: float


def random_scene(rng: random.Random, triples: list[tuple[str, str, str]]) -> Scene:
    color, shape, background = rng.choice(triples)
    return Scene(color, shape, background, rng.uniform(0.35, 0.7), rng.random(), rng.random())


def render(scene: Scene, size: int) -> Any:
    """Draw a scene as an RGB PIL image of `size` x `size` pixels."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), COLORS[scene.background])
    side = round(scene.size * size)
    left, top = round(scene.x * (size - side)), round(scene.y * (size - side))
    box = (left, top, left + side - 1, top + side - 1)
    draw = ImageDraw.Draw(image)
    fill = COLORS[scene.color]
    if scene.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif scene.shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon(
            [(left + (side - 1) / 2, top), (left, top + side - 1), (left + side - 1, top + side - 1)], fill=fill
        )
    return image


MIN_SIZE, MAX_SIZE = 16, 4096  # pixels a side: the drawn shapes need room; 4096 is 48 MB per image in memory


def write_dataset(out: Path, n: int, size: int = 64, seed: int = 0) -> Path:
    """An imagefolder (`metadata.jsonl`) of `n` scenes from the training triples; same seed, same files."""
    if n < 1 or not MIN_SIZE <= size <= MAX_SIZE:
        raise UsageError(f"--n must be at least 1 and --size between {MIN_SIZE} and {MAX_SIZE}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file, not a folder: choose a new or empty folder for the dataset")
    out.mkdir(parents=True, exist_ok=True)
    if (out / "metadata.jsonl").exists():
        raise UsageError(f"{out} already holds a dataset (metadata.jsonl); choose an empty folder")
    rng = random.Random(seed)
    train = [t for t in all_triples() if t not in held_out()]
    rows = []
    for i in range(n):
        scene = random_scene(rng, train)
        name = f"{i:06d}.png"
        render(scene, size).save(out / name)
        rows.append({"file_name": name, "text": caption(scene.color, scene.shape, scene.background)})
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out
