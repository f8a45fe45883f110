"""`sdlite info`: what a model is made of and the tensor shapes of its whole flow.

Everything is read from the model's own config files and safetensors headers, so describing even
the 1B-parameter SD v1.5 architecture takes no memory and no forward pass.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from sdlite.models.config import InfoConfig
from sdlite.models.loading import (
    ResolvedModel,
    is_inpainting,
    read_json,
    resolve_model,
    vae_factor,
)
from sdlite.schema import validate_size

_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64"}


def describe(config: InfoConfig) -> dict[str, Any]:
    """Components (class, parameters, dtypes), scheduler, and the flow's shapes at the chosen size; for a LoRA
    adapter its layout, what it adapts and which tools load it (sdlite/formats/lora_info.py)."""
    from sdlite.formats import lora, lora_info

    if lora.is_lora_source(config.model):
        return lora_info.describe_lora(config.model)
    model = resolve_model(
        config.model, config.offline, config.allow_pickle, config.tokenizer, config.ema_weights, need_tokenizer=False
    )
    root = model.path
    cfg = model.configs()
    scheduler = cfg["scheduler"]
    sf = model.single_file
    family = model.family
    index = read_json(root / "model_index.json") if sf is None else family.model_index
    tokenizer_cfg = _tokenizer_config(model.tokenizer if sf is not None else root / "tokenizer")
    prediction, prediction_from = model.prediction()

    factor = vae_factor(cfg["vae"])
    validate_size(config.height, config.width, factor)
    native = (cfg["unet"].get("sample_size") or 64) * factor
    height, width = config.height or native, config.width or native
    max_tokens = int(tokenizer_cfg.get("model_max_length") or cfg["text_encoder"]["max_position_embeddings"])
    max_tokens = min(max_tokens, cfg["text_encoder"]["max_position_embeddings"])
    latent = (cfg["vae"]["latent_channels"], height // factor, width // factor)
    # SDXL joins both encoders' hidden states along the width: the UNet attends to their sum of widths.
    text = (max_tokens, sum(cfg[name]["hidden_size"] for name in family.text_encoders))

    components = {}
    for name in family.weight_components:
        if sf is not None:
            params, dtypes, files = (
                sf.parameters[name],
                [_DTYPE_NAMES.get(d, d.lower()) for d in sf.dtypes],
                [root.name],
            )
        else:
            found = [f for f in model.weight_files if f.parent.name == name]
            (params, dtypes), files = _count(found), [str(f.relative_to(root)) for f in found]
        components[name] = {"class": index[name][1], "parameters": params, "dtypes": dtypes, "files": files}
    for name in family.tokenizers:
        components[name] = {"class": index[name][1], "model_max_length": max_tokens}

    inpainting = is_inpainting(model)
    # An inpainting UNet also reads the mask and the masked image's latents beside the noisy latents.
    unet_inputs: dict[str, Any] = {"latents": latent, "text": text}
    if inpainting:
        unet_inputs = {"latents": latent, "mask": (1, *latent[1:]), "masked image latents": latent, "text": text}
    flow = [
        _stage("image", None, (cfg["vae"]["in_channels"], height, width)),
        _stage("vae encoder", (cfg["vae"]["in_channels"], height, width), latent),
        _stage("tokenizer", "prompt", (max_tokens,)),
        _stage("text encoder", (max_tokens,), text),
        _stage("unet", unet_inputs, (cfg["unet"]["out_channels"], *latent[1:])),
        _stage("vae decoder", (cfg["unet"]["out_channels"], *latent[1:]), (cfg["vae"]["out_channels"], height, width)),
    ]
    problems = []
    if cfg["unet"].get("cross_attention_dim") != text[1]:
        problems.append(
            f"unet cross_attention_dim {cfg['unet'].get('cross_attention_dim')} != text encoder hidden size {text[1]}"
        )
    if cfg["unet"]["in_channels"] != latent[0] and not inpainting:
        problems.append(f"unet in_channels {cfg['unet']['in_channels']} != vae latent_channels {latent[0]}")

    return {
        "model": config.model,
        "path": str(root),
        "family": family.name,
        "prediction_type": prediction,
        "prediction_type_from": prediction_from,
        "text_encoders": [
            f"{name}: {index[name][1]}, width {cfg[name]['hidden_size']}, {cfg[name]['num_hidden_layers']} layers"
            for name in family.text_encoders
        ],
        "micro_conditioning": family.micro_conditioning,
        "pipeline": index.get("_class_name"),
        "inpainting": inpainting,
        "components": components,
        "total_parameters": sum(c.get("parameters", 0) for c in components.values()),
        "scheduler": {
            "class": scheduler.get("_class_name") or index["scheduler"][1],  # a single file's: the default
            **{
                k: scheduler.get(k)
                for k in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type")
            },
        },
        "vae_scaling_factor": cfg["vae"].get("scaling_factor"),
        "vae_downsampling_factor": factor,
        "native_size": [native, native],
        "size": [height, width],
        "flow": flow,
        "problems": problems,
        **({"single_file": _single_file_facts(model)} if sf is not None else {}),
    }


def _single_file_facts(model: ResolvedModel) -> dict[str, Any]:
    """What was detected in a single file, and what its loading will use."""
    sf = model.single_file
    assert sf is not None
    unet, vae, text = sf.configs["unet"], sf.configs["vae"], sf.configs["text_encoder"]
    return {
        "family": sf.family,
        "layout": "original (CompVis/A1111)",
        "inpainting": sf.inpainting,
        "ema": "present: " + ("using the EMA weights" if model.use_ema else "using the raw weights (--no-ema-weights)")
        if sf.has_ema
        else "absent",
        "text_key_prefix": ", ".join(
            prefix + ("text_model." if kind == "clip" and not sf.text_prefix_missing else "")
            for prefix, kind in sf.text_keys.values()
        ),
        "native_size_from": sf.size_source,
        "settings_from": sf.conventions,
        "tokenizer": _tokenizer_text(model),
        "unet": {
            "levels": len(unet["block_out_channels"]),
            "widths": unet["block_out_channels"],
            "layers_per_block": unet["layers_per_block"],
            "attention_levels": [t.startswith("CrossAttn") for t in unet["down_block_types"]],
            "transformer_depth": unet["transformer_layers_per_block"],
            "cross_attention_dim": unet["cross_attention_dim"],
            "in_channels": unet["in_channels"],
        },
        "vae": {
            "levels": len(vae["block_out_channels"]),
            "widths": vae["block_out_channels"],
            "layers_per_block": vae["layers_per_block"],
            "latent_channels": vae["latent_channels"],
        },
        "text_encoder": {
            "layers": text["num_hidden_layers"],
            "width": text["hidden_size"],
            "heads": text["num_attention_heads"],
            "vocabulary": text["vocab_size"],
            "max_tokens": text["max_position_embeddings"],
        },
    }


def _stage(name: str, given: Any, produced: tuple[int, ...]) -> dict[str, Any]:
    def as_list(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: list(v) for k, v in value.items()}
        return list(value) if isinstance(value, tuple) else value

    return {"stage": name, "input": as_list(given), "output": list(produced)}


def _count(files: list[Path]) -> tuple[int, list[str]]:
    """Parameter count and dtypes from safetensors headers (pickles are opened weights-only)."""
    total, dtypes = 0, set()
    for file in files:
        if file.suffix == ".safetensors":
            with file.open("rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
            for key, entry in header.items():
                if key != "__metadata__":
                    total += math.prod(entry["shape"])
                    dtypes.add(_DTYPE_NAMES.get(entry["dtype"], entry["dtype"].lower()))
        else:
            import torch

            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            for tensor in state.values():
                total += tensor.numel()
                dtypes.add(str(tensor.dtype).removeprefix("torch."))
    return total, sorted(dtypes)


def _tokenizer_text(model: ResolvedModel) -> str:
    if model.tokenizer_embedded:
        return "carried in the file's metadata (sdlite export): no --tokenizer needed"
    return str(model.tokenizer) if model.tokenizer else "not found (pass --tokenizer to sample or train)"


def _tokenizer_config(folder: Path | None) -> dict[str, Any]:
    if folder is None:
        return {}
    path = folder / "tokenizer_config.json"
    return read_json(path) if path.exists() else {}


def format_info(info: dict[str, Any]) -> str:
    if info.get("kind") == "lora":
        from sdlite.formats.lora_info import format_lora_info

        return format_lora_info(info)
    """The human-readable report `sdlite info` prints."""
    kind = ", inpainting: 9 input channels" if info["inpainting"] else ""
    lines = [f"model      {info['model']}  ({info['pipeline']}{kind})"]
    native = f"{info['native_size'][0]}x{info['native_size'][1]}"
    extra = ", micro-conditioned on original size, crop and target size" if info["micro_conditioning"] else ""
    lines.append(
        f"family     {info['family']}, predicts {info['prediction_type']} ({info['prediction_type_from']}), "
        f"native {native}{extra}"
    )
    lines.append(f"text       {'; '.join(info['text_encoders'])}")
    for name, comp in info["components"].items():
        if "parameters" in comp:
            lines.append(
                f"{name:<15}{comp['class']:<28}{comp['parameters'] / 1e6:>10.2f}M params  {', '.join(comp['dtypes'])}"
            )
        else:
            lines.append(f"{name:<15}{comp['class']:<28}max {comp['model_max_length']} tokens")
    lines.append(f"{'total':<43}{info['total_parameters'] / 1e6:>10.2f}M params")
    sched = info["scheduler"]
    lines.append(
        f"scheduler    {sched['class']}: {sched['num_train_timesteps']} steps, {sched['beta_schedule']} "
        f"betas {sched['beta_start']}..{sched['beta_end']}, predicts {sched['prediction_type']}"
    )
    lines.append(
        f"vae          downsamples x{info['vae_downsampling_factor']}, scaling factor {info['vae_scaling_factor']}, "
        f"native size {info['native_size'][0]}x{info['native_size'][1]}"
    )
    lines.append(f"flow at {info['size'][0]}x{info['size'][1]} (height x width):")
    for stage in info["flow"]:
        given = stage["input"]
        if isinstance(given, dict):
            given = " + ".join(f"{k} {tuple(v)}" for k, v in given.items())
        elif isinstance(given, list):
            given = str(tuple(given))
        arrow = f"{given} -> " if given else ""
        lines.append(f"  {stage['stage']:<13}{arrow}{tuple(stage['output'])}")
    if "single_file" in info:
        sf = info["single_file"]
        u, v, t = sf["unet"], sf["vae"], sf["text_encoder"]
        attends = ", ".join(str(i) for i, a in enumerate(u["attention_levels"]) if a) or "none"
        lines += [
            f"single file  {sf['family']}, {sf['layout']} layout{', INPAINTING (9 input channels)' if sf['inpainting'] else ''}; "
            f"EMA {sf['ema']}",
            f"  unet       {u['levels']} levels {tuple(u['widths'])}, {u['layers_per_block']} layers per block, attention "
            f"in levels {attends} (depth {u['transformer_depth']}), cross-attention {u['cross_attention_dim']}, "
            f"{u['in_channels']} input channels",
            f"  vae        {v['levels']} levels {tuple(v['widths'])}, {v['layers_per_block']} layers per block, "
            f"{v['latent_channels']} latent channels",
            f"  text       {t['layers']} layers of width {t['width']} ({t['heads']} heads), vocabulary {t['vocabulary']}, "
            f"{t['max_tokens']} tokens",
            f"  heads, norm groups, scaling factor and schedule from {sf['settings_from']}; native size from the "
            f"{sf['native_size_from']}; tokenizer {sf['tokenizer']}",
        ]
    lines += [f"warning: {p}" for p in info["problems"]]
    return "\n".join(lines)
