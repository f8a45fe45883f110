"""The `sdlite` app: its commands in the order `sdlite --help` lists them, `--version`, and `main()`.

Each command lives in its own module (sample, train, models: info + init + export, data, quality: eval +
check, noise), declares its options (a config's own from its fields, the shared ones from options.py), builds
one frozen config and hands it to a core function; failures.py turns what goes wrong into one line and an exit
code. Heavy libraries (torch, diffusers) are imported inside the commands, so `--help` and usage errors answer
instantly.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from sdlite import __version__
from sdlite.cli import data, lora, models, noise, prompt, quality, sample, train
from sdlite.cli.failures import DEBUG_ENV, one_line_usage_errors
from sdlite.errors import EXIT_CODES, ResourceError

# "\b" keeps click from re-wrapping the table.
EPILOG = "\b\nExit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())


class _Group(TyperGroup):
    """The command group: parses like Typer's, but reports a bad command line in one `error:` line."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with one_line_usage_errors():
            return super().invoke(ctx)


app = typer.Typer(
    cls=_Group,
    name="sdlite",
    help="Stable Diffusion from the command line: sample images, inspect and create models. "
    f"Set {DEBUG_ENV}=1 to see tracebacks.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sdlite {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Stable Diffusion from the command line."""


def main() -> None:
    """Console-script entry point: run the command, then leave without the interpreter's teardown.

    Once torch and diffusers are imported, Python's normal shutdown (module teardown, library exit
    hooks) takes about 0.8 s on the 2-core machine, 15% of a one-image `sample`. Every file sdlite
    writes is closed by then and training tears its process group down itself, so after flushing
    the standard streams nothing is left to do.
    """
    from sdlite.launch import tie_to_parent

    tie_to_parent()  # a worker of `--num-processes` never outlives the command
    try:
        app()
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
            sys.stderr.write(exc.code + "\n")
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader (`| head`) left early: nothing to report
        pass
    except OSError as exc:
        sys.stderr.write(f"error: cannot write standard output: {exc.strerror or exc}\n")
        code = code or ResourceError.exit_code
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


app.command()(models.init)


app.command()(sample.sample)


app.command()(prompt.prompt)


app.command()(train.train)


app.command()(models.info)


app.command()(models.export)


app.command()(noise.noise)


app.command()(quality.check)


app.add_typer(data.data_app, name="data")


app.add_typer(lora.lora_app, name="lora")


app.add_typer(quality.eval_app, name="eval")
