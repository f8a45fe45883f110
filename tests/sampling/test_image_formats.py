"""`--image-format jpeg|webp`: A1111's `parameters` in EXIF UserComment (piexif's UNICODE encoding, where A1111 and
civitai read it), sdlite's record in ImageDescription; `--from-image` and `check` read all three formats."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.formats.infotext import generation_settings
from sdlite.formats.png_record import read_record, read_settings


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def made(model: Path, out: Path, *extra: str) -> Path:
    result = invoke("sample", "a (red:1.2) circle, ünïcode", "--negative-prompt", "blue", "--model", str(model),
                    "--steps", "2", "--seed", "4", "--height", "64", "--width", "64", "--json", "--out", str(out),
                    *extra)  # fmt: skip
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.stdout)["path"])


@pytest.mark.parametrize(("image_format", "suffix", "pil"), [("jpeg", ".jpg", "JPEG"), ("webp", ".webp", "WEBP")])
def test_lossy_formats_carry_both_texts_where_a1111_reads_them(
    image_format: str, suffix: str, pil: str, tiny_model: Path, tmp_path: Path
) -> None:
    path = made(tiny_model, tmp_path / "a", "--image-format", image_format, "--quality", "90")
    assert path.suffix == suffix
    with Image.open(path) as image:
        assert image.format == pil
        comment = image.getexif().get_ifd(0x8769)[0x9286]  # Exif IFD, UserComment
    assert comment[:8] == b"UNICODE\x00"  # piexif's UNICODE prefix, then UTF-16 big-endian (A1111 reads it so)
    parameters = comment[8:].decode("utf-16-be")
    settings, _, notes = generation_settings(parameters)
    assert notes == []  # RNG: CPU, every key replayed
    assert (settings["prompt"], settings["negative_prompt"], settings["seed"]) == ("a (red:1.2) circle, ünïcode",
                                                                                 "blue", 4)  # fmt: skip
    assert read_record(path)["run"]["image_format"] == image_format
    assert read_settings(path)["quality"] == 90

    again = invoke("sample", "--from-image", str(path), "--json", "--out", str(tmp_path / "b"))
    assert again.exit_code == 0, again.output
    copy = Path(json.loads(again.stdout)["path"])
    assert copy.suffix == suffix and copy.read_bytes() != b""
    assert np.array_equal(np.asarray(Image.open(copy)), np.asarray(Image.open(path)))  # same pixels, same encoding
    checked = invoke("check", str(tmp_path / "a"), "--model", str(tiny_model))
    assert checked.exit_code == 0, checked.output


def test_an_a1111_jpeg_with_only_its_user_comment_replays(tiny_model: Path, tmp_path: Path) -> None:
    png = made(tiny_model, tmp_path / "a")
    with Image.open(png) as image:
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + image.text["parameters"].encode("utf-16-be")
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", exif=exif)
    a1111 = tmp_path / "from-a1111.jpg"
    a1111.write_bytes(buffer.getvalue())
    again = invoke("sample", "--from-image", str(a1111), "--model", str(tiny_model), "--json", "--out",
                   str(tmp_path / "b"))  # fmt: skip
    assert again.exit_code == 0, again.output
    result = json.loads(again.stdout)
    assert Path(result["path"]).suffix == ".png"  # A1111's own file says nothing of sdlite's format: the default
    assert np.array_equal(np.asarray(Image.open(result["path"])), np.asarray(Image.open(png)))


def test_quality_and_bad_formats(tiny_model: Path, tmp_path: Path) -> None:
    low = made(tiny_model, tmp_path / "low", "--image-format", "jpeg", "--quality", "10")
    high = made(tiny_model, tmp_path / "high", "--image-format", "jpeg", "--quality", "100")
    assert low.stat().st_size < high.stat().st_size
    bad = invoke("sample", "a", "--model", str(tiny_model), "--image-format", "gif", "--out", str(tmp_path / "x"))
    assert bad.exit_code == 2 and "--image-format" in bad.stderr
