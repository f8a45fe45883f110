"""Each family is detected from what a model folder says, never guessed silently: SD v1, SD 2.x and SDXL from
their pipeline class and UNet config, the prediction type from the scheduler config or, when nothing says, the
family's convention (and `info` says it was inferred). The tiny presets have exactly the real models' key layouts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sdlite.errors import ModelError
from sdlite.families import SD1, family_of_unet
from sdlite.families.sd2 import SD2
from sdlite.families.sdxl import SDXL
from sdlite.models.config import InfoConfig
from sdlite.models.info import describe, format_info
from sdlite.models.loading import resolve_model


def test_each_preset_is_detected_as_its_family(tiny_model: Path, sd2_tiny_model: Path, sdxl_tiny_model: Path) -> None:
    assert resolve_model(str(tiny_model)).family is SD1
    assert resolve_model(str(sd2_tiny_model)).family is SD2
    assert resolve_model(str(sdxl_tiny_model)).family is SDXL


def test_the_unet_config_tells_sd2_from_sd1_and_an_unknown_pipeline_is_none() -> None:
    assert family_of_unet("StableDiffusionPipeline", {"use_linear_projection": False}) is SD1
    assert family_of_unet("StableDiffusionPipeline", {"use_linear_projection": True}) is SD2
    assert family_of_unet("StableDiffusionXLPipeline", {"addition_embed_type": "text_time"}) is SDXL
    assert family_of_unet("StableDiffusion3Pipeline", {}) is None
    assert family_of_unet("FluxPipeline", {"addition_embed_type": "text_time"}) is None


def test_info_names_family_prediction_type_native_size_and_text_encoders(
    sd2_tiny_model: Path, sdxl_tiny_model: Path
) -> None:
    sd2 = describe(InfoConfig(model=str(sd2_tiny_model)))
    assert (sd2["family"], sd2["prediction_type"], sd2["prediction_type_from"]) == (
        "SD 2.x",
        "v_prediction",
        "scheduler config",
    )
    xl = describe(InfoConfig(model=str(sdxl_tiny_model)))
    assert (xl["family"], xl["prediction_type"], xl["micro_conditioning"]) == ("SDXL", "epsilon", True)
    assert xl["text_encoders"] == [
        "text_encoder: CLIPTextModel, width 32, 12 layers",
        "text_encoder_2: CLIPTextModelWithProjection, width 64, 32 layers",
    ]
    # The UNet attends to both encoders' hidden states side by side: 32 + 64 wide.
    assert {s["stage"]: s["output"] for s in xl["flow"]}["text encoder"] == [77, 96]
    assert xl["problems"] == []
    text = format_info(xl)
    assert "family     SDXL, predicts epsilon (scheduler config), native 64x64, micro-conditioned" in text
    assert "text_encoder_2 CLIPTextModelWithProjection" in text


def test_a_prediction_type_nothing_states_is_the_family_convention_and_said_to_be_inferred(
    sd2_tiny_model: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(sd2_tiny_model, tmp_path / "m")
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    del config["prediction_type"]
    config_file.write_text(json.dumps(config))
    assert resolve_model(str(folder)).prediction() == ("epsilon", "inferred: the SD 2.x convention at 64 px")
    unet_file = folder / "unet" / "config.json"
    unet = json.loads(unet_file.read_text())
    unet["sample_size"] = 96  # 768 px: SD 2.x's v models
    unet_file.write_text(json.dumps(unet))
    assert resolve_model(str(folder)).prediction() == ("v_prediction", "inferred: the SD 2.x convention at 768 px")
    assert "(inferred: the SD 2.x convention at 768 px)" in format_info(describe(InfoConfig(model=str(folder))))


def test_an_sdxl_folder_missing_its_second_text_encoder_is_incomplete(sdxl_tiny_model: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(sdxl_tiny_model, tmp_path / "m")
    shutil.rmtree(folder / "tokenizer_2")
    with pytest.raises(ModelError, match="tokenizer_2 is missing"):
        resolve_model(str(folder))
    index = json.loads((folder / "model_index.json").read_text())
    del index["text_encoder_2"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match="lacks components: text_encoder_2"):
        resolve_model(str(folder))


@pytest.mark.parametrize(("tiny", "full"), [("sd1-tiny", "sd15"), ("sd2-tiny", "sd21"), ("sdxl-tiny", "sdxl")])
def test_tiny_presets_have_exactly_the_full_models_key_layout(tiny: str, full: str) -> None:
    """Every weight name of SD v1.5, SD 2.1 and SDXL base in every component exists in the tiny preset and nothing
    else (the full-size models are built on the meta device: no memory, no time)."""
    from sdlite.models.presets import build_components

    def names(preset: str) -> dict[str, set[str]]:
        parts = build_components(preset, 0, meta=True)
        return {k: set(v.state_dict()) for k, v in parts.items() if hasattr(v, "state_dict")}

    tiny_names, full_names = names(tiny), names(full)
    assert tiny_names.keys() == full_names.keys()
    if tiny == "sd1-tiny":  # sd1-tiny keeps 2 of CLIP ViT-L's 12 text layers (SD v1 single files have read it so)
        tiny_names.pop("text_encoder"), full_names.pop("text_encoder")
    assert tiny_names == full_names


def test_full_size_presets_have_the_published_parameter_counts() -> None:
    """SD 2.1 and SDXL base as published: UNets of 865.9M and 2567.5M parameters, text encoders of 340.4M (OpenCLIP
    ViT-H, 23 layers) and 123.1M + 694.7M (CLIP-L, OpenCLIP bigG with projection)."""
    from sdlite.models.presets import build_components

    def millions(preset: str) -> dict[str, float]:
        parts = build_components(preset, 0, meta=True)
        return {
            k: round(sum(p.numel() for p in v.parameters()) / 1e6, 1)
            for k, v in parts.items()
            if hasattr(v, "parameters")
        }

    assert millions("sd21") == {"unet": 865.9, "vae": 83.7, "text_encoder": 340.4}
    assert millions("sdxl") == {"unet": 2567.5, "vae": 83.7, "text_encoder": 123.1, "text_encoder_2": 694.7}


def test_openclip_tokenizers_pad_with_exclamation_mark(sd2_tiny_model: Path, sdxl_tiny_model: Path) -> None:
    from transformers import CLIPTokenizer

    def pad(folder: Path, name: str) -> str:
        return CLIPTokenizer.from_pretrained(folder / name).pad_token

    assert pad(sd2_tiny_model, "tokenizer") == "!"
    assert (pad(sdxl_tiny_model, "tokenizer"), pad(sdxl_tiny_model, "tokenizer_2")) == ("<|endoftext|>", "!")
