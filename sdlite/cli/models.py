"""`sdlite init`, `sdlite info` and `sdlite export`: create a model, describe one, write one for other tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sdlite.cli.failures import one_line_errors
from sdlite.cli.options import AllowPickle, EmaWeights, JsonOut, Offline, Tokenizer
from sdlite.cli.output import quiet_libraries
from sdlite.models.config import PRESETS, ExportConfig, InfoConfig, InitConfig
from sdlite.schema import MODEL_HELP


def init(
    out: Annotated[Path, typer.Argument(help="Folder to create (a standard diffusers model folder).")],
    preset: Annotated[str, typer.Option(help=f"Architecture: {', '.join(PRESETS)}.")] = "tiny",
    seed: Annotated[int, typer.Option(help="Weights are drawn from this seed: same seed, same weights.")] = 0,
    dtype: Annotated[str, typer.Option(help="Precision of the saved weights: fp32, fp16 or bf16.")] = "fp32",
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists and is not empty.")] = False,
) -> None:
    """Write a model with random weights, offline: `tiny` for tests and CI, `sd15` for the real SD v1.5 shapes."""
    with one_line_errors():
        config = InitConfig(out=out, preset=preset, seed=seed, dtype=dtype, overwrite=force)
        quiet_libraries()
        from sdlite.models.presets import init_model

        typer.echo(str(init_model(config)))


def info(
    model: Annotated[
        str | None,
        typer.Argument(
            help=f"{MODEL_HELP} Default: $SDLITE_MODEL, else the built-in shapes model.",
            show_default=False,
        ),
    ] = None,
    height: Annotated[int | None, typer.Option(help="Trace the shapes at this height. [default: native]")] = None,
    width: Annotated[int | None, typer.Option(help="Trace the shapes at this width. [default: native]")] = None,
    json_out: JsonOut = False,
    offline: Offline = False,
    allow_pickle: AllowPickle = False,
    tokenizer: Tokenizer = None,
    ema_weights: EmaWeights = True,
) -> None:
    """Show a model's components, parameter counts, dtypes, scheduler and the tensor shapes of its flow."""
    with one_line_errors():
        from sdlite.models.source import resolve_model_source

        config = InfoConfig(
            model=resolve_model_source(model),
            height=height,
            width=width,
            offline=offline,
            allow_pickle=allow_pickle,
            tokenizer=tokenizer,
            ema_weights=ema_weights,
        )
        quiet_libraries(offline)
        from sdlite.models.info import describe, format_info

        details = describe(config)
        typer.echo(json.dumps(details, indent=2) if json_out else format_info(details))


def export(
    source: Annotated[
        str,
        typer.Argument(
            help="A model (diffusers folder, hub id, single file, or a training checkpoint OUT/checkpoints/step-N) "
            "or a LoRA (folder or file).",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Argument(help="The file (.safetensors) or folder to write.", show_default=False)],
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="Models: single-file (one original-layout .safetensors for A1111/ComfyUI/Forge) or diffusers (a "
            "folder). LoRAs: kohya (A1111/ComfyUI; alpha kept) or diffusers. [default: single-file, kohya for LoRAs]",
            show_default=False,
        ),
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="Precision of the written weights: fp16, bf16 or fp32. [default: as stored]")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    offline: Offline = False,
    allow_pickle: AllowPickle = False,
    tokenizer: Tokenizer = None,
    ema_weights: EmaWeights = True,
) -> None:
    """Write a model or LoRA in the layout other tools load: A1111, ComfyUI, Forge, diffusers."""
    with one_line_errors():
        config = ExportConfig(
            source=source,
            out=out,
            format=format,
            dtype=dtype,
            tokenizer=tokenizer,
            ema_weights=ema_weights,
            offline=offline,
            allow_pickle=allow_pickle,
            force=force,
        )
        quiet_libraries(offline)
        from sdlite.models.export import export as run_export

        typer.echo(str(run_export(config)))
