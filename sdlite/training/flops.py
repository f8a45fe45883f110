"""Model FLOPs of a training step and the share of a GPU's peak they use (MFU), as training reports them.

The UNet's forward FLOPs are counted by torch's own FlopCounterMode on a copy built on the meta device
(no weights, no memory, about a second for SD v1.5: 0.80 TFLOP at 64x64 latents, the published figure).
A training step costs the forward and a backward of twice its FLOPs for each trained module; the frozen
text encoder's forward is counted, the VAE's encoding is not (it is cached, or it is not model work).
Peak figures are the vendors' dense tensor-core numbers for the precision the run uses.
"""

from __future__ import annotations

import functools
import json
from typing import Any

# Dense peak FLOP/s by device name fragment: (16-bit tensor cores, TF32).
PEAKS = {
    "H200": (989e12, 494e12),
    "H100 SXM": (989e12, 494e12),
    "H100 NVL": (835e12, 418e12),
    "H100 PCIe": (756e12, 378e12),
    "H100": (989e12, 494e12),
    "A100": (312e12, 156e12),
}


def train_flops_per_image(configs: dict[str, Any], height: int, width: int, train_text_encoder: bool) -> float:
    """FLOPs of one image's training step: UNet forward + backward, text encoders' forward (+ backward if
    trained); SDXL's second text encoder counts like the first."""
    factor = 2 ** (len(configs["vae"]["block_out_channels"]) - 1)
    texts = [configs[name] for name in ("text_encoder", "text_encoder_2") if name in configs]
    unet = _unet_forward(
        json.dumps(configs["unet"], sort_keys=True),
        height // factor,
        width // factor,
        texts[0].get("max_position_embeddings", 77),
        configs["unet"].get("cross_attention_dim") or texts[0]["hidden_size"],
    )
    encoders = sum(_text_forward(json.dumps(text, sort_keys=True)) for text in texts)
    return 3 * unet + (3 if train_text_encoder else 1) * encoders


def peak_flops(device_name: str, mixed_precision: str) -> float | None:
    """The device's dense peak FLOP/s at the run's precision; None for devices not in the table (and CPUs)."""
    for fragment, (half, tf32) in PEAKS.items():
        if fragment in device_name:
            return half if mixed_precision in ("fp16", "bf16") else tf32
    return None


@functools.cache
def _unet_forward(config: str, latent_h: int, latent_w: int, tokens: int, width: int) -> float:
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    settings = {k: v for k, v in json.loads(config).items() if not k.startswith("_")}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(settings)
        sample = torch.empty(1, unet.config.in_channels, latent_h, latent_w)
        added = {}
        if unet.config.addition_embed_type == "text_time":  # SDXL: pooled text and six time ids
            pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
            added["added_cond_kwargs"] = {"text_embeds": torch.empty(1, pooled), "time_ids": torch.empty(1, 6)}
        with FlopCounterMode(display=False) as counter:
            unet(sample, torch.tensor([500]), encoder_hidden_states=torch.empty(1, tokens, width), **added)
    return float(counter.get_total_flops())


@functools.cache
def _text_forward(config: str) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel

    settings = {k: v for k, v in json.loads(config).items() if not k.startswith("_") and k != "architectures"}
    with torch.device("meta"):
        model = CLIPTextModel(CLIPTextConfig(**settings))
        ids = torch.zeros(1, settings.get("max_position_embeddings", 77), dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            model(ids)
    return float(counter.get_total_flops())
