"""Model families: what sdlite must know about each family that a model's own configs do not say.

A family gathers its noise schedule, VAE factor, native size, the diffusers pipeline classes per task, the
model_index of a folder made from a single file, the original-layout key prefixes and conventions, the
modules a LoRA adapts and where its tokenizers live. Code that needs one of those asks the model's family
instead of hard-coding SD v1, so a family is one module here, not `if`s elsewhere.
"""

from __future__ import annotations

from typing import Any

from sdlite.families.base import Family
from sdlite.families.sd1 import SD1
from sdlite.families.sd2 import SD2
from sdlite.families.sdxl import SDXL

FAMILIES: tuple[Family, ...] = (SD1, SD2, SDXL)
BY_KEY: dict[str, Family] = {family.key: family for family in FAMILIES}


def family_of_pipeline(class_name: str | None) -> Family | None:
    """The first family whose diffusers folders name `class_name` in model_index.json, or None (SD v1 and SD
    2.x share theirs: `family_of_unet` tells them apart)."""
    return next((f for f in FAMILIES if class_name in f.pipeline_classes), None)


def family_of_unet(class_name: str | None, unet_config: dict[str, Any]) -> Family | None:
    """The family of a diffusers folder from its pipeline class and UNet config, or None when not supported.

    SDXL's UNet takes the added text-and-time embedding; SD 2.x's projects into attention with linear layers
    (SD v1's with 1x1 convolutions), which is also how ComfyUI and kohya tell them apart.
    """
    family = family_of_pipeline(class_name)
    if family is SDXL or unet_config.get("addition_embed_type") == "text_time":
        return SDXL if family is not None else None
    if family is SD1 and unet_config.get("use_linear_projection"):
        return SD2
    return family


def supported_pipelines() -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for family in FAMILIES for name in family.pipeline_classes))
