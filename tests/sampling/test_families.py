"""SD 2.x (v-prediction) and SDXL sample through diffusers' own pipelines of their family: the same pixels as
plain diffusers from the same folder and seeds for text-to-image, image-to-image and inpainting; SDXL's second
prompts and micro-conditioning are recorded and replayed; `--prediction-type` overrides what the model says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.imaging import scene_and_mask
from PIL import Image

from sdlite.errors import UsageError
from sdlite.formats.png_record import read_record
from sdlite.sampling.config import Generation, LoraChoice, SampleConfig
from sdlite.sampling.run import sample
from sdlite.sampling.sources import SampleOverrides, build_sample_config

STEPS = 3
PROMPT = "a red circle on a blue background"
PIPELINES = {
    "sd2": ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
    "sdxl": ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
}


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A red circle on blue (64x64) and the mask of its background (white = repaint)."""
    return scene_and_mask(tmp_path_factory.mktemp("scene"))


def run(model: Path, out: Path, *gens: Generation, **kwargs: object) -> list:
    return list(sample(SampleConfig(model=str(model), generations=gens, out=out, **kwargs)).images)  # type: ignore[arg-type]


def reference(model: Path, pipeline: str, seeds: list[int], **call: object) -> np.ndarray:
    from helpers.references import diffusers_reference

    return diffusers_reference(model, PROMPT, seeds, "ddim", pipeline, **call).astype(np.int16)


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_every_task_gives_plain_diffusers_pixels(
    family: str, sd2_tiny_model: Path, sdxl_tiny_model: Path, scene: tuple[Path, Path], tmp_path: Path
) -> None:
    """sd2-tiny predicts v, so this is also v-prediction sampling; inpainting is compared inside the mask, outside
    it the original's own pixels are kept."""
    model = {"sd2": sd2_tiny_model, "sdxl": sdxl_tiny_model}[family]
    text, image_to_image, inpainting = PIPELINES[family]
    image, mask = Image.open(scene[0]).convert("RGB"), Image.open(scene[1]).convert("L")
    common = {"num_inference_steps": STEPS, "guidance_scale": 5.0, "negative_prompt": ["blue"] * 2}
    gens = (
        Generation(PROMPT, negative_prompt="blue", seed=4, steps=STEPS, guidance=5.0, num_images=2),
        Generation(PROMPT, negative_prompt="blue", seed=4, steps=STEPS, guidance=5.0, num_images=2,
                   init_image=str(scene[0]), strength=0.6),
        Generation(PROMPT, negative_prompt="blue", seed=4, steps=STEPS, guidance=5.0, num_images=2,
                   init_image=str(scene[0]), mask=str(scene[1]), strength=1.0),
    )  # fmt: skip
    ours = np.stack([pixels(r.path) for r in run(model, tmp_path / "o", *gens, batch_size=2)])
    theirs = np.concatenate([
        reference(model, text, [4, 5], height=64, width=64, **common),
        reference(model, image_to_image, [4, 5], image=[image] * 2, strength=0.6, **common),
        reference(model, inpainting, [4, 5], image=[image] * 2, mask_image=[mask] * 2, strength=1.0, height=64,
                  width=64, **common),
    ])  # fmt: skip
    assert np.abs(ours[:4] - theirs[:4]).max() <= 1
    inside = np.asarray(mask) > 127
    assert np.abs(ours[4:] - theirs[4:])[:, inside].max() <= 1
    assert (ours[4:][:, ~inside] == pixels(scene[0])[~inside]).all()
    assert np.abs(ours[0] - ours[2]).max() > 10  # the tasks differ: the comparison can fail


def test_sdxl_records_its_micro_conditioning_and_second_prompt_and_replays_them(
    sdxl_tiny_model: Path, tmp_path: Path
) -> None:
    plain, told = run(
        sdxl_tiny_model,
        tmp_path / "o",
        Generation(PROMPT, seed=2, steps=STEPS),
        Generation(PROMPT, seed=2, steps=STEPS, prompt_2="a green square", negative_prompt="blue",
                   negative_prompt_2="a red circle", original_size=(32, 48), crops_coords=(8, 4), target_size=(64, 64)),
    )  # fmt: skip
    settings = read_record(plain.path)["settings"]
    assert (settings["original_size"], settings["crops_coords"], settings["target_size"]) == (
        [64, 64],
        [0, 0],
        [64, 64],
    )
    assert settings["prompt_2"] is None
    record = read_record(told.path)
    assert (record["settings"]["original_size"], record["settings"]["crops_coords"]) == ([32, 48], [8, 4])
    assert record["model"]["family"] == "SDXL" and record["model"]["prediction_type"] == "epsilon"
    theirs = reference(
        sdxl_tiny_model, "StableDiffusionXLPipeline", [2], num_inference_steps=STEPS, guidance_scale=7.5, height=64, width=64,
        prompt_2=["a green square"], negative_prompt=["blue"], negative_prompt_2=["a red circle"],
        original_size=(32, 48), crops_coords_top_left=(8, 4), target_size=(64, 64),
    )[0]  # fmt: skip
    assert np.abs(pixels(told.path) - theirs).max() <= 1
    assert np.abs(pixels(told.path) - pixels(plain.path)).max() > 10  # they do condition the image
    config = build_sample_config(SampleOverrides(from_image=told.path, out=tmp_path / "again"))
    replayed = config.generations[0]
    assert (replayed.original_size, replayed.prompt_2, replayed.negative_prompt_2) == (
        (32, 48),
        "a green square",
        "a red circle",
    )
    (again,) = sample(config).images
    assert (pixels(again.path) == pixels(told.path)).all()


def test_sizes_are_written_width_by_height_on_the_command_line(sdxl_tiny_model: Path, tmp_path: Path) -> None:
    settings = {"original_size": "48x32", "crops_coords": "8,4", "target_size": "64x64"}
    config = build_sample_config(SampleOverrides(prompts=(PROMPT,), model=str(sdxl_tiny_model), settings=settings))
    gen = config.generations[0]
    assert (gen.original_size, gen.crops_coords, gen.target_size) == ((32, 48), (8, 4), (64, 64))
    with pytest.raises(UsageError, match="--original-size"):
        build_sample_config(SampleOverrides(prompts=(PROMPT,), settings={"original_size": "48 by 32"}))


def test_sdxl_settings_on_another_family_are_an_error(tiny_model: Path, tmp_path: Path) -> None:
    for key, value in (("original_size", (32, 32)), ("prompt_2", "x")):
        with pytest.raises(UsageError, match=f"--{key.replace('_', '-')} is for SDXL models; .* is SD v1"):
            run(tiny_model, tmp_path / "o", Generation(PROMPT, steps=STEPS, **{key: value}))
    assert not any((tmp_path / "o").glob("*.png"))


def test_prediction_type_overrides_the_model_and_is_recorded_and_replayed(sd2_tiny_model: Path, tmp_path: Path) -> None:
    """sd2-tiny says v; told epsilon, sdlite samples as plain diffusers does with an epsilon scheduler."""
    (result,) = run(sd2_tiny_model, tmp_path / "o", Generation(PROMPT, seed=1, steps=STEPS), prediction_type="epsilon")
    theirs = reference(sd2_tiny_model, "StableDiffusionPipeline", [1], num_inference_steps=STEPS, guidance_scale=7.5, height=64,
                       width=64, prediction_type="epsilon")[0]  # fmt: skip
    assert np.abs(pixels(result.path) - theirs).max() <= 1
    model = read_record(result.path)["model"]
    assert (model["prediction_type"], model["prediction_type_from"]) == ("epsilon", "--prediction-type")
    config = build_sample_config(SampleOverrides(from_image=result.path, out=tmp_path / "again"))
    assert config.prediction_type == "epsilon"
    (own,) = run(sd2_tiny_model, tmp_path / "v", Generation(PROMPT, seed=1, steps=STEPS))
    assert read_record(own.path)["model"]["prediction_type"] == "v_prediction"
    assert np.abs(pixels(own.path) - pixels(result.path)).max() > 10
    assert build_sample_config(SampleOverrides(from_image=own.path)).prediction_type is None  # the model's own again


@pytest.fixture(scope="module")
def sdxl_lora(sdxl_tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random rank-2 LoRA (alpha 4) of the UNet and both text encoders of sdxl-tiny, as diffusers saves it."""
    import diffusers
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    from sdlite.families.sdxl import SDXL

    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(sdxl_tiny_model, add_watermarker=False)
    layers, metadata = {}, {}
    torch.manual_seed(0)
    for name, targets in (("unet", SDXL.lora_targets), ("text_encoder", SDXL.text_lora_targets),
                          ("text_encoder_2", SDXL.text_lora_targets)):  # fmt: skip
        config = LoraConfig(r=2, lora_alpha=4, target_modules=list(targets))
        inject_adapter_in_model(config, getattr(pipe, name))
        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(getattr(pipe, name)))
        layers[f"{name}_lora_layers"] = {k: torch.randn_like(v) * 0.3 for k, v in state.items()}
        metadata[f"{name}_lora_adapter_metadata"] = config.to_dict()
    folder = tmp_path_factory.mktemp("sdxl-lora")
    diffusers.StableDiffusionXLPipeline.save_lora_weights(folder, **layers, **metadata, safe_serialization=True)
    return folder


def test_an_sdxl_lora_of_both_text_encoders_gives_plain_diffusers_pixels_in_both_layouts(
    sdxl_tiny_model: Path, sdxl_lora: Path, tmp_path: Path
) -> None:
    import diffusers
    import torch

    from sdlite.formats.lora import LORA_FILE, export_lora, read_header

    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(sdxl_tiny_model, add_watermarker=False)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.load_lora_weights(sdxl_lora, adapter_name="a")
    pipe.set_adapters(["a"], adapter_weights=[0.8])
    theirs = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=7.5, height=64, width=64, output_type="np",
                  generator=torch.Generator().manual_seed(3)).images[0]  # fmt: skip
    theirs = (theirs * 255).round()
    kohya = export_lora(sdxl_lora, tmp_path / "kohya.safetensors", "kohya")
    keys = read_header(kohya)[0]
    assert {k.split("_text_model")[0] for k in keys if k.startswith("lora_te")} == {"lora_te1", "lora_te2"}
    gen = Generation(PROMPT, seed=3, steps=STEPS)
    for source in (sdxl_lora / LORA_FILE, kohya):
        (result,) = run(sdxl_tiny_model, tmp_path / source.stem, gen, loras=(LoraChoice(str(source), 0.8),))
        assert np.abs(pixels(result.path) - theirs).max() <= 1, source
    (plain,) = run(sdxl_tiny_model, tmp_path / "plain", gen)
    assert np.abs(pixels(plain.path) - theirs).max() > 10  # the LoRA changes the picture


def test_a_lora_for_another_family_is_one_line_exit_4(sdxl_tiny_model: Path, sdxl_lora: Path, tiny_model: Path,
                                                      tmp_path: Path) -> None:  # fmt: skip
    from typer.testing import CliRunner

    from sdlite.cli.app import app

    result = CliRunner().invoke(app, ["sample", PROMPT, "--model", str(tiny_model), "--steps", "2", "--out",
                                      str(tmp_path / "o"), "--lora", str(sdxl_lora)])  # fmt: skip
    assert result.exit_code == 4
    assert "is not for this SD v1 model: it adapts SDXL's second text encoder" in result.stderr
    assert result.stderr.count("\n") == 1


def test_an_fp16_vae_decodes_as_its_config_says_and_an_overflow_is_named(sdxl_tiny_model: Path, tmp_path: Path) -> None:
    """SDXL's VAE overflows in fp16: with force_upcast (SDXL's config) diffusers decodes in fp32 and the image is
    whole; a VAE whose config says it is fixed for fp16 decodes in fp16, and an overflow there is an error naming
    the cause (exit 6), never a black image."""
    import shutil

    from safetensors.torch import load_file, save_file
    from typer.testing import CliRunner

    from sdlite.cli.app import app

    hot = Path(shutil.copytree(sdxl_tiny_model, tmp_path / "hot"))
    weights = hot / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["decoder.conv_in.weight"] = state["decoder.conv_in.weight"] * 3e4  # past fp16's 65504 inside the decoder
    save_file(state, weights)
    command = ["sample", PROMPT, "--model", str(hot), "--steps", "2", "--dtype", "fp16", "--device", "cpu"]
    upcast = CliRunner().invoke(app, [*command, "--out", str(tmp_path / "a")])
    assert upcast.exit_code == 0, upcast.output
    assert "deprecated" not in upcast.stderr
    config_file = hot / "vae" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "force_upcast": False}))
    overflow = CliRunner().invoke(app, [*command, "--out", str(tmp_path / "b")])
    assert overflow.exit_code == 6
    assert "its decoder overflowed in float16 (its config says force_upcast: false)" in overflow.stderr
    assert not list((tmp_path / "b").glob("*.png"))


def test_noise_and_check_work_on_sdxl(sdxl_tiny_model: Path, scene: tuple[Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sdlite.cli.app import app

    runner = CliRunner()
    strip = tmp_path / "noise.png"
    result = runner.invoke(app, ["noise", str(scene[0]), "--model", str(sdxl_tiny_model), "--out", str(strip),
                                 "--frames", "3", "--steps", "4"])  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(Image.open(strip).text["sdlite.noise"])
    assert len(record["frames"]) == 3 and record["model"] == str(sdxl_tiny_model)
    run(sdxl_tiny_model, tmp_path / "made", Generation(PROMPT, seed=1, steps=STEPS, original_size=(32, 32)))
    result = runner.invoke(app, ["check", str(tmp_path / "made")])
    assert result.exit_code == 0, result.output
    assert "1 passed, 0 failed" in result.output


def test_an_sdxl_inpainting_model_of_9_channels_gives_plain_diffusers_pixels(
    sdxl_tiny_model: Path, scene: tuple[Path, Path], tmp_path: Path
) -> None:
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    model = Path(shutil.copytree(sdxl_tiny_model, tmp_path / "inpaint"))
    config_file = model / "unet" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "in_channels": 9}))
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    extra = torch.randn(state["conv_in.weight"].shape[0], 5, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.05
    state["conv_in.weight"] = torch.cat([state["conv_in.weight"], extra], dim=1)  # + mask + masked-image latents
    save_file(state, weights)
    image, mask = Image.open(scene[0]).convert("RGB"), Image.open(scene[1]).convert("L")
    gen = Generation(PROMPT, seed=6, steps=STEPS, init_image=str(scene[0]), mask=str(scene[1]))
    (result,) = run(model, tmp_path / "o", gen)
    theirs = reference(model, "StableDiffusionXLInpaintPipeline", [6], image=[image], mask_image=[mask], strength=0.75,
                       num_inference_steps=STEPS, guidance_scale=7.5, height=64, width=64)[0]  # fmt: skip
    inside = np.asarray(mask) > 127
    assert np.abs(pixels(result.path) - theirs)[inside].max() <= 1
    assert read_record(result.path)["run"]["inpainting"].startswith("inpainting model")
