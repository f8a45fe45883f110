"""Training data held in tables: Parquet files, `datasets` save_to_disk folders and hub datasets.

Hugging Face datasets publish images as a column of a table: a struct `{bytes, path}` (the `datasets`
Image feature), plain encoded bytes, or a path string. Nothing here holds a dataset in memory whole:
discovery reads only the caption column, one Parquet row group or Arrow record batch at a time, and
an image is read when asked for, by (file, row), through a small cache of open readers. Arrow files
(`save_to_disk` folders, the `datasets` cache) are memory-mapped, so rows cost nothing until touched.
Decoding the image bytes is data/images.py's job; this module only finds them.

pyarrow loads inside functions (module import stays light); `datasets` is needed only for hub ids.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlite.errors import DataError

PARQUET = ".parquet"
ARROW = ".arrow"
IMAGE_FEATURE_FIELDS = ("bytes", "path")  # the struct `datasets.Image()` stores
_DICT_FILE = "dataset_dict.json"  # a save_to_disk DatasetDict: one subfolder per split
_STATE_FILE = "state.json"  # a save_to_disk Dataset: lists its .arrow files in order
_INFO_FILE = "dataset_info.json"
_DATA_FOLDER = "data"  # where hub dataset repos keep their Parquet shards
_TRAIN = "train"
# Split names the way `datasets` recognises them in shard names ("train-00000-of-00002.parquet",
# "data/test/0000.parquet"); a shard whose name says no split belongs to "train", as there.
_SPLIT_WORDS = {
    "train": "train",
    "training": "train",
    "test": "test",
    "testing": "test",
    "eval": "test",
    "evaluation": "test",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_READERS = 4  # open files kept; training walks the rows in a shuffled order, so a few beat one


@dataclass(frozen=True)
class TableSource:
    """The table files of a dataset, in dataset order, and how they were found."""

    kind: str  # "parquet" or "arrow"
    files: tuple[Path, ...]  # absolute
    label: str  # Dataset.source: "parquet", "arrow", "hub:ORG/NAME"


@dataclass(frozen=True)
class CaptionRow:
    path: Path  # the table file
    row: int  # 0-based over the whole file
    caption: str | None  # stripped; None when the cell is null


def looks_like_hub_id(text: str) -> bool:
    """`ORG/NAME`, the way hub dataset ids are written (a relative path can look the same)."""
    return _HUB_ID.fullmatch(text) is not None and not text.endswith((".", "-"))


def env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def locate(data: Path | str, offline: bool = False, image_suffixes: tuple[str, ...] = ()) -> TableSource | None:
    """The table dataset `data` names, or None when it is an image folder (data/examples.py reads those).

    A `.parquet` or `.arrow` file; a save_to_disk folder (`state.json` and `dataset_info.json`, or
    `dataset_dict.json` with split subfolders: "train", else the only split); a folder of Parquet shards (`*.parquet`, or under
    `data/` as hub repos lay them out) without `metadata.jsonl`/`metadata.csv` or image files
    (`image_suffixes`) next to them; when online, a hub dataset id that is not a local path.
    """
    text = str(data)
    path = Path(data).expanduser()
    if not path.exists():
        if not looks_like_hub_id(text):
            raise DataError(f"data folder {path} does not exist")
        if offline or env_offline():
            raise DataError(
                f"{text} is not a local path, and hub dataset ids cannot be fetched offline "
                "(--offline or HF_HUB_OFFLINE=1); run online to download it, or give a local folder or file"
            )
        return _hub(text)
    path = path.resolve()
    if path.is_file():
        if path.suffix.lower() == PARQUET:
            return TableSource("parquet", (path,), "parquet")
        if path.suffix.lower() == ARROW:
            return TableSource("arrow", (path,), "arrow")
        raise DataError(f"data folder {path} is not a folder (nor a {PARQUET} or {ARROW} file)")
    if not path.is_dir():
        raise DataError(f"data folder {path} is not a folder")
    if (path / _DICT_FILE).is_file():
        return _saved_dataset(_split_folder(path))
    if (path / _STATE_FILE).is_file() and (path / _INFO_FILE).is_file():  # as `datasets.load_from_disk` tells
        return _saved_dataset(path)
    if (path / "metadata.jsonl").is_file() or (path / "metadata.csv").is_file():
        return None
    shards = _parquet_shards(path)
    if not shards or _has_images(path, image_suffixes):
        return None  # an image folder, as before: sidecar captions
    return TableSource("parquet", shards, "parquet")


def caption_rows(source: TableSource, caption_column: str, image_column: str) -> list[CaptionRow]:
    """Every row's caption, file by file in order; reads the caption column only, never an image."""
    rows: list[CaptionRow] = []
    for path in source.files:
        captions = _parquet_captions if source.kind == "parquet" else _arrow_captions
        for row, value in enumerate(captions(path, caption_column, image_column)):
            caption = None if value is None else (value if isinstance(value, str) else str(value)).strip()
            rows.append(CaptionRow(path, row, caption))
    return rows


def image_value(path: Path, row: int, image_column: str) -> bytes | Path | None:
    """Row `row`'s image in table file `path`: its encoded bytes, the file it points to, or None (null).

    A path that is not absolute is taken relative to the table file's folder.
    """
    with _LOCK:
        value = _reader(path, image_column).cell(row)
    if isinstance(value, dict):  # the `datasets` Image struct: bytes win, as in `datasets` itself
        value = value.get("bytes") or value.get("path")
    if value is None or isinstance(value, bytes):
        return value or None
    if isinstance(value, str):
        if not value:
            return None
        file = Path(value).expanduser()
        return file if file.is_absolute() else path.parent / file
    raise DataError(f"{path} row {row}: column {image_column!r} holds {type(value).__name__}, not an image")


def image_column_of(source: TableSource, column: str) -> bool:
    """Whether every file of the table has `column`, of a type that holds images (a loss-mask column, say)."""
    for path in source.files:
        schema = _parquet_file(path).schema_arrow if source.kind == "parquet" else _open_arrow(path).schema
        if column not in schema.names or not _is_image_type(schema.field(column).type):
            return False
    return True


def null_rows(path: Path, column: str) -> list[int]:
    """The rows of table file `path` whose `column` is null (reads that column only)."""
    import pyarrow as pa

    if path.suffix == ".parquet":
        table = _parquet_file(path)
        parts = [table.read_row_group(g, columns=[column]).column(0) for g in range(table.num_row_groups)]
    else:
        reader = _open_arrow(path)
        index = reader.schema.get_field_index(column)
        batches = (
            (reader.get_batch(i) for i in range(reader.num_record_batches))
            if isinstance(reader, pa.ipc.RecordBatchFileReader)
            else iter(reader)
        )
        parts = [batch.column(index) for batch in batches]
    nulls: list[int] = []
    offset = 0
    for part in parts:
        nulls += [offset + i for i, null in enumerate(part.is_null().to_pylist()) if null]
        offset += len(part)
    return nulls


def clear_readers() -> None:
    """Close the cached readers (tests, and callers that rewrite table files in place)."""
    with _LOCK:
        _OPEN.clear()


# --- finding the files ------------------------------------------------------------------------------


def _parquet_shards(folder: Path) -> tuple[Path, ...]:
    """`*.parquet` in the folder and anywhere under its `data/`, one split's worth, sorted by name."""
    shards = [p for p in folder.glob(f"*{PARQUET}") if p.is_file() and not p.name.startswith(".")]
    data = folder / _DATA_FOLDER
    if data.is_dir():
        shards += [
            p
            for p in data.rglob(f"*{PARQUET}")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        ]
    if not shards:
        return ()
    splits: dict[str, list[Path]] = {}
    for shard in shards:
        splits.setdefault(_shard_split(shard.relative_to(folder)), []).append(shard)
    name = _pick_split(sorted(splits), folder, "point --data at one split's shard file")
    return tuple(sorted(splits[name], key=lambda p: p.relative_to(folder).parts))


def _shard_split(relative: Path) -> str:
    for part in (*relative.parent.parts, relative.name):
        word = re.split(r"[-_.]", part.lower(), maxsplit=1)[0]
        if word in _SPLIT_WORDS:
            return _SPLIT_WORDS[word]
    return _TRAIN


def _pick_split(splits: list[str], where: Path | str, hint: str) -> str:
    """The "train" split, else the only one; else an error naming the splits."""
    if _TRAIN in splits:
        return _TRAIN
    if len(splits) == 1:
        return splits[0]
    raise DataError(
        f"{where}: splits {', '.join(splits)}, none named {_TRAIN!r} (sdlite trains on {_TRAIN!r} or on the "
        f"only split); {hint}"
    )


def _split_folder(folder: Path) -> Path:
    meta = folder / _DICT_FILE
    splits = _read_json(meta).get("splits")
    if not isinstance(splits, list) or not splits or not all(isinstance(s, str) for s in splits):
        raise DataError(f"{meta}: expected a non-empty 'splits' list of names")
    split = folder / _pick_split(splits, meta, "point --data at one split's folder")
    if not (split / _STATE_FILE).is_file():
        raise DataError(f"{meta}: lists split {split.name!r} but {split} holds no {_STATE_FILE}")
    return split


def _saved_dataset(folder: Path) -> TableSource:
    """The .arrow files of a save_to_disk folder, in the order its state.json lists them."""
    state = folder / _STATE_FILE
    listed = _read_json(state).get("_data_files")
    if not isinstance(listed, list) or not all(isinstance(e, dict) and "filename" in e for e in listed):
        raise DataError(f"{state}: no '_data_files' list of {{'filename': ...}} entries")
    files = tuple(folder / str(entry["filename"]) for entry in listed)
    for file in files:
        if not file.is_file():
            raise DataError(f"{state} lists {file.name}, which is missing from {folder}")
    if not files:
        raise DataError(f"{folder}: a `datasets` save_to_disk folder without data files")
    return TableSource("arrow", files, "arrow")


def _has_images(folder: Path, suffixes: tuple[str, ...]) -> bool:
    for _, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(not f.startswith(".") and Path(f).suffix.lower() in suffixes for f in files):
            return True
    return False


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object")
    return value


def _hub(repo_id: str) -> TableSource:
    """Download (or reuse the cache of) a hub dataset through `datasets`; its Arrow cache files are read here."""
    try:
        import datasets
        from datasets.exceptions import DatasetsError
    except ImportError as exc:
        raise DataError(
            f"{repo_id} is read as a hub dataset id, which needs the `datasets` package: "
            "pip install 'sdlite[datasets]' (or give a local folder or file)"
        ) from exc
    try:
        splits = list(datasets.get_dataset_split_names(repo_id))
        split = _pick_split(splits, f"hub dataset {repo_id}", "save the split you want locally and point --data at it")
        dataset = datasets.load_dataset(repo_id, split=split)
    except (DatasetsError, OSError, ValueError) as exc:  # hub HTTP errors are OSErrors
        raise DataError(f"{repo_id}: no such local path, and it could not be loaded as a hub dataset ({exc})") from exc
    files = tuple(Path(entry["filename"]) for entry in dataset.cache_files)
    if not files:
        raise DataError(f"hub dataset {repo_id}: `datasets` kept it in memory, so there are no Arrow files to read")
    return TableSource("arrow", files, f"hub:{repo_id}")


# --- reading -----------------------------------------------------------------------------------------


def _check_columns(path: Path, schema: Any, caption_column: str, image_column: str) -> None:
    """Both columns present, and the image column of a type that can hold images."""
    for column, flag in ((caption_column, "--caption-column"), (image_column, "--image-column")):
        if column not in schema.names:
            raise DataError(
                f"{path}: no {column!r} column (columns: {', '.join(schema.names)}); choose one with {flag}"
            )
    kind = schema.field(image_column).type
    if not _is_image_type(kind):
        raise DataError(
            f"{path}: column {image_column!r} holds {kind}, not images (expected the `datasets` Image "
            "struct {bytes, path}, encoded bytes or path strings)"
        )


def _is_image_type(kind: Any) -> bool:
    import pyarrow as pa

    def plain(t: Any) -> bool:
        return (
            pa.types.is_binary(t)
            or pa.types.is_large_binary(t)
            or pa.types.is_binary_view(t)
            or pa.types.is_string(t)
            or pa.types.is_large_string(t)
            or pa.types.is_string_view(t)
        )

    if pa.types.is_struct(kind):
        names = [kind.field(i).name for i in range(kind.num_fields)]
        return any(n in names for n in IMAGE_FEATURE_FIELDS) and all(
            plain(kind.field(n).type) for n in IMAGE_FEATURE_FIELDS if n in names
        )
    return plain(kind)


def _parquet_file(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path, memory_map=True)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc


def _parquet_captions(path: Path, caption_column: str, image_column: str) -> Iterator[Any]:
    import pyarrow as pa

    table = _parquet_file(path)
    _check_columns(path, table.schema_arrow, caption_column, image_column)
    try:
        for group in range(table.num_row_groups):
            yield from table.read_row_group(group, columns=[caption_column]).column(0).to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read column {caption_column!r} ({exc})") from exc


def _open_arrow(path: Path) -> Any:
    """A reader over an Arrow IPC file, memory-mapped: the stream format `datasets` writes, or the file format."""
    import pyarrow as pa

    try:
        source = pa.memory_map(str(path))
        try:
            return pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_file(source)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: not a readable Arrow file ({exc})") from exc


def _arrow_captions(path: Path, caption_column: str, image_column: str) -> Iterator[Any]:
    import pyarrow as pa

    reader = _open_arrow(path)
    _check_columns(path, reader.schema, caption_column, image_column)
    index = reader.schema.get_field_index(caption_column)
    try:
        if isinstance(reader, pa.ipc.RecordBatchFileReader):
            batches: Iterator[Any] = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            batches = iter(reader)
        for batch in batches:
            yield from batch.column(index).to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read column {caption_column!r} ({exc})") from exc


class _ParquetReader:
    """One Parquet file's image column, one row group held at a time."""

    def __init__(self, path: Path, column: str) -> None:
        self.path, self.column = path, column
        self.file = _parquet_file(path)
        if column not in self.file.schema_arrow.names:
            raise DataError(f"{path}: no {column!r} column (columns: {', '.join(self.file.schema_arrow.names)})")
        meta = self.file.metadata
        self.starts = [0]
        for group in range(meta.num_row_groups):
            self.starts.append(self.starts[-1] + meta.row_group(group).num_rows)
        self.group, self.values = -1, None

    def cell(self, row: int) -> Any:
        import pyarrow as pa

        if not 0 <= row < self.starts[-1]:
            raise DataError(f"{self.path} row {row}: no such row (the file has {self.starts[-1]})")
        group = bisect.bisect_right(self.starts, row) - 1
        if group != self.group:
            try:
                self.values = self.file.read_row_group(group, columns=[self.column]).column(0)
            except (OSError, pa.ArrowException) as exc:
                raise DataError(f"{self.path} row {row}: cannot read column {self.column!r} ({exc})") from exc
            self.group = group
        return self.values[row - self.starts[group]].as_py()  # type: ignore[index]


class _ArrowReader:
    """One memory-mapped Arrow file's image column (record batches reference the map: nothing is copied)."""

    def __init__(self, path: Path, column: str) -> None:
        import pyarrow as pa

        self.path = path
        try:
            table = _open_arrow(path).read_all()
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{path}: not a readable Arrow file ({exc})") from exc
        if column not in table.column_names:
            raise DataError(f"{path}: no {column!r} column (columns: {', '.join(table.column_names)})")
        self.values = table.column(column)

    def cell(self, row: int) -> Any:
        if not 0 <= row < len(self.values):
            raise DataError(f"{self.path} row {row}: no such row (the file has {len(self.values)})")
        return self.values[row].as_py()


_LOCK = threading.Lock()
_OPEN: OrderedDict[tuple[Any, ...], _ParquetReader | _ArrowReader] = OrderedDict()


def _reader(path: Path, column: str) -> _ParquetReader | _ArrowReader:
    """A cached reader; keyed by size and mtime too, so a rewritten file is opened afresh."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    key = (path, column, stat.st_size, stat.st_mtime_ns)
    reader = _OPEN.get(key)
    if reader is None:
        kind = _ArrowReader if path.suffix.lower() == ARROW else _ParquetReader
        reader = _OPEN[key] = kind(path, column)
        while len(_OPEN) > _READERS:
            _OPEN.popitem(last=False)
    _OPEN.move_to_end(key)
    return reader
