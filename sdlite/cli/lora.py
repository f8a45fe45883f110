"""`sdlite lora`: tools over LoRA files."""

from __future__ import annotations

from typing import Any

import typer

from sdlite.cli.failures import one_line_errors
from sdlite.cli.options import build_config, config_options, config_values
from sdlite.cli.output import quiet_libraries
from sdlite.loras.extract import ExtractConfig
from sdlite.loras.merge import MergeConfig
from sdlite.loras.resize import ResizeConfig

lora_app = typer.Typer(
    help="Tools over LoRA files: bake them into a model, change their rank, extract one from two models.",
    no_args_is_help=True,
)


@lora_app.command("merge")
@config_options(MergeConfig)
def lora_merge(**options: Any) -> None:
    """Bake LoRAs into MODEL's weights (diffusers' fuse_lora, in fp32) and write the merged model: a single file
    for A1111/ComfyUI, or a diffusers folder.

    Example: sdlite lora merge sd15.safetensors style.safetensors detail.safetensors --scales 0.8 --scales 0.5 --out merged.safetensors
    """
    with one_line_errors():
        config = build_config(MergeConfig, config_values(MergeConfig, options))
        quiet_libraries(config.offline)
        from sdlite.loras.merge import merge

        path, warnings = merge(config)
        for warning in warnings:
            typer.echo(f"warning: {warning}", err=True)
        typer.echo(str(path))


@lora_app.command("resize")
@config_options(ResizeConfig)
def lora_resize(**options: Any) -> None:
    """Bring LORA to rank R by the singular values of each module's update (the best rank-R approximation), report
    the energy kept, and write it in the kohya layout (A1111, ComfyUI and diffusers load it).

    Example: sdlite lora resize big.safetensors --rank 16 --out small.safetensors
    """
    with one_line_errors():
        config = build_config(ResizeConfig, config_values(ResizeConfig, options))
        from sdlite.loras.resize import resize

        report = resize(config)
        _report(report, f"{len(report.modules)} modules, rank {report.ranks[0]} -> {report.ranks[1]}")


@lora_app.command("extract")
@config_options(ExtractConfig)
def lora_extract(**options: Any) -> None:
    """A LoRA of rank R from the difference between TUNED and its BASE (the best rank-R approximation of each
    adapted layer's change), in the kohya layout A1111, ComfyUI and diffusers load; reports the energy kept.

    Example: sdlite lora extract my-finetune base.safetensors --rank 32 --out extracted.safetensors
    """
    with one_line_errors():
        config = build_config(ExtractConfig, config_values(ExtractConfig, options))
        quiet_libraries(config.offline)
        from sdlite.loras.extract import extract

        report = extract(config)
        _report(report, f"{len(report.modules)} changed layers at rank {report.ranks[1]}")


def _report(report: Any, head: str) -> None:
    """`HEAD: kept 98.12% of the energy (least: 91.00% in NAME)` on stderr, the written file on stdout."""
    worst = min(report.modules.items(), key=lambda item: item[1], default=("", 1.0))
    typer.echo(f"{head}: kept {report.kept:.2%} of the energy (least: {worst[1]:.2%} in {worst[0]})", err=True)
    typer.echo(str(report.path))
