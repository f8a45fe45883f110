"""`sdlite sample`: text-to-image, image-to-image and inpainting, one line per written image."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from sdlite.cli.failures import one_line_errors
from sdlite.cli.options import JsonOut, Quiet, config_options, config_values
from sdlite.cli.output import is_main_process, print_result, quiet_libraries
from sdlite.cli.progress import progress_bar
from sdlite.sampling.config import INPUT_KEYS, Generation
from sdlite.sampling.sources import SampleOverrides, build_sample_config
from sdlite.schema import PositiveInt, check_value

# Ctrl-C while sampling stops at the next denoising step; a single operation still running this many
# seconds later (one step of a huge image) is abandoned and the process exits 130 anyway.
INTERRUPT_GRACE = 2.0


@config_options(Generation, SampleOverrides)
def sample(
    json_out: JsonOut = False,
    quiet: Quiet = False,
    num_processes: Annotated[
        int | None,
        typer.Option(
            help="Split the run's batches over N processes (one per GPU; N CPU processes for tests), started by "
            "sdlite: the same files, names, pixels and metadata as one process, reported in order."
        ),
    ] = None,
    **options: Any,
) -> None:
    """Generate images from text, or from a picture (--init-image) and a mask (--mask). Each PNG records how
    to make it again (A1111 `parameters` + full JSON, with the sha256 of the files it started from)."""
    with one_line_errors():
        check_value(PositiveInt | None, num_processes, "--num-processes")
        if num_processes and num_processes > 1 and "WORLD_SIZE" not in os.environ:
            from sdlite.launch import spawn

            raise typer.Exit(spawn(num_processes))
        given = {k: v for k, v in config_values(SampleOverrides, options).items() if v is not None}
        settings = config_values(Generation, options)
        for key in INPUT_KEYS:  # a path as the shell gave it ("" is the current folder, as for any path option)
            settings[key] = None if settings[key] is None else str(Path(settings[key]))
        config = build_sample_config(SampleOverrides(**given, settings=settings))
        quiet_libraries(config.offline)
        from sdlite.sampling.run import sample as run_sample

        images = len(config.keep_numbers) or sum(g.num_images for g in config.generations)
        with progress_bar(enabled=not quiet and is_main_process(), images=images) as progress:
            run = run_sample(
                config,
                progress=progress,
                on_image=partial(print_result, json_out=json_out, progress=progress),
                interrupt_grace=INTERRUPT_GRACE,
            )
        for grid in run.grids or ((run.grid,) if run.grid else ()):
            typer.echo(json.dumps({"grid": str(grid)}) if json_out else f"{grid}  grid")
        if run.speedups and not quiet and is_main_process():
            typer.echo(f"{config.mode}: {', '.join(run.speedups)}", err=True)
