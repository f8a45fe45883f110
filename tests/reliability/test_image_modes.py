"""Every image mode a dataset may hold loads to the expected RGB pixels; bad files fail with a
message naming them; an image over the decompression-bomb limit is refused."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers.imaging import noise, rgb, save
from PIL import Image

from sdlite.data.images import load_image
from sdlite.errors import DataError

# --- load_image: modes ------------------------------------------------------------------------------


def test_rgb_exact(tmp_path: Path) -> None:
    image = noise(5, 3)
    loaded = load_image(save(tmp_path / "a.png", image))
    assert np.array_equal(rgb(loaded), np.asarray(image))
    assert loaded.getpixel((0, 0)) == image.getpixel((0, 0))  # still usable after the file closed


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (3, 1))
    image.putdata([(0, 0, 0, 0), (255, 0, 0, 255), (0, 0, 0, 128)])
    out = rgb(load_image(save(tmp_path / "a.png", image)))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [255, 0, 0]
    assert np.abs(out[0, 2] - 127).max() <= 1  # half-transparent black over white


def test_la_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("LA", (2, 1))
    image.putdata([(50, 0), (50, 255)])
    out = rgb(load_image(save(tmp_path / "a.png", image)))
    assert out[0].tolist() == [[255, 255, 255], [50, 50, 50]]


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_transparency_on_white(tmp_path: Path, suffix: str) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 0, 0] + [0, 0, 0] * 254)
    image.putdata([0, 1])
    path = save(tmp_path / f"a{suffix}", image, transparency=0)
    assert Image.open(path).mode == "P"
    out = rgb(load_image(path))
    assert out[0].tolist() == [[255, 255, 255], [200, 0, 0]]


def test_palette_without_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (1, 1))
    image.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    assert rgb(load_image(save(tmp_path / "a.png", image)))[0, 0].tolist() == [10, 20, 30]


def test_gray_and_bilevel(tmp_path: Path) -> None:
    assert rgb(load_image(save(tmp_path / "l.png", Image.new("L", (2, 2), 100)))).tolist() == [[[100] * 3] * 2] * 2
    bilevel = Image.new("1", (2, 1))
    bilevel.putdata([0, 255])
    assert rgb(load_image(save(tmp_path / "b.png", bilevel)))[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = save(tmp_path / "a.jpg", Image.new("CMYK", (16, 16), (255, 0, 0, 0)), quality=95)
    assert Image.open(path).mode == "CMYK"
    out = rgb(load_image(path))
    assert np.abs(out - np.array([0, 255, 255])).max() <= 10


def test_ycbcr_tiff(tmp_path: Path) -> None:
    path = save(tmp_path / "a.tif", Image.new("RGB", (2, 2), (200, 30, 60)).convert("YCbCr"))
    assert Image.open(path).mode == "YCbCr"
    assert np.abs(rgb(load_image(path)) - np.array([200, 30, 60])).max() <= 3


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[65535, 32768, 0, 257 * 100]], dtype=np.uint16)
    path = save(tmp_path / "a.png", Image.fromarray(values))
    with Image.open(path) as reopened:
        assert reopened.mode in ("I;16", "I")  # really a 16-bit file
        assert np.asarray(reopened).max() == 65535
    out = rgb(load_image(path))
    assert np.abs(out[0, :, 0] - np.array([255, 128, 0, 100])).max() <= 1
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()


def test_16bit_big_endian_and_32bit_int_tiff(tmp_path: Path) -> None:
    values = np.array([[65535, 32768, 0]], dtype=np.uint16)
    big = Image.frombytes("I;16B", (3, 1), values.astype(">u2").tobytes())
    path_big = save(tmp_path / "big.tif", big)
    path_int = save(tmp_path / "int.tif", Image.fromarray(values.astype(np.int32)))
    assert Image.open(path_int).mode == "I"
    for path in (path_big, path_int):
        assert np.abs(rgb(load_image(path))[0, :, 1] - np.array([255, 128, 0])).max() <= 1, path


def test_float_tiff_scaled_from_unit_range(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.5, 1.0, 2.0]], dtype=np.float32)
    path = save(tmp_path / "f.tif", Image.fromarray(values))
    assert Image.open(path).mode == "F"
    assert rgb(load_image(path))[0, :, 2].tolist() == [0, 128, 255, 255]


# --- load_image: EXIF orientation -------------------------------------------------------------------

# How a viewer shows stored pixels (rows, columns) for each EXIF Orientation value, from the EXIF spec.
DISPLAY = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored horizontally
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored vertically
    5: lambda a: a.transpose(1, 0, 2),  # mirrored horizontally, then rotated 270 clockwise
    6: lambda a: np.rot90(a, -1),  # rotated 90 clockwise
    7: lambda a: np.rot90(a[:, ::-1], -1),  # mirrored horizontally, then rotated 90 clockwise
    8: lambda a: np.rot90(a, 1),  # rotated 270 clockwise
}
STORED = np.array(
    [[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[255, 255, 0], [0, 255, 255], [255, 0, 255]]], dtype=np.uint8
)  # 3 wide, 2 high, every pixel distinct


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_png(tmp_path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(tmp_path / "a.png", Image.fromarray(STORED), exif=exif)
    with Image.open(path) as reopened:
        assert reopened.getexif().get(0x0112) == orientation  # the tag really is in the file
    out = rgb(load_image(path))
    assert out.tolist() == DISPLAY[orientation](STORED).tolist()


def test_exif_orientation_jpeg(tmp_path: Path) -> None:
    stored = np.zeros((32, 48, 3), dtype=np.uint8)  # large solid blocks survive JPEG
    stored[:16, :16] = (255, 0, 0)  # top-left block red, the rest black
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to view: the red block ends up top-right
    out = rgb(load_image(save(tmp_path / "a.jpg", Image.fromarray(stored), exif=exif, quality=95)))
    assert out.shape == (48, 32, 3)
    assert np.abs(out[4:12, 20:28] - np.array([255, 0, 0])).max() <= 10
    assert out[4:12, 4:12].max() <= 10  # top-left is black now


# --- load_image: failures ---------------------------------------------------------------------------


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.png"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match=r"junk\.png: cannot read image \("):
        load_image(path)


def test_truncated_png(tmp_path: Path) -> None:
    whole = save(tmp_path / "whole.png", noise(64, 64))
    path = tmp_path / "half.png"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with Image.open(path) as header_only:
        assert header_only.size == (64, 64)  # the header still opens: only decoding can tell
    with pytest.raises(DataError, match=r"half\.png: cannot read image \("):
        load_image(path)


@pytest.mark.parametrize("name", ["empty.jpg", "missing.png"])
def test_empty_or_missing_file(tmp_path: Path, name: str) -> None:
    if name == "empty.jpg":
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(DataError, match=rf"{name.replace('.', '[.]')}: cannot read image"):
        load_image(tmp_path / name)


@pytest.mark.parametrize("size", [12, 64])  # above the limit (Pillow warns), above twice it (Pillow refuses)
def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    path = save(tmp_path / "big.png", Image.new("RGB", (size, size)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    filters = list(warnings.filters)
    with pytest.raises(DataError, match=r"big\.png: cannot read image \(too large"):
        load_image(path)
    assert warnings.filters == filters  # the warning filter was scoped to the call
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", size * size)
    assert load_image(path).size == (size, size)
