"""A1111's prompt syntax and clip skip in `sdlite sample`: the pixels of plain diffusers fed the conditioning A1111's
rules give (computed here on the pipeline's own text encoders, swapped by a step-end callback for prompt editing);
a plain prompt gives exactly what it gave before; images that record no syntax replay as plain text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdlite.formats.png_record import read_record
from sdlite.sampling.config import Generation, SampleConfig
from sdlite.sampling.run import sample
from sdlite.sampling.sources import SampleOverrides, build_sample_config

STEPS = 4


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def made(model: Path, out: Path, gen: Generation) -> Path:
    return sample(SampleConfig(model=str(model), generations=(gen,), out=out)).images[0].path


def pipeline(model: Path, xl: bool = False) -> Any:
    import diffusers

    cls = diffusers.StableDiffusionXLPipeline if xl else diffusers.StableDiffusionPipeline
    options = {"add_watermarker": False} if xl else {"safety_checker": None, "requires_safety_checker": False}
    pipe = cls.from_pretrained(model, **options)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ids(pipe: Any, text: str, tokenizer: str = "tokenizer") -> torch.Tensor:
    return getattr(pipe, tokenizer)(text, padding="max_length", max_length=77, return_tensors="pt").input_ids


def reference(pipe: Any, seed: int, embeds: dict[str, Any], switch: tuple[int, dict[str, Any]] | None = None) -> Any:
    """diffusers' pixels from given conditioning; `switch` = (after step i, the tensors the callback puts in)."""

    def callback(p: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if switch is not None and step == switch[0]:
            kwargs.update(switch[1])
        return kwargs

    names = ["prompt_embeds", "add_text_embeds"] if "pooled_prompt_embeds" in embeds else ["prompt_embeds"]
    images = pipe(
        height=64, width=64, num_inference_steps=STEPS, guidance_scale=7.5, output_type="np",
        generator=torch.Generator("cpu").manual_seed(seed), callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=names, **embeds,
    ).images  # fmt: skip
    return (images[0] * 255).round().astype(np.int16)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_plain_prompt_gives_the_same_pixels_in_both_syntaxes(
    family: str, tiny_model: Path, sdxl_tiny_model: Path, tmp_path: Path
) -> None:
    model = {"sd1": tiny_model, "sdxl": sdxl_tiny_model}[family]
    gen = Generation("a red circle", negative_prompt="blue", steps=STEPS, seed=2, height=64, width=64)
    a1111 = made(model, tmp_path / "a", gen)
    plain = made(model, tmp_path / "p", Generation(**{**gen.__dict__, "prompt_syntax": "plain"}))
    assert np.array_equal(pixels(a1111), pixels(plain))
    assert read_record(a1111)["settings"]["prompt_syntax"] == "a1111"


def test_weights_and_clip_skip_give_diffusers_pixels_from_a1111s_conditioning(tiny_model: Path, tmp_path: Path) -> None:
    """`(red:1.3)` at clip skip 2: the penultimate layer through the final norm, weighted, the mean restored; the
    negative prompt at clip skip 2 too (diffusers' own clip_skip skips it)."""
    gen = Generation("a (red:1.3) circle", negative_prompt="blue", steps=STEPS, seed=5, height=64, width=64,
                     clip_skip=2)  # fmt: skip
    ours = pixels(made(tiny_model, tmp_path, gen))
    pipe = pipeline(tiny_model)
    with torch.no_grad():

        def layer(text: str) -> torch.Tensor:
            hidden = pipe.text_encoder(ids(pipe, text), output_hidden_states=True).hidden_states[-2]
            return pipe.text_encoder.final_layer_norm(hidden)

        states = layer("a red circle")
        weights = torch.ones(1, 77, 1)
        weights[0, 2] = 1.3
        positive = states * weights * (states.mean() / (states * weights).mean())
        negative = layer("blue")
    theirs = reference(pipe, 5, {"prompt_embeds": positive, "negative_prompt_embeds": negative})
    assert np.array_equal(ours, theirs)
    plain = reference(pipe, 5, {"prompt": "a (red:1.3) circle", "negative_prompt": "blue"})
    assert np.abs(ours - plain).max() > 0


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_prompt_editing_switches_the_conditioning_at_a1111s_step(
    family: str, tiny_model: Path, sdxl_tiny_model: Path, tmp_path: Path
) -> None:
    """`[red:blue:0.5]` over 4 steps: A1111 reads `red` at steps 0-2 (step <= 2), `blue` at step 3; SDXL swaps its
    pooled projection too. diffusers' callback after step 2 puts in the second prompt's encoding."""
    xl = family == "sdxl"
    model = sdxl_tiny_model if xl else tiny_model
    gen = Generation("a [red:blue:0.5] circle", negative_prompt="green", steps=STEPS, seed=7, height=64, width=64)
    ours = pixels(made(model, tmp_path, gen))
    pipe = pipeline(model, xl)
    with torch.no_grad():  # the two variants encoded together, as A1111 encodes them; the negative alone
        both = pipe.encode_prompt(["a red circle", "a blue circle"], device="cpu", num_images_per_prompt=1,
                                  do_classifier_free_guidance=True, negative_prompt=["green"] * 2)  # fmt: skip
        green = pipe.encode_prompt("green", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    red, blue = ([t[i : i + 1] for t in both[::2]] for i in (0, 1))  # states and pooled of each
    start = {"prompt_embeds": red[0], "negative_prompt_embeds": green[0]}
    swap = {"prompt_embeds": torch.cat([green[0], blue[0]])}
    if xl:
        start |= {"pooled_prompt_embeds": red[1], "negative_pooled_prompt_embeds": green[2]}
        swap["add_text_embeds"] = torch.cat([green[2], blue[1]])
    theirs = reference(pipe, 7, start, (2, swap))
    assert np.array_equal(ours, theirs)
    unswitched = reference(pipe, 7, start)
    assert np.abs(ours - unswitched).max() > 0


def test_an_image_recording_no_syntax_replays_as_plain_text(tiny_model: Path, tmp_path: Path) -> None:
    """Images sdlite wrote before `--prompt-syntax` existed read their prompt as plain text, and replay so."""
    gen = Generation("a (red) circle", steps=2, seed=1, height=64, width=64)
    path = made(tiny_model, tmp_path / "new", gen)
    image = Image.open(path)
    record = json.loads(image.text["sdlite"])
    del record["settings"]["prompt_syntax"], record["settings"]["clip_skip"]
    info = PngInfo()
    info.add_text("parameters", image.text["parameters"])
    info.add_text("sdlite", json.dumps(record))
    old = tmp_path / "old.png"
    image.save(old, pnginfo=info)
    config = build_sample_config(SampleOverrides(from_image=old, out=tmp_path / "again"))
    assert config.generations[0].prompt_syntax == "plain" and config.generations[0].clip_skip == 1
    again = build_sample_config(SampleOverrides(from_image=path, out=tmp_path / "again"))
    assert again.generations[0].prompt_syntax == "a1111"


def test_an_a1111_sdxl_image_replays_clip_skip_as_a1111_applies_it(sdxl_tiny_model: Path, tmp_path: Path) -> None:
    """A1111 writes `Clip skip: 2` for SDXL images but reads SDXL's own layer regardless: replayed at 1."""
    gen = Generation("a red circle", steps=2, seed=3, height=64, width=64)
    path = made(sdxl_tiny_model, tmp_path / "a", gen)
    image = Image.open(path)
    info = PngInfo()
    info.add_text("parameters", image.text["parameters"].replace("Seed: 3,", "Seed: 3, Clip skip: 2,"))
    a1111 = tmp_path / "a1111.png"
    image.save(a1111, pnginfo=info)
    config = build_sample_config(SampleOverrides(from_image=a1111, model=str(sdxl_tiny_model), out=tmp_path / "b"))
    assert config.from_a1111 and config.generations[0].clip_skip == 2
    (again,) = sample(config).images
    assert again.clip_skip == 1 and np.array_equal(pixels(again.path), pixels(path))
