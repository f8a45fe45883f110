"""The description of a model family: what sdlite must know that a model's own configs do not say."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Family:
    """One model family: SD v1, SD 2.x or SDXL."""

    name: str  # as messages name it: "SD v1"
    key: str  # as records and option values name it: "sd1", "sd2", "sdxl"
    # Task (text-to-image, image-to-image, inpainting) -> diffusers pipeline class, built from the loaded parts.
    pipelines: dict[str, str]
    # model_index.json of a diffusers folder made from a single file (which has none to copy).
    model_index: dict[str, Any]
    schedule: dict[str, Any]  # the training noise schedule (DDPM/DDIM arguments)
    vae_factor: int  # pixels per latent along a side
    native_size: int  # the image side the family is trained at
    vae_scaling_factor: float
    text_encoders: tuple[str, ...]  # the pipeline's text-encoder components, in order
    tokenizers: tuple[str, ...]  # the pipeline's tokenizer components, one per text encoder
    lora_targets: tuple[str, ...]  # UNet modules a LoRA adapts (attention projections)
    text_lora_targets: tuple[str, ...]  # text-encoder modules a LoRA adapts
    # Where each tokenizer lives on the hub, for single files (which hold none): (repo, subfolder), in order.
    tokenizer_sources: dict[str, tuple[tuple[str, str], ...]]
    # Keyword arguments every pipeline of the family takes besides its components (no safety checker...).
    pipeline_options: dict[str, Any] = field(default_factory=dict)
    # Original (CompVis/A1111) single-file layout: the prefix of each component's keys.
    original_prefixes: dict[str, str] = field(default_factory=dict)
    # What tensor shapes cannot tell about an original-layout file, by config entry.
    conventions: dict[str, Any] = field(default_factory=dict)
    # Native sizes at which the family's models predict v rather than the noise (SD 2.x at 768).
    v_prediction_sizes: tuple[int, ...] = ()
    # SDXL's added conditioning: original size, crop top-left and target size go into the UNet.
    micro_conditioning: bool = False
    # The text encoders' hidden layer the UNet reads, counted from the last (1) at clip skip 1, and whether a layer
    # before the last goes through the final layer norm (SD v1 and 2.x: yes; SDXL reads its penultimate raw).
    text_layer: int = 1
    text_final_norm: bool = True
    a1111_clip_skip: bool = True  # whether A1111 applies its Clip skip setting to the family (not SD 2.x, SDXL)
    # The module groups `--lora-targets` and `--lora-conv-rank` add to the attention projections above (diffusers'
    # UNet and CLIP names, shared by the three families; kohya's LoRA and LoCon cover the same layers).
    mlp_lora_targets: tuple[str, ...] = ("ff.net.0.proj", "ff.net.2")
    text_mlp_lora_targets: tuple[str, ...] = ("fc1", "fc2")
    other_lora_targets: tuple[str, ...] = (
        "proj_in",
        "proj_out",
        "time_emb_proj",
        "conv_shortcut",
        "time_embedding.linear_1",
        "time_embedding.linear_2",
    )
    conv_lora_targets: tuple[str, ...] = ("conv1", "conv2", "downsamplers.0.conv", "upsamplers.0.conv")

    @property
    def pipeline_classes(self) -> tuple[str, ...]:
        """The pipeline classes a diffusers folder of this family may name in its model_index.json."""
        return (self.model_index["_class_name"],)

    @property
    def components(self) -> tuple[str, ...]:
        """The components a model folder of this family must have."""
        return ("unet", "vae", *self.text_encoders, *self.tokenizers, "scheduler")

    @property
    def weight_components(self) -> tuple[str, ...]:
        return ("unet", "vae", *self.text_encoders)

    def pipeline_class(self, task: str) -> Any:
        """The diffusers pipeline class for `task` (imports diffusers: call it only when loading)."""
        import diffusers

        return getattr(diffusers, self.pipelines[task])

    def conventional_prediction(self, native_size: int) -> str:
        """The prediction type a model of this family predicts when nothing says: "epsilon" or "v_prediction"."""
        return "v_prediction" if native_size in self.v_prediction_sizes else "epsilon"
