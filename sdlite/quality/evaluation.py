"""`sdlite eval shapes`: sample scenes of the shapes world and judge them with a fixed rule-based classifier
(seen and held-out combinations apart).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from sdlite.data.shapes import COLORS, all_triples, caption, held_out


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

    from sdlite.sampling.run import sample
    from sdlite.sampling.sources import SampleOverrides, build_sample_config

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
            verdicts.append(
                (
                    split,
                    {
                        "color": judged["color"] == color,
                        "shape": judged["shape"] == shape,
                        "background": judged["background"] == background,
                    },
                )
            )
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
