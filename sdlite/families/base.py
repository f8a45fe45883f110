"""The description of a model family: what sdlite must know that a model's own configs do not say."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Family:
    """One model family (SD v1 today; designed for SD 2.x and SDXL to follow)."""

    name: str  # as messages name it: "SD v1"
    # Task (text-to-image, image-to-image, inpainting) -> diffusers pipeline class, built from the loaded parts.
    pipelines: dict[str, str]
    # model_index.json of a diffusers folder made from a single file (which has none to copy).
    model_index: dict[str, Any]
    schedule: dict[str, Any]  # the training noise schedule (DDPM/DDIM arguments)
    vae_factor: int  # pixels per latent along a side
    native_size: int  # the image side the family is trained at
    vae_scaling_factor: float
    text_encoders: tuple[str, ...]  # the pipeline's text-encoder components, in order
    lora_targets: tuple[str, ...]  # UNet modules a LoRA adapts (attention projections)
    text_lora_targets: tuple[str, ...]  # text-encoder modules a LoRA adapts
    # Where the tokenizer lives on the hub, for single files (which hold none): (repo, subfolder), in order.
    tokenizer_sources: tuple[tuple[str, str], ...]
    # Original (CompVis/A1111) single-file layout: the prefix of each component's keys.
    original_prefixes: dict[str, str] = field(default_factory=dict)
    # What tensor shapes cannot tell about an original-layout file, by config entry.
    conventions: dict[str, Any] = field(default_factory=dict)

    @property
    def pipeline_classes(self) -> tuple[str, ...]:
        """The pipeline classes a diffusers folder of this family may name in its model_index.json."""
        return (self.model_index["_class_name"],)

    def pipeline_class(self, task: str) -> Any:
        """The diffusers pipeline class for `task` (imports diffusers: call it only when loading)."""
        import diffusers

        return getattr(diffusers, self.pipelines[task])
