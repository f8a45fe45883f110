"""Frozen settings of `sdlite eval shapes` and `sdlite check`, and check's pass rule."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from annotated_types import Ge, Le
from pydantic import AllowInfNan, InstanceOf, Strict

from sdlite.errors import UsageError
from sdlite.models.source import resolve_model_source
from sdlite.sampling.config import LoraChoice, SchedulerName
from sdlite.schedulers import scheduler_names
from sdlite.schema import (
    Device,
    DType,
    FilePath,
    Flag,
    NonNegativeNumber,
    PathText,
    PositiveInt,
    Seed,
    ema_weights_option,
    fail,
    name,
    offline_option,
    option,
    tokenizer_option,
    validate_fields,
)


@dataclass(frozen=True)
class EvalConfig:
    """`sdlite eval shapes`: how many scenes to sample and judge, with which sampler settings.

    Unset sampler settings come from the model's own recommendations, then the built-in defaults.
    """

    model: PathText = option(help="Model to judge.", shown="$SDLITE_MODEL, else the built-in model")
    n: Annotated[int, Strict(), Ge(2)] = option(
        240, "Images (even): half from training triples, half held out.", flag="--n"
    )
    seed: Seed = option(0, "Seed of the first image (image i uses seed + i).")
    steps: PositiveInt | None = option(None, "Denoising steps.", shown="the model's")
    guidance: NonNegativeNumber | None = option(None, "Guidance scale.", shown="the model's")
    scheduler: SchedulerName | None = option(None, f"Sampler: {', '.join(scheduler_names())}.", shown="the model's")
    batch_size: PositiveInt = option(16, "Images denoised together.")
    out: FilePath | None = option(None, "Keep the judged images here.", shown="discarded")
    offline: Flag = offline_option()
    fast: Flag = option(
        False, "Judge `sample --fast` (DPM-Solver++ 2M Karras, 20 steps; its sampler and steps unless given)."
    )
    tokenizer: PathText | None = tokenizer_option()
    ema_weights: Flag = ema_weights_option()

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.n % 2:  # an odd count would be judged one image short, silently
            fail("n", f"{name(EvalConfig, 'n')} must be even (half seen triples, half held out), got {self.n}")


def build_eval_config(cli: dict[str, Any], env: dict[str, str] | None = None) -> EvalConfig:
    """`sdlite eval shapes`'s config: the command line's values (None where an option was not given) over the
    defaults, with the model resolved ($SDLITE_MODEL, else the built-in one)."""
    given = {k: v for k, v in cli.items() if v is not None}
    return EvalConfig(**{**given, "model": resolve_model_source(given.get("model"), env)})


# The pass rule of `sdlite check` (how these were measured: sdlite/quality/golden.py).
DEFAULT_TOLERANCE = 4.0  # gray levels (of 255) a channel may move and the pixel still count as unchanged
DEFAULT_MAX_CHANGED = 0.005  # share of an image's pixels that may change beyond the tolerance
Share = Annotated[float, Strict(), AllowInfNan(False), Ge(0), Le(1)]


@dataclass(frozen=True)
class CheckConfig:
    """A whole `sdlite check` run: which goldens, which model (None: each golden's own), what passes, which
    reports to write."""

    paths: tuple[PathText, ...]  # folders (searched recursively for *.png) and single PNG files
    model: PathText | None = None  # check every golden with this model instead of the one it records
    loras: tuple[InstanceOf[LoraChoice], ...] = ()  # when given, these LoRAs replace the recorded ones
    tolerance: NonNegativeNumber = DEFAULT_TOLERANCE  # a pixel changed: a channel moved by more gray levels
    max_changed: Share = DEFAULT_MAX_CHANGED  # an image passes while at most this share of its pixels changed
    junit: FilePath | None = None  # write a JUnit XML report here (one test case per golden)
    diff_dir: FilePath | None = None  # write a difference heatmap per failing golden here
    dtype: DType = "auto"
    device: Device = "auto"
    offline: Flag = False
    allow_pickle: Flag = False
    # A single-file model's tokenizer (folder or hub id); None: the golden's recorded one when the model is the
    # file it records (no --model, or --model naming that file), else found as `sample` finds it.
    tokenizer: PathText | None = None
    # A single file's EMA weights: False takes the raw ones; None: what each golden records (EMA when present).
    ema_weights: Flag | None = None

    _option_names: ClassVar[dict[str, str]] = {
        "paths": "DIR",
        "loras": "--lora",
        "diff_dir": "--diff",
        "max_changed": "--max-changed",
        "ema_weights": "--ema-weights/--no-ema-weights",
    }

    def __post_init__(self) -> None:
        if isinstance(self.paths, str | os.PathLike):  # one folder
            object.__setattr__(self, "paths", (self.paths,))
        if isinstance(self.loras, tuple | list):
            loras = tuple(c if isinstance(c, LoraChoice) else LoraChoice(c) for c in self.loras)
            object.__setattr__(self, "loras", loras)
        validate_fields(self)
        if not self.paths:
            raise UsageError("no goldens given: pass DIR arguments (or --goldens DIR)")
