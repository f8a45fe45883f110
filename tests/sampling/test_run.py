"""`sample` gives diffusers' own pixels, follows the seed rule, and records how to remake each image."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.references import diffusers_reference
from PIL import Image

from sdlite.errors import UsageError
from sdlite.sampling.config import Generation, SampleConfig
from sdlite.sampling.run import sample
from sdlite.sampling.sources import SampleOverrides, build_sample_config
from sdlite.schedulers import SCHEDULERS

STEPS = 4


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def run(model: Path, out: Path, *gens: Generation, **kwargs: object) -> list[Path]:
    config = SampleConfig(model=str(model), generations=gens, out=out, **kwargs)  # type: ignore[arg-type]
    return [r.path for r in sample(config).images]


@pytest.mark.parametrize(("batch_size", "scheduler"), [(1, "ddim"), (3, "ddim"), (2, "euler-a")])
def test_parity_with_plain_diffusers(tiny_model: Path, tmp_path: Path, batch_size: int, scheduler: str) -> None:
    gen = Generation(
        "a red circle on a blue background", seed=11, steps=STEPS, guidance=5.0, num_images=3, scheduler=scheduler
    )
    ours = np.stack([pixels(p) for p in run(tiny_model, tmp_path, gen, batch_size=batch_size)])
    # Batched matmuls round differently from single ones, so the baseline uses the same batches.
    batches = [[11, 12, 13][i : i + batch_size] for i in range(0, 3, batch_size)]
    reference = np.concatenate(
        [
            diffusers_reference(tiny_model, gen.prompt, seeds, scheduler, num_inference_steps=STEPS, guidance_scale=5.0)
            for seeds in batches
        ]
    )
    assert ours.shape == (3, 64, 64, 3)
    np.testing.assert_array_equal(ours, reference)


def test_image_i_uses_seed_plus_i(tiny_model: Path, tmp_path: Path) -> None:
    many = run(tiny_model, tmp_path / "many", Generation("a cat", seed=40, steps=STEPS, num_images=3), batch_size=2)
    alone = run(tiny_model, tmp_path / "alone", Generation("a cat", seed=42, steps=STEPS))
    np.testing.assert_array_equal(pixels(many[2]), pixels(alone[0]))
    assert not np.array_equal(pixels(many[0]), pixels(many[1]))
    assert [p.name for p in many] == ["00000-40.png", "00001-41.png", "00002-42.png"]


def test_from_image_round_trip(tiny_model: Path, tmp_path: Path) -> None:
    gen = Generation(
        "a blue square",
        negative_prompt="red",
        seed=7,
        steps=STEPS,
        guidance=3.0,
        scheduler="dpm++2m",
        num_images=2,
        height=48,
        width=32,
    )
    second = run(tiny_model, tmp_path / "a", gen, batch_size=2)[1]
    config = build_sample_config(SampleOverrides(from_image=second, out=tmp_path / "b"), env={})
    assert config.model == str(tiny_model.resolve())
    # The image was made in a batch of two, so the batch is recomputed and only seed 8 is written.
    assert config.generations[0].seed == 7 and config.generations[0].num_images == 2
    assert config.batch_size == 2 and config.keep_numbers == (1,)  # seed 8 is the second image
    again = [r.path for r in sample(config).images]
    assert len(again) == 1
    np.testing.assert_array_equal(pixels(again[0]), pixels(second))
    assert pixels(second).shape == (48, 32, 3)


def test_png_metadata(tiny_model: Path, tmp_path: Path) -> None:
    gen = Generation("a red circle", negative_prompt="blurry", seed=3, steps=STEPS, guidance=6.5)
    path = run(tiny_model, tmp_path, gen)[0]
    with Image.open(path) as image:
        text = dict(image.text)
    prompt, negative, pairs = text["parameters"].split("\n")
    assert prompt == "a red circle"
    assert negative == "Negative prompt: blurry"
    fields = dict(pair.split(": ", 1) for pair in pairs.split(", "))
    assert fields["Steps"] == str(STEPS) and fields["Sampler"] == "DDIM" and fields["CFG scale"] == "6.5"
    assert fields["Seed"] == "3" and fields["Size"] == "64x64" and fields["Model"] == "tiny"
    record = json.loads(text["sdlite"])
    assert fields["Model hash"] == record["model"]["hash"][:10]
    assert set(record["model"]["files"]) == {
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    }
    import hashlib

    unet_file = tiny_model / "unet" / "diffusion_pytorch_model.safetensors"
    assert (
        record["model"]["files"]["unet/diffusion_pytorch_model.safetensors"]
        == hashlib.sha256(unet_file.read_bytes()).hexdigest()
    )
    assert record["settings"] == {
        "prompt": "a red circle",
        "negative_prompt": "blurry",
        "steps": STEPS,
        "guidance": 6.5,
        "scheduler": "ddim",
        "eta": 0.0,
        "seed": 3,
        "height": 64,
        "width": 64,
        "prompt_syntax": "a1111",
        "clip_skip": 1,
    }
    assert {"torch", "diffusers", "transformers", "sdlite"} <= set(record["versions"])


def test_never_overwrites(tiny_model: Path, tmp_path: Path) -> None:
    gen = Generation("a", seed=1, steps=1)
    first = run(tiny_model, tmp_path, gen)[0]
    before = first.read_bytes()
    second = run(tiny_model, tmp_path, gen)[0]
    assert first != second and first.read_bytes() == before
    assert second.name == "00001-1.png"


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_every_scheduler_runs_and_matters(tiny_model: Path, tmp_path: Path, scheduler: str) -> None:
    base = run(tiny_model, tmp_path / "ddim", Generation("a", seed=5, steps=3))[0]
    other = run(tiny_model, tmp_path / scheduler, Generation("a", seed=5, steps=3, scheduler=scheduler))[0]
    assert np.isfinite(pixels(other)).all()
    if scheduler != "ddim":
        assert not np.array_equal(pixels(base), pixels(other))


@pytest.mark.parametrize(
    "change", [{"negative_prompt": "green"}, {"guidance": 1.0}, {"eta": 1.0}, {"prompt": "something else"}]
)
def test_each_setting_changes_the_image(tiny_model: Path, tmp_path: Path, change: dict[str, object]) -> None:
    base = Generation("a red circle", seed=9, steps=STEPS)
    changed = Generation(**{**base.__dict__, **change})
    a = run(tiny_model, tmp_path / "a", base)[0]
    b = run(tiny_model, tmp_path / "b", changed)[0]
    assert not np.array_equal(pixels(a), pixels(b))


def test_long_prompt_warns_with_dropped_words(tiny_model: Path, tmp_path: Path) -> None:
    """Read as plain text, CLIP sees only the first 77 tokens; A1111's syntax reads every word, in chunks."""
    prompt = " ".join(["red"] * 80) + " zebra giraffe"
    gen = Generation(prompt, seed=0, steps=1, prompt_syntax="plain")
    result = sample(SampleConfig(model=str(tiny_model), generations=(gen,), out=tmp_path))
    assert len(result.warnings) == 1
    assert "longer than 77 tokens" in result.warnings[0]
    assert "zebra giraffe" in result.warnings[0]
    short = SampleConfig(model=str(tiny_model), generations=(Generation("red", seed=0, steps=1),), out=tmp_path)
    assert sample(short).warnings == ()
    chunked = SampleConfig(model=str(tiny_model), generations=(Generation(prompt, seed=0, steps=1),), out=tmp_path)
    assert sample(chunked).warnings == ()


def test_grid_shows_every_image(tiny_model: Path, tmp_path: Path) -> None:
    config = SampleConfig(
        model=str(tiny_model), generations=(Generation("a", seed=0, steps=1, num_images=3),), out=tmp_path, grid=True
    )
    result = sample(config)
    assert result.grid is not None
    with Image.open(result.grid) as sheet:
        grid = np.asarray(sheet.convert("RGB"))
    # 2x2 layout of 128-pixel tiles: the top-left tile is image 0 enlarged, the fourth cell stays white.
    first = np.asarray(Image.open(result.images[0].path).convert("RGB").resize((128, 128), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(grid[4:132, 4:132], first)
    assert grid.shape[0] > 2 * 128 and grid.shape[1] == 2 * 132 + 4
    assert (grid[-40:, -100:] == 255).all()


def test_progress_reports_every_step(tiny_model: Path, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    config = SampleConfig(
        model=str(tiny_model), generations=(Generation("a", seed=0, steps=3, num_images=3),), out=tmp_path, batch_size=2
    )
    sample(config, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (9, 9)
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)


def test_model_size_checked_against_its_vae(tiny_model: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_model, tmp_path / "m")
    cfg_path = tmp_path / "m" / "vae" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["block_out_channels"] = [*cfg["block_out_channels"], 32]  # now downsamples by 16
    cfg["down_block_types"] = [*cfg["down_block_types"], "DownEncoderBlock2D"]
    cfg_path.write_text(json.dumps(cfg))
    config = SampleConfig(model=str(tmp_path / "m"), generations=(Generation("a", height=24, width=32),), out=tmp_path)
    with pytest.raises(UsageError, match="--height 24 is not a multiple of the VAE factor 16; nearest valid: 16 or 32"):
        sample(config)


def test_unavailable_device_is_a_usage_error(tiny_model: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UsageError, match="--device cuda is not available"):
        run(tiny_model, tmp_path, Generation("a", steps=1), device="cuda")


def test_bf16_runs_finite(tiny_model: Path, tmp_path: Path) -> None:
    path = run(tiny_model, tmp_path, Generation("a", seed=0, steps=2), dtype="bf16")[0]
    assert pixels(path).std() > 0


def test_schedulers_in_one_run_are_independent(tiny_model: Path, tmp_path: Path) -> None:
    """Each prompt's sampler is built from the model's schedule, not from the previous prompt's sampler."""
    mixed = run(
        tiny_model,
        tmp_path / "mixed",
        Generation("a", seed=1, steps=3, scheduler="dpm++2m"),
        Generation("b", seed=2, steps=3, scheduler="ddim"),
    )
    alone = run(tiny_model, tmp_path / "alone", Generation("b", seed=2, steps=3, scheduler="ddim"))
    np.testing.assert_array_equal(pixels(mixed[1]), pixels(alone[0]))
