"""`sdlite train`: fine-tune a model (full, LoRA, DreamBooth) or train a VAE, reporting progress as it goes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from sdlite.cli.failures import one_line_errors
from sdlite.cli.options import Quiet, config_options, config_values
from sdlite.cli.output import is_main_process, quiet_libraries
from sdlite.cli.progress import train_reporter
from sdlite.schema import PositiveInt, check_value
from sdlite.training.config import TrainConfig, build_train_config


@config_options(TrainConfig)
def train(
    config_file: Annotated[
        Path | None, typer.Option("--config", help="TOML file with any of these options; the command line wins.")
    ] = None,
    num_processes: Annotated[
        int | None,
        typer.Option(
            help="Run N processes, one per GPU (N CPU processes for tests); accelerate launch and torchrun work too."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check data and settings, print the plan as JSON, train nothing.")
    ] = False,
    json_events: Annotated[
        bool,
        typer.Option(
            "--json-events",
            help="JSON lines on stdout: plan, speedups, cache, resume, step, checkpoint, validation, warning, done.",
        ),
    ] = False,
    quiet: Quiet = False,
    **options: Any,
) -> None:
    """Fine-tune a model (full, or LoRA) on a captioned image folder, a Parquet/Arrow dataset or a hub dataset, or
    DreamBooth-style on a subject's photos; resumable, aspect-ratio bucketed, on one or many processes."""
    with one_line_errors():
        check_value(PositiveInt | None, num_processes, "--num-processes")
        cli_values = config_values(TrainConfig, options)
        config = build_train_config(cli_values, config_file)
        launch = bool(num_processes and num_processes > 1 and "WORLD_SIZE" not in os.environ)
        quiet_libraries(config.offline)
        from sdlite.training.plan import dry_run as plan_run
        from sdlite.training.unet import train as run_training

        if dry_run:  # the plan of N processes, printed once: nothing is launched
            plan = plan_run(config, num_processes if launch else None)
            if is_main_process():
                typer.echo(json.dumps(plan.to_dict(), indent=2))
            return
        if launch:  # options checked once, here
            from sdlite.launch import spawn

            raise typer.Exit(spawn(num_processes or 1, same_threads=False))
        with train_reporter(json_events, quiet) as report:
            result = run_training(config, on_event=report)
        if not json_events and is_main_process():
            speed = f", {result.images_per_s:.3g} images/s" if result.images_per_s else ""
            speed += f", MFU {result.mfu:.1%}" if result.mfu is not None else ""
            loss = "n/a (no step was finite)" if result.final_loss is None else result.final_loss
            typer.echo(f"{result.out}  {result.steps} steps, final loss {loss}{speed}")
            for note in result.skipped:
                typer.echo(f"skipped: {note}", err=True)
