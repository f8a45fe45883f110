"""The adapter `sdlite train --lora` trains: its peft type (LoRA, DoRA, LoHa, LoKr) and the layers it adapts.

peft does the work; this module turns the options into one peft config per component. The 3x3 convolutions
(LoCon, `--lora-conv-rank`) get their own rank and alpha through peft's rank and alpha patterns, so the saved
config records them and every loader (diffusers, peft, sdlite's kohya/LyCORIS export) reads them back.
"""

from __future__ import annotations

from typing import Any

from sdlite.families.base import Family

ADAPTER_TYPES = ("lora", "dora", "loha", "lokr")
ADAPTER_TARGETS = ("attention", "attention+mlp", "all")
# The types diffusers' LoRA loader applies as trained. It reads neither LoHa nor LoKr, and diffusers 0.42 misloads
# a DoRA it saved itself (the UNet's attention pairs come back missing, the text encoders' magnitudes unexpected):
# those are saved with peft's names, which sdlite and peft load (and A1111/ComfyUI through the LyCORIS export).
DIFFUSERS_TYPES = ("lora",)


def target_modules(family: Family, component: str, targets: str, conv: bool) -> list[str]:
    """The module names (peft's suffix match) adapted in `component` ("unet" or a text encoder)."""
    if component != "unet":
        names = family.text_lora_targets + (family.text_mlp_lora_targets if targets != "attention" else ())
        return list(names)
    names = family.lora_targets
    if targets != "attention":
        names += family.mlp_lora_targets
    if targets == "all":
        names += family.other_lora_targets
    if conv:
        names += family.conv_lora_targets
    return list(names)


def peft_config(
    kind: str,
    rank: int,
    alpha: float,
    targets: list[str],
    conv_targets: tuple[str, ...] = (),
    conv_rank: int | None = None,
    conv_alpha: float | None = None,
) -> Any:
    """peft's config of one component's adapter of type `kind`; the conv modules at `conv_rank`/`conv_alpha`."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    patterns: dict[str, Any] = {}
    if conv_rank is not None:
        conv = [name for name in conv_targets if name in targets]
        patterns = {
            "rank_pattern": dict.fromkeys(conv, conv_rank),
            "alpha_pattern": dict.fromkeys(conv, conv_alpha or conv_rank),
        }
    if kind in ("lora", "dora"):
        return LoraConfig(
            r=rank,
            lora_alpha=alpha,
            init_lora_weights="gaussian",
            target_modules=targets,
            use_dora=kind == "dora",
            **patterns,
        )
    if kind == "loha":
        return LoHaConfig(r=rank, alpha=alpha, target_modules=targets, **patterns)
    if kind == "lokr":
        return LoKrConfig(r=rank, alpha=alpha, target_modules=targets, **patterns)
    raise ValueError(f"unknown adapter type {kind!r} (one of {', '.join(ADAPTER_TYPES)})")
