"""Table datasets: Parquet files and shard folders, `datasets` save_to_disk folders, hub ids (offline errors).

Every format is checked against the same images laid out as an imagefolder (metadata.jsonl): same
captions, same pixels, same sha256. The `datasets` library writes some of them, so its own rules are
the ones tested.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sdlite.data import images, tables
from sdlite.data.examples import Example, discover
from sdlite.data.images import check_images, example_sha256, load_example, load_image
from sdlite.data.shapes import Scene, render
from sdlite.errors import DataError

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # what `datasets.Image()` stores


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _samples() -> list[tuple[str, bytes, str]]:
    """(file name, encoded bytes, caption): square and non-square, PNG and JPEG, EXIF-rotated, transparent."""
    red = render(Scene("red", "circle", "blue", 0.5, 0.5, 0.5), 64)
    green = render(Scene("green", "square", "yellow", 0.6, 0.2, 0.8), 64).crop((0, 0, 64, 40))
    purple = render(Scene("purple", "triangle", "orange", 0.5, 0.9, 0.1), 64).resize((48, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees when shown
    rotated = render(Scene("blue", "square", "red", 0.4, 0.1, 0.1), 64).crop((0, 0, 64, 32))
    clear = render(Scene("yellow", "circle", "green", 0.7, 0.5, 0.5), 32).convert("RGBA")
    clear.putalpha(Image.new("L", clear.size, 128))
    return [
        ("000.png", _encode(red, "PNG"), "a red circle on a blue background"),
        ("001.png", _encode(green, "PNG"), "  a green square on a yellow background \n"),
        ("002.jpg", _encode(rotated, "JPEG", exif=exif), "a blue square, rotated"),
        ("003.png", _encode(purple, "PNG"), "a purple triangle"),
        ("004.png", _encode(clear, "PNG"), "a see-through yellow circle"),
    ]


SAMPLES = _samples()
CAPTIONS = [caption.strip() for _, _, caption in SAMPLES]


@pytest.fixture(autouse=True)
def _fresh_readers() -> None:
    tables.clear_readers()


def write_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, encoded, _ in SAMPLES:
        (folder / name).write_bytes(encoded)
    rows = [{"file_name": name, "text": caption} for name, _, caption in SAMPLES]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return folder


def hf_table(rows: list[tuple[str, bytes, str]] = SAMPLES) -> pa.Table:
    images = [{"bytes": encoded, "path": name} for name, encoded, _ in rows]
    return pa.table({"image": pa.array(images, type=IMAGE_STRUCT), "text": [caption for *_, caption in rows]})


def write_parquet(path: Path, table: pa.Table, row_group_size: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


# --- the formats, each against the imagefolder ----------------------------------------------------------


def build_parquet(root: Path) -> tuple[Path, dict[str, str]]:
    return write_parquet(root / "train.parquet", hf_table()), {}


def build_shards(root: Path) -> tuple[Path, dict[str, str]]:
    write_parquet(root / "repo" / "data" / "train-00000-of-00002.parquet", hf_table(SAMPLES[:3]))
    write_parquet(root / "repo" / "data" / "train-00001-of-00002.parquet", hf_table(SAMPLES[3:]))
    (root / "repo" / "README.md").write_text("# a dataset card\n", encoding="utf-8")
    other = [("x.png", SAMPLES[0][1], "the test split, not trained")]
    write_parquet(root / "repo" / "data" / "test-00000-of-00001.parquet", hf_table(other))
    return root / "repo", {}


def build_binary(root: Path) -> tuple[Path, dict[str, str]]:
    table = pa.table(
        {
            "caption": [caption for *_, caption in SAMPLES],
            "img": pa.array([encoded for _, encoded, _ in SAMPLES], type=pa.large_binary()),
            "id": list(range(len(SAMPLES))),
        }
    )
    return write_parquet(root / "binary.parquet", table), {"image_column": "img", "caption_column": "caption"}


def build_paths(root: Path) -> tuple[Path, dict[str, str]]:
    """Path strings: relative to the Parquet file's folder, and one absolute."""
    images = write_folder(root / "dataset" / "images")
    paths = [f"images/{name}" for name, _, _ in SAMPLES]
    paths[-1] = str(images / SAMPLES[-1][0])
    table = pa.table({"image": paths, "text": [caption for *_, caption in SAMPLES]})
    return write_parquet(root / "dataset" / "paths.parquet", table), {}


def build_struct_paths(root: Path) -> tuple[Path, dict[str, str]]:
    """The Image struct with null bytes: the path is the image."""
    write_folder(root / "dataset" / "pics")
    images = [{"bytes": None, "path": f"pics/{name}"} for name, _, _ in SAMPLES]
    table = pa.table({"image": pa.array(images, type=IMAGE_STRUCT), "text": [c for *_, c in SAMPLES]})
    return write_parquet(root / "dataset" / "refs.parquet", table), {}


def _hf_dataset() -> object:
    datasets = pytest.importorskip("datasets")
    columns = {"image": [{"bytes": encoded, "path": name} for name, encoded, _ in SAMPLES], "text": CAPTIONS}
    return datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image())


def build_save_to_disk(root: Path) -> tuple[Path, dict[str, str]]:
    _hf_dataset().save_to_disk(str(root / "saved"), num_shards=2)  # type: ignore[attr-defined]
    return root / "saved", {}


def build_to_parquet(root: Path) -> tuple[Path, dict[str, str]]:
    _hf_dataset().to_parquet(str(root / "exported.parquet"))  # type: ignore[attr-defined]
    return root / "exported.parquet", {}


def build_arrow_file(root: Path) -> tuple[Path, dict[str, str]]:
    """A lone .arrow file in the IPC file format (not the stream format `datasets` writes)."""
    path = root / "table.arrow"
    table = hf_table()
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=2)
    return path, {}


BUILDERS: dict[str, tuple[Callable[[Path], tuple[Path, dict[str, str]]], str]] = {
    "parquet": (build_parquet, "parquet"),
    "shards": (build_shards, "parquet"),
    "binary": (build_binary, "parquet"),
    "paths": (build_paths, "parquet"),
    "struct-paths": (build_struct_paths, "parquet"),
    "save_to_disk": (build_save_to_disk, "arrow"),
    "to_parquet": (build_to_parquet, "parquet"),
    "arrow-file": (build_arrow_file, "arrow"),
}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_table_matches_imagefolder(tmp_path: Path, kind: str) -> None:
    build, source = BUILDERS[kind]
    target, options = build(tmp_path)
    folder = discover(write_folder(tmp_path / "folder"))

    dataset = discover(target, **options)

    assert dataset.source == source
    assert dataset.skipped == ()
    assert [e.caption for e in dataset.examples] == [e.caption for e in folder.examples] == CAPTIONS
    assert all(e.row is not None and e.path.is_absolute() for e in dataset.examples)
    assert str(dataset.examples[1]) == f"{dataset.examples[1].path} row {dataset.examples[1].row}"
    for index in (4, 0, 3, 1, 2, 0):  # out of order: row groups are reopened as needed
        row, image = dataset.examples[index], folder.examples[index]
        assert np.array_equal(np.asarray(load_example(row)), np.asarray(load_image(image.path)))
        assert example_sha256(row) == hashlib.sha256(SAMPLES[index][1]).hexdigest() == example_sha256(image)
    checked = check_images(dataset, skip_bad_images=False)
    assert [e.size for e in checked.examples] == [e.size for e in check_images(folder, False).examples]
    assert checked.examples[2].size == (32, 64)  # the EXIF rotation applied: upright size


def test_rows_are_in_file_then_row_order(tmp_path: Path) -> None:
    target, _ = build_shards(tmp_path)
    dataset = discover(target)
    data_dir = (target / "data").resolve()
    assert [(e.path.name, e.row) for e in dataset.examples] == [
        *(("train-00000-of-00002.parquet", i) for i in range(3)),
        *(("train-00001-of-00002.parquet", i) for i in range(2)),
    ]
    assert all(e.path.parent == data_dir for e in dataset.examples)
    assert discover(target) == dataset


def test_shards_at_top_level_and_a_lone_split(tmp_path: Path) -> None:
    write_parquet(tmp_path / "b.parquet", hf_table(SAMPLES[2:]))
    write_parquet(tmp_path / "a.parquet", hf_table(SAMPLES[:2]))
    assert [e.caption for e in discover(tmp_path).examples] == CAPTIONS

    only = tmp_path / "only"
    write_parquet(only / "data" / "validation-00000-of-00001.parquet", hf_table(SAMPLES[:1]))
    assert [e.caption for e in discover(only).examples] == CAPTIONS[:1]


def test_shards_without_a_train_split_name_the_splits(tmp_path: Path) -> None:
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", hf_table(SAMPLES[:1]))
    write_parquet(tmp_path / "data" / "validation-00000-of-00001.parquet", hf_table(SAMPLES[1:2]))
    with pytest.raises(DataError, match=r"splits test, validation, none named 'train'"):
        discover(tmp_path)


def test_folder_with_images_and_parquet_stays_an_image_folder(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(SAMPLES[0][1])
    (tmp_path / "a.txt").write_text("from the sidecar", encoding="utf-8")
    write_parquet(tmp_path / "stray.parquet", hf_table())
    dataset = discover(tmp_path)
    assert (dataset.source, [e.caption for e in dataset.examples]) == ("sidecar", ["from the sidecar"])


# --- save_to_disk folders ---------------------------------------------------------------------------------


def test_dataset_dict_uses_the_train_split(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    train = _hf_dataset()
    test = train.select([0])  # type: ignore[attr-defined]
    datasets.DatasetDict({"test": test, "train": train}).save_to_disk(str(tmp_path / "dict"))

    dataset = discover(tmp_path / "dict")

    assert dataset.source == "arrow"
    assert [e.caption for e in dataset.examples] == CAPTIONS
    assert all(e.path.parent.name == "train" for e in dataset.examples)
    assert np.array_equal(
        np.asarray(load_example(dataset.examples[3])), np.asarray(Image.open(io.BytesIO(SAMPLES[3][1])))
    )


def test_dataset_dict_without_train(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    one = _hf_dataset()
    datasets.DatasetDict({"validation": one}).save_to_disk(str(tmp_path / "single"))
    assert len(discover(tmp_path / "single").examples) == len(SAMPLES)

    datasets.DatasetDict({"validation": one, "test": one}).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(DataError, match=r"dataset_dict\.json: splits validation, test, none named 'train'"):
        discover(tmp_path / "two")


def test_save_to_disk_with_a_missing_shard(tmp_path: Path) -> None:
    target, _ = build_save_to_disk(tmp_path)
    next(target.glob("data-00001-*.arrow")).unlink()
    with pytest.raises(DataError, match=r"state\.json lists data-00001-of-00002\.arrow, which is missing"):
        discover(target)


# --- bad rows, columns and captions ------------------------------------------------------------------


def test_bad_rows_are_named_and_skippable(tmp_path: Path) -> None:
    rows = list(SAMPLES)
    rows[2] = ("bad.png", b"\x89PNG\r\n\x1a\n not really", "corrupt")
    rows[3] = ("cut.png", SAMPLES[3][1][:200], "truncated")
    images = [{"bytes": encoded, "path": name} for name, encoded, _ in rows]
    images.append(None)  # a null cell
    images.append({"bytes": None, "path": "nowhere.png"})  # a path to nothing
    table = pa.table(
        {"image": pa.array(images, type=IMAGE_STRUCT), "text": [*(c for *_, c in rows), "null cell", "gone"]}
    )
    path = write_parquet(tmp_path / "data" / "train.parquet", table).resolve()
    dataset = discover(tmp_path)

    with pytest.raises(DataError, match=rf"^{path} row 2: cannot read image \(.*\) \(and 3 more\).*--skip-bad-images"):
        check_images(dataset, skip_bad_images=False)

    checked = check_images(dataset, skip_bad_images=True)
    assert [e.row for e in checked.examples] == [0, 1, 4]
    assert [line.split(":")[0] for line in checked.skipped] == [f"{path} row {n}" for n in (2, 3, 5, 6)]
    assert "the 'image' cell is empty" in checked.skipped[2]
    assert "nowhere.png" in checked.skipped[3]
    with pytest.raises(DataError, match=r"row 6: cannot read image \(.*nowhere\.png does not exist\)"):
        example_sha256(dataset.examples[6])


def test_missing_column_names_file_and_columns(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "t.parquet", hf_table()).resolve()
    with pytest.raises(DataError, match=rf"{path}: no 'caption' column \(columns: image, text\).*--caption-column"):
        discover(path, caption_column="caption")
    with pytest.raises(DataError, match=rf"{path}: no 'picture' column \(columns: image, text\).*--image-column"):
        discover(path, image_column="picture")

    target, _ = build_arrow_file(tmp_path)
    with pytest.raises(DataError, match=r"table\.arrow: no 'caption' column \(columns: image, text\)"):
        discover(target, caption_column="caption")


def test_image_column_of_another_type(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "t.parquet", pa.table({"image": [1, 2], "text": ["a", "b"]}))
    with pytest.raises(DataError, match=r"column 'image' holds int64, not images"):
        discover(path)


def test_null_caption(tmp_path: Path) -> None:
    table = hf_table().set_column(1, "text", pa.array([CAPTIONS[0], None, CAPTIONS[2], None, CAPTIONS[4]]))
    path = write_parquet(tmp_path / "t.parquet", table).resolve()
    with pytest.raises(
        DataError, match=rf"^{path} row 1: no caption \('text' is null\) \(and 1 more\).*--allow-missing"
    ):
        discover(path)

    dataset = discover(path, allow_missing_captions=True)

    assert [e.caption for e in dataset.examples] == [CAPTIONS[0], "", CAPTIONS[2], "", CAPTIONS[4]]
    assert dataset.skipped == tuple(f"{path} row {n}: missing caption (empty caption used)" for n in (1, 3))


def test_non_string_captions_become_text(tmp_path: Path) -> None:
    table = pa.table({"image": pa.array([b"x"], pa.binary()), "text": [7]})
    assert discover(write_parquet(tmp_path / "t.parquet", table)).examples[0].caption == "7"


def test_empty_table(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "t.parquet", hf_table([]))
    with pytest.raises(DataError, match=r"no rows in .*t\.parquet"):
        discover(path)


def test_not_a_parquet_file(tmp_path: Path) -> None:
    (tmp_path / "t.parquet").write_bytes(b"PAR1 nonsense")
    with pytest.raises(DataError, match=r"t\.parquet: not a readable Parquet file"):
        discover(tmp_path / "t.parquet")
    (tmp_path / "notes.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"is not a folder \(nor a \.parquet or \.arrow file\)"):
        discover(tmp_path / "notes.csv")


# --- nothing loaded whole -----------------------------------------------------------------------------


def test_discovery_reads_captions_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target, _ = build_shards(tmp_path)
    read: list[object] = []
    original = pq.ParquetFile.read_row_group

    def spy(self: pq.ParquetFile, i: int, columns: list[str] | None = None, **kw: object) -> pa.Table:
        read.append(columns)
        return original(self, i, columns=columns, **kw)

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("an image was decoded during discovery")

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    monkeypatch.setattr(pq.ParquetFile, "read", no_decoding)
    monkeypatch.setattr(images, "decode_image", no_decoding)
    monkeypatch.setattr(Image, "open", no_decoding)

    dataset = discover(target)

    assert len(dataset.examples) == len(SAMPLES)
    assert read and all(columns == ["text"] for columns in read)  # one row group at a time, captions only
    with pytest.raises(AssertionError, match="decoded"):
        load_example(dataset.examples[0])  # loading is where decoding happens
    assert read[-1] == ["image"]


def test_reader_cache_stays_small_and_sees_rewrites(tmp_path: Path) -> None:
    paths = [write_parquet(tmp_path / f"{i}.parquet", hf_table(SAMPLES[i : i + 1])).resolve() for i in range(5)]
    for path in paths:
        load_example(Example(path, "", row=0))
    assert len(tables._OPEN) == tables._READERS

    before = example_sha256(Example(paths[0], "", row=0))
    write_parquet(paths[0], hf_table(SAMPLES[1:2]))
    assert example_sha256(Example(paths[0], "", row=0)) != before
    with pytest.raises(DataError, match=r"row 9: no such row \(the file has 1\)"):
        load_example(Example(paths[0], "", row=9))


# --- hub ids ----------------------------------------------------------------------------------------------


def test_hub_id_offline_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"someorg/somedata is not a local path.*offline") as error:
        discover("someorg/somedata", offline=True)
    assert "\n" not in str(error.value) and error.value.exit_code == 3

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"someorg/somedata .*offline"):
        discover(Path("someorg/somedata"))

    with pytest.raises(DataError, match=r"data folder .*not/a/hub/id does not exist"):
        discover("not/a/hub/id", offline=True)


def test_hub_id_without_the_datasets_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails before anything goes online
    with pytest.raises(DataError, match=r"someorg/somedata .*pip install 'sdlite\[datasets\]'"):
        discover("someorg/somedata")


def test_a_local_path_wins_over_a_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_parquet(tmp_path / "someorg" / "somedata" / "train.parquet", hf_table())
    assert discover("someorg/somedata", offline=True).source == "parquet"
