"""The command-line options: each config field declared with schema.option() becomes its option (or argument)
here, with the field's name, type, flag, help and default; and the `Annotated` aliases the commands not yet built
from a config (check) share."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from sdlite.schema import (
    ALLOW_PICKLE_HELP,
    DEVICES,
    DTYPE_HELP,
    EMA_WEIGHTS_HELP,
    OFFLINE_HELP,
    TOKENIZER_DEFAULT,
    TOKENIZER_HELP,
    default_text,
)

T = TypeVar("T")

# The commands that load a model (help declared once, in sdlite/schema.py).
Offline = Annotated[bool, typer.Option("--offline", help=OFFLINE_HELP)]
AllowPickle = Annotated[
    bool,
    typer.Option("--allow-pickle", help=ALLOW_PICKLE_HELP),
]
Tokenizer = Annotated[
    str | None,
    typer.Option(
        help=f"{TOKENIZER_HELP} [default: {TOKENIZER_DEFAULT}]",
        show_default=False,
    ),
]
EmaWeights = Annotated[
    bool,
    typer.Option(
        "--ema-weights/--no-ema-weights",
        help=EMA_WEIGHTS_HELP,
    ),
]

# What a command prints.
JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]

# --dtype and --device where they default to auto (noise, check); sample's come from its other sources.
Dtype = Annotated[str, typer.Option(help=DTYPE_HELP)]
Device = Annotated[str, typer.Option(help=f"{', '.join(DEVICES)}.")]


def config_options(*configs: type) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command one option per field of each of `configs` declared with schema.option(): the field's name,
    type, flag, help and default come from there alone. The command takes them as `**options` (None where an
    option was not given; read them with `config_values`), after its own parameters."""

    def declare(command: Callable[..., None]) -> Callable[..., None]:
        own = [
            p.replace(kind=p.KEYWORD_ONLY)
            for p in inspect.signature(command, eval_str=True).parameters.values()
            if p.kind != p.VAR_KEYWORD
        ]
        generated = [
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=_cli_default(f), annotation=_option_of(f, hint)
            )
            for config in configs
            for f, hint in _declared(config)
        ]
        command.__signature__ = inspect.Signature([*generated, *own])  # type: ignore[attr-defined]
        return command

    return declare


def config_values(config: type, options: dict[str, Any]) -> dict[str, Any]:
    """The fields the user gave on the command line, as the config takes them (None: not given)."""
    values = {}
    for f, _ in _declared(config):
        value = options.get(f.name)
        choices = _pair_choices(f)
        if value is not None and choices:  # --center-crop/--random-crop -> "center" / "random"
            value = choices[0] if value else choices[1]
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return values


def build_config(config: type[T], values: dict[str, Any]) -> T:
    """`config` made from the command line's values: each field given, the field's own default for the rest."""
    return config(**{k: v for k, v in values.items() if v is not None})


def model_values(config: type, options: dict[str, Any]) -> dict[str, Any]:
    """`config_values` for a command that names a model: its MODEL (or $SDLITE_MODEL, else the built-in model)
    resolved as every command resolves it."""
    from sdlite.models.source import resolve_model_source

    values = config_values(config, options)
    return {**values, "model": resolve_model_source(values["model"])}


def _declared(config: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(config, include_extras=True)
    return [(f, hints[f.name]) for f in dataclasses.fields(config) if "help" in f.metadata]


def _pair_choices(field: dataclasses.Field[Any]) -> tuple[str, ...] | None:
    """A text field set by an on/off pair of flags (`--center-crop/--random-crop`): its two values."""
    flag = field.metadata.get("flag") or ""
    if "/" not in flag or isinstance(field.default, bool) or field.default is None:
        return None
    return tuple(part.removeprefix("--").split("-")[0] for part in flag.split("/"))


def _cli_default(field: dataclasses.Field[Any]) -> Any:
    """None (not given) for every option and optional argument; none at all for what must be given."""
    metadata = field.metadata
    must = metadata["required"] or (
        metadata["argument"] and field.default is dataclasses.MISSING and not metadata["shown"]
    )
    return inspect.Parameter.empty if must else None


def _option_of(field: dataclasses.Field[Any], hint: Any) -> Any:
    """`Annotated[type | None, typer.Option(...)]` (or `typer.Argument`) for one declared field."""
    base = _click_type(hint)
    flag, argument = field.metadata.get("flag"), field.metadata.get("argument")
    if _pair_choices(field):
        base = bool
    shown = default_text(field)
    text = field.metadata["help"] + (f" [default: {shown}]" if shown else "")
    if argument:
        return Annotated[base | None, typer.Argument(help=text, metavar=argument, show_default=False)]
    flags = [flag] if flag else ["--" + field.name.replace("_", "-")] if base is bool else []
    flags += list(field.metadata.get("aliases", ()))
    metavar = field.metadata.get("metavar")
    return Annotated[base | None, typer.Option(*flags, help=text, metavar=metavar, show_default=False)]


def _click_type(hint: Any) -> Any:
    """What click parses a field's value as: bool, int, float, Path or str; for a tuple field, a list of those
    (a fixed pair is one word, parsed by the field's type)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return _click_type(args[0])
    if origin in (types.UnionType, typing.Union):
        return _click_type(next(a for a in args if a is not type(None)))
    if origin is tuple and len(args) == 2 and args[1] is not Ellipsis:  # a pair, written as one word (1024x768)
        return str
    if origin is tuple:
        return list[_click_type(args[0])]  # type: ignore[misc]
    if origin is typing.Literal:
        return str
    return hint if hint in (bool, int, float, Path) else str
