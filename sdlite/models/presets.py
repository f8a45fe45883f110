"""Model architectures sdlite can create offline with random weights (`sdlite init --preset`).

`tiny` is for tests and CI scripting (samples in well under a second on a CPU); `shapes` is the
small architecture of sdlite's built-in model, trained from scratch on synthetic scenes; `sd1-tiny`,
`sd2-tiny` and `sdxl-tiny` have exactly the key layouts of SD v1.5, SD 2.1 (768-v) and SDXL base 1.0 at
tiny widths (every family's tests run in seconds on a CPU); `sd15`, `sd21` and `sdxl` are those models'
architectures (public component configs) for shape checks and benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdlite.errors import UsageError
from sdlite.families.base import Family
from sdlite.families.sd1 import SD1
from sdlite.families.sd2 import SD2
from sdlite.families.sdxl import SDXL
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


_SD_VAE_TINY = {**PRESETS["sd1-tiny"]["vae"]}
_SD_VAE = {**PRESETS["sd15"]["vae"]}

# SD 2.1 (768-v) and SDXL base 1.0: their public component configs, and the same key layouts at tiny widths
# (every level, layer, transformer depth and text layer of the real model; widths of 32-128). What shapes cannot
# tell follows the families' conventions (heads 64 wide, or one narrower head; 32 norm groups), so their single
# files load without a config. The tiny text encoders of SDXL differ in width: diffusers' single-file loader
# tells them apart by width.
PRESETS["sd2-tiny"] = {
    "unet": {
        **PRESETS["sd1-tiny"]["unet"],
        "attention_head_dim": (1, 1, 2, 2),  # heads of width 64 where the level is that wide, as SD 2.1's
        "use_linear_projection": True,
        "upcast_attention": True,
    },
    "vae": _SD_VAE_TINY,
    "text_encoder": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 23,
        "num_attention_heads": 1,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
    },
}
PRESETS["sd21"] = {
    "unet": {
        **PRESETS["sd15"]["unet"],
        "sample_size": 96,
        "cross_attention_dim": 1024,
        "attention_head_dim": (5, 10, 20, 20),
        "use_linear_projection": True,
        "upcast_attention": True,
    },
    "vae": {**_SD_VAE, "sample_size": 768},
    "text_encoder": {
        "vocab_size": 49408,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 23,
        "num_attention_heads": 16,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "projection_dim": 512,
    },
}
_SDXL_UNET_LAYOUT = {
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "norm_num_groups": 32,
}
PRESETS["sdxl-tiny"] = {
    "unet": {
        **_SDXL_UNET_LAYOUT,
        "sample_size": 8,
        "block_out_channels": (32, 64, 96),  # widening at every level, as SDXL's 320, 640, 1280 (shortcut convs)
        "attention_head_dim": (1, 1, 1),
        "cross_attention_dim": 96,  # 32 + 64: both encoders' hidden states side by side
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 112,  # 64 pooled + 6 time ids x 8
    },
    "vae": {**_SD_VAE_TINY, "scaling_factor": 0.13025, "force_upcast": True},
    "text_encoder": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 12,
        "num_attention_heads": 1,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": 32,
    },
    "text_encoder_2": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 32,
        "num_attention_heads": 1,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "projection_dim": 64,
    },
}
PRESETS["sdxl"] = {
    "unet": {
        **_SDXL_UNET_LAYOUT,
        "sample_size": 128,
        "block_out_channels": (320, 640, 1280),
        "attention_head_dim": (5, 10, 20),
        "cross_attention_dim": 2048,
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    },
    "vae": {**_SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
    "text_encoder": {**PRESETS["sd15"]["text_encoder"], "projection_dim": 768},
    "text_encoder_2": {
        "vocab_size": 49408,
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 20,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "projection_dim": 1280,
    },
}
# The family of each preset (the rest are SD v1).
PRESET_FAMILIES: dict[str, Family] = {"sd2-tiny": SD2, "sd21": SD2, "sdxl-tiny": SDXL, "sdxl": SDXL}
# Each SD 2.x preset's prediction type (SD 2.1 at 768 predicts v; the tiny one too, to test that path).
PRESET_PREDICTION = {"sd2-tiny": "v_prediction", "sd21": "v_prediction"}


def family_of_preset(preset: str) -> Family:
    return PRESET_FAMILIES.get(preset, SD1)


def build_components(preset: str, seed: int, meta: bool = False) -> dict[str, Any]:
    """The components of `preset` with weights drawn from `seed` (same seed, same weights); with `meta`, the
    models on the meta device (shapes without memory: full-size layouts are checked so)."""
    import contextlib

    import diffusers
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sdlite.models.tokenizer import build_tokenizer

    spec, family = PRESETS[preset], family_of_preset(preset)
    parts: dict[str, Any] = {}
    # OpenCLIP's tokenizers (SD 2.x's, SDXL's second) pad with "!"; CLIP's own with its end token.
    for name, encoder in zip(family.tokenizers, family.text_encoders, strict=True):
        openclip = spec[encoder]["hidden_act"] == "gelu"
        parts[name] = build_tokenizer(max_length=spec[encoder]["max_position_embeddings"], openclip_pad=openclip)
    # Each component draws from its own seeded stream, so adding one never changes another's weights.
    with torch.random.fork_rng(devices=[]), torch.device("meta") if meta else contextlib.nullcontext():
        torch.manual_seed(seed)
        parts["unet"] = UNet2DConditionModel(**spec["unet"])
        torch.manual_seed(seed + 1)
        parts["vae"] = AutoencoderKL(**spec["vae"])
        for offset, (name, tokenizer) in enumerate(zip(family.text_encoders, family.tokenizers, strict=True)):
            tok = parts[tokenizer]
            config = CLIPTextConfig(
                **{"vocab_size": len(tok), **spec[name]},
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
            torch.manual_seed(seed + 2 + offset)
            with_projection = name == "text_encoder_2"  # SDXL's bigG: its pooled projection conditions the UNet
            parts[name] = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
            # A trained CLIP's final layer norm has a bias, so the mean of its states is far from 0: A1111's emphasis
            # rescales by that mean, which a zero bias would turn into a ratio of rounding errors.
            torch.manual_seed(seed + 12 + offset)
            norm = getattr(parts[name], "final_layer_norm", None) or parts[name].text_model.final_layer_norm
            with torch.no_grad():
                norm.bias.normal_(0.0, 0.5)
    schedule = {**family.schedule, "prediction_type": PRESET_PREDICTION.get(preset, family.schedule["prediction_type"])}
    parts["scheduler"] = getattr(diffusers, family.model_index["scheduler"][1]).from_config(schedule)
    return parts


def build_pipeline(preset: str, seed: int) -> Any:
    """Assemble the diffusers pipeline of `preset` with weights drawn from `seed` (same seed, same weights)."""
    family = family_of_preset(preset)
    options = dict(family.pipeline_options)
    if family.micro_conditioning:
        options["force_zeros_for_empty_prompt"] = family.model_index["force_zeros_for_empty_prompt"]
    return family.pipeline_class("text-to-image")(**build_components(preset, seed), **options)


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
