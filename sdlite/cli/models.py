"""`sdlite init`, `sdlite info` and `sdlite export`: create a model, describe one, write one for other tools."""

from __future__ import annotations

import json
from typing import Any

import typer

from sdlite.cli.failures import one_line_errors
from sdlite.cli.options import JsonOut, build_config, config_options, config_values, model_values
from sdlite.cli.output import quiet_libraries
from sdlite.models.config import ExportConfig, InfoConfig, InitConfig


@config_options(InitConfig)
def init(**options: Any) -> None:
    """Write a model with random weights, offline: `tiny` for tests and CI, `sd15` for the real SD v1.5 shapes."""
    with one_line_errors():
        config = build_config(InitConfig, config_values(InitConfig, options))
        quiet_libraries()
        from sdlite.models.presets import init_model

        typer.echo(str(init_model(config)))


@config_options(InfoConfig)
def info(json_out: JsonOut = False, **options: Any) -> None:
    """Show a model's components, parameter counts, dtypes, scheduler and the tensor shapes of its flow; or a LoRA's
    layout, rank, alpha and which tools (A1111, Forge, ComfyUI, diffusers) load it."""
    with one_line_errors():
        config = build_config(InfoConfig, model_values(InfoConfig, options))
        quiet_libraries(config.offline)
        from sdlite.models.info import describe, format_info

        details = describe(config)
        typer.echo(json.dumps(details, indent=2) if json_out else format_info(details))


@config_options(ExportConfig)
def export(**options: Any) -> None:
    """Write a model or LoRA in the layout other tools load: A1111, ComfyUI, Forge, diffusers."""
    with one_line_errors():
        config = build_config(ExportConfig, config_values(ExportConfig, options))
        quiet_libraries(config.offline)
        from sdlite.models.export import export as run_export

        typer.echo(str(run_export(config)))
