"""Model architectures sdlite can create offline with random weights (`sdlite init --preset`).

`tiny` is for tests and CI scripting (samples in well under a second on a CPU); `shapes` is the
small architecture of sdlite's built-in model, trained from scratch on synthetic scenes; `sd1-tiny` has
exactly SD v1's key layout at tiny widths (for format tests); `sd15` is
the Stable Diffusion v1.5 architecture (public component configs) for shape checks and benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdlite.errors import UsageError
from sdlite.families.sd1 import SD1
from sdlite.models.config import InitConfig
from sdlite.staging import staged_folder

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "unet": {
            "sample_size": 8,
            "in_channels": 4,
            "out_channels": 4,
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
            "cross_attention_dim": 32,
            "attention_head_dim": 8,
            "norm_num_groups": 8,
        },
        "vae": {
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": (16, 16, 32, 32),
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "layers_per_block": 1,
            "latent_channels": 4,
            "norm_num_groups": 8,
            "sample_size": 64,
            "scaling_factor": 0.18215,
        },
        "text_encoder": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
        },
    },
    # The built-in default model: 64x64 scenes, 16x16x4 latents, whole-word tokens, 16-token prompts.
    "shapes": {
        "unet": {
            "sample_size": 16,
            "in_channels": 4,
            "out_channels": 4,
            "block_out_channels": (64, 128),
            "layers_per_block": 1,
            "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            "cross_attention_dim": 64,
            "attention_head_dim": 8,
            "norm_num_groups": 32,
        },
        "vae": {
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": (32, 64, 64),
            "down_block_types": ("DownEncoderBlock2D",) * 3,
            "up_block_types": ("UpDecoderBlock2D",) * 3,
            "layers_per_block": 1,
            "latent_channels": 4,
            "norm_num_groups": 32,
            "sample_size": 64,
            "scaling_factor": 1.0,  # replaced by 1/std of the latents when the VAE is trained
        },
        "text_encoder": {
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 16,
            "hidden_act": "quick_gelu",
        },
    },
    # Exactly SD v1's layout (4 UNet levels of 2 layers, attention in the first three, 4 VAE levels,
    # a CLIP text tower with heads of width 64, 32 norm groups) at tiny widths: every key name of a real
    # SD v1 checkpoint exists here, so format conversions are tested in seconds on a CPU.
    "sd1-tiny": {
        "unet": {
            "sample_size": 8,
            "in_channels": 4,
            "out_channels": 4,
            "block_out_channels": (32, 64, 128, 128),
            "layers_per_block": 2,
            "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            "cross_attention_dim": 64,
            "attention_head_dim": 8,
            "norm_num_groups": 32,
        },
        "vae": {
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": (32, 64, 128, 128),
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "layers_per_block": 2,
            "latent_channels": 4,
            "norm_num_groups": 32,
            "sample_size": 64,
            "scaling_factor": 0.18215,
        },
        "text_encoder": {
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 1,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
        },
    },
    "sd15": {
        "unet": {
            "sample_size": 64,
            "in_channels": 4,
            "out_channels": 4,
            "block_out_channels": (320, 640, 1280, 1280),
            "layers_per_block": 2,
            "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
            "norm_num_groups": 32,
        },
        "vae": {
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": (128, 256, 512, 512),
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "layers_per_block": 2,
            "latent_channels": 4,
            "norm_num_groups": 32,
            "sample_size": 512,
            "scaling_factor": 0.18215,
        },
        "text_encoder": {
            "vocab_size": 49408,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
        },
    },
}


def build_pipeline(preset: str, seed: int) -> Any:
    """Assemble a StableDiffusionPipeline of `preset` with weights drawn from `seed` (same seed, same weights)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdlite.models.tokenizer import build_tokenizer

    spec = PRESETS[preset]
    tokenizer = build_tokenizer(max_length=spec["text_encoder"]["max_position_embeddings"])
    text_config = {
        "vocab_size": len(tokenizer),
        **spec["text_encoder"],
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    # Each component draws from its own seeded stream, so adding one never changes another's weights.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**spec["unet"])
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**spec["vae"])
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**SD1.schedule),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def init_model(config: InitConfig) -> Path:
    """Write a complete diffusers folder for `config.preset` to `config.out`, atomically.

    The folder is written under a temporary name beside OUT and renamed into place, so an
    interrupted init never leaves a half-written model that looks complete.
    """
    import torch

    from sdlite.models.loading import silence_library_progress

    silence_library_progress()
    out = Path(config.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not config.overwrite:
        raise UsageError(f"{out} already exists and is not empty; pass --force to replace it")
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    pipe = build_pipeline(config.preset, config.seed)
    if config.dtype != "fp32":
        pipe = pipe.to(dtype=dtypes[config.dtype])
    with staged_folder(out, "model to") as staging:
        pipe.save_pretrained(staging, safe_serialization=True)
    return out
