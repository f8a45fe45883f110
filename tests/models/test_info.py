"""`info` shapes come from configs; here they are checked against real forward passes and SD v1.5 facts."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdlite.errors import UsageError
from sdlite.models.config import InfoConfig, InitConfig
from sdlite.models.info import describe, format_info


def test_tiny_flow_matches_real_tensors(tiny_model: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    info = describe(InfoConfig(model=str(tiny_model), height=32, width=48))
    flow = {stage["stage"]: stage for stage in info["flow"]}
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    with torch.no_grad():
        image = torch.zeros(1, 3, 32, 48)
        latents = pipe.vae.encode(image).latent_dist.sample()
        ids = pipe.tokenizer("a red circle", padding="max_length", return_tensors="pt").input_ids
        text = pipe.text_encoder(ids)[0]
        noise = pipe.unet(latents, 10, encoder_hidden_states=text).sample
        decoded = pipe.vae.decode(latents).sample
    assert flow["image"]["output"] == list(image.shape[1:])
    assert flow["vae encoder"]["output"] == list(latents.shape[1:])
    assert flow["tokenizer"]["output"] == list(ids.shape[1:])
    assert flow["text encoder"]["output"] == list(text.shape[1:])
    assert flow["unet"]["output"] == list(noise.shape[1:])
    assert flow["vae decoder"]["output"] == list(decoded.shape[1:])
    counted = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "vae", "text_encoder")
    }
    assert {name: info["components"][name]["parameters"] for name in counted} == counted
    assert info["problems"] == []


def test_info_rejects_sizes_off_the_vae_grid(tiny_model: Path) -> None:
    with pytest.raises(UsageError, match="nearest valid: 32 or 40"):
        describe(InfoConfig(model=str(tiny_model), height=36))


@pytest.mark.slow
def test_sd15_preset_has_the_published_architecture(tmp_path: Path) -> None:
    """Random-weight SD v1.5 (fp16 to halve the 4 GB write): counts and the 512x512 flow of the classic design."""
    from sdlite.models.presets import init_model

    model = init_model(InitConfig(out=tmp_path / "sd15", preset="sd15", dtype="fp16"))
    info = describe(InfoConfig(model=str(model)))
    params = {name: info["components"][name]["parameters"] for name in ("unet", "vae", "text_encoder")}
    assert params["unet"] == pytest.approx(859.5e6, rel=1e-3)
    assert params["vae"] == pytest.approx(83.7e6, rel=1e-3)
    assert params["text_encoder"] == pytest.approx(123.0e6, rel=1e-2)
    assert info["components"]["unet"]["dtypes"] == ["float16"]
    flow = {stage["stage"]: stage["output"] for stage in info["flow"]}
    assert flow == {
        "image": [3, 512, 512],
        "vae encoder": [4, 64, 64],
        "tokenizer": [77],
        "text encoder": [77, 768],
        "unet": [4, 64, 64],
        "vae decoder": [3, 512, 512],
    }
    assert "unet         latents (4, 64, 64) + text (77, 768) -> (4, 64, 64)" in format_info(info)
