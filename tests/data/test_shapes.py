"""The shapes world: deterministic data, exact captions, held-out triples, a judge that is right."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.data.shapes import COLORS, SHAPES, Scene, all_triples, caption, held_out, random_scene, render
from sdlite.errors import UsageError
from sdlite.quality.config import EvalConfig
from sdlite.quality.evaluation import classify, evaluate

runner = CliRunner()


def test_dataset_is_deterministic_and_captioned_exactly(tmp_path: Path) -> None:
    for name in ("a", "b"):
        result = runner.invoke(
            app, ["data", "shapes", str(tmp_path / name), "--n", "40", "--size", "48", "--seed", "3"]
        )
        assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "a" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 40
    assert (tmp_path / "a" / "metadata.jsonl").read_bytes() == (tmp_path / "b" / "metadata.jsonl").read_bytes()
    assert all(
        (tmp_path / "a" / r["file_name"]).read_bytes() == (tmp_path / "b" / r["file_name"]).read_bytes() for r in rows
    )
    from PIL import Image

    for row in rows:
        match = re.fullmatch(r"a (\w+) (\w+) on a (\w+) background", row["text"])
        assert match is not None, row["text"]
        color, shape, background = match.groups()
        assert row["text"] == caption(color, shape, background)
        assert (color, shape, background) not in held_out()
        with Image.open(tmp_path / "a" / row["file_name"]) as image:
            assert image.size == (48, 48)
            assert classify(image) == {"color": color, "shape": shape, "background": background}
    other = runner.invoke(app, ["data", "shapes", str(tmp_path / "c"), "--n", "40", "--size", "48", "--seed", "4"])
    assert other.exit_code == 0
    assert (tmp_path / "c" / "metadata.jsonl").read_bytes() != (tmp_path / "a" / "metadata.jsonl").read_bytes()
    again = runner.invoke(app, ["data", "shapes", str(tmp_path / "a"), "--n", "5"])
    assert again.exit_code == 2 and "already holds a dataset" in again.stderr
    onto_a_file = runner.invoke(app, ["data", "shapes", str(tmp_path / "a" / "metadata.jsonl"), "--n", "5"])
    assert onto_a_file.exit_code == 2 and "is a file, not a folder" in onto_a_file.stderr  # was exit 1
    huge = runner.invoke(app, ["data", "shapes", str(tmp_path / "h"), "--n", "1", "--size", "100000"])
    assert huge.exit_code == 2 and "--size between 16 and 4096" in huge.stderr  # was minutes, then out of memory


def test_world_coverage() -> None:
    assert {"red", "green", "blue", "yellow", "white", "black"} <= set(COLORS)
    assert {"circle", "square", "triangle"} <= set(SHAPES)
    hidden = held_out()
    assert 0 < len(hidden) < len(all_triples()) // 10
    seen = [t for t in all_triples() if t not in hidden]
    assert (
        {t[0] for t in seen} == set(COLORS)
        and {t[1] for t in seen} == set(SHAPES)
        and {t[2] for t in seen} == set(COLORS)
    )


def test_judge_is_right_on_clean_renders_of_every_triple() -> None:
    rng = random.Random(0)
    for triple in all_triples():
        for _ in range(3):
            scene = random_scene(rng, [triple])
            assert classify(render(scene, 64)) == dict(zip(("color", "shape", "background"), triple, strict=True)), (
                scene
            )


def test_judge_says_none_for_an_empty_image() -> None:
    blank = render(Scene("red", "circle", "red", 0.5, 0.5, 0.5), 64)
    assert classify(blank)["shape"] == "none"


def test_eval_runs_and_reports_each_split(tiny_model: Path, tmp_path: Path) -> None:
    report = evaluate(EvalConfig(model=str(tiny_model), n=6, steps=2, batch_size=3, out=tmp_path / "imgs"))
    for split in ("seen", "held_out"):
        assert report[split]["images"] == 3
        assert all(0 <= report[split][k] <= 1 for k in ("color", "shape", "background", "all_three"))
    assert len(list((tmp_path / "imgs").glob("*.png"))) == 6
    result = runner.invoke(app, ["eval", "shapes", "--model", str(tiny_model), "--n", "4", "--steps", "1", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["seen"]["images"] == 2
    fast = runner.invoke(
        app, ["eval", "shapes", "--model", str(tiny_model), "--n", "2", "--steps", "1", "--fast", "--json"]
    )
    assert fast.exit_code == 0, fast.stderr
    settings = json.loads(fast.stdout)["settings"]
    assert (settings["mode"], settings["scheduler"], settings["steps"]) == ("fast", "dpm++2m-karras", 1)
    with pytest.raises(UsageError):
        EvalConfig(model="m", n=1)


def test_vae_component_trains_and_sets_the_scaling_factor(tiny_model: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from sdlite.data.shapes import write_dataset
    from sdlite.training.config import TrainConfig
    from sdlite.training.unet import train

    data = write_dataset(tmp_path / "data", 16, 64, 0)
    events: list[dict] = []
    result = train(TrainConfig(model=str(tiny_model), data=data, out=tmp_path / "out", component="vae", max_steps=20,
                               batch_size=4, lr=2e-3), on_event=events.append)  # fmt: skip
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert sum(losses[-5:]) < sum(losses[:5])
    scale = next(e["scaling_factor"] for e in events if e["event"] == "vae")
    config = json.loads((result.out / "vae" / "config.json").read_text())
    assert config["scaling_factor"] == pytest.approx(scale) and scale != 0.18215
    base = load_file(tiny_model / "unet" / "diffusion_pytorch_model.safetensors")
    kept = load_file(result.out / "unet" / "diffusion_pytorch_model.safetensors")
    assert all((base[k] == kept[k]).all() for k in base)  # only the VAE changed
    trained = load_file(result.out / "vae" / "diffusion_pytorch_model.safetensors")
    original = load_file(tiny_model / "vae" / "diffusion_pytorch_model.safetensors")
    assert any(not (trained[k] == original[k]).all() for k in original)
    with pytest.raises(UsageError, match="--component vae does not support --lora"):
        TrainConfig(model="m", data=data, out=tmp_path, component="vae", max_steps=1, lora=True)
    for flag in ("gradient_checkpointing", "channels_last", "compile"):  # UNet levers: no silent no-op
        with pytest.raises(UsageError, match=f"--component vae does not support --{flag.replace('_', '-')}"):
            TrainConfig(model="m", data=data, out=tmp_path, component="vae", max_steps=1, **{flag: True})


def test_judge_ignores_specks_and_soft_edges() -> None:
    """Generated images have halos and stray specks; the judge must see the shape, not them."""
    from PIL import ImageDraw, ImageFilter

    for shape in SHAPES:
        image = render(Scene("orange", shape, "white", 0.5, 0.2, 0.6), 64).filter(ImageFilter.GaussianBlur(1.2))
        ImageDraw.Draw(image).ellipse((56, 2, 61, 7), fill=COLORS["orange"])  # a speck in a far corner
        assert classify(image) == {"color": "orange", "shape": shape, "background": "white"}


def test_vae_training_skips_a_step_whose_first_micro_batch_is_nan(tiny_model: Path, tmp_path: Path) -> None:
    """Every micro-batch's loss counts (the step's loss was once its last micro-batch's alone, so a NaN in an
    earlier one reached the weights)."""
    import torch
    from safetensors.torch import load_file

    from sdlite.data.shapes import write_dataset
    from sdlite.training.config import TrainConfig
    from sdlite.training.unet import train

    data = write_dataset(tmp_path / "data", 8, 64, 0)
    calls: list[int] = []

    def nan_in_first_micro_batch_of_step_2(step: int, loss: torch.Tensor) -> torch.Tensor:
        calls.append(step)
        return loss * float("nan") if step == 1 and calls.count(1) == 1 else loss

    result = train(TrainConfig(model=str(tiny_model), data=data, out=tmp_path / "out", component="vae", max_steps=3,
                               batch_size=2, grad_accum=2, lr=1e-3), loss_hook=nan_in_first_micro_batch_of_step_2)  # fmt: skip
    assert result.bad_steps == 1
    weights = load_file(result.out / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(bool(v.isfinite().all()) for v in weights.values())
