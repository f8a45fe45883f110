"""Stable Diffusion v1 (1.1-1.5 and their fine-tunes): CLIP ViT-L/14 text, an 8x VAE, 512 px, epsilon."""

from __future__ import annotations

from sdlite.families.base import Family

SD1 = Family(
    name="SD v1",
    key="sd1",
    pipelines={
        "text-to-image": "StableDiffusionPipeline",
        "image-to-image": "StableDiffusionImg2ImgPipeline",
        "inpainting": "StableDiffusionInpaintPipeline",
    },
    model_index={
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    },
    # The classic SD v1 noise schedule; DDIM settings that avoid diffusers' deprecation warnings.
    schedule={
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    },
    vae_factor=8,
    native_size=512,
    vae_scaling_factor=0.18215,
    text_encoders=("text_encoder",),
    tokenizers=("tokenizer",),
    lora_targets=("to_k", "to_q", "to_v", "to_out.0"),
    text_lora_targets=("q_proj", "k_proj", "v_proj", "out_proj"),
    # CLIP ViT-L/14's own tokenizer, then the SD v1.5 repo's copy.
    tokenizer_sources={
        "tokenizer": (
            ("openai/clip-vit-large-patch14", ""),
            ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
        )
    },
    pipeline_options={"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False},
    original_prefixes={
        "unet": "model.diffusion_model.",
        "vae": "first_stage_model.",
        "text_encoder": "cond_stage_model.transformer.",
        "ema": "model_ema.",
    },
    # What tensor shapes cannot tell: 8 UNet heads, 64-wide CLIP heads, 32 norm groups, 64 latents (512 px).
    conventions={"unet_heads": 8, "text_head_width": 64, "norm_groups": 32, "latent_size": 64},
)
