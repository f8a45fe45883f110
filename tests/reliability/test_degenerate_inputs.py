"""Degenerate inputs are named (issue 23): init images under one latent pixel, masks that repaint nothing (or
everything), tiny or hugely upscaled training images, control characters in prompts and captions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.data.examples import discover
from sdlite.training.config import TrainConfig
from sdlite.training.plan import dry_run

runner = CliRunner()


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args))


def sample(model: Path, out: Path, *args: str) -> Any:
    return invoke("sample", "--model", str(model), "--steps", "2", "--out", str(out), *args)


@pytest.fixture()
def pictures(tmp_path: Path) -> dict[str, Path]:
    made = {
        "dot": Image.new("RGB", (1, 1), (200, 0, 0)),
        "thin": Image.new("RGB", (64, 7), (200, 0, 0)),
        "image": Image.new("RGB", (64, 64), (200, 0, 0)),
        "black": Image.new("L", (64, 64), 0),
        "dark": Image.new("L", (64, 64), 127),  # below one half: diffusers binarizes it to "keep"
        "white": Image.new("L", (64, 64), 255),
    }
    paths = {name: tmp_path / f"{name}.png" for name in made}
    for name, image in made.items():
        image.save(paths[name])
    return paths


@pytest.mark.parametrize("name", ["dot", "thin"])
def test_an_init_image_under_one_latent_pixel_is_refused(
    tiny_model: Path, pictures: dict[str, Path], tmp_path: Path, name: str
) -> None:
    size = Image.open(pictures[name]).size
    result = sample(tiny_model, tmp_path / "out", "x", "--init-image", str(pictures[name]))
    assert result.exit_code == 3, result.output
    assert result.stderr == (
        f"error: init image {pictures[name]} is {size[0]}x{size[1]}: smaller than one latent pixel (8x8) of this "
        "model's VAE; give an image at least 8 pixels on each side\n"
    )
    assert not (tmp_path / "out").exists()
    result = invoke("noise", str(pictures[name]), "--model", str(tiny_model), "--out", str(tmp_path / "n.png"))
    assert result.exit_code == 3 and "smaller than one latent pixel" in result.stderr


@pytest.mark.parametrize("mask", ["black", "dark"])
def test_a_mask_that_repaints_nothing_is_refused(
    tiny_model: Path, pictures: dict[str, Path], tmp_path: Path, mask: str
) -> None:
    result = sample(
        tiny_model, tmp_path / "out", "x", "--init-image", str(pictures["image"]), "--mask", str(pictures[mask])
    )
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith(f"error: mask {pictures[mask]} repaints nothing: no pixel is 128 or brighter")
    assert not (tmp_path / "out").exists()


def test_a_mask_that_repaints_everything_is_a_warning(
    tiny_model: Path, pictures: dict[str, Path], tmp_path: Path
) -> None:
    result = sample(tiny_model, tmp_path / "out", "x", "y", "--init-image", str(pictures["image"]),
                    "--mask", str(pictures["white"]))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stderr.count(f"warning: mask {pictures['white']} repaints the whole image") == 1  # once per mask
    assert len(list((tmp_path / "out").glob("*.png"))) == 2


@pytest.mark.parametrize(
    ("form", "text", "code", "where"),
    [("argument", "a\x00cat", 2, "PROMPT"), ("negative", "a\x1bcat", 2, "--negative-prompt"),
     ("lines", "a dog\na\x00cat\n", 3, "prompts.txt:2: \"prompt\""),
     ("jsonl", '{"prompt": "a dog"}\n{"prompt": "a\\u0000cat"}\n', 3, "prompts.txt:2: \"prompt\"")],
)  # fmt: skip
def test_control_characters_in_prompts_are_refused_with_their_place(
    tiny_model: Path, tmp_path: Path, form: str, text: str, code: int, where: str
) -> None:
    if form == "argument":
        args = [text]
    elif form == "negative":
        args = ["a cat", "--negative-prompt", text]
    else:
        (tmp_path / "prompts.txt").write_text(text)
        args = ["--prompts-file", str(tmp_path / "prompts.txt")]
    result = sample(tiny_model, tmp_path / "out", *args)
    assert result.exit_code == code, result.output
    name = "ESC" if "\x1b" in text else "NUL"
    assert result.stderr.endswith(f"{where} holds a control character ({name} at character 2): remove it\n")
    assert not (tmp_path / "out").exists()


def _dataset(folder: Path, captions: dict[str, str], sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    folder.mkdir()
    for i, (name, caption) in enumerate(captions.items()):
        size = (sizes or {}).get(name, (64, 64))
        Image.new("RGB", size, (40 * i, 100, 0)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(caption)
    return folder


def test_control_characters_in_captions_are_removed_with_one_note(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "d", {"a": "red\x00 square", "b": "blue\x07 circle", "c": "tab\tand\nnewline stay"})
    dataset = discover(data)
    assert [e.caption for e in dataset.examples] == ["red square", "blue circle", "tab\tand\nnewline stay"]
    assert dataset.notes == (f"{data / 'a.txt'} and 1 more: control characters (BEL, NUL) removed from 2 caption(s)",)
    with pytest.raises(Exception, match=r"b\.txt: the caption holds a control character \(BEL at character 5\)") as exc:
        discover(_dataset(tmp_path / "strict", {"b": "blue\x07 circle"}), strict=True)
    assert type(exc.value).__name__ == "DataError"


def test_metadata_captions_name_their_line(tmp_path: Path) -> None:
    data = tmp_path / "meta"
    data.mkdir()
    lines = []
    for i in range(2):
        Image.new("RGB", (64, 64)).save(data / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"image\u0000{i}" if i else "clean"}))
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(Exception, match=r"metadata\.jsonl:2: the caption holds a control character \(NUL"):
        discover(data, strict=True)
    assert [e.caption for e in discover(data).examples] == ["clean", "image1"]


def test_tiny_and_blown_up_training_images_are_warned_or_refused(tiny_model: Path, tmp_path: Path) -> None:
    data = _dataset(tmp_path / "d", {"a": "ok", "b": "tiny", "c": "small"}, {"b": (4, 6), "c": (12, 15)})
    plan = dry_run(TrainConfig(model=str(tiny_model), data=data, out=tmp_path / "out", max_steps=1, resolution=64))
    assert plan.data_warnings == (
        f"{data / 'b.png'} (4x6): 1 image(s) smaller than 8 pixels on a side (one latent pixel of this model's VAE): "
        "they hold almost nothing to learn",
        f"{data / 'c.png'} (12x15, 5.3x to 64x64): 1 image(s) scaled up more than 4x to their training size: they "
        "teach blur (lower --resolution, or leave them out)",
    )
    out = tmp_path / "out"
    result = invoke("train", "--model", str(tiny_model), "--data", str(data), "--out", str(out), "--max-steps", "1",
                    "--resolution", "64", "--strict-data")  # fmt: skip
    assert result.exit_code == 3, result.output
    assert result.stderr.splitlines()[-1].endswith(
        "--strict-data refuses such data (without it they train with a warning)"
    )
    assert not out.exists()
    result = invoke("train", "--model", str(tiny_model), "--data", str(data), "--out", str(out), "--max-steps", "1",
                    "--resolution", "64")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"warning: {data / 'b.png'} (4x6): 1 image(s) smaller than 8 pixels" in result.stderr
    assert f"warning: {data / 'c.png'} (12x15, 5.3x to 64x64)" in result.stderr
