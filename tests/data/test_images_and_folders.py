"""The training data layer: dataset discovery, robust image reading, and deterministic augmentation."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.imaging import noise, save
from PIL import Image

from sdlite.data.examples import IMAGE_SUFFIXES, Dataset, Example, discover
from sdlite.data.images import check_images, load_image, preprocess
from sdlite.errors import DataError, UsageError
from sdlite.training.config import TrainConfig


def write_jsonl(folder: Path, rows: list[object]) -> Path:
    path = folder / "metadata.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# --- discover --------------------------------------------------------------------------------------


def test_image_suffixes() -> None:
    assert set(IMAGE_SUFFIXES) == {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def test_jsonl_with_subfolder_custom_column_sorted_and_unlisted_ignored(tmp_path: Path) -> None:
    for name in ("c.png", "sub/b.png", "a.png", "unlisted.png"):
        save(tmp_path / name)
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "c.png", "caption": "  third  ", "text": "not this one"})
        + "\n\n"  # blank lines are allowed
        + json.dumps({"file_name": "sub/b.png", "caption": "a cat"})
        + "\n"
        + json.dumps({"file_name": "a.png", "caption": 42})
        + "\n",
        encoding="utf-8",
    )

    dataset = discover(tmp_path, caption_column="caption")

    root = tmp_path.resolve()
    assert dataset == Dataset(
        examples=(
            Example(root / "a.png", "42"),
            Example(root / "c.png", "third"),
            Example(root / "sub" / "b.png", "a cat"),
        ),
        source="metadata.jsonl",
        skipped=(),
    )
    assert all(example.path.is_absolute() for example in dataset.examples)


def test_default_caption_column_is_text(tmp_path: Path) -> None:
    save(tmp_path / "a.png")
    write_jsonl(tmp_path, [{"file_name": "a.png", "text": "hello", "caption": "other"}])
    assert discover(tmp_path).examples == (Example(tmp_path.resolve() / "a.png", "hello"),)


def test_csv_with_bom_quoted_commas_and_sort(tmp_path: Path) -> None:
    save(tmp_path / "b.jpg", format="JPEG")
    save(tmp_path / "imgs" / "a.png")
    (tmp_path / "metadata.csv").write_text(
        '\ufefffile_name,text\nb.jpg,"red, round"\nimgs/a.png,plain\n', encoding="utf-8"
    )

    dataset = discover(tmp_path)

    root = tmp_path.resolve()
    assert dataset.source == "metadata.csv"
    assert dataset.examples == (Example(root / "b.jpg", "red, round"), Example(root / "imgs" / "a.png", "plain"))


def test_jsonl_wins_over_csv(tmp_path: Path) -> None:
    save(tmp_path / "a.png")
    write_jsonl(tmp_path, [{"file_name": "a.png", "text": "from jsonl"}])
    (tmp_path / "metadata.csv").write_text("file_name,text\na.png,from csv\n", encoding="utf-8")
    dataset = discover(tmp_path)
    assert (dataset.source, dataset.examples[0].caption) == ("metadata.jsonl", "from jsonl")


def test_sidecars_recursive_sorted_hidden_ignored(tmp_path: Path) -> None:
    for name, caption in (("c.png", "see"), ("a/z.jpg", "zed"), ("b.PNG", "  bee\n")):
        save(tmp_path / name, format="JPEG" if name.endswith("jpg") else "PNG")
        (tmp_path / name).with_suffix(".txt").write_text(caption, encoding="utf-8")
    save(tmp_path / ".cache" / "x.png")  # hidden folder: no caption, but never looked at
    (tmp_path / "._c.png").write_bytes(b"macOS resource fork")  # hidden file
    (tmp_path / "orphan.txt").write_text("caption without an image", encoding="utf-8")

    dataset = discover(tmp_path)

    root = tmp_path.resolve()
    assert dataset.source == "sidecar"
    assert dataset.examples == (
        Example(root / "a" / "z.jpg", "zed"),
        Example(root / "b.PNG", "bee"),
        Example(root / "c.png", "see"),
    )
    assert dataset.skipped == ()


def test_discover_is_deterministic(tmp_path: Path) -> None:
    for i in (5, 3, 9, 1):
        save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(str(i), encoding="utf-8")
    first = discover(tmp_path)
    assert [e.caption for e in first.examples] == ["1", "3", "5", "9"]
    assert discover(tmp_path) == first


def test_metadata_file_missing_names_file_and_line(tmp_path: Path) -> None:
    save(tmp_path / "a.png")
    write_jsonl(tmp_path, [{"file_name": "a.png", "text": "ok"}, {"file_name": "gone.png", "text": "x"}])
    with pytest.raises(DataError, match=r"metadata\.jsonl:2: gone\.png does not exist"):
        discover(tmp_path)


def test_csv_missing_file_names_line(tmp_path: Path) -> None:
    (tmp_path / "metadata.csv").write_text("file_name,text\nnope.png,x\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"metadata\.csv:2: nope\.png does not exist"):
        discover(tmp_path)


def test_bad_json_line_names_line(tmp_path: Path) -> None:
    save(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "ok"}\n{"file_name": oops\n')
    with pytest.raises(DataError, match=r"metadata\.jsonl:2: not valid JSON"):
        discover(tmp_path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('["a.png"]', r"metadata\.jsonl:1: expected a JSON object"),
        ('{"text": "no file"}', r"metadata\.jsonl:1: no 'file_name'"),
        ('{"file_name": "../a.png", "text": "x"}', r"metadata\.jsonl:1: file_name '\.\./a\.png' must be a path inside"),
    ],
)
def test_bad_metadata_rows(tmp_path: Path, line: str, message: str) -> None:
    save(tmp_path / "a.png")
    data = tmp_path / "data"
    data.mkdir()
    (data / "metadata.jsonl").write_text(line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message):
        discover(data)


def test_csv_without_file_name_column(tmp_path: Path) -> None:
    (tmp_path / "metadata.csv").write_text("image,text\na.png,x\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no 'file_name' column \(columns: image, text\)"):
        discover(tmp_path)


def test_missing_caption_jsonl(tmp_path: Path) -> None:
    save(tmp_path / "a.png")
    save(tmp_path / "b.png")
    save(tmp_path / "c.png")
    write_jsonl(
        tmp_path,
        [{"file_name": "a.png", "text": "ok"}, {"file_name": "b.png"}, {"file_name": "c.png", "text": None}],
    )
    with pytest.raises(
        DataError, match=r"b\.png: no caption .*metadata\.jsonl:2.*and 1 more.*--allow-missing-captions"
    ):
        discover(tmp_path)

    dataset = discover(tmp_path, allow_missing_captions=True)

    root = tmp_path.resolve()
    assert [(e.path.name, e.caption) for e in dataset.examples] == [("a.png", "ok"), ("b.png", ""), ("c.png", "")]
    assert dataset.skipped == (
        f"{root / 'b.png'}: missing caption (empty caption used)",
        f"{root / 'c.png'}: missing caption (empty caption used)",
    )


def test_missing_caption_column_in_csv(tmp_path: Path) -> None:
    save(tmp_path / "a.png")
    (tmp_path / "metadata.csv").write_text("file_name,caption\na.png,hi\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"a\.png: no caption .*no 'text' column.*--allow-missing-captions"):
        discover(tmp_path)
    assert discover(tmp_path, caption_column="caption").examples[0].caption == "hi"


def test_missing_sidecar_caption(tmp_path: Path) -> None:
    save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("captioned", encoding="utf-8")
    save(tmp_path / "b.png")
    with pytest.raises(DataError, match=r"b\.png: no caption \(no b\.txt next to it\).*--allow-missing-captions"):
        discover(tmp_path)

    dataset = discover(tmp_path, allow_missing_captions=True)

    assert [(e.path.name, e.caption) for e in dataset.examples] == [("a.png", "captioned"), ("b.png", "")]
    assert dataset.skipped == (f"{tmp_path.resolve() / 'b.png'}: missing caption (empty caption used)",)


def test_nonexistent_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data folder .*nowhere does not exist"):
        discover(tmp_path / "nowhere")


def test_file_instead_of_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"is not a folder"):
        discover(save(tmp_path / "a.png"))


def test_folder_without_images(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no images in .*metadata\.jsonl"):
        discover(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image", encoding="utf-8")
    with pytest.raises(DataError, match=r"no images in"):
        discover(tmp_path)


def test_metadata_listing_nothing(tmp_path: Path) -> None:
    save(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"metadata\.jsonl lists no images"):
        discover(tmp_path)


# --- check_images -----------------------------------------------------------------------------------


def mixed_dataset(tmp_path: Path) -> Dataset:
    save(tmp_path / "a.png")
    save(tmp_path / "c.png")
    (tmp_path / "b.png").write_bytes(b"not an image")
    whole = save(tmp_path / "whole.bin.png", noise(64, 64))
    (tmp_path / "d.png").write_bytes(whole.read_bytes()[:300])
    whole.unlink()
    for name in ("a", "b", "c", "d"):
        (tmp_path / f"{name}.txt").write_text(name, encoding="utf-8")
    save(tmp_path / "e.png")
    return discover(tmp_path, allow_missing_captions=True)  # e.png has no caption: one note already


def test_check_images_raises_without_skip(tmp_path: Path) -> None:
    dataset = mixed_dataset(tmp_path)
    with pytest.raises(
        DataError,
        match=r"b\.png: cannot read image \(not an image format Pillow can read\) \(and 1 more\).*--skip-bad-images",
    ):
        check_images(dataset, skip_bad_images=False)


def test_check_images_skips_and_reports(tmp_path: Path) -> None:
    dataset = mixed_dataset(tmp_path)

    checked = check_images(dataset, skip_bad_images=True)

    root = tmp_path.resolve()
    assert [e.path.name for e in checked.examples] == ["a.png", "c.png", "e.png"]
    assert checked.source == "sidecar"
    assert checked.skipped[0] == f"{root / 'e.png'}: missing caption (empty caption used)"
    assert [line.split(": ")[0] for line in checked.skipped[1:]] == [str(root / "b.png"), str(root / "d.png")]
    assert all("cannot read image" in line for line in checked.skipped[1:])
    assert len(dataset.examples) == 5  # the input is untouched


def test_check_images_all_bad(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"nope")
    (tmp_path / "a.txt").write_text("a", encoding="utf-8")
    with pytest.raises(DataError, match=r"no readable images left"):
        check_images(discover(tmp_path), skip_bad_images=True)


def test_check_images_all_good_is_unchanged(tmp_path: Path) -> None:
    save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a", encoding="utf-8")
    dataset = discover(tmp_path)
    assert check_images(dataset, skip_bad_images=False) == dataset


# --- preprocess -------------------------------------------------------------------------------------


def test_preprocess_shape_dtype_and_value_mapping() -> None:
    image = Image.new("RGB", (16, 16), (255, 0, 51))
    out = preprocess(image, 16, "center", False, seed=0)
    assert out.shape == (3, 16, 16)
    assert out.dtype == torch.float32
    assert torch.equal(out[0], torch.ones(16, 16))
    assert torch.equal(out[1], -torch.ones(16, 16))
    assert torch.allclose(out[2], torch.full((16, 16), -0.6))

    big = preprocess(noise(50, 30), 16, "random", True, seed=3)
    assert big.shape == (3, 16, 16)
    assert big.min() >= -1 and big.max() <= 1
    assert big.std() > 0.2  # real content, not a constant


def test_preprocess_center_crop_takes_the_middle() -> None:
    stripes = np.zeros((20, 40, 3), dtype=np.uint8)
    stripes[:, :10] = (255, 0, 0)  # red left quarter
    stripes[:, 10:30] = (0, 255, 0)  # green middle half
    stripes[:, 30:] = (0, 0, 255)  # blue right quarter

    out = preprocess(Image.fromarray(stripes), 16, "center", False, seed=0)

    pixels = (out + 1) * 127.5
    assert pixels[1].mean() > 240  # resized to 32x16: the middle 16 columns are the green half
    assert pixels[0].mean() < 15 and pixels[2].mean() < 15
    assert pixels[:, :, 3:13].sub(torch.tensor([0.0, 255.0, 0.0]).view(3, 1, 1)).abs().max() < 2


@pytest.mark.parametrize(("width", "height"), [(32, 16), (16, 32)])
def test_preprocess_center_crop_exact_without_resize(width: int, height: int) -> None:
    image = noise(width, height)
    out = preprocess(image, 16, "center", False, seed=0)
    expected = np.asarray(image)[(height - 16) // 2 :][:16, (width - 16) // 2 :][:, :16]
    assert torch.equal(out, torch.from_numpy(expected.astype(np.float32)).permute(2, 0, 1) / 127.5 - 1)


def test_preprocess_random_crop_is_a_seeded_window() -> None:
    ramp = np.zeros((16, 48, 3), dtype=np.uint8)
    ramp[..., 0] = np.arange(48, dtype=np.uint8) * 5  # column index, readable from the red channel
    image = Image.fromarray(ramp)

    lefts = []
    for seed in range(8):
        out = preprocess(image, 16, "random", False, seed=seed)
        red = ((out[0] + 1) * 127.5).round().to(torch.int64)
        left = int(red[0, 0]) // 5
        assert 0 <= left <= 32
        assert red.tolist() == [[5 * (left + i) for i in range(16)]] * 16  # a contiguous 16-column window
        assert torch.equal(preprocess(image, 16, "random", False, seed=seed), out)
        lefts.append(left)
    assert len(set(lefts)) > 1


def test_preprocess_same_seed_same_tensor() -> None:
    image = noise(40, 24, seed=1)
    first = preprocess(image, 16, "random", True, seed=1234)
    assert torch.equal(first, preprocess(image, 16, "random", True, seed=1234))
    others = [preprocess(image, 16, "random", True, seed=s) for s in range(1, 6)]
    assert any(not torch.equal(first, other) for other in others)


def test_preprocess_flip() -> None:
    image = noise(16, 16, seed=2)
    plain = np.asarray(image).astype(np.float32) / 127.5 - 1
    mirrored = np.fliplr(plain)
    flipped = []
    for seed in range(10):
        out = preprocess(image, 16, "center", True, seed=seed).permute(1, 2, 0).numpy()
        assert np.array_equal(out, plain) or np.array_equal(out, mirrored)
        flipped.append(np.array_equal(out, mirrored))
        assert np.array_equal(preprocess(image, 16, "center", False, seed=seed).permute(1, 2, 0).numpy(), plain)
    assert any(flipped) and not all(flipped)


def test_preprocess_leaves_global_random_alone() -> None:
    random.seed(7)
    expected = random.random()
    random.seed(7)
    preprocess(noise(30, 20), 16, "random", True, seed=0)
    assert random.random() == expected


def test_preprocess_converts_other_modes_and_rejects_bad_options() -> None:
    out = preprocess(Image.new("L", (16, 16), 51), 16, "center", False, seed=0)
    assert torch.allclose(out, torch.full((3, 16, 16), -0.6))
    with pytest.raises(UsageError, match="crop"):
        preprocess(noise(16, 16), 16, "corner", False, seed=0)
    with pytest.raises(UsageError, match="resolution"):
        preprocess(noise(16, 16), 0, "center", False, seed=0)


def test_augmentation_is_fixed() -> None:
    def fixed(crop: str, flip: bool) -> bool:
        return TrainConfig(model="m", data="d", out="o", max_steps=1, crop=crop, random_flip=flip).fixed_augmentation

    assert fixed("center", False) is True
    assert fixed("center", True) is False
    assert fixed("random", False) is False
    assert fixed("random", True) is False


def test_end_to_end(tmp_path: Path) -> None:
    image = Image.new("RGBA", (24, 16), (0, 0, 0, 0))
    save(tmp_path / "a.png", image)
    write_jsonl(tmp_path, [{"file_name": "a.png", "text": "blank"}])
    dataset = check_images(discover(tmp_path), skip_bad_images=False)
    out = preprocess(load_image(dataset.examples[0].path), 8, "center", False, seed=0)
    assert torch.equal(out, torch.ones(3, 8, 8))  # transparent became white
