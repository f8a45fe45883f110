"""Labelled contact sheets: every image of a run in one PNG, with its caption underneath."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

MIN_TILE = 128  # small images are enlarged (nearest neighbour) so their labels stay readable
PAD = 4


def contact_sheet(items: list[tuple[Any, str]], columns: int | None = None) -> Any:
    """Lay out (image or image path, label) pairs on a white sheet, `columns` wide (default: near square)."""
    from PIL import Image, ImageDraw, ImageFont

    images = [(Image.open(item) if isinstance(item, str | Path) else item).convert("RGB") for item, _ in items]
    tile = max(MIN_TILE, *(max(im.size) for im in images)) if images else MIN_TILE
    font = ImageFont.load_default()
    chars_per_line = max(8, tile // 7)
    labels = [textwrap.wrap(label, chars_per_line)[:4] for _, label in items]
    line_height = 12
    label_height = line_height * max((len(lines) for lines in labels), default=1) + PAD
    columns = columns or max(1, math.ceil(math.sqrt(len(images))))
    rows = max(1, math.ceil(len(images) / columns))
    cell_w, cell_h = tile + PAD, tile + label_height + PAD
    sheet = Image.new("RGB", (columns * cell_w + PAD, rows * cell_h + PAD), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, lines) in enumerate(zip(images, labels, strict=True)):
        x, y = PAD + (i % columns) * cell_w, PAD + (i // columns) * cell_h
        scale = tile / max(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        sheet.paste(image.resize(size, Image.Resampling.NEAREST), (x, y))
        for n, line in enumerate(lines):
            draw.text((x, y + tile + 2 + n * line_height), line, fill="black", font=font)
    return sheet
