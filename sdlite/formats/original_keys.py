"""diffusers -> original (CompVis/A1111/SGM) key names for SD v1, SD 2.x and SDXL, for `sdlite export`.

The inverse of diffusers' single-file loader: what A1111, ComfyUI and Forge load, and what
`from_single_file` turns back into the same diffusers weights. Computed from each component's
config (levels, layers per block, which levels attend), so small and distilled models export too,
not only the layouts of the released models. Text encoders: CLIP in the transformers layout under its
prefix (`cond_stage_model.transformer.text_model.`, SDXL's `conditioner.embedders.0.transformer.text_model.`),
OpenCLIP in its own (`transformer.resblocks.N.attn.in_proj_weight` holding q, k and v; SD 2.x's
`cond_stage_model.model.`, SDXL's `conditioner.embedders.1.model.`).
"""

from __future__ import annotations

import re
from typing import Any

from sdlite.formats.single_file import CLIP, UNET, VAE

# Inside a UNet resnet: diffusers name -> original name.
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's pooled-text-and-time embedding
    "add_embedding.linear_2": "label_emb.0.2",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_key_map(config: dict[str, Any]) -> dict[str, str]:
    """Module-prefix renames (diffusers -> original) for a UNet2DConditionModel config."""
    n = config["layers_per_block"]
    levels = len(config["block_out_channels"])
    renames = dict(_UNET_TOP)
    for i in range(levels):
        for j in range(n):
            renames[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{(n + 1) * i + j + 1}.0"
            renames[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{(n + 1) * i + j + 1}.1"
        renames[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(n + 1) * (i + 1)}.0.op"
        up_attends = config["up_block_types"][i].startswith("CrossAttn")
        for j in range(n + 1):
            renames[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{(n + 1) * i + j}.0"
            renames[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{(n + 1) * i + j}.1"
        renames[f"up_blocks.{i}.upsamplers.0"] = f"output_blocks.{(n + 1) * i + n}.{2 if up_attends else 1}"
    renames["mid_block.attentions.0"] = "middle_block.1"
    for j in range(2):
        renames[f"mid_block.resnets.{j}"] = f"middle_block.{2 * j}"
    return renames


def unet_to_original(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A diffusers UNet state dict under `model.diffusion_model.` original names."""
    renames = unet_key_map(config)
    out = {}
    for key, tensor in state.items():
        module, name = _split(key, renames)
        if not module:
            raise ValueError(f"UNet key {key} has no original-layout name (not an SD v1 UNet?)")
        if ".resnets." in module:
            head, tail = name.split(".", 1) if "." in name else (name, "")
            name = ".".join(p for p in (_UNET_RESNET.get(head, head), tail) if p)
        out[UNET + ".".join(p for p in (renames[module], name) if p)] = tensor
    return out


def vae_key_map(config: dict[str, Any]) -> dict[str, str]:
    """Module-prefix renames (diffusers -> original) for an AutoencoderKL config."""
    n = config["layers_per_block"]
    levels = len(config["block_out_channels"])
    renames = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
    for i in range(levels):
        for j in range(n):
            renames[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
        renames[f"encoder.down_blocks.{i}.downsamplers.0"] = f"encoder.down.{i}.downsample"
        for j in range(n + 1):
            renames[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{levels - 1 - i}.block.{j}"
        renames[f"decoder.up_blocks.{i}.upsamplers.0"] = f"decoder.up.{levels - 1 - i}.upsample"
    for part in ("encoder", "decoder"):
        for j in range(2):
            renames[f"{part}.mid_block.resnets.{j}"] = f"{part}.mid.block_{j + 1}"
        for name, original in _VAE_ATTENTION.items():
            renames[f"{part}.mid_block.attentions.0.{name}"] = f"{part}.mid.attn_1.{original}"
    return renames


def vae_to_original(state: dict[str, Any]) -> dict[str, Any]:
    """A diffusers VAE state dict under `first_stage_model.` original names (attention as 1x1 convs)."""
    levels = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.down_blocks."))
    layers = 1 + max(int(k.split(".")[4]) for k in state if k.startswith("encoder.down_blocks.0.resnets."))
    renames = vae_key_map({"layers_per_block": layers, "block_out_channels": [0] * levels})
    out = {}
    for key, tensor in state.items():
        module, name = _split(key, renames)
        name = name.replace("conv_shortcut", "nin_shortcut")
        new = ".".join(p for p in (renames.get(module, module), name) if p)
        if ".mid.attn_1." in new and new.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)  # the original attention projections are 1x1 convs
        out[VAE + new] = tensor
    return out


def text_to_original(state: dict[str, Any], prefix: str = CLIP) -> dict[str, Any]:
    """A CLIPTextModel state dict under `<prefix>text_model.` (with or without the `text_model.` level that
    transformers 5 no longer writes)."""
    return {(prefix + k if k.startswith("text_model.") else prefix + "text_model." + k): v for k, v in state.items()}


# Inside an OpenCLIP layer: transformers name -> OpenCLIP name.
_OPENCLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_OPENCLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}


def openclip_to_original(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A CLIPTextModel(WithProjection) state dict in OpenCLIP's layout under `prefix`: q, k and v joined into
    `in_proj_weight`/`in_proj_bias`, the projection as OpenCLIP's `text_projection` (x @ P, the transpose of
    transformers' Linear weight); `position_ids` buffers dropped."""
    import torch

    out: dict[str, Any] = {}
    qkv: dict[tuple[str, str], dict[str, Any]] = {}
    for key, tensor in state.items():
        name = key.removeprefix("text_model.")
        if name in _OPENCLIP_TOP:
            out[prefix + _OPENCLIP_TOP[name]] = tensor
        elif name == "text_projection.weight":
            out[prefix + "text_projection"] = tensor.T.contiguous()
        elif name.startswith("encoder.layers."):
            index, rest = name.removeprefix("encoder.layers.").split(".", 1)
            match = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
            if match:
                qkv.setdefault((index, match.group(2)), {})[match.group(1)] = tensor
                continue
            module, leaf = rest.rsplit(".", 1)
            if module not in _OPENCLIP_LAYER:
                raise ValueError(f"text encoder key {key} has no OpenCLIP name")
            out[f"{prefix}transformer.resblocks.{index}.{_OPENCLIP_LAYER[module]}.{leaf}"] = tensor
        elif not name.endswith("position_ids"):
            raise ValueError(f"text encoder key {key} has no OpenCLIP name")
    for (index, leaf), parts in qkv.items():
        out[f"{prefix}transformer.resblocks.{index}.attn.in_proj_{leaf}"] = torch.cat([parts[c] for c in "qkv"])
    return out


def _split(key: str, renames: dict[str, str]) -> tuple[str, str]:
    """The longest module prefix of `key` that has a rename, and the rest ('' module when none)."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:cut])
        if module in renames:
            return module, ".".join(parts[cut:])
    return "", key
