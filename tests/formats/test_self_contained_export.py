"""A single file `sdlite export` writes carries its tokenizers (issue 23): sample, info, check and export back to a
folder work on it offline with no --tokenizer, pixel-equal to the folder it came from, and other loaders ignore
the extra metadata."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import sdlite.models.tokenizer as tokenizer_module
from sdlite.cli.app import app
from sdlite.models.tokenizer import load_tokenizer

runner = CliRunner()


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args))


@pytest.fixture()
def no_tokenizer_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the Hugging Face cache nor the hub may stand in for the file's own tokenizers."""
    monkeypatch.setattr(tokenizer_module, "find_tokenizers", lambda *a: pytest.fail("looked for a tokenizer elsewhere"))


def _pixels(folder: Path) -> np.ndarray:
    (png,) = sorted(folder.glob("*.png"))
    return np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("fixture", ["tiny_model", "sd2_tiny_model", "sdxl_tiny_model"])
def test_an_exported_file_samples_offline_pixel_equal_to_its_folder(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path, no_tokenizer_lookup: None
) -> None:
    folder: Path = request.getfixturevalue(fixture)
    file = tmp_path / "model.safetensors"
    assert invoke("export", str(folder), str(file)).exit_code == 0
    with safe_open(file, "pt") as opened:
        meta = opened.metadata()
    names = ["tokenizer", "tokenizer_2"] if fixture == "sdxl_tiny_model" else ["tokenizer"]
    assert sorted(k for k in meta if k.startswith("sdlite.tokenizer")) == [f"sdlite.{n}" for n in names]
    args = ["a red circle", "--steps", "3", "--seed", "5", "--height", "64", "--width", "64"]
    for model, out in ((folder, "from-folder"), (file, "from-file")):
        result = invoke("sample", *args, "--model", str(model), "--out", str(tmp_path / out))
        assert result.exit_code == 0, result.output
    assert np.abs(_pixels(tmp_path / "from-folder") - _pixels(tmp_path / "from-file")).max() == 0
    info = invoke("info", str(file), "--json")
    assert info.exit_code == 0, info.output
    assert "carried in the file's metadata" in json.loads(info.stdout)["single_file"]["tokenizer"]
    check = invoke("check", str(tmp_path / "from-file"))
    assert check.exit_code == 0, check.output
    back = tmp_path / "back"
    assert invoke("export", str(file), str(back), "--format", "diffusers").exit_code == 0
    for name in names:  # the same vocabulary, merges and padding as the source's
        theirs, ours = load_tokenizer(folder / name), load_tokenizer(back / name)
        assert ours.get_vocab() == theirs.get_vocab() and ours.pad_token == theirs.pad_token
        assert ours("a red circle, huge").input_ids == theirs("a red circle, huge").input_ids


def test_other_loaders_read_the_file_as_before(tiny_model: Path, tmp_path: Path) -> None:
    """The tokenizer is metadata only: the tensors are those of a file exported without it."""
    file = tmp_path / "model.safetensors"
    invoke("export", str(tiny_model), str(file))
    with safe_open(file, "pt") as opened:
        meta = opened.metadata()
    packed = base64.b64decode(meta["sdlite.tokenizer"])
    assert len(packed) < 64 * 1024  # the tiny tokenizer; a real CLIP one is about 0.5 MB
    assert all(not k.startswith("sdlite.tokenizer") for k in load_file(file))


def test_a_damaged_embedded_tokenizer_is_named(tiny_model: Path, tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    invoke("export", str(tiny_model), str(file))
    with safe_open(file, "pt") as opened:
        meta = opened.metadata()
    save_file(load_file(file), file, metadata={**meta, "sdlite.tokenizer": "not base64!"})
    result = invoke("sample", "x", "--model", str(file), "--steps", "1", "--out", str(tmp_path / "out"))
    assert result.exit_code == 4
    assert result.stderr.startswith(f"error: {file}: its embedded tokenizer (sdlite.tokenizer) is damaged")
