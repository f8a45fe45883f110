"""LoRA adapters in the two layouts people exchange: diffusers' (what sdlite trains) and kohya's.

diffusers layout, as `StableDiffusionPipeline.save_lora_weights` writes it (`pytorch_lora_weights.safetensors`):
`unet.<module>.lora.down.weight` / `.lora.up.weight` and `text_encoder.<module>.lora_linear_layer.down.weight` /
`.up.weight` (PEFT's own `lora_A` / `lora_B` names are read too), with the PEFT configs (rank, alpha,
patterns) as JSON under the `lora_adapter_metadata` key of the safetensors metadata. Without that
metadata diffusers applies every module at alpha = rank, i.e. strength 1.

kohya layout, the one AUTOMATIC1111, ComfyUI and kohya's sd-scripts load:
`lora_unet_<module path with . -> _>.lora_down.weight` / `.lora_up.weight` / `.alpha` (a scalar; the
module's strength is alpha / rank), and for the text encoder `lora_te_text_model_<module path>...` (SD v1 and
2.x), or SDXL's two: `lora_te1_...` (CLIP-L) and `lora_te2_...` (OpenCLIP bigG). transformers 5's
CLIPTextModel has no `text_model.` level in its module paths, but the kohya names keep it.

Everything here is a function of state dicts, names and metadata; only reading and writing files touches disk.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sdlite.errors import ModelError, UsageError
from sdlite.formats import lycoris

LORA_FILE = "pytorch_lora_weights.safetensors"
# A DoRA, LoHa or LoKr adapter as peft names it (diffusers' LoRA loader does not apply these as trained):
# `<component>.<module>.hada_w1_a`, `.lora_magnitude_vector`...,
# the PEFT configs under METADATA_KEY as in LORA_FILE. sdlite and peft load it; A1111 and ComfyUI load its export.
PEFT_FILE = "peft_adapter.safetensors"
ADAPTER_FILES = (LORA_FILE, PEFT_FILE)
METADATA_KEY = "lora_adapter_metadata"  # diffusers' key for the PEFT configs in the safetensors metadata
FORMATS = ("kohya", "diffusers")
KOHYA_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}
SDXL_TEXT_PREFIX = "lora_te1_"  # SDXL's first text encoder: `lora_te_` names the only one of SD v1 and 2.x
KOHYA_TEXT_MODEL = "text_model_"  # kohya's text-encoder names carry the CLIPTextModel `text_model.` level
# (down suffix, up suffix) of one module's pair of matrices, in the layouts diffusers writes or reads.
DIFFUSERS_PAIRS = (
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
    (".lora_A.weight", ".lora_B.weight"),
)
KOHYA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")


def kohya_name(component: str, module: str, two_text_encoders: bool = False) -> str:
    """The kohya name of a diffusers module: `lora_unet_down_blocks_0_..._to_q`, `lora_te_text_model_encoder_...`
    (`lora_te1_`/`lora_te2_` for SDXL's two text encoders)."""
    if component not in KOHYA_PREFIXES:
        raise ValueError(f"no kohya name for component {component!r} (unet, text_encoder, text_encoder_2)")
    path = module.replace(".", "_")
    if component != "unet" and not path.startswith(KOHYA_TEXT_MODEL):
        path = KOHYA_TEXT_MODEL + path
    if component == "text_encoder" and two_text_encoders:
        return SDXL_TEXT_PREFIX + path
    return KOHYA_PREFIXES[component] + path


def split_diffusers_key(key: str) -> tuple[str, str, str]:
    """(component, module path, role) of a diffusers- or peft-layout key: role "down" or "up" (LoRA's pair), or
    peft's own name of a DoRA magnitude, LoHa or LoKr tensor; ValueError for any other key."""
    component, _, rest = key.partition(".")
    if component in KOHYA_PREFIXES and rest:
        for down, up in DIFFUSERS_PAIRS:
            for role, suffix in (("down", down), ("up", up)):
                if rest.endswith(suffix):
                    return component, rest[: -len(suffix)], role
        module, _, role = rest.rpartition(".")
        if module and role in (lycoris.MAGNITUDE, *lycoris.VARIANT_PARAMS):
            return component, module, role
    raise ValueError(f"{key!r} is not a diffusers-layout LoRA key of the UNet or a text encoder")


def layout(keys: list[str] | tuple[str, ...] | Any) -> str | None:
    """'kohya', 'diffusers', or None when the keys are neither (or not a LoRA at all)."""
    keys = list(keys)
    kohya = ("lora_unet_", "lora_te_", SDXL_TEXT_PREFIX, "lora_te2_")
    if keys and all(k.startswith(kohya) and k.endswith(KOHYA_SUFFIXES + lycoris.KOHYA_VARIANT_SUFFIXES) for k in keys):
        return "kohya"
    try:
        if keys and all(split_diffusers_key(k) for k in keys):
            return "diffusers"
    except ValueError:
        pass
    return None


def component_configs(metadata: Mapping[str, str] | None) -> dict[str, dict[str, Any]]:
    """The PEFT config of each component ("unet", "text_encoder") stored by `save_lora_weights`; {} when none."""
    raw = (metadata or {}).get(METADATA_KEY)
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelError(f"the LoRA's {METADATA_KEY} metadata is not valid JSON ({exc.msg})") from exc
    configs: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        component, _, field = key.partition(".")
        configs.setdefault(component, {})[field] = value
    return configs


def module_scale(config: Mapping[str, Any] | None, module: str, rank: int) -> float:
    """The strength PEFT gives `module` at weight 1: alpha / rank (alpha / sqrt(rank) with rsLoRA).

    Alpha comes from the config's `alpha_pattern` (PEFT's rule: the pattern matches the module path, or
    its end after a dot), else `lora_alpha`; with no config, diffusers' default alpha = rank (strength 1).
    """
    if not config:
        return 1.0
    alpha, _ = lycoris.module_alpha_rank(config, module, rank)
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def to_kohya(
    state_dict: Mapping[str, Any],
    configs: Mapping[str, Mapping[str, Any]],
    sdxl: bool = False,
    dora_norms: Mapping[tuple[str, str], Any] | None = None,
) -> dict[str, Any]:
    """A diffusers- or peft-layout adapter state dict -> the kohya/LyCORIS layout, one `.alpha` per module.

    `configs` maps "unet" / "text_encoder" / "text_encoder_2" to its PEFT config (`component_configs(metadata)`);
    a component without one gets alpha = rank, as diffusers itself applies it. The written alpha is
    strength x rank, so every loader that computes alpha / rank gets the strength the adapter had. An SDXL
    adapter (`sdxl`, or one that adapts the second text encoder) names its first text encoder `lora_te1_`.
    DoRA's magnitude becomes `dora_scale` as ComfyUI applies it, which needs |W| / |W + delta| of each adapted row
    (`dora_norms`, by (component, module): only a run that has the base weights can export a DoRA); LoHa and LoKr
    keep their tensors' names (`lycoris.variant_to_kohya`).
    """
    import torch

    modules: dict[tuple[str, str], dict[str, Any]] = {}
    for key, tensor in state_dict.items():
        component, module, role = split_diffusers_key(key)
        modules.setdefault((component, module), {})[role] = tensor
    sdxl = sdxl or any(component == "text_encoder_2" for component, _ in modules)
    out: dict[str, Any] = {}
    for (component, module), roles in sorted(modules.items()):
        name = kohya_name(component, module, sdxl)
        if lycoris.variant(roles) in ("loha", "lokr"):
            out.update(lycoris.variant_to_kohya(name, roles, configs.get(component), module))
            continue
        if not {"down", "up"} <= set(roles):
            raise ValueError(f"{component}.{module} has a LoRA {next(iter(roles))} matrix without its partner")
        down, up = roles["down"], roles["up"]
        rank = down.shape[0]
        if up.shape[1] != rank:
            raise ValueError(f"{component}.{module}: down has rank {rank}, up has {up.shape[1]}")
        out[f"{name}.lora_down.weight"] = down.contiguous()
        out[f"{name}.lora_up.weight"] = up.contiguous()
        out[f"{name}.alpha"] = torch.tensor(module_scale(configs.get(component), module, rank) * rank)
        if lycoris.MAGNITUDE in roles:
            if dora_norms is None or (component, module) not in dora_norms:
                raise UsageError(
                    "a DoRA adapter's kohya/LyCORIS copy needs the base model's weights (ComfyUI normalises by them "
                    "differently from peft): use the copy `sdlite train` wrote beside it, OUT/NAME.safetensors"
                )
            out[f"{name}.{lycoris.DORA_SCALE}"] = lycoris.dora_scale(
                roles[lycoris.MAGNITUDE], up, dora_norms[(component, module)]
            )
    return out


def kohya_metadata(kohya: Mapping[str, Any]) -> dict[str, str]:
    """The sd-scripts training metadata UIs show (network module, dim, alpha, LyCORIS's algorithm); "Dynamic" when
    modules differ."""
    ranks = {v.shape[0] for k, v in kohya.items() if k.endswith((".lora_down.weight", ".hada_w1_b"))}
    alphas = {float(v) for k, v in kohya.items() if k.endswith(".alpha")}

    def one(values: set[Any]) -> str:
        return f"{next(iter(values)):g}" if len(values) == 1 else "Dynamic"

    meta = {"ss_network_module": "networks.lora", "ss_network_dim": one(ranks), "ss_network_alpha": one(alphas)}
    algo = next((a for a, p in (("loha", ".hada_w1_a"), ("lokr", ".lokr_w1")) if any(p in k for k in kohya)), None)
    if algo:  # LyCORIS's own metadata: its network module and the algorithm
        meta |= {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": algo})}
    elif any(k.endswith(f".{lycoris.DORA_SCALE}") for k in kohya):
        meta["ss_network_args"] = json.dumps({"algo": "lora", "dora_wd": "True"})
    return meta


def find_lora_file(source: Path | str) -> Path:
    """The adapter file of a LoRA source: the file itself, or a folder's (training OUT, a checkpoint) LORA_FILE
    (PEFT_FILE for a DoRA, LoHa or LoKr)."""
    path = Path(source).expanduser()
    file = next((path / name for name in ADAPTER_FILES if (path / name).is_file()), path / LORA_FILE)
    file = file if path.is_dir() else path
    if not file.is_file():
        raise ModelError(f"LoRA {source}: no such file (expected a folder with {LORA_FILE}, or the file)")
    return file


def read_header(file: Path) -> tuple[list[str], dict[str, str]]:
    """(tensor names, safetensors metadata) from the file's header alone; ModelError for pickles and damage."""
    shapes, metadata = read_shapes(file)
    return list(shapes), metadata


def read_shapes(file: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """(tensor shapes by name, safetensors metadata) from the file's header alone."""
    from sdlite.models.loading import file_format

    if file_format(file) != "safetensors":
        raise ModelError(f"LoRA {file} is a pickle; sdlite reads LoRA adapters only as safetensors")
    with file.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    metadata = header.pop("__metadata__", None) or {}
    return {k: tuple(v["shape"]) for k, v in header.items()}, metadata


def is_lora_source(path: Path | str) -> bool:
    """Whether `path` is a LoRA adapter (a folder holding LORA_FILE, or a safetensors file of LoRA keys)
    rather than a model: lets a command tell `sdlite export MODEL` from `sdlite export LORA`."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / "model_index.json").is_file():
        return False
    try:
        keys, _ = read_header(find_lora_file(path))
    except (ModelError, OSError, ValueError):
        return False
    return layout(keys) is not None


def read_lora(source: Path | str) -> tuple[Path, dict[str, Any], dict[str, str]]:
    """(file, tensors, safetensors metadata) of a LoRA source; ModelError when it is not a LoRA adapter."""
    from safetensors.torch import load_file

    file = find_lora_file(source)
    keys, metadata = read_header(file)
    if layout(keys) is None:
        raise ModelError(f"{file} is not a LoRA adapter of the diffusers or kohya layout")
    return file, load_file(file), metadata


def export_lora(
    source: Path | str,
    out: Path | str,
    fmt: str,
    metadata: Mapping[str, str] | None = None,
    dora_norms: Mapping[tuple[str, str], Any] | None = None,
) -> Path:
    """Write the LoRA at `source` (a file, a folder holding LORA_FILE, or a training checkpoint folder)
    in format `fmt`: "kohya" -> the file `out` (.safetensors), with `metadata` added (ModelSpec, from training);
    "diffusers" -> `out`/LORA_FILE, metadata kept.

    Writes are atomic (a temporary file renamed into place). Returns what was written.
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    out, extra = Path(out).expanduser(), metadata
    file, tensors, metadata = read_lora(source)
    kind = layout(tensors)
    if fmt == "diffusers":
        if kind != "diffusers":
            raise UsageError(f"{file} is already a kohya-layout LoRA: diffusers loads it as it is (--lora {file})")
        if out.exists() and not out.is_dir():
            raise UsageError(f"{out} is a file; --format diffusers writes a folder")
        target = out / LORA_FILE
        save_atomically(tensors, metadata, target)
        return out
    if out.suffix != ".safetensors" or out.is_dir():
        raise UsageError(f"--format kohya writes one .safetensors file; got {out}")
    if kind == "kohya":
        kohya, meta = tensors, metadata
    else:
        kohya = to_kohya(tensors, component_configs(metadata), dora_norms=dora_norms)
        meta = {"format": "pt", **kohya_metadata(kohya)}
    save_atomically(kohya, {**meta, **(extra or {})}, out)
    return out


def save_atomically(tensors: Mapping[str, Any], metadata: Mapping[str, str], target: Path) -> None:
    from safetensors.torch import save_file

    from sdlite.staging import staged_file

    with staged_file(target, "LoRA") as temp:
        save_file(dict(tensors), temp, metadata=dict(metadata))


def layer_names(keys: Any) -> set[str] | None:
    """The layers a LoRA adapts, by their kohya names (one namespace for both layouts); None for a layout
    sdlite does not know (diffusers' loader may still read it)."""
    keys = list(keys)
    kind = layout(keys)
    if kind == "kohya":  # `lora_te1_` (SDXL's first text encoder) and `lora_te_` are one namespace here
        return {k.split(".", 1)[0].replace(SDXL_TEXT_PREFIX, "lora_te_", 1) for k in keys}
    if kind == "diffusers":
        return {kohya_name(component, module) for component, module, _ in map(split_diffusers_key, keys)}
    return None


def model_layer_names(modules: Mapping[str, Any]) -> set[str]:
    """Kohya names of every module of a UNet and its text encoders (component -> its `named_modules()` paths):
    the names a LoRA's layers must have to adapt this model, by the rule A1111 and ComfyUI use."""
    return {kohya_name(component, m) for component, names in modules.items() for m in names if m}


# The cross-attention width (what the UNet attends to) of each family's full-size models, to name the family a
# LoRA was made for.
CONTEXT_WIDTHS = {768: "SD v1", 1024: "SD 2.x", 2048: "SDXL"}


def is_down_key(key: str) -> bool:
    """Whether `key` is a LoRA down (A) matrix, in any layout: its input width is the adapted layer's."""
    return key.endswith((".lora_down.weight", ".lora.down.weight", ".lora_A.weight"))


def adapts_second_text_encoder(shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """Whether the LoRA adapts SDXL's second text encoder (lora_te2_ / text_encoder_2): only SDXL has one."""
    return any(k.startswith(("lora_te2_", "text_encoder_2.")) for k in shapes)


def cross_attention_widths(shapes: Mapping[str, tuple[int, ...]]) -> list[int]:
    """The text widths its cross-attention key/value projections read, key by key: the model's context width."""
    return [shape[1] for key, shape in shapes.items()
            if (is_down_key(key) or key.endswith(".hada_w1_b")) and re.search(r"attn2[._]to_[kv]", key)
            and len(shape) == 2]  # fmt: skip


def family_mismatch(shapes: Mapping[str, tuple[int, ...]], family_name: str, context_width: int) -> str | None:
    """Why a LoRA cannot be for a model of `family_name` whose UNet attends to `context_width`: it adapts SDXL's
    second text encoder, or its cross-attention key/value projections read another width; None when it may."""
    if adapts_second_text_encoder(shapes) and family_name != "SDXL":
        return "it adapts SDXL's second text encoder (lora_te2_ / text_encoder_2): it was made for an SDXL model"
    for width in cross_attention_widths(shapes):
        if width != context_width:
            made_for = CONTEXT_WIDTHS.get(width)
            family = f"an {made_for} model" if made_for else "another model architecture"
            return (
                f"its cross-attention reads text {width} wide, this model's {context_width}: it was made for {family}"
            )
    return None
