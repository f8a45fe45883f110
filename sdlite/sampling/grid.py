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


def sweep_sheet(images: dict[tuple[int, ...], Any], axes: list[tuple[str, list[str]]]) -> Any:
    """A1111's X/Y/Z plot: the image of each cell (value indices x, y, z) in a table whose columns are the first
    axis's values and rows the second's, with a block per value of the third; every header says `name: value`."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    opened = {
        cell: (Image.open(im) if isinstance(im, str | Path) else im).convert("RGB") for cell, im in images.items()
    }
    tile = max(MIN_TILE, *(max(im.size) for im in opened.values()))
    (x_name, xs), *rest = axes
    y_name, ys = rest[0] if rest else ("", [""])
    z_name, zs = rest[1] if len(rest) > 1 else ("", [""])
    line = 12
    left = max(PAD, *(len(f"{y_name}: {y}") * 6 + 2 * PAD for y in ys)) if rest else PAD
    head = line * 2 + PAD
    block_h = head + len(ys) * (tile + PAD) + (line + PAD if len(axes) > 2 else 0)
    sheet = Image.new("RGB", (left + len(xs) * (tile + PAD) + PAD, len(zs) * block_h + PAD), "white")
    draw = ImageDraw.Draw(sheet)
    for zi, z in enumerate(zs):
        top = PAD + zi * block_h
        if len(axes) > 2:
            draw.text((PAD, top), f"{z_name}: {z}", fill="black", font=font)
            top += line + PAD
        for xi, x in enumerate(xs):
            for n, text in enumerate(textwrap.wrap(f"{x_name}: {x}", max(8, tile // 6))[:2]):
                draw.text((left + xi * (tile + PAD), top + n * line), text, fill="black", font=font)
        for yi, y in enumerate(ys):
            row = top + head + yi * (tile + PAD)
            if rest:
                draw.text((PAD, row + tile // 2 - line // 2), f"{y_name}: {y}", fill="black", font=font)
            for xi in range(len(xs)):
                cell = (xi, yi, zi)[: len(axes)]
                image = opened.get(cell)
                if image is not None:
                    scale = tile / max(image.size)
                    size = (round(image.width * scale), round(image.height * scale))
                    sheet.paste(image.resize(size, Image.Resampling.NEAREST), (left + xi * (tile + PAD), row))
    return sheet
