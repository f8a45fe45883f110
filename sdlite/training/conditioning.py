"""What the UNet is conditioned on, per family: the caption's hidden states and, for SDXL, the pooled text and
six micro-conditioning numbers per image.

SD v1 and SD 2.x read the last hidden state of their one text encoder (SD 2.x's is OpenCLIP's penultimate:
diffusers keeps 23 of its 24 layers). SDXL joins both encoders' penultimate hidden states along the width and
adds the second encoder's pooled projection, as diffusers' SDXL pipelines and training scripts do.
"""

from __future__ import annotations

from typing import Any

from sdlite.families.base import Family


def token_ids(tokenizers: list[Any], captions: list[str]) -> list[Any]:
    """Each tokenizer's padded, truncated ids of the captions (one tensor per text encoder)."""
    return [
        tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt").input_ids
        for tokenizer in tokenizers
    ]


def encode(family: Family, encoders: list[Any], ids: list[Any]) -> tuple[Any, Any]:
    """(hidden states the UNet attends to, pooled text or None) of token ids, one tensor per encoder."""
    import torch

    if not family.micro_conditioning:
        return encoders[0](ids[0].to(_device(encoders[0])))[0], None
    hidden, pooled = [], None
    for encoder, tokens in zip(encoders, ids, strict=True):
        output = encoder(tokens.to(_device(encoder)), output_hidden_states=True)
        hidden.append(output.hidden_states[-2])
        if output[0].ndim == 2:  # CLIPTextModelWithProjection's text_embeds: the pooled projection
            pooled = output[0]
    return torch.cat(hidden, dim=-1), pooled


def time_ids(numbers: list[tuple[int, ...]]) -> Any:
    """SDXL's added time ids, (batch, 6) floats: original size, crop top-left and target size of each image."""
    import torch

    return torch.tensor(numbers, dtype=torch.float32)


def _device(module: Any) -> Any:
    return next(module.parameters()).device
