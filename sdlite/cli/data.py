"""`sdlite data`: the group of commands that make training datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdlite.cli.failures import one_line_errors

data_app = typer.Typer(help="Make training datasets.", no_args_is_help=True)


@data_app.command("shapes")
def data_shapes(
    out: Annotated[Path, typer.Argument(help="Folder to create: PNGs + metadata.jsonl (Hugging Face imagefolder).")],
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 10000,
    size: Annotated[int, typer.Option(help="Image side in pixels (16-4096).")] = 64,
    seed: Annotated[int, typer.Option(help="Same seed, same dataset.")] = 0,
) -> None:
    """Synthetic scenes captioned `a {color} {shape} on a {color} background` (held-out triples excluded)."""
    with one_line_errors():
        from sdlite.data.shapes import write_dataset

        typer.echo(str(write_dataset(out, n, size, seed)))
