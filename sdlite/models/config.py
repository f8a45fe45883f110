"""Frozen settings of `sdlite init`, `sdlite info` and `sdlite export`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

from sdlite.schema import (
    FilePath,
    Flag,
    ImageSize,
    PathText,
    Seed,
    WeightsDType,
    validate_fields,
)

Preset = Literal["tiny", "shapes", "sd1-tiny", "sd15"]
PRESETS: tuple[str, ...] = get_args(Preset)


@dataclass(frozen=True)
class InitConfig:
    """`sdlite init`: which preset architecture to write, where, and from which seed."""

    out: FilePath
    preset: Preset = "tiny"
    seed: Seed = 0
    dtype: WeightsDType = "fp32"
    overwrite: Flag = False

    _option_names: ClassVar[dict[str, str]] = {"out": "OUT", "overwrite": "--force"}

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class InfoConfig:
    """`sdlite info`: which model to describe, and at which image size to trace the shapes."""

    model: PathText
    height: ImageSize | None = None
    width: ImageSize | None = None
    offline: Flag = False
    allow_pickle: Flag = False
    tokenizer: PathText | None = None
    ema_weights: Flag = True

    _option_names: ClassVar[dict[str, str]] = {"model": "MODEL", "ema_weights": "--ema-weights/--no-ema-weights"}

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class ExportConfig:
    """`sdlite export`: a model or LoRA, where to write it, in which layout and precision."""

    source: PathText
    out: FilePath
    format: Literal["single-file", "diffusers", "kohya"] | None = None  # None: single-file for models, kohya for LoRAs
    dtype: WeightsDType | None = None  # None: as stored
    tokenizer: PathText | None = None
    ema_weights: Flag = True
    offline: Flag = False
    allow_pickle: Flag = False
    force: Flag = False

    _option_names: ClassVar[dict[str, str]] = {
        "source": "SOURCE",
        "out": "OUT",
        "ema_weights": "--ema-weights/--no-ema-weights",
    }

    def __post_init__(self) -> None:
        validate_fields(self)
