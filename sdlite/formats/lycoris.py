"""LoRA variants (DoRA, LoHa, LoKr) in the LyCORIS names A1111 and ComfyUI read, from peft's state dicts and back.

peft names a module's tensors `<module>.lora_A.weight` / `.lora_B.weight` / `.lora_magnitude_vector` (DoRA),
`.hada_w1_a` ... `.hada_w2_b` (LoHa) and `.lokr_w1` / `.lokr_w1_a` / `.lokr_w1_b` / `.lokr_w2` / `.lokr_w2_a` /
`.lokr_w2_b` (LoKr). LyCORIS, and the loaders of A1111 and ComfyUI, name them `<kohya module>.lora_down.weight`,
`.lora_up.weight`, `.dora_scale`, `.hada_w1_a` ... and `.lokr_w1` ..., with one `.alpha` per module. Where the
readers' rules differ from peft's (measured by running their code on sdlite's files; ../shared/reference.md):
- DoRA: peft scales each output row of W + delta to its magnitude, dividing by that row's norm; ComfyUI reads a
  `dora_scale` of shape (out, 1) as the same axis but divides by the row norms of the unpatched W, so the export
  writes magnitude x |W| / |W + delta| (which needs the base weights) and the reader undoes it.
- LoHa: delta = (w1_a @ w1_b) * (w2_a @ w2_b) x alpha / rank in all of them, rank = w1_b's first dimension.
- LoKr: delta = kron(w1, w2) x alpha / rank in peft and, with a decomposed matrix, in the readers; with neither
  decomposed they disagree on the alpha, so the export folds alpha / rank into w1 and writes no alpha.
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
TYPE_LABELS = {"lora": "LoRA", "locon": "LoCon", "dora": "DoRA", "loha": "LoHa", "lokr": "LoKr"}
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
    if "lokr_w1_a" in roles or "lokr_w2_a" in roles:  # the readers divide alpha by the decomposed matrix's rank,
        out[f"{name}.alpha"] = torch.tensor(float(alpha))  # which is peft's rank
    else:  # peft's scale goes into w1, and no alpha: every reader then applies kron(w1, w2) at scale 1 (with an
        # alpha, ComfyUI's newest LoKr divides it by w2's rows over w1's; its older code and A1111 ignore it)
        out[f"{name}.lokr_w1"] = (roles["lokr_w1"] * (alpha / rank)).contiguous()
    return out


def dora_scale(magnitude: Any, up: Any, norm_ratio: Any) -> Any:
    """peft's DoRA magnitude (one value per output: (out,) for a linear layer, (1, out, 1, 1) for a convolution)
    as the `dora_scale` ComfyUI applies as peft does: shaped (out, 1) or (out, 1, 1, 1), so ComfyUI takes it per
    output row, and times `norm_ratio` = |W| / |W + delta| per row, as ComfyUI divides by the row norms of the
    unpatched weight W where peft divides by the patched one's."""
    shape = (up.shape[0], *[1] * (up.dim() - 1))
    return (magnitude.reshape(shape) * norm_ratio.reshape(shape).to(magnitude.dtype)).contiguous()


def norm_ratio(weight: Any, delta: Any) -> Any:
    """|W| / |W + delta| per output row (DoRA's magnitudes between peft's rule and ComfyUI's)."""
    return weight.flatten(1).norm(dim=1) / (weight + delta).flatten(1).norm(dim=1)


def adapter_type(keys: Any) -> str:
    """What an adapter file holds, from its key names (any layout): "lora", "locon" (LoRA on 3x3 convolutions too,
    told by their names), "dora", "loha" or "lokr"."""
    keys = list(keys)
    for kind, endings in (("loha", LOHA_PARAMS), ("lokr", LOKR_PARAMS), ("dora", (MAGNITUDE, DORA_SCALE))):
        if any(key.endswith(tuple(f".{e}" for e in endings)) for key in keys):
            return kind
    convs = re.compile(r"(resnets[._]\d+[._]conv[12]|(down|up)samplers[._]0[._]conv)[._]")
    return "locon" if any(convs.search(key) for key in keys) else "lora"


def needs_peft(keys: Any) -> bool:
    """Whether an adapter file holds a type diffusers' LoRA loader does not apply as trained: LoHa, LoKr or DoRA
    (diffusers drops a kohya-layout `dora_scale` and misloads its own DoRA layout)."""
    return any(key.endswith((*KOHYA_VARIANT_SUFFIXES, f".{MAGNITUDE}")) for key in keys)


def from_kohya(
    tensors: Mapping[str, Any], modules: Mapping[str, tuple[str, str]]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """A kohya/LyCORIS-layout LoRA, DoRA, LoHa or LoKr -> ({component: peft state dict}, {component: peft config
    arguments}), the modules found by kohya name in `modules` (kohya name -> (component, module path)).

    Each module's rank and alpha go into the rank and alpha patterns, so peft rebuilds the tensors' shapes. A LoKr
    without a decomposed matrix gets a rank that keeps both whole and alpha = rank (scale 1, as A1111 and ComfyUI
    apply it without an alpha). A DoRA's `dora_scale` becomes the magnitude as it stands: ComfyUI's rule (divided by
    the unpatched weight's row norms) is turned into peft's by the caller, which has the weights
    (`from_comfy_magnitude`). A DoRA scale on the input axis (LyCORIS's older default) has no peft equivalent:
    ValueError.
    """
    grouped: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        name, _, role = key.partition(".")
        grouped.setdefault(name, {})[role] = tensor
    states: dict[str, dict[str, Any]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for name, roles in sorted(grouped.items()):
        if name not in modules:
            continue  # reported by the caller's by-name check
        component, module = modules[name]
        peft_roles, rank, kind = _peft_roles(name, roles)
        alpha = float(roles["alpha"]) if "alpha" in roles else float(rank)  # no alpha: the readers' scale 1
        if kind == "lokr" and "lokr_w1_a" not in roles and "lokr_w2_a" not in roles:
            rank = max(roles["lokr_w2"].shape[:2])  # a rank at which peft keeps both matrices whole; scale 1
            alpha = float(rank)
        state = states.setdefault(component, {})
        state |= {f"{module}.{role}": value for role, value in peft_roles.items()}
        config = configs.setdefault(component, {"kind": kind, "targets": [], "rank_pattern": {}, "alpha_pattern": {}})
        if config["kind"] != kind:
            raise ValueError(f"mixes {config['kind']} and {kind} modules in one component; sdlite applies one type")
        config["targets"].append(module)
        config["rank_pattern"][re.escape(module)] = rank
        config["alpha_pattern"][re.escape(module)] = alpha
    return states, configs


def _peft_roles(name: str, roles: Mapping[str, Any]) -> tuple[dict[str, Any], int, str]:
    """(peft's tensors, rank, type) of one kohya/LyCORIS module."""
    kind = variant({**roles, **({MAGNITUDE: 1} if DORA_SCALE in roles else {})})
    if kind in ("loha", "lokr"):
        params = LOHA_PARAMS if kind == "loha" else LOKR_PARAMS
        found = {p: roles[p] for p in params if p in roles}
        rank = found["hada_w1_b"].shape[0] if kind == "loha" else _lokr_rank(found)
        return found, int(rank), kind
    down, up = roles["lora_down.weight"], roles["lora_up.weight"]
    found = {"lora_A.weight": down, "lora_B.weight": up}
    if DORA_SCALE in roles:
        scale = roles[DORA_SCALE]
        if scale.shape[0] != up.shape[0] or scale.numel() != up.shape[0]:
            raise ValueError(
                f"{name}: its dora_scale {tuple(scale.shape)} normalises each input column (LyCORIS's older DoRA); "
                "peft's DoRA, which sdlite applies, normalises each output row"
            )
        found[MAGNITUDE] = scale.reshape(-1) if down.dim() == 2 else scale.reshape(1, -1, 1, 1)
    return found, int(down.shape[0]), kind


def _lokr_rank(found: Mapping[str, Any]) -> int:
    for key in ("lokr_w2_b", "lokr_w1_b"):
        if key in found:
            return int(found[key].shape[0])
    return 1


def from_comfy_magnitude(scale: Any, weight: Any, delta: Any) -> Any:
    """peft's magnitude for a `dora_scale` ComfyUI applies as m x (W + delta) / |W| per row: scale / norm_ratio."""
    return scale / norm_ratio(weight, delta).reshape(scale.shape).to(scale.dtype)


def peft_config_of(arguments: Mapping[str, Any]) -> Any:
    """peft's config from `from_kohya`'s arguments (or a saved config dict with `peft_type`)."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    if "peft_type" in arguments:  # a config peft saved (sdlite's PEFT file)
        saved = {k: v for k, v in arguments.items() if k not in ("peft_type", "auto_mapping", "peft_version")}
        cls = {"LORA": LoraConfig, "LOHA": LoHaConfig, "LOKR": LoKrConfig}[arguments["peft_type"]]
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in saved.items() if k in fields})
    kind, rank = arguments["kind"], 1
    patterns = {"rank_pattern": arguments["rank_pattern"], "alpha_pattern": arguments["alpha_pattern"]}
    if kind in ("lora", "dora"):
        return LoraConfig(
            r=rank, lora_alpha=rank, target_modules=arguments["targets"], use_dora=kind == "dora", **patterns
        )
    cls = LoHaConfig if kind == "loha" else LoKrConfig
    return cls(r=rank, alpha=rank, target_modules=arguments["targets"], **patterns)
