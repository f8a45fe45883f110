"""LoRA variants (DoRA, LoHa, LoKr) in the LyCORIS names A1111 and ComfyUI read, from peft's state dicts.

peft names a module's tensors `<module>.lora_A.weight` / `.lora_B.weight` / `.lora_magnitude_vector` (DoRA),
`.hada_w1_a` ... `.hada_w2_b` (LoHa) and `.lokr_w1` / `.lokr_w1_a` / `.lokr_w1_b` / `.lokr_w2` / `.lokr_w2_a` /
`.lokr_w2_b` (LoKr). LyCORIS, and the loaders of A1111 and ComfyUI, name them `<kohya module>.lora_down.weight`,
`.lora_up.weight`, `.dora_scale`, `.hada_w1_a` ... and `.lokr_w1` ..., with one `.alpha` per module. The rules
that differ between the two (checked against ComfyUI's weight adapters and A1111's network modules):
- DoRA: peft's magnitude has one value per output row (the norm of W + scale x BA taken over each row); LyCORIS
  files carry it as `dora_scale` of shape (out, 1) (conv: (out, 1, 1, 1)), which ComfyUI reads as that axis.
- LoHa: delta = (w1_a @ w1_b) * (w2_a @ w2_b) x alpha / rank in both, rank = w1_b's first dimension.
- LoKr: delta = kron(w1, w2) x alpha / rank in peft; the LyCORIS readers take the rank from a decomposed matrix
  and use a scale of 1 when neither w1 nor w2 is decomposed, so the export folds alpha / rank into w1 then.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# peft's parameter names of each variant (LyCORIS uses the same ones for LoHa and LoKr).
LOHA_PARAMS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR_PARAMS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
MAGNITUDE = "lora_magnitude_vector"  # peft's DoRA magnitude
DORA_SCALE = "dora_scale"  # its LyCORIS name
VARIANT_PARAMS = (*LOHA_PARAMS, *LOKR_PARAMS)
# Key endings of the variant tensors in the kohya/LyCORIS layout, beside LoRA's `.lora_down.weight` and friends.
KOHYA_VARIANT_SUFFIXES = tuple(f".{p}" for p in (*VARIANT_PARAMS, DORA_SCALE))


def variant(roles: Mapping[str, Any]) -> str:
    """The adapter type of one module from its tensors' roles: "lora", "dora", "loha" or "lokr"."""
    if any(role in roles for role in LOHA_PARAMS):
        return "loha"
    if any(role in roles for role in LOKR_PARAMS):
        return "lokr"
    return "dora" if MAGNITUDE in roles else "lora"


def module_alpha_rank(config: Mapping[str, Any] | None, module: str, default_rank: int) -> tuple[float, int]:
    """(alpha, rank) peft gives `module`: its rank and alpha patterns (PEFT's rule: the pattern matches the module
    path, or its end after a dot), else the config's `r` and `lora_alpha` (LoRA, DoRA) or `alpha` (LoHa, LoKr);
    with no config, diffusers' default: alpha = rank = `default_rank`."""
    if not config:
        return float(default_rank), default_rank
    rank = _pattern(config.get("rank_pattern"), module, config.get("r", default_rank))
    alpha = _pattern(config.get("alpha_pattern"), module, config.get("lora_alpha", config.get("alpha", rank)))
    return float(alpha), int(rank)


def _pattern(patterns: Mapping[str, Any] | None, module: str, default: Any) -> Any:
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def variant_to_kohya(name: str, roles: Mapping[str, Any], config: Mapping[str, Any] | None, module: str) -> dict:
    """One module's LoHa or LoKr tensors (peft roles) under kohya name `name`, with the alpha that gives the
    LyCORIS readers peft's strength."""
    import torch

    kind = variant(roles)
    if kind == "loha":
        rank = roles["hada_w1_b"].shape[0]
        alpha, _ = module_alpha_rank(config, module, rank)
        out = {f"{name}.{p}": roles[p].contiguous() for p in LOHA_PARAMS}
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
        return out
    if "lokr_t2" in roles:
        raise ValueError(f"{module}: a LoKr with a Tucker core (effective conv2d) has no export here")
    alpha, rank = module_alpha_rank(config, module, 1)
    out = {f"{name}.{p}": roles[p].contiguous() for p in LOKR_PARAMS if p in roles}
    decomposed = "lokr_w1_a" in roles or "lokr_w2_a" in roles
    if decomposed:  # the readers divide alpha by the decomposed matrix's rank, which is peft's rank
        inner = roles["lokr_w2_b"].shape[0] if "lokr_w2_b" in roles else roles["lokr_w1_b"].shape[0]
        out[f"{name}.alpha"] = torch.tensor(float(alpha) / rank * inner)
    else:  # the readers apply kron(w1, w2) at scale 1: peft's scale goes into w1
        out[f"{name}.lokr_w1"] = (roles["lokr_w1"] * (alpha / rank)).contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(rank))
    return out


def dora_scale(magnitude: Any, up: Any) -> Any:
    """peft's DoRA magnitude (one value per output: (out,) for a linear layer, (1, out, 1, 1) for a convolution)
    as LyCORIS's `dora_scale`: (out, 1), or (out, 1, 1, 1) for a convolution."""
    return magnitude.reshape(up.shape[0], *[1] * (up.dim() - 1)).contiguous()


def delta_weight(roles: Mapping[str, Any], alpha: float, rank: int, shape: tuple[int, ...]) -> Any:
    """The weight change of a LoRA, LoHa or LoKr module at strength 1 (peft's formulas), shaped as the layer's
    weight `shape`; DoRA's renormalisation is not a delta (see `dora_weight`)."""
    import torch

    scale = alpha / rank
    kind = variant(roles)
    if kind == "loha":
        w1 = roles["hada_w1_a"] @ roles["hada_w1_b"]
        w2 = roles["hada_w2_a"] @ roles["hada_w2_b"]
        return (w1 * w2).reshape(shape) * scale
    if kind == "lokr":
        w1 = roles["lokr_w1"] if "lokr_w1" in roles else roles["lokr_w1_a"] @ roles["lokr_w1_b"]
        w2 = roles["lokr_w2"] if "lokr_w2" in roles else roles["lokr_w2_a"] @ roles["lokr_w2_b"]
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        return torch.kron(w1, w2).reshape(shape) * scale
    down, up = roles["down"], roles["up"]
    return (up.flatten(1) @ down.flatten(1)).reshape(shape) * scale


def dora_weight(weight: Any, delta: Any, magnitude: Any) -> Any:
    """peft's DoRA weight: (W + delta) with each output row rescaled to the learned magnitude."""
    merged = weight + delta
    norm = merged.flatten(1).norm(dim=1)
    return merged * (magnitude / norm).reshape(-1, *[1] * (weight.dim() - 1))


def rank_of(roles: Mapping[str, Any]) -> int:
    """The rank of one module's adapter as its tensors show it (LoKr: its decomposed matrix's, else 1)."""
    for key in ("down", "hada_w1_b", "lokr_w2_b", "lokr_w1_b"):
        if key in roles:
            return int(roles[key].shape[0])
    return 1
