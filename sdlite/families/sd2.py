"""Stable Diffusion 2.x (2.0/2.1, 512 base and 768-v): SD v1's classes with an OpenCLIP ViT-H text encoder.

The UNet projects into and out of attention with linear layers and has a head count per level; the text
encoder is a `CLIPTextModel` 1024 wide with GELU, kept at 23 layers so its last hidden state is OpenCLIP's
penultimate. The 768 models predict v (and need upcast attention in fp16); the 512 base models the noise.
"""

from __future__ import annotations

from sdlite.families.base import Family
from sdlite.families.sd1 import SD1

SD2 = Family(
    name="SD 2.x",
    key="sd2",
    pipelines=SD1.pipelines,
    model_index=SD1.model_index,
    schedule=SD1.schedule,  # the same betas; the prediction type is the model's own
    vae_factor=8,
    native_size=768,
    vae_scaling_factor=0.18215,
    text_encoders=("text_encoder",),
    tokenizers=("tokenizer",),
    lora_targets=SD1.lora_targets,
    text_lora_targets=SD1.text_lora_targets,
    tokenizer_sources={
        "tokenizer": (
            ("stabilityai/stable-diffusion-2-1", "tokenizer"),
            ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", ""),
        )
    },
    pipeline_options=SD1.pipeline_options,
    original_prefixes={
        "unet": "model.diffusion_model.",
        "vae": "first_stage_model.",
        "text_encoder": "cond_stage_model.model.",
        "ema": "model_ema.",
    },
    # What shapes cannot tell: 64-wide heads in the UNet and the text tower, 32 norm groups, OpenCLIP's GELU.
    conventions={"unet_head_width": 64, "text_head_width": 64, "norm_groups": 32, "text_act": "gelu"},
    v_prediction_sizes=(768,),
    a1111_clip_skip=False,
)
