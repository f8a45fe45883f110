"""Sweeps (A1111's X/Y/Z plot): every combination made with its own full settings and the same seed, a grid laid
out by the axes with their names and values, and a folder `sdlite check` checks like any other."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.formats.png_record import read_record
from sdlite.sampling.grid import MIN_TILE, PAD


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_a_3x2_sweep_makes_6_images_with_their_settings_and_a_labelled_grid(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    result = invoke("sample", "a red circle", "--negative-prompt", "red blur", "--model", str(tiny_model),
                    "--height", "64", "--width", "64", "--seed", "9", "--sweep", "steps=2,3,4",
                    "--sweep", "S/R=red,green", "--grid", "--json", "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    images, grid = lines[:-1], Path(lines[-1]["grid"])
    assert len(images) == 6
    cells = [(i["steps"], i["prompt"], i["negative_prompt"], i["seed"]) for i in images]
    assert cells == [(2, "a red circle", "red blur", 9), (3, "a red circle", "red blur", 9),
                     (4, "a red circle", "red blur", 9), (2, "a green circle", "green blur", 9),
                     (3, "a green circle", "green blur", 9), (4, "a green circle", "green blur", 9)]  # fmt: skip
    for image in images:  # each image's own record and A1111 text say its cell's settings
        record = read_record(Path(image["path"]))
        assert record["settings"]["steps"] == image["steps"] and record["settings"]["prompt"] == image["prompt"]
        assert f"Steps: {image['steps']}," in Image.open(image["path"]).text["parameters"]

    sheet = np.asarray(Image.open(grid).convert("RGB")).astype(int)
    tile = MIN_TILE
    left = sheet.shape[1] - 3 * (tile + PAD) - PAD  # the row labels' column
    top = PAD + 2 * 12 + PAD  # the column labels' lines
    assert sheet.shape[0] == top + 2 * (tile + PAD)  # two rows, no Z block
    for n, image in enumerate(images):
        x, y = n % 3, n // 3
        cell = sheet[top + y * (tile + PAD) : top + y * (tile + PAD) + tile, left + x * (tile + PAD) :][:, :tile]
        expected = np.asarray(Image.open(image["path"]).convert("RGB").resize((tile, tile), Image.Resampling.NEAREST))
        assert np.array_equal(cell, expected.astype(int)), (x, y)
    assert (sheet[PAD : top - PAD, left:] < 128).any()  # the X axis's "steps: N" headers are drawn
    assert (sheet[top:, :left] < 128).any()  # the Y axis's "S/R: ..." labels too

    checked = invoke("check", str(out), "--model", str(tiny_model))
    assert checked.exit_code == 0, checked.output


def test_bad_sweeps_are_usage_errors(tiny_model: Path, tmp_path: Path) -> None:
    common = ["sample", "a red circle", "--model", str(tiny_model), "--steps", "2", "--out", str(tmp_path)]
    for args, words in (
        (["--sweep", "colour=1,2"], "KEY one of S/R"),
        (["--sweep", "steps=2,x"], "'x' is not a whole number"),
        (["--sweep", "steps=2,0"], "--steps must be"),
        (["--sweep", "S/R=blue,green"], "'blue' is not in the prompt"),
        (["--sweep", "steps=2", "--sweep", "steps=3"], "given twice"),
        (["--sweep", "seed=1", "--sweep", "steps=2", "--sweep", "guidance=3", "--sweep", "eta=0"], "at most 3"),
        (["--sweep", "lora-scale=0.5,1"], "needs a --lora"),
    ):
        result = invoke(*common, *args)
        assert result.exit_code == 2 and words in result.stderr, (args, result.stderr)


def test_a_sweep_over_seeds_and_scheduler_gives_each_cell_its_own(tiny_model: Path, tmp_path: Path) -> None:
    result = invoke("sample", "a red circle", "--model", str(tiny_model), "--steps", "2", "--height", "64",
                    "--width", "64", "--sweep", "seed=5,6", "--sweep", "sampler=ddim,euler", "--json",
                    "--out", str(tmp_path))  # fmt: skip
    assert result.exit_code == 0, result.output
    made = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(m["seed"], m["scheduler"]) for m in made] == [(5, "ddim"), (6, "ddim"), (5, "euler"), (6, "euler")]


def test_a_lora_scale_sweep_equals_runs_at_each_scale(tiny_model: Path, tmp_path: Path) -> None:
    import diffusers
    from helpers.references import random_lora_of_every_target
    from safetensors.torch import save_file

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None)
    save_file({k: v * 0.3 for k, v in random_lora_of_every_target(pipe, alpha=2).items()}, tmp_path / "l.safetensors")
    common = ["sample", "a red circle", "--model", str(tiny_model), "--steps", "2", "--height", "64", "--width", "64",
              "--seed", "3", "--lora", str(tmp_path / "l.safetensors"), "--json"]  # fmt: skip
    swept = invoke(*common, "--sweep", "lora-scale=0,0.5,1", "--out", str(tmp_path / "s"))
    assert swept.exit_code == 0, swept.output
    paths = [json.loads(line)["path"] for line in swept.stdout.splitlines()]
    for path, scale in zip(paths, ("0", "0.5", "1"), strict=True):
        alone = invoke(*common, "--lora-scale", scale, "--out", str(tmp_path / scale))
        assert alone.exit_code == 0, alone.output
        pixels = np.asarray(Image.open(json.loads(alone.stdout)["path"]))
        assert np.array_equal(np.asarray(Image.open(path)), pixels), scale
    assert not np.array_equal(np.asarray(Image.open(paths[0])), np.asarray(Image.open(paths[2])))
