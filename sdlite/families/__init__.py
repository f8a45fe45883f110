"""Model families: what sdlite must know about each family that a model's own configs do not say.

A family gathers its noise schedule, VAE factor, native size, the diffusers pipeline classes per task, the
model_index of a folder made from a single file, the original-layout key prefixes and conventions, the
modules a LoRA adapts and where its tokenizer lives. Code that needs one of those asks the model's family
instead of hard-coding SD v1, so a new family (SD 2.x, SDXL) is one module here, not `if`s elsewhere.
"""

from __future__ import annotations

from sdlite.families.base import Family
from sdlite.families.sd1 import SD1

FAMILIES: tuple[Family, ...] = (SD1,)


def family_of_pipeline(class_name: str | None) -> Family | None:
    """The family whose diffusers folders name `class_name` in model_index.json, or None."""
    return next((f for f in FAMILIES if class_name in f.pipeline_classes), None)


def supported_pipelines() -> tuple[str, ...]:
    return tuple(name for family in FAMILIES for name in family.pipeline_classes)
