"""A1111's variation seeds (`--subseed`, `--subseed-strength`, `--seed-resize-from`): the pixels of plain diffusers
started from the noise A1111's rules make (written out here), recorded as A1111's keys and replayed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdlite.cli.app import app
from sdlite.formats.infotext import generation_settings
from sdlite.sampling.config import Generation, SampleConfig
from sdlite.sampling.run import sample
from sdlite.sampling.sources import SampleOverrides, build_sample_config

STEPS = 3


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def made(model: Path, out: Path, gen: Generation, batch_size: int = 1) -> list[Any]:
    return list(sample(SampleConfig(model=str(model), generations=(gen,), out=out, batch_size=batch_size)).images)


def randn(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))


def a1111_slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """modules/rng.py's slerp, written out: norms along dim 1 of (C, H, W) noise."""
    low_n, high_n = low / low.norm(dim=1, keepdim=True), high / high.norm(dim=1, keepdim=True)
    omega = torch.acos((low_n * high_n).sum(1))
    return (torch.sin((1 - t) * omega) / torch.sin(omega)).unsqueeze(1) * low + (
        torch.sin(t * omega) / torch.sin(omega)
    ).unsqueeze(1) * high


def diffusers_from(model: Path, latents: torch.Tensor, seeds: list[int]) -> np.ndarray:
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(["a red circle"] * len(seeds), height=64, width=64, num_inference_steps=STEPS, output_type="np",
                  latents=latents, generator=[torch.Generator("cpu").manual_seed(s) for s in seeds]).images  # fmt: skip
    return (images * 255).round().astype(np.int16)


def test_a_variation_seed_mixes_the_noises_as_a1111_does(tiny_model: Path, tmp_path: Path) -> None:
    gen = Generation("a red circle", steps=STEPS, seed=3, height=64, width=64, num_images=2, subseed=11,
                     subseed_strength=0.3)  # fmt: skip
    ours = made(tiny_model, tmp_path / "a", gen, batch_size=2)
    assert [(r.seed, r.subseed) for r in ours] == [(3, 11), (4, 11)]  # every image shares the subseed
    latents = torch.stack([a1111_slerp(0.3, randn(seed, (4, 8, 8)), randn(11, (4, 8, 8))) for seed in (3, 4)])
    theirs = diffusers_from(tiny_model, latents, [3, 4])
    assert all(np.array_equal(pixels(r.path), t) for r, t in zip(ours, theirs, strict=True))
    plain = made(tiny_model, tmp_path / "p", Generation("a red circle", steps=STEPS, seed=3, height=64, width=64))
    assert np.abs(pixels(ours[0].path) - pixels(plain[0].path)).max() > 0


def test_strength_one_is_the_subseeds_own_image(tiny_model: Path, tmp_path: Path) -> None:
    full = made(tiny_model, tmp_path / "f", Generation("a red circle", steps=STEPS, seed=3, height=64, width=64,
                                                       subseed=11, subseed_strength=1.0))  # fmt: skip
    own = made(tiny_model, tmp_path / "o", Generation("a red circle", steps=STEPS, seed=11, height=64, width=64))
    assert np.array_equal(pixels(full[0].path), pixels(own[0].path))


def test_seed_resize_from_centres_the_smaller_noise(tiny_model: Path, tmp_path: Path) -> None:
    """Resized from 48x80 (W x H): the seed's 6x10 noise is cut to the 8 rows in the middle and centred in the 8
    columns, over the image-sized noise of the seed's generator."""
    gen = Generation("a red circle", steps=STEPS, seed=5, height=64, width=64, seed_resize_from=(80, 48))
    ours = made(tiny_model, tmp_path, gen)
    canvas, small = randn(5, (4, 8, 8)), randn(5, (4, 10, 6))
    canvas[:, :, 1:7] = small[:, 1:9, :]
    assert np.array_equal(pixels(ours[0].path), diffusers_from(tiny_model, canvas[None], [5])[0])


def test_recorded_as_a1111_keys_and_replayed(tiny_model: Path, tmp_path: Path) -> None:
    gen = Generation("a red circle", steps=STEPS, seed=3, height=64, width=64, subseed=11, subseed_strength=0.25,
                     seed_resize_from=(48, 56))  # fmt: skip
    (first,) = made(tiny_model, tmp_path / "a", gen)
    text = Image.open(first.path).text["parameters"]
    assert "Variation seed: 11, Variation seed strength: 0.25, Seed resize from: 56x48" in text
    settings, _, notes = generation_settings(text)
    assert (settings["subseed"], settings["subseed_strength"], settings["seed_resize_from"]) == (11, 0.25, (48, 56))
    assert not any("Variation" in n for n in notes)
    config = build_sample_config(SampleOverrides(from_image=first.path, out=tmp_path / "b"))
    (again,) = sample(config).images
    assert np.array_equal(pixels(again.path), pixels(first.path))


def test_the_command_line_draws_reports_and_refuses(tiny_model: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    common = ["sample", "a red circle", "--model", str(tiny_model), "--steps", "1", "--height", "64", "--width", "64"]
    drawn = CliRunner().invoke(app, [*common, "--subseed", "-1", "--subseed-strength", "0.5", "--out", str(tmp_path)])
    assert drawn.exit_code == 0, drawn.output
    assert " subseed " in drawn.stdout and "x0.5" in drawn.stdout
    alone = CliRunner().invoke(app, [*common, "--subseed", "5", "--out", str(tmp_path)])
    assert alone.exit_code == 2 and "--subseed needs --subseed-strength" in alone.stderr
    image = tmp_path / "in.png"
    Image.new("RGB", (64, 64), "red").save(image)
    img2img = CliRunner().invoke(app, [*common, "--init-image", str(image), "--subseed-strength", "0.5"])
    assert img2img.exit_code == 2 and "text-to-image" in img2img.stderr
    listed = CliRunner().invoke(app, [*common, "--subseed-strength", "0.5", "--json", "--out", str(tmp_path / "j")])
    assert json.loads(listed.stdout)["subseed"] is not None
