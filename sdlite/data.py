"""Training data: find image/caption pairs, read images robustly, turn them into tensors.

Pairs come from a folder (metadata.jsonl / metadata.csv as Hugging Face imagefolder lays them out, or
.txt sidecars) or from tables: Parquet files and shard folders, `datasets` save_to_disk folders, hub
dataset ids (sdlite/tables.py reads those; an example is then a row of a table file).

Every problem is found before training starts (`discover`, then `check_images`), so a run never dies
hours in on one bad file. Module import stays light: Pillow, numpy and torch load inside functions.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import struct
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sdlite.errors import DataError, UsageError

if TYPE_CHECKING:
    import torch
    from PIL import Image

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CROPS = ("center", "random")
_JSONL = "metadata.jsonl"
_CSV = "metadata.csv"
_FILE_COLUMN = "file_name"  # the Hugging Face imagefolder convention
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# Decoders of corrupt files raise more than OSError: these are the ones Pillow's plugins are known to
# let escape. Listed rather than `Exception` so that our own bugs still surface as bugs.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError, TypeError)


@dataclass(frozen=True)
class Example:
    """One training pair: an image (a file, or row `row` of a Parquet/Arrow file) and its caption."""

    path: Path  # absolute
    caption: str
    row: int | None = None  # the image is in row `row` of the table file `path`
    # (width, height) upright, once check_images has read it; derived, so not part of equality
    size: tuple[int, int] | None = field(default=None, compare=False)
    image_column: str = "image"  # the table column that holds the image (rows only)

    def __str__(self) -> str:
        return str(self.path) if self.row is None else f"{self.path} row {self.row}"


def load_example(example: Example) -> Image.Image:
    """The example's image as 8-bit RGB, upright (see load_image); DataError naming it when unreadable."""
    if example.row is None:
        return load_image(example.path)
    value = _row_image(example)
    return decode_image(value if isinstance(value, Path) else io.BytesIO(value), str(example))


def example_sha256(example: Example) -> str:
    """The sha256 of the image's encoded bytes: what the latent cache is keyed by.

    For a table row, the bytes in the row, or the file its path points to.
    """
    from sdlite.metadata import file_sha256

    if example.row is None:
        return file_sha256(example.path)
    value = _row_image(example)
    return file_sha256(value) if isinstance(value, Path) else hashlib.sha256(value).hexdigest()


def _row_image(example: Example) -> bytes | Path:
    """A table row's encoded image, or the existing file its path points to; DataError naming the row."""
    from sdlite import tables

    assert example.row is not None
    value = tables.image_value(example.path, example.row, example.image_column)
    if value is None:
        raise DataError(f"{example}: cannot read image (the {example.image_column!r} cell is empty)")
    if isinstance(value, Path) and not value.is_file():
        raise DataError(f"{example}: cannot read image ({value} does not exist)")
    return value


@dataclass(frozen=True)
class Dataset:
    """The examples of a data folder, how they were found, and what was left out or patched (to report)."""

    examples: tuple[Example, ...]  # sorted by path, so runs and resumes see the same order
    source: str  # "metadata.jsonl", "metadata.csv", "sidecar", "parquet", "arrow" or "hub:ORG/NAME"
    skipped: tuple[str, ...] = ()  # "PATH: reason" lines for the end-of-run summary


def discover(
    data_dir: Path | str,
    caption_column: str = "text",
    allow_missing_captions: bool = False,
    image_column: str = "image",
    offline: bool = False,
) -> Dataset:
    """Find the examples of `data_dir`: a folder of images, or a table dataset (see below).

    In a folder: `metadata.jsonl`, else `metadata.csv`, else `.txt` sidecars. Metadata follows the
    Hugging Face imagefolder layout (`file_name` relative to the folder plus a caption column); images
    it does not list are ignored. Without metadata every image below the folder (hidden files and
    folders excluded) needs a same-stem `.txt` next to it.

    Tables (sdlite/tables.py): a `.parquet` file, a folder of Parquet shards (and no images), a
    `datasets` save_to_disk folder or `.arrow` file, or, when online, a hub dataset id. Each row is an
    example: `image_column` holds the image, `caption_column` the caption. Only captions are read here.

    A missing caption is an error unless `allow_missing_captions`, which trains the image with "" and
    notes it in `skipped`. Captions are stripped of surrounding whitespace.
    """
    from sdlite import tables

    source = tables.locate(data_dir, offline, IMAGE_SUFFIXES)
    if source is not None:
        return _discover_table(source, caption_column, image_column, allow_missing_captions)
    folder = Path(data_dir).expanduser().resolve()

    if (folder / _JSONL).is_file():
        kind, rows = _JSONL, _read_jsonl(folder / _JSONL, folder, caption_column)
    elif (folder / _CSV).is_file():
        kind, rows = _CSV, _read_csv(folder / _CSV, folder, caption_column)
    else:
        kind, rows = "sidecar", _read_sidecars(folder)
    if not rows:
        where = f"{folder / kind} lists no images" if kind != "sidecar" else f"no images in {folder}"
        raise DataError(
            f"{where} (expected {_JSONL} or {_CSV} with {_FILE_COLUMN!r} and {caption_column!r} columns, "
            f"or image files ({', '.join(IMAGE_SUFFIXES)}) with same-name .txt captions, "
            "or Parquet shards, or a `datasets` save_to_disk folder)"
        )

    missing = [(path, where) for path, caption, where in rows if caption is None]
    _refuse_missing(missing, allow_missing_captions)
    examples = sorted(
        (Example(path, "" if caption is None else caption) for path, caption, _ in rows),
        key=lambda example: example.path.parts,
    )
    notes = tuple(f"{path}: missing caption (empty caption used)" for path, _ in sorted(missing, key=_path_parts))
    return Dataset(examples=tuple(examples), source=kind, skipped=notes)


def _discover_table(source: Any, caption_column: str, image_column: str, allow_missing_captions: bool) -> Dataset:
    """One example per row, in file order then row order."""
    from sdlite import tables

    rows = tables.caption_rows(source, caption_column, image_column)
    if not rows:
        files = ", ".join(str(path) for path in source.files)
        raise DataError(f"no rows in {files}")
    examples = tuple(
        Example(row.path, "" if row.caption is None else row.caption, row=row.row, image_column=image_column)
        for row in rows
    )
    missing = [(f"{row.path} row {row.row}", f"{caption_column!r} is null") for row in rows if row.caption is None]
    _refuse_missing(missing, allow_missing_captions)
    notes = tuple(f"{name}: missing caption (empty caption used)" for name, _ in missing)
    return Dataset(examples=examples, source=source.label, skipped=notes)


def _refuse_missing(missing: list[Any], allow_missing_captions: bool) -> None:
    """DataError on the first (image, why) pair without a caption, unless they are allowed."""
    if missing and not allow_missing_captions:
        path, where = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(
            f"{path}: no caption ({where}){more}; add the caption, or pass --allow-missing-captions "
            "to train such images with an empty caption"
        )


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
        raise DataError(f"{name}: cannot read image ({_reason(exc)})") from exc
    return image


def check_images(dataset: Dataset, skip_bad_images: bool) -> Dataset:
    """Read every image once before training; fail on the first bad one, or drop and note all of them.

    Images decode on several threads (Pillow releases the GIL), and a good image's size is remembered
    while its file is unchanged (sdlite/filecache.py), so a later run over the same data only looks up
    what it already checked.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(CHECK_THREADS, os.cpu_count() or 1)) as pool:
        checked = list(pool.map(_checked_size, dataset.examples))
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


def augmentation_is_fixed(crop: str, flip: bool) -> bool:
    """Whether every epoch sees the same pixels, so VAE latents can be computed once and cached."""
    return crop == "center" and not flip


def preprocess(image: Image.Image, resolution: int | tuple[int, int], crop: str, flip: bool, seed: int) -> torch.Tensor:
    """Resize to cover `resolution` (a side, or a (width, height) bucket) keeping the aspect ratio (bicubic),
    crop the remainder, maybe flip; float32 (3, H, W) in [-1, 1].

    All randomness comes from `random.Random(seed)`, drawn in a fixed order: the flip coin first (so
    it does not depend on image size or crop mode), then the x and y crop offsets for crop="random".
    """
    import numpy as np
    import torch
    from PIL import Image

    out_w, out_h = (resolution, resolution) if isinstance(resolution, int) else resolution
    if min(out_w, out_h) < 1:
        raise UsageError(f"resolution must be at least 1, got {resolution}")
    if crop not in CROPS:
        raise UsageError(f"crop must be one of {', '.join(CROPS)}; got {crop!r}")
    rng = random.Random(seed)
    do_flip = rng.random() < 0.5

    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    scale = max(out_w / width, out_h / height)
    size = (max(out_w, round(width * scale)), max(out_h, round(height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    spare_x, spare_y = size[0] - out_w, size[1] - out_h
    if crop == "random":
        left, top = rng.randint(0, spare_x), rng.randint(0, spare_y)
    else:
        left, top = spare_x // 2, spare_y // 2
    image = image.crop((left, top, left + out_w, top + out_h))
    if flip and do_flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)

    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # (R, R, 3), a fresh writable copy
    return pixels.permute(2, 0, 1).contiguous().to(torch.float32).div(127.5).sub(1.0)


# Rows are (absolute image path, caption or None when missing, where it came from for messages).
_Row = tuple[Path, str | None, str]


def _read_jsonl(meta: Path, folder: Path, caption_column: str) -> list[_Row]:
    rows: list[_Row] = []
    with _open_text(meta) as lines:
        for number, line in _numbered(meta, lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{meta}:{number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise DataError(f"{meta}:{number}: expected a JSON object, got {type(record).__name__}")
            rows.append(_metadata_row(meta, number, folder, record, caption_column))
    return rows


def _read_csv(meta: Path, folder: Path, caption_column: str) -> list[_Row]:
    rows: list[_Row] = []
    with _open_text(meta) as lines:
        reader = csv.DictReader(lines)
        try:
            columns = reader.fieldnames
            if columns is None:
                return rows
            if _FILE_COLUMN not in columns:
                raise DataError(f"{meta}: no {_FILE_COLUMN!r} column (columns: {', '.join(columns)})")
            for record in reader:
                record.pop(None, None)  # cells beyond the header
                present = {key: value for key, value in record.items() if value is not None}
                rows.append(_metadata_row(meta, reader.line_num, folder, present, caption_column))
        except csv.Error as exc:
            raise DataError(f"{meta}:{reader.line_num}: malformed CSV ({exc})") from exc
        except UnicodeDecodeError as exc:
            raise DataError(f"{meta}: not UTF-8 text ({exc.reason})") from exc
    return rows


def _metadata_row(meta: Path, number: int, folder: Path, record: dict[str, Any], caption_column: str) -> _Row:
    """Check one metadata row: its file must exist inside the folder; a null or absent caption is missing."""
    name = record.get(_FILE_COLUMN)
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{meta}:{number}: no {_FILE_COLUMN!r} (the image path relative to {folder})")
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise DataError(f"{meta}:{number}: {_FILE_COLUMN} {name!r} must be a path inside {folder}")
    path = folder / relative
    if not path.is_file():
        raise DataError(f"{meta}:{number}: {name} does not exist (looked for {path})")
    value = record.get(caption_column)
    if value is None:
        columns = ", ".join(str(key) for key in record)
        return path, None, f"{meta.name}:{number} has no {caption_column!r} column; it has: {columns}"
    return path, (value if isinstance(value, str) else str(value)).strip(), f"{meta.name}:{number}"


def _read_sidecars(folder: Path) -> list[_Row]:
    rows: list[_Row] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # .git, .ipynb_checkpoints, ...
        for name in sorted(files):
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue  # dot-files include macOS "._x.png" resource forks, which are not images
            path = Path(root) / name
            sidecar = path.with_suffix(".txt")
            if not sidecar.is_file():
                rows.append((path, None, f"no {sidecar.name} next to it"))
                continue
            try:
                caption = sidecar.read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"{sidecar}: cannot read caption ({_reason(exc)})") from exc
            rows.append((path, caption.strip(), sidecar.name))
    return rows


def _open_text(path: Path) -> Any:
    """Open a metadata file as text; utf-8-sig because spreadsheet exports often start with a BOM."""
    try:
        return path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {_reason(exc)}") from exc


def _numbered(meta: Path, lines: Any) -> Any:
    """(line number, line) pairs, turning a decoding failure into a DataError naming the file."""
    try:
        yield from enumerate(lines, start=1)
    except UnicodeDecodeError as exc:
        raise DataError(f"{meta}: not UTF-8 text ({exc.reason})") from exc


def _path_parts(item: tuple[Path, str]) -> tuple[str, ...]:
    return item[0].parts


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


def _reason(exc: BaseException) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):  # Pillow's text names its file object (`<_io.BytesIO at 0x..>`)
        return "not an image format Pillow can read"
    return str(exc) or type(exc).__name__
