"""Stable Diffusion XL base (1.0 and its fine-tunes: Pony, Illustrious, NoobAI...): two text encoders, 1024 px.

CLIP ViT-L and OpenCLIP bigG (with projection) read the prompt; their penultimate hidden states are joined
(768 + 1280 = 2048 wide) and bigG's pooled projection enters the UNet's added embedding with six
micro-conditioning numbers: original size, crop top-left and target size. Its VAE overflows in fp16
(`force_upcast`), so diffusers decodes in fp32 unless a fixed fp16 VAE is given.
"""

from __future__ import annotations

from sdlite.families.base import Family
from sdlite.families.sd1 import SD1

SDXL = Family(
    name="SDXL",
    key="sdxl",
    pipelines={
        "text-to-image": "StableDiffusionXLPipeline",
        "image-to-image": "StableDiffusionXLImg2ImgPipeline",
        "inpainting": "StableDiffusionXLInpaintPipeline",
    },
    model_index={
        "_class_name": "StableDiffusionXLPipeline",
        "feature_extractor": [None, None],
        "force_zeros_for_empty_prompt": True,
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    },
    schedule={**SD1.schedule, "timestep_spacing": "leading"},
    vae_factor=8,
    native_size=1024,
    vae_scaling_factor=0.13025,
    text_encoders=("text_encoder", "text_encoder_2"),
    tokenizers=("tokenizer", "tokenizer_2"),
    lora_targets=SD1.lora_targets,
    text_lora_targets=SD1.text_lora_targets,
    tokenizer_sources={
        "tokenizer": SD1.tokenizer_sources["tokenizer"],
        "tokenizer_2": (
            ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer_2"),
            ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", ""),
        ),
    },
    # sdlite adds no invisible watermark (the library is optional in diffusers and absent here).
    pipeline_options={"add_watermarker": False, "feature_extractor": None, "image_encoder": None},
    original_prefixes={
        "unet": "model.diffusion_model.",
        "vae": "first_stage_model.",
        "text_encoder": "conditioner.embedders.0.transformer.",
        "text_encoder_2": "conditioner.embedders.1.model.",
        "ema": "model_ema.",
    },
    conventions={"unet_head_width": 64, "text_head_width": 64, "norm_groups": 32, "text_act_2": "gelu"},
    micro_conditioning=True,
    text_layer=2,
    text_final_norm=False,
    a1111_clip_skip=False,
)
