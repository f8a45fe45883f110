"""Original-layout (CompVis/A1111) single-file Stable Diffusion v1 checkpoints, read without a config.

The architecture is read from the tensor shapes in the file's header (no weights are touched):
levels, widths, layers per block, which levels attend, cross-attention width, latent channels, the
text tower's depth, width and vocabulary. What shapes cannot say follows SD v1's conventions:
8 attention heads per UNet block, text-encoder heads of width 64, 32 norm groups, and a native size
of 64 latent pixels (512 px through SD v1's 8x VAE) unless the file's `modelspec.resolution` metadata
says otherwise. The key mapping itself is diffusers' own single-file conversion.
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
from sdlite.families.sd1 import SD1

UNET = SD1.original_prefixes["unet"]
VAE = SD1.original_prefixes["vae"]
CLIP = SD1.original_prefixes["text_encoder"]
CLIP_TEXT = CLIP + "text_model."
EMA = SD1.original_prefixes["ema"]
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
    family: str
    configs: dict[str, dict[str, Any]]  # unet, vae, text_encoder (diffusers/transformers configs)
    dtypes: tuple[str, ...]
    parameters: dict[str, int]  # per component
    has_ema: bool
    inpainting: bool
    text_prefix_missing: bool  # `cond_stage_model.transformer.` without `text_model.` (transformers 5 export)
    native_size: int
    size_source: str  # "modelspec metadata" or "SD v1 convention"
    metadata: dict[str, str] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SCHEDULER))
    conventions: str = "SD v1 conventions"  # or "sdlite metadata": where the non-shape settings came from
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
    """Name the model family a single file's keys belong to; 'SD v1' is the one sdlite loads."""
    keys = shapes.keys()

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("conditioner.embedders.") or has(UNET + "label_emb."):
        return "SDXL"
    if has(UNET + "joint_blocks."):
        return "SD 3"
    if has("double_blocks.") or has(UNET + "double_blocks."):
        return "Flux"
    if has("cond_stage_model.model."):
        return "SD 2.x"
    if has(UNET + "input_blocks.") and has(CLIP):
        return "SD v1"
    if has(UNET + "input_blocks."):
        return "an original-layout UNet without a CLIP text encoder (not SD v1)"
    if has("down_blocks.") or has("unet.down_blocks."):
        return "a diffusers-layout weights file (one component, not a whole original-layout model)"
    if any(".lora_down." in k or ".lora_A." in k or "lora.down" in k for k in keys):
        return "a LoRA adapter (use --lora)"
    return "unknown"


def describe(path: Path, shapes: Shapes, meta: dict[str, str], dtypes: list[str]) -> SingleFile:
    """Infer the SD v1 architecture from the shapes; ModelError naming the family if it is not SD v1."""
    family = detect_family(shapes)
    if family != "SD v1":
        raise ModelError(
            f"{path} is {family if family[0].islower() else 'a ' + family + ' checkpoint'}; "
            "sdlite loads Stable Diffusion v1 single files only"
        )
    shapes, missing_prefix = normalize_text_keys(shapes)
    try:
        configs = {"unet": unet_config(shapes), "vae": vae_config(shapes), "text_encoder": text_config(shapes)}
    except (KeyError, IndexError, ValueError) as exc:
        raise ModelError(f"{path}: an incomplete SD v1 checkpoint ({exc} missing or malformed)") from exc
    factor = 2 ** (len(configs["vae"]["block_out_channels"]) - 1)
    native, size_source = LATENT_SIZE * factor, "SD v1 convention (64 latent pixels)"
    match = re.fullmatch(r"(\d+)x(\d+)", str(meta.get("modelspec.resolution", "")))
    if match:
        native, size_source = int(match.group(1)), "modelspec metadata"
    configs["unet"]["sample_size"] = native // factor
    configs["vae"]["sample_size"] = native
    stored = stored_configs(meta)
    for name, config in configs.items():
        if name in stored:  # the writer's own settings for what shapes cannot say; shapes still win
            conventional = {k: v for k, v in config.items() if k not in CONVENTIONS[name]}
            configs[name] = {**stored[name], **conventional}
    params = {
        name: sum(_numel(s) for k, s in shapes.items() if k.startswith(prefix))
        for name, prefix in (("unet", UNET), ("vae", VAE), ("text_encoder", CLIP))
    }
    scheduler = stored.get("scheduler", dict(SCHEDULER))
    prediction, prediction_source = file_prediction(shapes, meta, scheduler if "scheduler" in stored else None)
    if prediction is None:
        prediction, prediction_source = SD1.conventional_prediction(native), "inferred: the SD v1 convention"
    return SingleFile(
        path=Path(path),
        family=family,
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
        conventions="sdlite metadata" if stored else "SD v1 conventions",
        prediction=prediction,
        prediction_source=prediction_source,
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
        "text_encoder": {k: configs["text_encoder"][k] for k in TEXT_KEPT if k in configs["text_encoder"]},
        "scheduler": {k: v for k, v in configs["scheduler"].items() if not k.startswith("_")},
    }
    return json.dumps(keep, sort_keys=True)


def normalize_text_keys(state: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Give `cond_stage_model.transformer.*` keys their `text_model.` level when a writer dropped it.

    transformers 5 saves CLIPTextModel without `text_model.`, so converters built on it (diffusers'
    own script included) write `cond_stage_model.transformer.embeddings...`; A1111, ComfyUI and
    diffusers' loader expect `cond_stage_model.transformer.text_model.embeddings...`.
    """
    flat = [k for k in state if k.startswith(CLIP) and not k.startswith(CLIP_TEXT)]
    if not flat:
        return state, False
    fixed = {(CLIP_TEXT + k[len(CLIP) :] if k in flat else k): v for k, v in state.items()}
    return fixed, True


def has_ema(shapes: Shapes) -> bool:
    """An EMA copy of the UNet: `model_ema.<unet key without its dots>` for the UNet's keys."""
    unet_keys = [k for k in shapes if k.startswith(UNET)]
    return bool(unet_keys) and all(ema_key(k) in shapes for k in unet_keys)


def ema_key(unet_key: str) -> str:
    """`model.diffusion_model.input_blocks.0.0.weight` -> `model_ema.diffusion_modelinput_blocks00weight`."""
    return EMA + "".join(unet_key.split(".")[1:])


def unet_config(shapes: Shapes) -> dict[str, Any]:
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
    depth = len(
        {
            k.split(".transformer_blocks.")[1].split(".")[0]
            for k in shapes
            if k.startswith(block + ".transformer_blocks.")
        }
    )
    if UNET + "middle_block.1.proj_in.weight" not in shapes:
        raise ValueError("middle_block.1 (mid-block attention)")
    return {
        "sample_size": LATENT_SIZE,
        "in_channels": conv_in[1],
        "out_channels": shapes[UNET + "out.2.weight"][0],
        "block_out_channels": widths,
        "layers_per_block": layers,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attends],
        "cross_attention_dim": shapes[attention][1],
        "attention_head_dim": UNET_HEADS,
        "transformer_layers_per_block": depth,
        "use_linear_projection": len(shapes[block + ".proj_in.weight"]) == 2,
        "norm_num_groups": NORM_GROUPS,
    }


def vae_config(shapes: Shapes) -> dict[str, Any]:
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
        "norm_num_groups": NORM_GROUPS,
        "sample_size": LATENT_SIZE * SD1.vae_factor,
        "scaling_factor": VAE_SCALING_FACTOR,
        "use_quant_conv": VAE + "quant_conv.weight" in shapes,
        "use_post_quant_conv": VAE + "post_quant_conv.weight" in shapes,
        "mid_block_add_attention": VAE + "encoder.mid.attn_1.q.weight" in shapes,
    }


def text_config(shapes: Shapes) -> dict[str, Any]:
    """CLIPTextConfig values from `cond_stage_model.transformer.text_model.*` shapes."""
    vocab, hidden = shapes[CLIP_TEXT + "embeddings.token_embedding.weight"]
    layers = {int(k.split(".")[5]) for k in shapes if k.startswith(CLIP_TEXT + "encoder.layers.")}
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": shapes[CLIP_TEXT + "encoder.layers.0.mlp.fc1.weight"][0],
        "num_hidden_layers": len(layers),
        "num_attention_heads": max(1, hidden // TEXT_HEAD_WIDTH),
        "max_position_embeddings": shapes[CLIP_TEXT + "embeddings.position_embedding.weight"][0],
        "hidden_act": "quick_gelu",
    }


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


def load_components(sf: SingleFile, state: dict[str, Any], use_ema: bool, tokenizer: Any) -> dict[str, Any]:
    """UNet, VAE and text encoder from an original-layout state dict, through diffusers' own single-file
    conversion, with the configs read from the shapes (written to a temporary folder for diffusers)."""
    import tempfile

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextConfig, CLIPTextModel

    state, _ = normalize_text_keys(state)
    if sf.has_ema:
        state = use_ema_weights(state) if use_ema else {k: v for k, v in state.items() if not k.startswith(EMA)}
    text = dict(sf.configs["text_encoder"])
    if tokenizer is not None:  # the ids only decide the pooled output, which SD does not use
        text.update(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    with tempfile.TemporaryDirectory(prefix="sdlite-single-file-") as tmp:
        for name, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
            (Path(tmp) / name).mkdir()
            config = {"_class_name": cls.__name__, **sf.configs[name]}
            (Path(tmp) / name / "config.json").write_text(json.dumps(config))
        CLIPTextConfig(**text).save_pretrained(Path(tmp) / "text_encoder")
        common = {"config": tmp, "local_files_only": True}
        unet = UNet2DConditionModel.from_single_file(state, subfolder="unet", **common)
        vae = AutoencoderKL.from_single_file(state, subfolder="vae", **common)
        text_encoder = create_diffusers_clip_model_from_ldm(CLIPTextModel, state, subfolder="text_encoder", **common)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder}
