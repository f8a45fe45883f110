"""A loss curve drawn with Pillow (no plotting library needed): OUT/loss.png next to OUT/loss.csv."""

from __future__ import annotations

import math
from pathlib import Path

WIDTH, HEIGHT, MARGIN = 640, 360, 48


def loss_curve(csv_path: Path, png_path: Path) -> Path:
    """Plot loss against step (finite values only) with a moving average, axes and range labels; the validation
    loss in red when OUT/validation_loss.csv is there."""
    from PIL import Image, ImageDraw

    points = _points(Path(csv_path))
    held_out = _points(Path(csv_path).with_name("validation_loss.csv"))  # --validation-data/-split, when scored
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = MARGIN, MARGIN // 2, WIDTH - MARGIN // 2, HEIGHT - MARGIN
    draw.rectangle((left, top, right, bottom), outline="black")
    draw.text((left, 4), "training loss", fill="black")
    if points:
        steps, losses = [p[0] for p in points], [p[1] for p in points]
        s0, s1 = min(steps), max(max(steps), min(steps) + 1)
        every = losses + [v for _, v in held_out]
        l0, l1 = min(every), max(max(every), min(every) + 1e-12)

        def xy(step: float, loss: float) -> tuple[float, float]:
            return (left + (step - s0) / (s1 - s0) * (right - left), bottom - (loss - l0) / (l1 - l0) * (bottom - top))

        draw.line([xy(s, v) for s, v in points], fill=(150, 170, 220), width=1)
        window = max(1, len(points) // 20)
        smooth = [
            sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
            for i in range(len(losses))
        ]
        draw.line([xy(s, v) for s, v in zip(steps, smooth, strict=True)], fill=(20, 60, 180), width=2)
        if held_out:
            marks = [xy(s, v) for s, v in held_out]
            if len(marks) > 1:
                draw.line(marks, fill=(200, 40, 40), width=2)
            for x, y in marks:
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(200, 40, 40))
            draw.text((left + 110, 4), "validation loss (fixed noise)", fill=(200, 40, 40))
        draw.text((4, top), f"{l1:.4g}", fill="black")
        draw.text((4, bottom - 10), f"{l0:.4g}", fill="black")
        draw.text((left, bottom + 6), f"step {s0}", fill="black")
        draw.text((right - 70, bottom + 6), f"step {max(steps)}", fill="black")
    image.save(png_path)
    return Path(png_path)


def _points(csv_path: Path) -> list[tuple[int, float]]:
    """(step, value) rows of a step,value[,...] CSV, finite values only; none when the file is absent."""
    if not csv_path.exists():
        return []
    rows = [line.split(",") for line in csv_path.read_text().splitlines()[1:] if line.strip()]
    return [(int(r[0]), float(r[1])) for r in rows if math.isfinite(float(r[1]))]
