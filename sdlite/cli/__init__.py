"""The `sdlite` command line: the app, and the mapping from failures to one-line errors and exit codes.

Each command lives in its own module (sample, train, models: info + init + export, data, quality: eval +
check, noise), declares its options (the shared ones come from options.py), builds one frozen config and
hands it to a core function. Heavy libraries (torch, diffusers) are imported inside the commands, so
`--help` and usage errors answer instantly.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from sdlite import __version__
from sdlite.cli.output import _show_warnings
from sdlite.config import (
    CheckConfig,
    EvalConfig,
    ExportConfig,
    Generation,
    InfoConfig,
    InitConfig,
    LoraChoice,
    NoiseConfig,
    SampleConfig,
    TrainConfig,
)
from sdlite.errors import DISK_FULL, EXIT_CODES, ResourceError, SdliteError
from sdlite.schema import describe_field, show

# "\b" keeps click from re-wrapping the table.
EPILOG = "\b\nExit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())
DEBUG_ENV = "SDLITE_DEBUG"

# Click's own usage errors (an unknown option, a value that is not a number) are reported like sdlite's:
# one `error:` line. Typer vendors click, so its classes are reached through the public BadParameter.
_CLICK_USAGE_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
# The schema field behind an option, per command, to say what a value that does not parse should be.
_OPTION_SCHEMAS: dict[str, tuple[type, ...]] = {
    "sample": (Generation, SampleConfig), "train": (TrainConfig,), "info": (InfoConfig,), "init": (InitConfig,),
    "export": (ExportConfig,), "eval shapes": (EvalConfig,), "noise": (NoiseConfig,), "check": (CheckConfig,),
}  # fmt: skip
_OPTION_FIELDS = {"lora_scale": (LoraChoice, "scale"), "force": (InitConfig, "overwrite")}


def _usage_message(exc: Any) -> str:
    """A click usage error in sdlite's words: `--steps must be a positive integer, got "ten"`."""
    param, ctx, cause = getattr(exc, "param", None), getattr(exc, "ctx", None), exc.__cause__
    errors = cause.errors() if cause is not None and hasattr(cause, "errors") else None
    if param is not None and getattr(param, "opts", None) and errors:
        command = " ".join(ctx.command_path.split()[1:]) if ctx is not None else ""
        candidates = [(owner, param.name) for owner in _OPTION_SCHEMAS.get(command, ())]
        if param.name in _OPTION_FIELDS:
            candidates.insert(0, _OPTION_FIELDS[param.name])
        wanted = next(filter(None, (describe_field(owner, key) for owner, key in candidates)), None)
        if wanted is None:
            wanted = {"int_parsing": "an integer", "float_parsing": "a number"}.get(errors[0]["type"])
        if wanted is not None:
            return f"{max(param.opts, key=len)} must be {wanted}, got {show(errors[0].get('input'))}"
    message = exc.format_message().rstrip(".")
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return _one_line(message + hint)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


@contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    try:
        yield
    except _CLICK_USAGE_ERROR as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `sdlite` or `sdlite data`: show the help
            raise
        typer.echo(f"error: {_usage_message(exc)}", err=True)
        raise typer.Exit(2) from None


class _Group(TyperGroup):
    """The command group: parses like Typer's, but reports a bad command line in one `error:` line."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _one_line_usage_errors():
            return super().invoke(ctx)


app = typer.Typer(
    cls=_Group,
    name="sdlite",
    help="Stable Diffusion from the command line: sample images, inspect and create models. "
    f"Set {DEBUG_ENV}=1 to see tracebacks.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
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


OUT_OF_MEMORY_HINT = "lower --batch-size or the resolution, try --low-memory for sampling, or use a smaller model"


@contextmanager
def _errors() -> Iterator[None]:
    """Turn sdlite's errors into `error: ...` on stderr and their exit code; Ctrl-C exits 130."""
    _show_warnings()
    try:
        yield
    except SdliteError as exc:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        typer.echo(f"error: {_one_line(str(exc))}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except BrokenPipeError:  # the reader left (`--json | head -1`): stop as a pipe's writer does, quietly
        raise typer.Exit(141) from None
    except Exception as exc:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # host RAM or torch device
            typer.echo(f"error: out of memory: {OUT_OF_MEMORY_HINT}", err=True)
            raise typer.Exit(ResourceError.exit_code) from None
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:  # e.g. --json into a full disk
            typer.echo(f"error: cannot write output: {DISK_FULL[exc.errno]}", err=True)
            raise typer.Exit(ResourceError.exit_code) from None
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        typer.echo(
            f"internal error: {type(exc).__name__}: {message} (rerun with {DEBUG_ENV}=1 for the traceback)", err=True
        )
        raise typer.Exit(1) from None


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


# The commands, in the order `sdlite --help` lists them. Their modules import _errors from here, so they come last.
from sdlite.cli import data, models, noise, quality, sample, train  # noqa: E402

app.command()(models.init)
app.command()(sample.sample)
app.command()(train.train)
app.command()(models.info)
app.command()(models.export)
app.command()(noise.noise)
app.command()(quality.check)
app.add_typer(data.data_app, name="data")
app.add_typer(quality.eval_app, name="eval")
