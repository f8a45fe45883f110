"""Frozen settings of `sdlite init`, `sdlite info` and `sdlite export`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from sdlite.schema import (
    MODEL_HELP,
    FilePath,
    Flag,
    ImageSize,
    PathText,
    Seed,
    WeightsDType,
    allow_pickle_option,
    ema_weights_option,
    offline_option,
    option,
    tokenizer_option,
    validate_fields,
)

Preset = Literal["tiny", "shapes", "sd1-tiny", "sd15", "sd2-tiny", "sd21", "sdxl-tiny", "sdxl"]
PRESETS: tuple[str, ...] = get_args(Preset)


@dataclass(frozen=True)
class InitConfig:
    """`sdlite init`: which preset architecture to write, where, and from which seed."""

    out: FilePath = option(help="Folder to create (a standard diffusers model folder).", argument="OUT")
    preset: Preset = option("tiny", f"Architecture: {', '.join(get_args(Preset))}.")
    seed: Seed = option(0, "Weights are drawn from this seed: same seed, same weights.")
    dtype: WeightsDType = option("fp32", "Precision of the saved weights: fp32, fp16 or bf16.")
    overwrite: Flag = option(False, "Replace OUT if it exists and is not empty.", flag="--force")

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class InfoConfig:
    """`sdlite info`: which model to describe, and at which image size to trace the shapes."""

    model: PathText = option(help=MODEL_HELP, shown="$SDLITE_MODEL, else the built-in shapes model", argument="MODEL")
    height: ImageSize | None = option(None, "Trace the shapes at this height.", shown="native")
    width: ImageSize | None = option(None, "Trace the shapes at this width.", shown="native")
    offline: Flag = offline_option()
    allow_pickle: Flag = allow_pickle_option()
    tokenizer: PathText | None = tokenizer_option()
    ema_weights: Flag = ema_weights_option()

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class ExportConfig:
    """`sdlite export`: a model or LoRA, where to write it, in which layout and precision."""

    source: PathText = option(
        help="A model (diffusers folder, hub id, single file, or a training checkpoint OUT/checkpoints/step-N) or a "
        "LoRA (folder or file).",
        argument="SOURCE",
    )
    out: FilePath = option(help="The file (.safetensors) or folder to write.", argument="OUT")
    format: Literal["single-file", "diffusers", "kohya"] | None = option(
        None,
        "Models: single-file (one original-layout .safetensors for A1111/ComfyUI/Forge) or diffusers (a folder). "
        "LoRAs: kohya (A1111/ComfyUI; alpha kept) or diffusers.",
        shown="single-file, kohya for LoRAs",
    )
    dtype: WeightsDType | None = option(
        None, "Precision of the written weights: fp16, bf16 or fp32.", shown="as stored"
    )
    tokenizer: PathText | None = tokenizer_option()
    ema_weights: Flag = ema_weights_option()
    offline: Flag = offline_option()
    allow_pickle: Flag = allow_pickle_option()
    force: Flag = option(False, "Replace OUT if it exists.")

    def __post_init__(self) -> None:
        validate_fields(self)
