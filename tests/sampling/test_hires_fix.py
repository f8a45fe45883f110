"""A1111's hires fix: the pixels of plain diffusers doing the same three things (text-to-image, the upscale written
out here, image-to-image at the larger size from the same seeds); A1111's target sizes; recorded with A1111's keys
and replayed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sdlite.cli.app import app
from sdlite.formats.infotext import generation_settings
from sdlite.sampling.config import Generation, SampleConfig
from sdlite.sampling.hires import hires_size
from sdlite.sampling.run import sample
from sdlite.sampling.sources import SampleOverrides, build_sample_config

STEPS = 3


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def made(model: Path, out: Path, **hires: Any) -> list[Any]:
    gen = Generation("a red circle", negative_prompt="blue", steps=STEPS, seed=3, height=64, width=64, num_images=2,
                     **hires)  # fmt: skip
    return list(sample(SampleConfig(model=str(model), generations=(gen,), out=out, batch_size=2)).images)


def diffusers_hires(model: Path, upscaler: str) -> np.ndarray:
    import diffusers

    text = diffusers.StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    text.scheduler = diffusers.DDIMScheduler.from_config(text.scheduler.config)
    text.set_progress_bar_config(disable=True)
    image = diffusers.StableDiffusionImg2ImgPipeline(**text.components)
    image.set_progress_bar_config(disable=True)

    def generators() -> list[torch.Generator]:
        return [torch.Generator("cpu").manual_seed(s) for s in (3, 4)]

    common = {"prompt": ["a red circle"] * 2, "negative_prompt": ["blue"] * 2, "num_inference_steps": STEPS}
    if upscaler == "latent":
        first = text(**common, height=64, width=64, generator=generators(), output_type="latent").images
        upscaled = torch.nn.functional.interpolate(first, size=(12, 12), mode="bilinear", antialias=False)
    else:
        first = text(**common, height=64, width=64, generator=generators(), output_type="pil").images
        upscaled = [im.resize((96, 96), Image.Resampling.LANCZOS) for im in first]
    out = image(**common, image=upscaled, strength=0.7, generator=generators(), output_type="np").images
    return (out * 255).round().astype(np.int16)


@pytest.mark.parametrize("upscaler", ["latent", "lanczos"])
def test_hires_fix_is_diffusers_text_to_image_upscale_then_image_to_image(
    upscaler: str, tiny_model: Path, tmp_path: Path
) -> None:
    ours = made(tiny_model, tmp_path, hires_scale=1.5, hires_upscaler=upscaler)
    assert Image.open(ours[0].path).size == (96, 96)
    theirs = diffusers_hires(tiny_model, upscaler)
    assert all(np.array_equal(pixels(r.path), t) for r, t in zip(ours, theirs, strict=True))


def test_a1111s_target_sizes() -> None:
    assert hires_size(64, 64, 1.5, None, None, 8).final == (96, 96)
    assert hires_size(512, 768, 1.3, None, None, 8).final == (664, 992)  # floored to the latent grid
    assert hires_size(64, 96, None, 144, None, 8).final == (96, 144)  # one side: the aspect ratio kept
    assert hires_size(64, 96, None, None, 128, 8).final == (128, 192)
    both = hires_size(64, 64, None, 128, 96, 8)  # cover 128x96 (W x H) with a square, cut the overflow evenly
    assert both.upscaled == (128, 128) and both.final == (96, 128)


def test_recorded_as_a1111s_keys_and_replayed(tiny_model: Path, tmp_path: Path) -> None:
    first = made(tiny_model, tmp_path / "a", hires_width=96, hires_upscaler="latent-nearest", hires_steps=4,
                 hires_strength=0.5)[0]  # fmt: skip
    text = Image.open(first.path).text["parameters"]
    for pair in ("Size: 64x64", "Denoising strength: 0.5", "Hires resize: 96x0", "Hires steps: 4",
                 "Hires upscaler: Latent (nearest)"):  # fmt: skip
        assert pair in text
    settings, _, notes = generation_settings(text)
    assert settings["hires_width"] == 96 and settings["hires_height"] is None
    assert (settings["hires_upscaler"], settings["hires_steps"], settings["hires_strength"]) == (
        "latent-nearest",
        4,
        0.5,
    )
    assert "strength" not in settings and not any("Hires" in n or "init-image" in n for n in notes)
    config = build_sample_config(SampleOverrides(from_image=first.path, out=tmp_path / "b"))
    (again,) = sample(config).images
    assert np.array_equal(pixels(again.path), pixels(first.path))


def test_a1111s_own_upscaler_models_replay_with_lanczos_and_a_note() -> None:
    settings, _, notes = generation_settings(
        "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 0.4, "
        "Hires upscale: 2, Hires upscaler: R-ESRGAN 4x+"
    )
    assert (settings["hires_scale"], settings["hires_strength"], settings["hires_upscaler"]) == (2.0, 0.4, "lanczos")
    assert any("R-ESRGAN 4x+" in n for n in notes)


def test_hires_options_alone_or_with_an_init_image_are_usage_errors(tiny_model: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    common = ["sample", "a", "--model", str(tiny_model), "--steps", "2", "--out", str(tmp_path)]
    alone = CliRunner().invoke(app, [*common, "--hires-steps", "5"])
    assert alone.exit_code == 2 and "--hires-steps needs --hires-scale" in alone.stderr
    image = tmp_path / "in.png"
    Image.new("RGB", (64, 64)).save(image)
    img2img = CliRunner().invoke(app, [*common, "--hires-scale", "2", "--init-image", str(image)])
    assert img2img.exit_code == 2 and "text-to-image" in img2img.stderr
    nothing = CliRunner().invoke(app, [*common, "--hires-scale", "2", "--hires-strength", "0.1"])
    assert nothing.exit_code == 2 and "runs no step" in nothing.stderr
