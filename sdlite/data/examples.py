"""What a training set is (examples: an image and its caption) and where it is found: a folder with
metadata.jsonl, metadata.csv or .txt sidecars, or a table (sdlite/data/tables.py).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlite.errors import DataError

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_JSONL = "metadata.jsonl"
_CSV = "metadata.csv"
_FILE_COLUMN = "file_name"  # the Hugging Face imagefolder convention
_MASK_COLUMN = "mask"  # --masked-loss: a metadata file's mask path, a table's mask image


@dataclass(frozen=True)
class Example:
    """One training pair: an image (a file, or row `row` of a Parquet/Arrow file) and its caption."""

    path: Path  # absolute
    caption: str
    row: int | None = None  # the image is in row `row` of the table file `path`
    # (width, height) upright, once check_images has read it; derived, so not part of equality
    size: tuple[int, int] | None = field(default=None, compare=False)
    image_column: str = "image"  # the table column that holds the image (rows only)
    captions: Any = None  # its dataset's CaptionOptions ([[datasets]]), else the run's settings
    mask: Path | None = None  # --masked-loss: the mask a metadata file's `mask` column names for it
    mask_column: str | None = None  # --masked-loss on a table: the column of its row that holds the mask
    dataset: int = 0  # which [[datasets]] table it came from

    def __str__(self) -> str:
        return str(self.path) if self.row is None else f"{self.path} row {self.row}"


@dataclass(frozen=True)
class Dataset:
    """The examples of a data folder, how they were found, and what was left out or patched (to report)."""

    examples: tuple[Example, ...]  # sorted by path, so runs and resumes see the same order
    source: str  # "metadata.jsonl", "metadata.csv", "sidecar", "parquet", "arrow" or "hub:ORG/NAME"
    skipped: tuple[str, ...] = ()  # "PATH: reason" lines for the end-of-run summary
    notes: tuple[str, ...] = ()  # what was changed on the way in (control characters removed), warned at the start
    validation: tuple[Example, ...] = ()  # held-out images scored for the validation loss, never trained on


def mask_path(image: Path) -> Path:
    """Where `--masked-loss` finds an image's mask: NAME_mask.png beside NAME.ext."""
    return image.with_name(f"{image.stem}_mask.png")


def discover(
    data_dir: Path | str,
    caption_column: str = "text",
    allow_missing_captions: bool = False,
    image_column: str = "image",
    offline: bool = False,
    strict: bool = False,
    masks: bool = False,
    caption_extension: str = ".txt",
) -> Dataset:
    """Find the examples of `data_dir`: a folder of images, or a table dataset (see below).

    In a folder: `metadata.jsonl`, else `metadata.csv`, else `.txt` sidecars. Metadata follows the
    Hugging Face imagefolder layout (`file_name` relative to the folder plus a caption column); images
    it does not list are ignored. Without metadata every image below the folder (hidden files and
    folders excluded) needs a same-stem caption file next to it (`caption_extension`, `.txt` by default).

    Tables (sdlite/data/tables.py): a `.parquet` file, a folder of Parquet shards (and no images), a
    `datasets` save_to_disk folder or `.arrow` file, or, when online, a hub dataset id. Each row is an
    example: `image_column` holds the image, `caption_column` the caption. Only captions are read here.

    A missing caption is an error unless `allow_missing_captions`, which trains the image with "" and
    notes it in `skipped`. Captions are stripped of surrounding whitespace, and of control characters (NUL, ESC;
    not tab or newline), noted once with their count; with `strict` (--strict-data) the first is a DataError naming
    its file or line. With `masks` (--masked-loss), an image's `NAME_mask.png` is its loss mask, not an example.
    """
    from sdlite.data import tables

    source = tables.locate(data_dir, offline, IMAGE_SUFFIXES)
    if source is not None:
        return _discover_table(source, caption_column, image_column, allow_missing_captions, strict, masks)
    folder = Path(data_dir).expanduser().resolve()

    if (folder / _JSONL).is_file():
        kind, rows = _JSONL, _read_jsonl(folder / _JSONL, folder, caption_column)
    elif (folder / _CSV).is_file():
        kind, rows = _CSV, _read_csv(folder / _CSV, folder, caption_column)
    else:
        kind, rows = "sidecar", _read_sidecars(folder, caption_extension)
    if not rows:
        where = f"{folder / kind} lists no images" if kind != "sidecar" else f"no images in {folder}"
        raise DataError(
            f"{where} (expected {_JSONL} or {_CSV} with {_FILE_COLUMN!r} and {caption_column!r} columns, "
            f"or image files ({', '.join(IMAGE_SUFFIXES)}) with same-name .txt captions, "
            "or Parquet shards, or a `datasets` save_to_disk folder)"
        )

    if masks:  # --masked-loss: an image's NAME_mask.png beside it is its mask, not a training image
        mask_files = {mask_path(path) for path, _, _ in rows}
        rows = [row for row in rows if row[0] not in mask_files]
    missing = [(path, where) for path, caption, where in rows if caption is None]
    _refuse_missing(missing, allow_missing_captions)
    located = [(path, caption, str(path.with_suffix(caption_extension) if kind == "sidecar" else folder / where))
               for path, caption, where in rows]  # fmt: skip
    rows, cleaned = _without_control_characters(located, strict)
    named = _mask_column(folder / kind, folder) if masks and kind in (_JSONL, _CSV) else {}
    examples = sorted(
        (Example(path, "" if caption is None else caption, mask=named.get(path)) for path, caption, _ in rows),
        key=lambda example: example.path.parts,
    )
    notes = tuple(f"{path}: missing caption (empty caption used)" for path, _ in sorted(missing, key=_path_parts))
    return Dataset(examples=tuple(examples), source=kind, skipped=notes, notes=cleaned)


def _without_control_characters(rows: list[_Row], strict: bool) -> tuple[list[_Row], tuple[str, ...]]:
    """The rows with control characters removed from their captions, and a note saying how many held some; with
    `strict` the first one found is a DataError naming where it is (a caption file, or a metadata line)."""
    from sdlite.schema import CONTROL_CHARACTER, control_name

    kept, dirty, names = [], [], set()
    for path, caption, where in rows:
        found = CONTROL_CHARACTER.search(caption or "")
        if found and strict:
            name = control_name(found.group())
            raise DataError(
                f"{where}: the caption holds a control character ({name} at character {found.start() + 1}): "
                "remove it (without --strict-data such characters are removed with a warning)"
            )
        if found:
            dirty.append(where)
            names |= {control_name(c) for c in CONTROL_CHARACTER.findall(caption)}  # type: ignore[arg-type]
            caption = CONTROL_CHARACTER.sub("", caption).strip()  # type: ignore[arg-type]
        kept.append((path, caption, where))
    if not dirty:
        return kept, ()
    more = f" and {len(dirty) - 1} more" if len(dirty) > 1 else ""
    which = ", ".join(sorted(names))
    return kept, (f"{dirty[0]}{more}: control characters ({which}) removed from {len(dirty)} caption(s)",)


def _discover_table(
    source: Any, caption_column: str, image_column: str, allow_missing_captions: bool, strict: bool, masks: bool
) -> Dataset:
    """One example per row, in file order then row order; with `masks`, a `mask` image column is each row's mask."""
    from sdlite.data import tables

    rows = tables.caption_rows(source, caption_column, image_column)
    if not rows:
        files = ", ".join(str(path) for path in source.files)
        raise DataError(f"no rows in {files}")
    missing = [(f"{row.path} row {row.row}", f"{caption_column!r} is null") for row in rows if row.caption is None]
    _refuse_missing(missing, allow_missing_captions)
    captions, cleaned = _without_control_characters(
        [(row.path, row.caption, f"{row.path} row {row.row}") for row in rows], strict
    )
    mask_column = _MASK_COLUMN if masks and tables.image_column_of(source, _MASK_COLUMN) else None
    examples = tuple(
        Example(row.path, "" if caption is None else caption, row=row.row, image_column=image_column,
                mask_column=mask_column)
        for row, (_, caption, _) in zip(rows, captions, strict=True)
    )  # fmt: skip
    notes = tuple(f"{name}: missing caption (empty caption used)" for name, _ in missing)
    return Dataset(examples=examples, source=source.label, skipped=notes, notes=cleaned)


def _refuse_missing(missing: list[Any], allow_missing_captions: bool) -> None:
    """DataError on the first (image, why) pair without a caption, unless they are allowed."""
    if missing and not allow_missing_captions:
        path, where = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(
            f"{path}: no caption ({where}){more}; add the caption, or pass --allow-missing-captions "
            "to train such images with an empty caption"
        )


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


def _mask_column(meta: Path, folder: Path) -> dict[Path, Path]:
    """--masked-loss: the `mask` column of a metadata file (a path inside the folder, like `file_name`), by image."""
    if meta.suffix == ".jsonl":
        with _open_text(meta) as lines:
            records = [(n, json.loads(line)) for n, line in _numbered(meta, lines) if line.strip()]
    else:
        with _open_text(meta) as lines:
            reader = csv.DictReader(lines)
            records = [(reader.line_num, dict(record)) for record in reader]
    found = {}
    for number, record in records:
        name = record.get(_MASK_COLUMN)
        if not isinstance(name, str) or not name.strip():
            continue
        relative = Path(name)
        mask = folder / relative
        if relative.is_absolute() or ".." in relative.parts or not mask.is_file():
            raise DataError(f"{meta}:{number}: mask {name!r} is not a file inside {folder}")
        found[folder / str(record.get(_FILE_COLUMN))] = mask
    return found


def _read_sidecars(folder: Path, extension: str = ".txt") -> list[_Row]:
    rows: list[_Row] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # .git, .ipynb_checkpoints, ...
        for name in sorted(files):
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue  # dot-files include macOS "._x.png" resource forks, which are not images
            path = Path(root) / name
            sidecar = path.with_suffix(extension)
            if not sidecar.is_file():
                rows.append((path, None, f"no {sidecar.name} next to it"))
                continue
            try:
                caption = sidecar.read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"{sidecar}: cannot read caption ({read_error(exc)})") from exc
            rows.append((path, caption.strip(), sidecar.name))
    return rows


def _open_text(path: Path) -> Any:
    """Open a metadata file as text; utf-8-sig because spreadsheet exports often start with a BOM."""
    try:
        return path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {read_error(exc)}") from exc


def _numbered(meta: Path, lines: Any) -> Any:
    """(line number, line) pairs, turning a decoding failure into a DataError naming the file."""
    try:
        yield from enumerate(lines, start=1)
    except UnicodeDecodeError as exc:
        raise DataError(f"{meta}: not UTF-8 text ({exc.reason})") from exc


def _path_parts(item: tuple[Path, str]) -> tuple[str, ...]:
    return item[0].parts


def read_error(exc: BaseException) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):  # Pillow's text names its file object (`<_io.BytesIO at 0x..>`)
        return "not an image format Pillow can read"
    return str(exc) or type(exc).__name__
