"""How failures reach the user: sdlite's errors, click's usage errors and anything unexpected become one
`error:` line on stderr and a distinct exit code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

from sdlite.cli.output import show_warnings
from sdlite.errors import DISK_FULL, ResourceError, SdliteError
from sdlite.models.config import ExportConfig, InfoConfig, InitConfig
from sdlite.quality.config import CheckConfig, EvalConfig
from sdlite.sampling.config import Generation, LoraChoice, NoiseConfig, SampleConfig
from sdlite.schema import describe_field, show
from sdlite.training.config import TrainConfig

DEBUG_ENV = "SDLITE_DEBUG"


# Click's own usage errors (an unknown option, a value that is not a number) are reported like sdlite's:
# one `error:` line. Typer vendors click, so its classes are reached through the public BadParameter.
_CLICK_USAGE_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


# The schema field behind an option, per command, to say what a value that does not parse should be.
_OPTION_SCHEMAS: dict[str, tuple[type, ...]] = {
    "sample": (Generation, SampleConfig),
    "train": (TrainConfig,),
    "info": (InfoConfig,),
    "init": (InitConfig,),
    "export": (ExportConfig,),
    "eval shapes": (EvalConfig,),
    "noise": (NoiseConfig,),
    "check": (CheckConfig,),
}


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
    return one_line(message + hint)


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


@contextmanager
def one_line_usage_errors() -> Iterator[None]:
    try:
        yield
    except _CLICK_USAGE_ERROR as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `sdlite` or `sdlite data`: show the help
            raise
        typer.echo(f"error: {_usage_message(exc)}", err=True)
        raise typer.Exit(2) from None


OUT_OF_MEMORY_HINT = "lower --batch-size or the resolution, try --low-memory for sampling, or use a smaller model"


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn sdlite's errors into `error: ...` on stderr and their exit code; Ctrl-C exits 130."""
    show_warnings()
    try:
        yield
    except SdliteError as exc:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        typer.echo(f"error: {one_line(str(exc))}", err=True)
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
