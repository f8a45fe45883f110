"""Training images read robustly (EXIF, 16-bit, palette, alpha), checked once before a run, and turned into
tensors (resize, crop, flip).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sdlite.data.examples import Dataset, Example, read_error
from sdlite.errors import DataError, UsageError

if TYPE_CHECKING:
    import torch
    from PIL import Image


CROPS = ("center", "random")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


# Decoders of corrupt files raise more than OSError: these are the ones Pillow's plugins are known to
# let escape. Listed rather than `Exception` so that our own bugs still surface as bugs.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError, TypeError)


def load_example(example: Example) -> Image.Image:
    """The example's image as 8-bit RGB, upright (see load_image); DataError naming it when unreadable."""
    return decode_image(image_source(example), str(example))


def image_source(example: Example) -> Path | BinaryIO:
    """What the example's encoded image is read from: its file, or its table row's file or bytes."""
    if example.row is None:
        return example.path
    value = _row_image(example)
    return value if isinstance(value, Path) else io.BytesIO(value)


def example_sha256(example: Example) -> str:
    """The sha256 of the image's encoded bytes: what the latent cache is keyed by.

    For a table row, the bytes in the row, or the file its path points to.
    """
    from sdlite.filecache import file_sha256

    if example.row is None:
        return file_sha256(example.path)
    value = _row_image(example)
    return file_sha256(value) if isinstance(value, Path) else hashlib.sha256(value).hexdigest()


def _row_image(example: Example) -> bytes | Path:
    """A table row's encoded image, or the existing file its path points to; DataError naming the row."""
    from sdlite.data import tables

    assert example.row is not None
    value = tables.image_value(example.path, example.row, example.image_column)
    if value is None:
        raise DataError(f"{example}: cannot read image (the {example.image_column!r} cell is empty)")
    if isinstance(value, Path) and not value.is_file():
        raise DataError(f"{example}: cannot read image ({value} does not exist)")
    return value


def load_image(path: Path) -> Image.Image:
    """Open any image as 8-bit RGB, upright, transparency on white; DataError when it cannot be read.

    16-bit and float images are rescaled (Pillow's own conversion clips them to white). Pillow's
    decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`) stays on: an image above it is refused.
    """
    return decode_image(path, str(path))


def decode_image(source: Path | BinaryIO, name: str) -> Image.Image:
    """load_image's decoding of a file or of encoded bytes; errors name `name` (a path, or "PATH row N")."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                opened.load()  # decode now: truncated or corrupt data fails here, not mid-training
                upright = ImageOps.exif_transpose(opened)
                image = _to_rgb(upright)
                if image is opened:
                    image = image.copy()  # the file closes when this block ends
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{name}: cannot read image (too large: {exc})") from exc
    except _DECODE_ERRORS as exc:
        raise DataError(f"{name}: cannot read image ({read_error(exc)})") from exc
    return image


def check_images(dataset: Dataset, skip_bad_images: bool) -> Dataset:
    """Read every image once before training; fail on the first bad one, or drop and note all of them.

    Images decode on several threads (Pillow releases the GIL), and a good image's size is remembered
    while its file is unchanged (sdlite/filecache.py), so a later run over the same data only looks up
    what it already checked.
    """
    from concurrent.futures import ThreadPoolExecutor

    threads = min(CHECK_THREADS, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        checked = list(_in_order(pool, _checked_size, dataset.examples, 2 * threads))
    good: list[Example] = []
    bad: list[str] = []
    for example, size in zip(dataset.examples, checked, strict=True):
        if isinstance(size, str):
            bad.append(size)
        else:
            good.append(replace(example, size=size))
    if bad and not skip_bad_images:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"{bad[0]}{more}; fix or remove it, or pass --skip-bad-images to train without it")
    if not good:
        raise DataError(f"no readable images left: all {len(bad)} failed to load (first: {bad[0]})")
    return replace(dataset, examples=tuple(good), skipped=(*dataset.skipped, *bad))


CHECK_THREADS = 8


def _in_order(pool: Any, fn: Any, items: Any, ahead: int) -> Iterator[Any]:
    """`fn` of each item on `pool`, in order, with at most `ahead` submitted beyond the one awaited: an interrupt or
    an error stops the check after a bounded few more images, however slow the waiting thread is."""
    from collections import deque

    pending: deque[Any] = deque()
    source = iter(items)
    try:
        for item in source:
            pending.append(pool.submit(fn, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


_SIZES = "image-size-v1"  # filecache kind: (width, height) upright of an image that decoded


def _checked_size(example: Example) -> tuple[int, int] | str:
    """The example's upright (width, height), or why it cannot be read."""
    from sdlite import filecache

    key = _content_key(example)
    known = filecache.recall(_SIZES, key) if key else None
    if isinstance(known, list) and len(known) == 2:
        return int(known[0]), int(known[1])
    try:
        size = load_example(example).size
    except DataError as exc:
        return str(exc)
    if key:
        filecache.remember(_SIZES, key, list(size))
    return size


def _content_key(example: Example) -> str | None:
    """What identifies the example's encoded image without reading it; None when that cannot be told."""
    from sdlite.filecache import file_key

    try:
        if example.row is None:
            return file_key(example.path)
        value = _row_image(example)
        if isinstance(value, Path):
            return file_key(value)
        return f"{file_key(example.path)}|row {example.row}|{example.image_column}"
    except (OSError, DataError):
        return None  # load_example will say what is wrong


def preprocess(image: Image.Image, resolution: int | tuple[int, int], crop: str, flip: bool, seed: int) -> torch.Tensor:
    """Resize to cover `resolution` (a side, or a (width, height) bucket) keeping the aspect ratio (bicubic),
    crop the remainder, maybe flip; float32 (3, H, W) in [-1, 1].

    All randomness comes from `random.Random(seed)`, drawn in a fixed order: the flip coin first (so
    it does not depend on image size or crop mode), then the x and y crop offsets for crop="random".
    """
    import numpy as np
    import torch
    from PIL import Image

    if image.mode != "RGB":
        image = image.convert("RGB")
    cut = crop_of(image.size, resolution, crop, flip, seed)
    if cut.resized != image.size:
        image = image.resize(cut.resized, Image.Resampling.BICUBIC)
    image = image.crop((cut.left, cut.top, cut.left + cut.width, cut.top + cut.height))
    if cut.flipped:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)

    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # (R, R, 3), a fresh writable copy
    return pixels.permute(2, 0, 1).contiguous().to(torch.float32).div(127.5).sub(1.0)


@dataclass(frozen=True)
class Cut:
    """How `preprocess` makes a training image from a picture: its size, the size it is resized to, the crop
    box's top-left corner and size in the resized picture, and whether the result is flipped."""

    original: tuple[int, int]  # (width, height)
    resized: tuple[int, int]
    left: int
    top: int
    width: int
    height: int
    flipped: bool

    def micro_conditioning(self) -> tuple[int, int, int, int, int, int]:
        """SDXL's six numbers for this image: original (height, width), crop top-left (top, left) as the model
        sees it (mirrored with the picture when flipped), target (height, width)."""
        left = self.resized[0] - self.width - self.left if self.flipped else self.left
        return (self.original[1], self.original[0], self.top, left, self.height, self.width)


def crop_of(size: tuple[int, int], resolution: int | tuple[int, int], crop: str, flip: bool, seed: int) -> Cut:
    """The resize, crop and flip `preprocess` applies to a picture of `size` (width, height); no pixels touched."""
    out_w, out_h = (resolution, resolution) if isinstance(resolution, int) else resolution
    if min(out_w, out_h) < 1:
        raise UsageError(f"resolution must be at least 1, got {resolution}")
    if crop not in CROPS:
        raise UsageError(f"crop must be one of {', '.join(CROPS)}; got {crop!r}")
    rng = random.Random(seed)
    do_flip = rng.random() < 0.5
    width, height = size
    scale = max(out_w / width, out_h / height)
    resized = (max(out_w, round(width * scale)), max(out_h, round(height * scale)))
    spare_x, spare_y = resized[0] - out_w, resized[1] - out_h
    if crop == "random":
        left, top = rng.randint(0, spare_x), rng.randint(0, spare_y)
    else:
        left, top = spare_x // 2, spare_y // 2
    return Cut((width, height), resized, left, top, out_w, out_h, flip and do_flip)


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode, compositing transparency onto white."""
    from PIL import Image

    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _high_depth_to_la(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_la(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grayscale to 8-bit "L" (or "LA" when a transparent value is set).

    Integer modes are read as 16-bit (the range of 16-bit PNG and TIFF files): 65535 is white, and
    values are rounded to 8 bits, not clipped. Float images are taken to be in [0, 1].
    """
    import numpy as np
    from PIL import Image

    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.nan_to_num(values) * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray)
    values = np.asarray(image.convert("I") if image.mode != "I" else image).astype(np.int64)
    gray = ((np.clip(values, 0, 65535) + 128) // 257).astype(np.uint8)
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):
        alpha = np.where(values == transparent, 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([gray, alpha], axis=-1))
    return Image.fromarray(gray)
