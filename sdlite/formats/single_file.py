"""Original-layout (CompVis/A1111/ComfyUI) single-file checkpoints of SD v1, SD 2.x and SDXL, read without a config.

The family is read from the keys (SDXL's `conditioner.embedders.0/1`, SD 2.x's OpenCLIP `cond_stage_model.model.`
or a linear-projection UNet), the architecture from the tensor shapes in the file's header (no weights are
touched): levels, widths, layers per block, which levels attend and how deep, cross-attention width, latent
channels, each text tower's depth, width and vocabulary. What shapes cannot say follows the family's conventions
(sdlite/families/): SD v1's 8 UNet heads, SD 2.x's and SDXL's heads of width 64, text-encoder heads of width 64,
32 norm groups, the family's native size unless `modelspec.resolution` says otherwise, and its prediction type
unless ModelSpec or a `v_pred` marker key says. The key mapping itself is diffusers' own single-file conversion.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlite import filecache
from sdlite.errors import ModelError
from sdlite.families import FAMILIES
from sdlite.families.base import Family
from sdlite.families.sd1 import SD1
from sdlite.families.sd2 import SD2
from sdlite.families.sdxl import SDXL

UNET = SD1.original_prefixes["unet"]
VAE = SD1.original_prefixes["vae"]
CLIP = SD1.original_prefixes["text_encoder"]
CLIP_TEXT = CLIP + "text_model."
EMA = SD1.original_prefixes["ema"]
SD2_OPENCLIP = SD2.original_prefixes["text_encoder"]  # cond_stage_model.model.
SDXL_CLIP = SDXL.original_prefixes["text_encoder"]  # conditioner.embedders.0.transformer.
SDXL_OPENCLIP = SDXL.original_prefixes["text_encoder_2"]  # conditioner.embedders.1.model.
# The OpenCLIP text towers SD 2.x files carry have 24 layers; diffusers' SD 2.x models keep 23, so that the last
# hidden state is OpenCLIP's penultimate (what SD 2.x conditions on), and its single-file loader skips layer 23.
SD2_TEXT_LAYERS = 23
# SD v1 conventions for what tensor shapes cannot tell (sdlite/families/sd1.py).
UNET_HEADS = SD1.conventions["unet_heads"]
TEXT_HEAD_WIDTH = SD1.conventions["text_head_width"]
NORM_GROUPS = SD1.conventions["norm_groups"]
LATENT_SIZE = SD1.conventions["latent_size"]  # SD v1's UNet sample_size: 512 px through its 8x VAE
VAE_SCALING_FACTOR = SD1.vae_scaling_factor
SCHEDULER: dict[str, Any] = {"_class_name": "DDIMScheduler", **SD1.schedule}  # SD v1's noise schedule

Shapes = dict[str, tuple[int, ...]]
# The safetensors metadata key where `sdlite export` stores what shapes cannot tell (heads, norm groups,
# VAE scaling factor, noise schedule...), so a model that breaks SD v1's conventions comes back exact.
CONFIG_METADATA = "sdlite.configs"
# Config entries the SD v1 conventions decide (everything else in unet/vae/text configs comes from shapes).
CONVENTIONS = {
    "unet": ("attention_head_dim", "norm_num_groups", "sample_size"),
    "vae": ("norm_num_groups", "sample_size", "scaling_factor"),
    "text_encoder": ("num_attention_heads", "hidden_act"),
    "text_encoder_2": ("num_attention_heads", "hidden_act"),
}
TEXT_KEPT = ("num_attention_heads", "hidden_act", "layer_norm_eps")  # CLIP config entries worth storing
# The metadata key where `sdlite export` keeps the model folder's `sdlite.json` (its recommended sampling
# settings), so sampling the file uses them as sampling the folder does, and a diffusers export restores it.
SETTINGS_METADATA = "sdlite.json"
_MAX_HEADER = 100 * 1024 * 1024  # a larger "header" is not safetensors (a pickle's first bytes)


@dataclass(frozen=True)
class SingleFile:
    """What a single-file checkpoint holds, read from its header: family, architecture, variants."""

    path: Path
    family: str  # "SD v1", "SD 2.x" or "SDXL"
    configs: dict[str, dict[str, Any]]  # unet, vae, each text encoder (diffusers/transformers configs)
    dtypes: tuple[str, ...]
    parameters: dict[str, int]  # per component
    has_ema: bool
    inpainting: bool
    text_prefix_missing: bool  # `...transformer.` without `text_model.` (a transformers 5 export)
    native_size: int
    size_source: str  # "modelspec metadata" or the family's convention
    metadata: dict[str, str] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SCHEDULER))
    conventions: str = "SD v1 conventions"  # or "sdlite metadata": where the non-shape settings came from
    text_keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # encoder -> key prefix, layout
    prediction: str = "epsilon"  # or "v_prediction"
    prediction_source: str = "inferred: the SD v1 convention"


def read_header(path: Path) -> tuple[Shapes, dict[str, str], list[str]]:
    """Tensor shapes, `__metadata__` and dtypes of a safetensors file, from its JSON header only."""
    with Path(path).open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    meta = header.pop("__metadata__", None) or {}
    shapes = {k: tuple(v["shape"]) for k, v in header.items()}
    return shapes, meta, sorted({v["dtype"] for v in header.values()})


def read_metadata(path: Path) -> dict[str, str]:
    """A safetensors file's `__metadata__` from its header alone, without trusting the file: {} for a pickle or
    a damaged header (loading the model reports those in its own words)."""
    try:
        with Path(path).open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                return {}
            (length,) = struct.unpack("<Q", head)
            if not 2 <= length <= min(_MAX_HEADER, size - 8):
                return {}
            header = json.loads(f.read(length))
    except (OSError, ValueError):  # ValueError: bad JSON or UTF-8
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {k: v for k, v in meta.items() if isinstance(v, str)} if isinstance(meta, dict) else {}


def shapes_of(state: dict[str, Any]) -> Shapes:
    """The same view of an already loaded state dict (a pickle checkpoint has no header to read)."""
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def detect_family(shapes: Shapes) -> str:
    """Name the model family a single file's keys belong to: "SD v1", "SD 2.x", "SDXL", or what else it is."""
    keys = shapes.keys()

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("conditioner.embedders.0.model."):  # OpenCLIP bigG alone
        return "the SDXL refiner"
    if has("conditioner.embedders.") or has(UNET + "label_emb."):
        return "SDXL"
    if has(UNET + "joint_blocks."):
        return "SD 3"
    if has("double_blocks.") or has(UNET + "double_blocks."):
        return "Flux"
    if has(SD2_OPENCLIP):
        return "SD 2.x"
    if has(UNET + "input_blocks.") and has(CLIP):
        # A linear projection into attention is SD 2.x's (its text tower in the transformers layout, as diffusers'
        # own converter writes it from a transformers 5 folder); SD v1's is a 1x1 convolution.
        linear = any(k.endswith(".proj_in.weight") and len(s) == 2 for k, s in shapes.items() if k.startswith(UNET))
        return "SD 2.x" if linear else "SD v1"
    if has(UNET + "input_blocks."):
        return "an original-layout UNet without a CLIP text encoder (not SD v1, 2.x or XL)"
    if has("down_blocks.") or has("unet.down_blocks."):
        return "a diffusers-layout weights file (one component, not a whole original-layout model)"
    if any(".lora_down." in k or ".lora_A." in k or "lora.down" in k for k in keys):
        return "a LoRA adapter (use --lora)"
    return "unknown"


FAMILY_NAMES = {family.name: family for family in FAMILIES}


def text_prefixes(family: Family, shapes: Shapes) -> dict[str, tuple[str, str]]:
    """Each text encoder's key prefix and layout ("clip": the transformers layout, "openclip": OpenCLIP's)."""
    if family is SDXL:
        return {"text_encoder": (SDXL_CLIP, "clip"), "text_encoder_2": (SDXL_OPENCLIP, "openclip")}
    if family is SD2 and any(k.startswith(SD2_OPENCLIP) for k in shapes):
        return {"text_encoder": (SD2_OPENCLIP, "openclip")}
    return {"text_encoder": (CLIP, "clip")}


def describe(path: Path, shapes: Shapes, meta: dict[str, str], dtypes: list[str]) -> SingleFile:
    """Infer the architecture from the shapes; ModelError naming the family if it is not SD v1, 2.x or XL."""
    name = detect_family(shapes)
    if name not in FAMILY_NAMES:
        raise ModelError(
            f"{path} is {name if name[0].islower() else 'a ' + name + ' checkpoint'}; "
            f"sdlite loads {', '.join(FAMILY_NAMES)} single files"
        )
    family = FAMILY_NAMES[name]
    shapes, missing_prefix = normalize_text_keys(shapes)
    prefixes = text_prefixes(family, shapes)
    try:
        configs = {"unet": unet_config(shapes, family), "vae": vae_config(shapes, family)}
        for component, (prefix, kind) in prefixes.items():
            configs[component] = (
                openclip_config(shapes, prefix, family) if kind == "openclip" else text_config(shapes, prefix, family)
            )
        if family.micro_conditioning:
            _add_time_embedding(configs)
    except (KeyError, IndexError, ValueError, StopIteration) as exc:
        raise ModelError(f"{path}: an incomplete {family.name} checkpoint ({exc} missing or malformed)") from exc
    factor = 2 ** (len(configs["vae"]["block_out_channels"]) - 1)
    native, size_source = family.native_size, f"{family.name} convention ({family.native_size} px)"
    match = re.fullmatch(r"(\d+)x(\d+)", str(meta.get("modelspec.resolution", "")))
    if match:
        native, size_source = int(match.group(1)), "modelspec metadata"
    configs["unet"]["sample_size"] = native // factor
    configs["vae"]["sample_size"] = native
    stored = stored_configs(meta)
    for component, config in configs.items():
        if component in stored:  # the writer's own settings for what shapes cannot say; shapes still win
            conventional = {k: v for k, v in config.items() if k not in CONVENTIONS[component]}
            configs[component] = {**stored[component], **conventional}
    scheduler = stored.get("scheduler", {"_class_name": family.model_index["scheduler"][1], **family.schedule})
    prediction, prediction_source = file_prediction(shapes, meta, scheduler if "scheduler" in stored else None)
    if prediction is None:
        prediction = family.conventional_prediction(native)
        prediction_source = f"inferred: the {family.name} convention at {native} px"
    if family is SD2 and prediction == "v_prediction" and "unet" not in stored:
        configs["unet"]["upcast_attention"] = True  # SD 2.x's v models overflow in fp16 attention without it
    prefix_of = {"unet": UNET, "vae": VAE} | {c: p for c, (p, _) in prefixes.items()}
    params = {
        component: sum(_numel(s) for k, s in shapes.items() if k.startswith(prefix))
        for component, prefix in prefix_of.items()
    }
    return SingleFile(
        path=Path(path),
        family=family.name,
        configs=configs,
        dtypes=tuple(dtypes),
        parameters=params,
        has_ema=has_ema(shapes),
        inpainting=configs["unet"]["in_channels"] == 9,
        text_prefix_missing=missing_prefix,
        native_size=native,
        size_source=size_source,
        metadata=dict(meta),
        scheduler={**scheduler, "prediction_type": prediction},
        conventions="sdlite metadata" if stored else f"{family.name} conventions",
        text_keys=prefixes,
        prediction=prediction,
        prediction_source=prediction_source,
    )


def _add_time_embedding(configs: dict[str, dict[str, Any]]) -> None:
    """SDXL's added embedding: the pooled text (the second encoder's projection) and six time ids of equal width."""
    unet = configs["unet"]
    pooled = configs["text_encoder_2"]["projection_dim"]
    width = unet.pop("_label_emb_width")
    if (width - pooled) % 6:
        raise ValueError(f"label_emb width {width} (not {pooled} pooled + 6 time ids)")
    unet.update(
        addition_embed_type="text_time",
        addition_time_embed_dim=(width - pooled) // 6,
        projection_class_embeddings_input_dim=width,
    )


# How ModelSpec and other tools spell the two prediction types.
_PREDICTIONS = {"epsilon": "epsilon", "eps": "epsilon", "v": "v_prediction", "v_prediction": "v_prediction"}


def file_prediction(
    shapes: Shapes, meta: dict[str, str], stored_scheduler: dict[str, Any] | None
) -> tuple[str | None, str]:
    """What a single file says it predicts, and where: ModelSpec's `prediction_type`, then its architecture name
    (`...-v` is a v model, e.g. `stable-diffusion-v2-768-v`), then the `v_pred` marker key ComfyUI and others
    write, then the scheduler sdlite stored; (None, "") when nothing says."""
    stated = _PREDICTIONS.get(str(meta.get("modelspec.prediction_type", "")).strip().lower().replace("-", "_"))
    if stated:
        return stated, "modelspec.prediction_type metadata"
    architecture = str(meta.get("modelspec.architecture", "")).split("/")[0].strip().lower()
    if architecture.endswith("-v"):
        return "v_prediction", "modelspec.architecture metadata"
    if "v_pred" in shapes:
        return "v_prediction", "v_pred marker key"
    if stored_scheduler and stored_scheduler.get("prediction_type") in ("epsilon", "v_prediction"):
        return stored_scheduler["prediction_type"], "sdlite metadata"
    return None, ""


def stored_configs(meta: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The configs `sdlite export` stored in the file's metadata; {} when absent or unreadable."""
    try:
        stored = json.loads(meta.get(CONFIG_METADATA, "{}"))
    except json.JSONDecodeError:
        return {}
    if not isinstance(stored, dict):
        return {}
    return {k: v for k, v in stored.items() if k in (*CONVENTIONS, "scheduler") and isinstance(v, dict)}


def configs_to_store(configs: dict[str, dict[str, Any]]) -> str:
    """The metadata value `stored_configs` reads back: diffusers configs without their private entries."""
    keep = {
        "unet": {k: v for k, v in configs["unet"].items() if not k.startswith("_")},
        "vae": {k: v for k, v in configs["vae"].items() if not k.startswith("_")},
        **{
            name: {k: configs[name][k] for k in TEXT_KEPT if k in configs[name]}
            for name in ("text_encoder", "text_encoder_2")
            if name in configs
        },
        "scheduler": {k: v for k, v in configs["scheduler"].items() if not k.startswith("_") or k == "_class_name"},
    }
    return json.dumps(keep, sort_keys=True)


def normalize_text_keys(state: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Give `cond_stage_model.transformer.*` (SDXL: `conditioner.embedders.0.transformer.*`) keys their
    `text_model.` level when a writer dropped it.

    transformers 5 saves CLIPTextModel without `text_model.`, so converters built on it (diffusers'
    own scripts included) write `cond_stage_model.transformer.embeddings...`; A1111, ComfyUI and
    diffusers' loader expect `cond_stage_model.transformer.text_model.embeddings...`.
    """
    fixed, missing = dict(state), False
    for prefix in (CLIP, SDXL_CLIP):
        flat = [k for k in fixed if k.startswith(prefix) and not k.startswith(prefix + "text_model.")]
        if flat:
            missing = True
            fixed = {(prefix + "text_model." + k[len(prefix) :] if k in flat else k): v for k, v in fixed.items()}
    return fixed, missing


def has_ema(shapes: Shapes) -> bool:
    """An EMA copy of the UNet: `model_ema.<unet key without its dots>` for the UNet's keys."""
    unet_keys = [k for k in shapes if k.startswith(UNET)]
    return bool(unet_keys) and all(ema_key(k) in shapes for k in unet_keys)


def ema_key(unet_key: str) -> str:
    """`model.diffusion_model.input_blocks.0.0.weight` -> `model_ema.diffusion_modelinput_blocks00weight`."""
    return EMA + "".join(unet_key.split(".")[1:])


def unet_config(shapes: Shapes, family: Family = SD1) -> dict[str, Any]:
    """UNet2DConditionModel config from `model.diffusion_model.*` shapes."""
    conv_in = shapes[UNET + "input_blocks.0.0.weight"]
    inputs = sorted({int(k.split(".")[3]) for k in shapes if k.startswith(UNET + "input_blocks.")})
    levels: list[list[int]] = [[]]
    for i in inputs[1:]:
        if UNET + f"input_blocks.{i}.0.op.weight" in shapes:
            levels.append([])
        else:
            levels[-1].append(i)
    layers = len(levels[0])
    if not layers or any(len(level) != layers for level in levels):
        raise ValueError("input_blocks (uneven levels)")
    widths = [shapes[UNET + f"input_blocks.{level[0]}.0.out_layers.3.weight"][0] for level in levels]
    attends = [UNET + f"input_blocks.{level[0]}.1.proj_in.weight" in shapes for level in levels]
    up_attends = [UNET + f"output_blocks.{u * (layers + 1)}.1.proj_in.weight" in shapes for u in range(len(levels))]
    attention = next(k for k in shapes if k.startswith(UNET) and k.endswith("attn2.to_k.weight"))
    block = attention.rsplit(".transformer_blocks.", 1)[0]

    def depth(block: str) -> int:
        prefix = block + ".transformer_blocks."
        return len({k[len(prefix) :].split(".")[0] for k in shapes if k.startswith(prefix)})

    # Transformer blocks per attention of each level (SDXL: 1, 2, 10); a level without attention counts 1.
    depths = [depth(UNET + f"input_blocks.{level[0]}.1") if a else 1 for level, a in zip(levels, attends, strict=True)]
    if UNET + "middle_block.1.proj_in.weight" not in shapes:
        raise ValueError("middle_block.1 (mid-block attention)")
    if "unet_head_width" in family.conventions:  # SD 2.x, SDXL: heads 64 wide (one narrower head below 64)
        heads: Any = [max(1, width // family.conventions["unet_head_width"]) for width in widths]
    else:
        heads = family.conventions["unet_heads"]
    config = {
        "sample_size": family.native_size // family.vae_factor,
        "in_channels": conv_in[1],
        "out_channels": shapes[UNET + "out.2.weight"][0],
        "block_out_channels": widths,
        "layers_per_block": layers,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attends],
        "cross_attention_dim": shapes[attention][1],
        "attention_head_dim": heads,
        "transformer_layers_per_block": depths[0] if len(set(depths)) == 1 else depths,
        "use_linear_projection": len(shapes[block + ".proj_in.weight"]) == 2,
        "norm_num_groups": family.conventions["norm_groups"],
    }
    if UNET + "label_emb.0.0.weight" in shapes:  # SDXL's added embedding: split by `_add_time_embedding`
        config["_label_emb_width"] = shapes[UNET + "label_emb.0.0.weight"][1]
    return config


def vae_config(shapes: Shapes, family: Family = SD1) -> dict[str, Any]:
    """AutoencoderKL config from `first_stage_model.*` shapes."""
    levels = sorted({int(k.split(".")[3]) for k in shapes if k.startswith(VAE + "encoder.down.")})
    layers = len({k.split(".")[5] for k in shapes if k.startswith(VAE + "encoder.down.0.block.")})
    return {
        "in_channels": shapes[VAE + "encoder.conv_in.weight"][1],
        "out_channels": shapes[VAE + "decoder.conv_out.weight"][0],
        "block_out_channels": [shapes[VAE + f"encoder.down.{i}.block.0.conv2.weight"][0] for i in levels],
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "layers_per_block": layers,
        "latent_channels": shapes[VAE + "encoder.conv_out.weight"][0] // 2,
        "norm_num_groups": family.conventions["norm_groups"],
        "sample_size": family.native_size,
        "scaling_factor": family.vae_scaling_factor,
        "use_quant_conv": VAE + "quant_conv.weight" in shapes,
        "use_post_quant_conv": VAE + "post_quant_conv.weight" in shapes,
        "mid_block_add_attention": VAE + "encoder.mid.attn_1.q.weight" in shapes,
    }


def text_config(shapes: Shapes, prefix: str = CLIP, family: Family = SD1) -> dict[str, Any]:
    """CLIPTextConfig values from `<prefix>text_model.*` shapes (the transformers layout)."""
    text = prefix + "text_model."
    vocab, hidden = shapes[text + "embeddings.token_embedding.weight"]
    layers = {
        int(k[len(text + "encoder.layers.") :].split(".")[0]) for k in shapes if k.startswith(text + "encoder.layers.")
    }
    # SDXL's first encoder is CLIP ViT-L (quick GELU); SD 2.x's, in this layout, is still OpenCLIP's (GELU).
    act = family.conventions.get("text_act", "quick_gelu")
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": shapes[text + "encoder.layers.0.mlp.fc1.weight"][0],
        "num_hidden_layers": len(layers),
        "num_attention_heads": max(1, hidden // TEXT_HEAD_WIDTH),
        "max_position_embeddings": shapes[text + "embeddings.position_embedding.weight"][0],
        "hidden_act": act,
    }


def openclip_config(shapes: Shapes, prefix: str, family: Family) -> dict[str, Any]:
    """CLIPTextConfig values from an OpenCLIP text tower's shapes (`<prefix>transformer.resblocks.N...`): SD 2.x's
    ViT-H (its last of 24 layers dropped, as diffusers does) or SDXL's bigG (with its text projection)."""
    vocab, hidden = shapes[prefix + "token_embedding.weight"]
    blocks = prefix + "transformer.resblocks."
    layers = len({k[len(blocks) :].split(".")[0] for k in shapes if k.startswith(blocks)})
    config = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": shapes[blocks + "0.mlp.c_fc.weight"][0],
        "num_hidden_layers": min(layers, SD2_TEXT_LAYERS) if family is SD2 else layers,
        "num_attention_heads": max(1, hidden // TEXT_HEAD_WIDTH),
        "max_position_embeddings": shapes[prefix + "positional_embedding"][0],
        "hidden_act": "gelu",
    }
    if family is SDXL:
        config["projection_dim"] = shapes[prefix + "text_projection"][1]
    return config


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def read_pickle_shapes(path: Path) -> Shapes:
    """Shapes of a pickle checkpoint (only after --allow-pickle): loaded weights-only and memory-mapped."""
    return shapes_of(load_pickle(path))


def load_pickle(path: Path, data: bytes | None = None) -> dict[str, Any]:
    """A `.ckpt` state dict, weights only (no code runs), unwrapped from Lightning's `state_dict`."""
    import io

    import torch

    source: Any = io.BytesIO(data) if data is not None else path
    try:
        state = torch.load(source, map_location="cpu", weights_only=True, **({} if data else {"mmap": True}))
    except Exception as exc:  # torch raises many types for a damaged or hostile pickle
        raise ModelError(
            f"cannot read {path} as a weights-only PyTorch checkpoint: {str(exc).splitlines()[0]}"
        ) from exc
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds no state dict")
    return {k: v for k, v in state.items() if hasattr(v, "shape")}


def read_state(path: Path, pickled: bool) -> dict[str, Any]:
    """Every tensor of the file, reading it once: when its sha256 is not cached yet, the same bytes
    are hashed (and the hash cached) and parsed, so a 2 GB file is never read twice."""

    if filecache.cached_sha256(path) is not None:
        if pickled:
            return load_pickle(path)
        from safetensors.torch import load_file

        return load_file(path)
    data = Path(path).read_bytes()
    filecache.file_sha256(path, data=data)
    if pickled:
        return load_pickle(path, data)
    from safetensors.torch import load

    return load(data)


def use_ema_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The state with the UNet's EMA copy in place of its raw weights, and no `model_ema.*` keys left."""
    out = {k: v for k, v in state.items() if not k.startswith(EMA)}
    for key in out:
        if key.startswith(UNET):
            out[key] = state[ema_key(key)]
    return out


def load_components(
    sf: SingleFile, state: dict[str, Any], use_ema: bool, tokenizers: dict[str, Any], text_only: bool = False
) -> dict[str, Any]:
    """UNet, VAE and text encoders (`text_only`: the text encoders alone) from an original-layout state dict,
    through diffusers' own single-file conversion, with the configs read from the shapes (written to a temporary
    folder for diffusers)."""
    import tempfile

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    family = FAMILY_NAMES[sf.family]
    state, _ = normalize_text_keys(state)
    if sf.has_ema:
        state = use_ema_weights(state) if use_ema else {k: v for k, v in state.items() if not k.startswith(EMA)}
    with tempfile.TemporaryDirectory(prefix="sdlite-single-file-") as tmp:
        for name, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
            (Path(tmp) / name).mkdir()
            config = {"_class_name": cls.__name__, **sf.configs[name]}
            (Path(tmp) / name / "config.json").write_text(json.dumps(config))
        common = {"config": tmp, "local_files_only": True}
        parts = {}
        if not text_only:
            parts["unet"] = UNet2DConditionModel.from_single_file(state, subfolder="unet", **common)
            parts["vae"] = AutoencoderKL.from_single_file(state, subfolder="vae", **common)
        for name, tokenizer_name in zip(family.text_encoders, family.tokenizers, strict=True):
            text = dict(sf.configs[name])
            tokenizer = tokenizers.get(tokenizer_name)
            if tokenizer is not None:  # the ids only decide the pooled output (SDXL's second encoder uses it)
                text.update(
                    bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                )
            CLIPTextConfig(**text).save_pretrained(Path(tmp) / name)
            cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
            parts[name] = create_diffusers_clip_model_from_ldm(
                cls, _text_state(state, sf, name), subfolder=name, **common
            )
    return parts


def _text_state(state: dict[str, Any], sf: SingleFile, name: str) -> dict[str, Any]:
    """The keys of one text encoder, so diffusers' loader (which picks the first CLIP it recognises) reads it."""
    prefix, _ = sf.text_keys[name]
    return {k: v for k, v in state.items() if k.startswith(prefix)}
