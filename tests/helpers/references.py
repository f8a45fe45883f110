"""References sdlite's results are compared against: plain diffusers' pixels, and LoRAs made with peft."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sdlite.schedulers import SCHEDULERS


def diffusers_reference(
    model: Path,
    prompt: str,
    seeds: list[int],
    scheduler: str = "ddim",
    pipeline: str = "StableDiffusionPipeline",
    prediction_type: str | None = None,
    prepare: Any = None,
    **call: object,
) -> np.ndarray:
    """What plain diffusers (`pipeline`, text-to-image by default) makes from the same folder: the parity baseline.
    SDXL pipelines are loaded without the invisible watermark (sdlite adds none), the others without a safety
    checker; `prediction_type` replaces the scheduler config's; `prepare(pipe)` runs once loaded (adds an adapter...)."""
    import diffusers
    import torch

    options = (
        {"add_watermarker": False} if "XL" in pipeline else {"safety_checker": None, "requires_safety_checker": False}
    )
    pipe = getattr(diffusers, pipeline).from_pretrained(model, **options)
    spec = SCHEDULERS[scheduler]
    config = {**pipe.scheduler.config, **({"prediction_type": prediction_type} if prediction_type else {})}
    pipe.scheduler = getattr(diffusers, spec.class_name).from_config(config, **spec.overrides)
    pipe.set_progress_bar_config(disable=True)
    if prepare is not None:
        prepare(pipe)
    images = pipe(
        [prompt] * len(seeds),
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
        output_type="np",
        **call,
    ).images
    return (images * 255).round().astype(np.uint8)


def plain_pipeline(model: Path) -> Any:
    """Plain diffusers' SD pipeline of a model folder (no safety checker, no progress bar): LoRA parity baselines."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_lora_of_every_target(pipe: Any, alpha: float) -> dict[str, Any]:
    """A diffusers-layout rank-2 LoRA (random weights) on every layer sdlite's training targets."""
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    from sdlite.families.sd1 import SD1

    state: dict[str, Any] = {}
    for name, module, targets in (
        ("unet", pipe.unet, list(SD1.lora_targets)),
        ("text_encoder", pipe.text_encoder, list(SD1.text_lora_targets)),
    ):
        inject_adapter_in_model(LoraConfig(r=2, lora_alpha=alpha, target_modules=targets), module)
        for key, value in convert_state_dict_to_diffusers(get_peft_model_state_dict(module)).items():
            state[f"{name}.{key}"] = torch.randn_like(value)
    return state
