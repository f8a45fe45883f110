"""The synthetic shapes world sdlite's built-in model is trained on, and the judge that scores it.

Scenes are one filled shape of a named color on a plain background of another named color,
captioned `a {color} {shape} on a {color} background`. A fixed set of (color, shape, background)
triples is held out of training, so evaluation can tell memorised scenes from learned language.
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


def classify(image: Any) -> dict[str, str]:
    """Judge a scene with fixed rules, no learning: the background is the nearest named color to the
    median border pixel; the shape is the largest connected region of pixels closer to the shape's
    color than to the background's (so halos split down the middle and stray specks are ignored);
    its color is the nearest named color to its median pixel; its kind is how much of its bounding
    box it fills (square ~1, circle ~pi/4, triangle ~1/2)."""
    import numpy as np
    from scipy import ndimage

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background_rgb = np.median(border, axis=0)
    to_background = np.linalg.norm(pixels - background_rgb, axis=2)
    candidates = to_background > 60
    if candidates.sum() < 0.01 * candidates.size:
        return {"background": _nearest(background_rgb), "color": "none", "shape": "none"}
    shape_rgb = np.median(pixels[candidates], axis=0)
    mask = ndimage.binary_fill_holes(np.linalg.norm(pixels - shape_rgb, axis=2) < to_background)
    labels, count = ndimage.label(mask)
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    region = labels == (int(np.argmax(sizes)) + 1)
    rows, cols = np.nonzero(region)
    fill = region.sum() / ((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1))
    shape = "square" if fill > 0.88 else "circle" if fill > 0.64 else "triangle"
    return {
        "background": _nearest(background_rgb),
        "color": _nearest(np.median(pixels[region], axis=0)),
        "shape": shape,
    }


def _nearest(rgb: Any) -> str:
    import numpy as np

    return min(COLORS, key=lambda name: float(np.linalg.norm(np.asarray(COLORS[name]) - rgb)))


def evaluate(config: Any, progress: Any = None) -> dict[str, Any]:
    """Sample captions from training and held-out triples, judge every image, return accuracies.

    Each split gets n/2 images; prompts cycle through a seeded shuffle of the split's triples, and
    image i uses seed + i, so the evaluation itself is reproducible.
    """
    import tempfile

    from sdlite.config import SampleOverrides, build_sample_config
    from sdlite.sampling import sample

    rng = random.Random(config.seed)
    splits = {"seen": [t for t in all_triples() if t not in held_out()], "held_out": sorted(held_out())}
    jobs: list[tuple[str, tuple[str, str, str]]] = []
    for name, triples in splits.items():
        order = rng.sample(triples, len(triples))
        jobs += [(name, order[i % len(order)]) for i in range(config.n // 2)]
    with tempfile.TemporaryDirectory(prefix="sdlite-eval-") as tmp:
        # The same merge as `sdlite sample`: given settings > the model's recommended ones > defaults;
        # prompt i gets seed + i.
        sample_config = build_sample_config(
            SampleOverrides(
                prompts=tuple(caption(*triple) for _, triple in jobs),
                model=config.model,
                settings={
                    "seed": config.seed,
                    "steps": config.steps,
                    "guidance": config.guidance,
                    "scheduler": config.scheduler,
                },
                out=Path(config.out) if config.out else Path(tmp),
                batch_size=config.batch_size,
                offline=config.offline,
                fast=config.fast,
                tokenizer=config.tokenizer,
                ema_weights=config.ema_weights,
            ),
            env={},
        )
        gens = sample_config.generations
        run = sample(sample_config, progress=progress)
        verdicts = []
        from PIL import Image

        for (split, (color, shape, background)), image in zip(jobs, run.images, strict=True):
            with Image.open(image.path) as picture:
                judged = classify(picture)
            verdicts.append((split, {"color": judged["color"] == color, "shape": judged["shape"] == shape,
                                     "background": judged["background"] == background}))  # fmt: skip
    report: dict[str, Any] = {
        "model": config.model,
        "settings": {**gens[0].__dict__, "prompt": None, "seed": config.seed, "mode": sample_config.mode},
    }
    for split in splits:
        rows = [v for s, v in verdicts if s == split]
        report[split] = {key: sum(r[key] for r in rows) / len(rows) for key in ("color", "shape", "background")}
        report[split]["all_three"] = sum(all(r.values()) for r in rows) / len(rows)
        report[split]["images"] = len(rows)
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'':<12}{'images':>8}{'color':>9}{'shape':>9}{'background':>12}{'all three':>11}"]
    for split in ("seen", "held_out"):
        r = report[split]
        lines.append(
            f"{split:<12}{r['images']:>8}{r['color']:>9.1%}{r['shape']:>9.1%}{r['background']:>12.1%}{r['all_three']:>11.1%}"
        )
    s = report["settings"]
    lines.append(
        f"model {report['model']}; {s['scheduler']} {s['steps']} steps, guidance {s['guidance']}, seeds from {s['seed']}"
        + (f", --{s['mode']}" if s.get("mode", "default") != "default" else "")
    )
    return "\n".join(lines)
