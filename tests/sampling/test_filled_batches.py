"""Prompts-file lines fill batches (issue 23): lines that differ only in prompt and seed are denoised together up to
--batch-size, each image records its batch (seeds and prompts), and `--from-image`, `check` and `--resume` remake
such an image pixel for pixel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.formats.png_record import read_record
from sdlite.sampling.config import Generation, SampleConfig
from sdlite.sampling.plan import plan_batches

runner = CliRunner()
SIZE = ["--height", "32", "--width", "32", "--steps", "3"]


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args))


def _plan(gens: list[Generation], batch_size: int, breaks: tuple[int, ...] = ()) -> list[list[tuple[int, int]]]:
    config = SampleConfig(model="m", generations=tuple(gens), batch_size=batch_size, batch_breaks=breaks)
    return [list(zip(b.lines, b.seeds, strict=True)) for b in plan_batches(config, [(64, 64)] * len(gens))]


def test_lines_that_share_their_settings_fill_batches() -> None:
    gens = [Generation(f"p{i}", seed=10 * i, steps=5) for i in range(5)]
    assert _plan(gens, 2) == [[(0, 0), (1, 10)], [(2, 20), (3, 30)], [(4, 40)]]
    two = [Generation("a", seed=1, steps=5, num_images=3), Generation("b", seed=7, steps=5, num_images=2)]
    assert _plan(two, 4) == [[(0, 1), (0, 2), (0, 3), (1, 7)], [(1, 8)]]
    other = [gens[0], Generation("q", seed=3, steps=6), gens[2]]  # another step count: its own batch
    assert _plan(other, 8) == [[(0, 0)], [(1, 3)], [(2, 20)]]
    negative = [gens[0], Generation("q", seed=3, steps=5, negative_prompt="blur")]
    assert _plan(negative, 8) == [[(0, 0)], [(1, 3)]]
    assert _plan(gens[:3], 8, breaks=(1,)) == [[(0, 0)], [(1, 10), (2, 20)]]


@pytest.fixture(scope="module")
def filled(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven lines at batch size 3 (two full batches and one of one); two lines share seed 42."""
    folder = tmp_path_factory.mktemp("filled")
    lines = ["a red circle", "a blue square", '{"prompt": "a green star", "seed": 42}',
             '{"prompt": "a yellow cross", "seed": 42}', "a cat", "a dog", "a house"]  # fmt: skip
    (folder / "prompts.txt").write_text("\n".join(lines) + "\n")
    out = folder / "out"
    result = invoke("sample", "--model", str(tiny_model), "--prompts-file", str(folder / "prompts.txt"),
                    "--batch-size", "3", "--seed", "5", "--out", str(out), *SIZE)  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_each_image_records_its_batch(filled: Path) -> None:
    runs = [read_record(p)["run"] for p in sorted(filled.glob("*.png"))]
    assert [r["batch_seeds"] for r in runs] == [[5, 6, 42]] * 3 + [[42, 43, 44]] * 3 + [
        [45]
    ]  # seeds continue after a line's own
    assert runs[0]["batch_prompts"] == ["a red circle", "a blue square", "a green star"]
    assert runs[3]["batch_prompts"] == ["a yellow cross", "a cat", "a dog"]
    assert "batch_prompts" not in runs[6]  # a batch of one line records what it always did


def test_from_image_remakes_an_image_of_a_filled_batch_exactly(filled: Path, tmp_path: Path) -> None:
    for source in sorted(filled.glob("*.png"))[2:4]:  # the two seed-42 images, in different batches
        out = tmp_path / source.stem
        result = invoke("sample", "--from-image", str(source), "--out", str(out), "--json")
        assert result.exit_code == 0, result.output
        (made,) = [json.loads(line) for line in result.stdout.splitlines()]  # its batch remade, one image kept
        assert made["prompt"] == read_record(source)["settings"]["prompt"]
        assert np.array_equal(_pixels(Path(made["path"])), _pixels(source))


def test_check_passes_a_folder_of_filled_batches(filled: Path) -> None:
    result = invoke("check", str(filled), "-q")
    assert result.exit_code == 0, result.output


def test_a_lost_image_is_remade_with_its_batch(tiny_model: Path, filled: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(filled, out)
    lost = sorted(out.glob("*.png"))[4]
    original = _pixels(lost)
    lost.unlink()
    result = invoke("sample", "--model", str(tiny_model), "--prompts-file", str(filled.parent / "prompts.txt"),
                    "--batch-size", "3", "--seed", "5", "--out", str(out), "--resume", *SIZE)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.png"))) == 7
    assert np.array_equal(_pixels(lost), original)
