"""How a config's fields are checked, and how a bad value is named.

Each field of a config dataclass carries its type (pydantic, strict: a boolean is not a number, a
float is not an integer, a string is not either) and its range. The same check runs for every source
of a value; only the name in the message differs, so the user learns exactly where to look:

    --max-steps must be at least 1, got 0                      (the command line, or a Python caller)
    train.toml: max-steps must be an integer, got 10.7         (a TOML file, the key as written)
    prompts.jsonl:3: "steps" must be a positive integer, got "ten"   (a prompts-file line)

Nothing here imports torch or diffusers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import AfterValidator, AllowInfNan, BeforeValidator, Strict, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from sdlite.errors import SdliteError, UsageError
from sdlite.families import FAMILIES


def _fspath(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _unicode(value: str) -> str:
    """Text a tokenizer can read: no lone surrogates (invalid UTF-8 on a command line, a broken `\\ud800`
    escape in JSON)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PydanticCustomError("unicode", "not valid Unicode", {"position": exc.start}) from None
    found = CONTROL_CHARACTER.search(value)
    if found:  # a NUL would end up verbatim in the PNG's text chunk, which cannot hold one
        reason = (
            f"holds a control character ({control_name(found.group())} at character {found.start() + 1}): remove it"
        )
        raise PydanticCustomError("reason", "{reason}", {"reason": reason})
    return value


# C0 control characters other than tab, newline and carriage return: never meant in a prompt or caption.
CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_CONTROL_NAMES = {"\x00": "NUL", "\x07": "BEL", "\x08": "backspace", "\x0b": "vertical tab", "\x0c": "form feed",
                  "\x1b": "ESC"}  # fmt: skip


def control_name(char: str) -> str:
    """A control character as people call it (NUL, ESC), else its code point (U+0001)."""
    return _CONTROL_NAMES.get(char, f"U+{ord(char):04X}")


def _pair(separator: str, swap: bool) -> Any:
    """Parse a pair written `AxB` on a command line (swapped into the stored order when `swap`); a sequence of
    two (a record's JSON list, a Python tuple) is taken in the stored order."""

    def parse(value: Any) -> Any:
        if isinstance(value, str):
            parts = value.lower().replace(" ", "").split(separator)
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                form = "WIDTHxHEIGHT" if separator == "x" else "TOP,LEFT"
                reason = f"must be two whole numbers written {form}, got {show(value)}"
                raise PydanticCustomError("reason", "{reason}", {"reason": reason})
            first, second = int(parts[0]), int(parts[1])
            return (second, first) if swap else (first, second)
        return tuple(value) if isinstance(value, list) else value

    return BeforeValidator(parse)


# The field types configs are declared with.
Integer = Annotated[int, Strict()]
PositiveInt = Annotated[int, Strict(), Ge(1)]
NonNegativeInt = Annotated[int, Strict(), Ge(0)]
Number = Annotated[float, Strict(), AllowInfNan(False)]  # an int is accepted, NaN and inf are not
NonNegativeNumber = Annotated[float, Strict(), AllowInfNan(False), Ge(0)]
PositiveNumber = Annotated[float, Strict(), AllowInfNan(False), Gt(0)]
Text = Annotated[str, Strict()]
Prompt = Annotated[str, Strict(), AfterValidator(_unicode)]
NonEmptyText = Annotated[str, Strict(), MinLen(1)]


def _file_stem(value: str) -> str:
    if value in (".", "..") or any(c in value for c in "/\\\0") or value != value.strip():
        reason = f"must be a file name without folders, got {show(value)}"
        raise PydanticCustomError("reason", "{reason}", {"reason": reason})
    return value


FileStem = Annotated[str, Strict(), MinLen(1), AfterValidator(_file_stem)]


def _extension(value: str) -> str:
    if not value.startswith(".") or len(value) < 2 or any(c in value for c in "/\\\0 "):
        reason = f"must be a file extension such as .txt or .caption, got {show(value)}"
        raise PydanticCustomError("reason", "{reason}", {"reason": reason})
    return value


CaptionExtension = Annotated[
    str, Strict(), AfterValidator(_extension)
]  # sidecar captions: .txt, .caption  # a name for a file made in a folder
Flag = Annotated[bool, Strict()]
PathText = Annotated[str, Strict(), BeforeValidator(_fspath)]  # a path or hub id, kept as given
FilePath = Annotated[Path, BeforeValidator(_fspath)]  # a str or os.PathLike, stored as a Path
# SDXL's micro-conditioning: a size stored (height, width) as diffusers takes it, written WIDTHxHEIGHT on a
# command line as sizes are everywhere; a crop's top-left corner stored and written (top, left).
SizePair = Annotated[tuple[PositiveInt, PositiveInt], _pair("x", swap=True)]
CornerPair = Annotated[tuple[NonNegativeInt, NonNegativeInt], _pair(",", swap=False)]


def one_of(names: tuple[str, ...] | list[str]) -> Any:
    """The type of a setting that takes one of a fixed list of names."""
    return Literal[tuple(names)]  # type: ignore[valid-type]


# What a model predicts, as `--prediction-type` takes it (ModelSpec's "v", or diffusers' own "v_prediction"), and the
# name diffusers' schedulers give each.
PREDICTIONS = {"epsilon": "epsilon", "v": "v_prediction", "v_prediction": "v_prediction"}
PredictionType = one_of(tuple(PREDICTIONS))
PREDICTION_HELP = "What the model predicts: epsilon (the noise) or v (v_prediction)."


@dataclasses.dataclass(frozen=True)
class Source:
    """Where values came from, so that an error names it the way the user wrote it.

    `where` prefixes the message (a file, or `file:line`); `style` says how a field is named there:
    `option` (--max-steps, also for Python callers), `json` ("max_steps") or `toml` (the key as written);
    `error` is the exception (and so the exit code) a bad value from here raises.
    """

    where: str | None = None
    style: Literal["option", "json", "toml"] = "option"
    error: type[SdliteError] = UsageError
    spelling: Mapping[str, str] = dataclasses.field(default_factory=dict)  # toml: field -> key as written

    def name(self, field: str, owner: type | None = None) -> str:
        if self.style == "json":
            return json.dumps(field)
        if self.style == "toml":
            return self.spelling.get(field, field.replace("_", "-"))
        return option_name(owner, field)

    def fail(self, message: str) -> SdliteError:
        return self.error(f"{self.where}: {message}" if self.where else message)


COMMAND_LINE = Source()


def option_name(owner: type | None, field: str) -> str:
    """The command-line spelling of a field: `--max-steps`, unless its option() or the class names it otherwise."""
    names: Mapping[str, str] = getattr(owner, "_option_names", {})
    declared = next((f.metadata.get("flag") for f in _fields(owner) if f.name == field), None)
    return names.get(field) or declared or "--" + field.replace("_", "-")


def _fields(owner: type | None) -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(owner) if owner is not None and dataclasses.is_dataclass(owner) else ()


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    shown: str | None = None,
    argument: str | None = None,
    required: bool = False,
    metavar: str | None = None,
    aliases: tuple[str, ...] = (),
) -> Any:
    """A config field that the command line sets, declared once: its default, its `--help` text, its flag when
    the field's name does not give it (`--center-crop/--random-crop`), `shown`, the default in words when it is
    not a value ("the model's native size"), `argument`, the metavar of a positional argument (`OUT`), and
    `required` for an option that has to be given, and the `metavar` its help shows for the value. The CLI builds
    the option from this (cli/options.py)."""
    metadata = {
        "help": help,
        "flag": argument or flag,
        "shown": shown,
        "argument": argument,
        "required": required,
        "metavar": metavar,
        "aliases": aliases,  # older spellings of the flag, still accepted
    }
    return dataclasses.field(default=default, metadata=metadata)


def default_text(field: dataclasses.Field[Any]) -> str | None:
    """What `--help` shows as a field's default: its `shown` words, else its value; None where nothing is worth
    showing (an off flag, an empty list, a required field)."""
    value = field.default
    if field.metadata.get("shown"):
        return field.metadata["shown"]
    if value is None or value is False or value == () or value is dataclasses.MISSING:
        return None
    if value is True:  # an on/off pair: the flag that is on
        return (field.metadata.get("flag") or "--" + field.name.replace("_", "-")).split("/")[0]
    return show_number(value) if isinstance(value, float) else str(value)


def show_number(value: float) -> str:
    """A float as people write it: 1e-5, 0.9999, 2."""
    text = repr(value).replace("e-0", "e-").replace("e+0", "e+")
    return text[:-2] if text.endswith(".0") else text


# Help shared by every command that loads a model (declared once, here).
MODEL_HELP = (
    "Diffusers folder, hub id (ORG/NAME) or original-layout single file (.safetensors; .ckpt with --allow-pickle)."
)
OFFLINE_HELP = "Use only the local Hugging Face cache for hub ids (also HF_HUB_OFFLINE=1)."
ALLOW_PICKLE_HELP = "Allow loading pickle weights (.ckpt/.bin/.pt). Pickles can run code: trust the source."
TOKENIZER_HELP = "Single-file models: the CLIP tokenizer (folder or hub id)."
TOKENIZER_DEFAULT = (
    "the local Hugging Face cache's openai/clip-vit-large-patch14, then stable-diffusion-v1-5's; online, just those "
    "files"
)
EMA_WEIGHTS_HELP = (
    "Single-file models holding an EMA copy of the UNet: use it (the usual for sampling) or the raw weights."
)


# The fields of every config whose command loads a model, declared once here: each config calls these for its own.
def offline_option() -> Any:
    return option(False, OFFLINE_HELP)


def allow_pickle_option() -> Any:
    return option(False, ALLOW_PICKLE_HELP)


def tokenizer_option() -> Any:
    return option(None, TOKENIZER_HELP, shown=TOKENIZER_DEFAULT)


def ema_weights_option(default: bool | None = True) -> Any:
    """On unless --no-ema-weights (None: not said, for sources that may record it)."""
    return option(default, EMA_WEIGHTS_HELP, flag="--ema-weights/--no-ema-weights", shown="--ema-weights")


# Where each field of the config being built came from (field -> Source); unset: the command line.
_ORIGIN: ContextVar[Mapping[str, Source] | None] = ContextVar("sdlite_config_origin", default=None)


@contextmanager
def origin(sources: Mapping[str, Source]) -> Iterator[None]:
    """Build configs inside this block to have their errors name each field's own source."""
    token = _ORIGIN.set(sources)
    try:
        yield
    finally:
        _ORIGIN.reset(token)


def source_of(field: str) -> Source:
    return (_ORIGIN.get() or {}).get(field, COMMAND_LINE)


def name(owner: type, field: str) -> str:
    """A field's name as its source spells it (for messages about several fields)."""
    return source_of(field).name(field, owner)


def fail(field: str, message: str) -> NoReturn:
    """Raise `message` as the error of `field`'s source (its prefix and exit code)."""
    raise source_of(field).fail(message)


def validate_fields(obj: Any) -> None:
    """Check every field of a config dataclass against its declared type; normalize paths and tuples.

    Called from `__post_init__`, so a config is checked however it is made: by the CLI, from a file,
    or by a Python caller.
    """
    owner = type(obj)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        checked, reason = _check(_hints(owner)[f.name], value)
        if reason is not None:
            fail(f.name, f"{name(owner, f.name)} {reason}")
        if type(checked) is not type(value) and isinstance(checked, str | Path | tuple):
            object.__setattr__(obj, f.name, checked)  # "out" -> Path("out"), [..] -> (..), Path -> str


def check(owner: type, values: Mapping[str, Any], source: Source) -> None:
    """Check the given fields of `owner` as they came from one source, before any are merged."""
    hints = _hints(owner)
    for field, value in values.items():
        _, reason = _check(hints[field], value)
        if reason is not None:
            raise source.fail(f"{source.name(field, owner)} {reason}")


def check_value(hint: Any, value: Any, label: str, source: Source = COMMAND_LINE) -> Any:
    """Check one value that is not a config field (say `--num-processes`); returns it normalized."""
    checked, reason = _check(hint, value)
    if reason is not None:
        raise source.fail(f"{label} {reason}")
    return checked


def describe_field(owner: type, field: str) -> str | None:
    """What a field accepts, in words ("a positive integer"), or None if `owner` has no such field."""
    hint = _hints(owner).get(field)
    return None if hint is None else describe(hint)


@cache
def _hints(owner: type) -> dict[str, Any]:
    return typing.get_type_hints(owner, include_extras=True)


@cache
def _adapter(hint: Any) -> TypeAdapter[Any]:
    return TypeAdapter(hint)


def _check(hint: Any, value: Any) -> tuple[Any, str | None]:
    try:
        return _adapter(hint).validate_python(value), None
    except ValidationError as exc:
        return value, _reason(hint, exc.errors()[0], value)


def _reason(hint: Any, error: Any, value: Any) -> str:
    """Why `value` is not accepted: the part of the message after the field's name."""
    kind, top = error["type"], not error["loc"]
    shown = show(value)
    base, meta = _unwrap(hint)
    if top and kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"must be {_range(meta)}, got {shown}"
    if top and kind == "finite_number":
        return f"must be a finite number, got {shown}"
    if top and kind == "int_type" and isinstance(value, float):
        return f"must be an integer, got {shown}"
    if top and kind == "literal_error":
        return f"must be one of {', '.join(map(str, get_args(base)))}; got {shown}"
    if top and kind == "string_too_short":
        return "must not be empty"
    if top and kind == "reason":  # a config's own check (say, a size off the VAE grid) gives its words
        return str(error["ctx"]["reason"])
    if top and kind == "unicode":
        return f"must be valid Unicode text (invalid UTF-8 or a lone \\u surrogate escape), got {shown}"
    index = error["loc"][0] if error["loc"] else None
    if get_origin(base) is tuple and isinstance(index, int) and isinstance(value, (list, tuple)) and index < len(value):
        element = get_args(base)[0]  # name the one value that is wrong, in the element's own terms
        return f"item {index + 1} {_reason(element, {**error, 'loc': error['loc'][1:]}, value[index])}"
    return f"must be {describe(hint)}, got {shown}"


def _unwrap(hint: Any) -> tuple[Any, list[Any]]:
    """The type a hint accepts besides None, and its constraints."""
    if get_origin(hint) in (Union, types.UnionType):
        hint = next(a for a in get_args(hint) if a is not type(None))
    if get_origin(hint) is Annotated:
        hint, *meta = get_args(hint)
        return hint, meta
    return hint, []


def _range(meta: list[Any]) -> str | None:
    low = next(((m.ge, True) for m in meta if isinstance(m, Ge)), None) or next(
        ((m.gt, False) for m in meta if isinstance(m, Gt)), None
    )
    high = next(((m.le, True) for m in meta if isinstance(m, Le)), None) or next(
        ((m.lt, False) for m in meta if isinstance(m, Lt)), None
    )
    if low and high:
        return f"in [{low[0]}, {high[0]})" if low[1] and not high[1] else f"between {low[0]} and {high[0]}"
    if low:
        if low[0] == 0:
            return "0 or more" if low[1] else "positive"
        return f"at least {low[0]}" if low[1] else f"more than {low[0]}"
    if high:
        return f"at most {high[0]}" if high[1] else f"less than {high[0]}"
    return None


def describe(hint: Any) -> str:
    """A field type in words: "a positive integer", "a number in [0, 1)", "one of ddim, ddpm"."""
    base, meta = _unwrap(hint)
    limits = _range(meta)
    if get_origin(base) is Literal:
        return "one of " + ", ".join(map(str, get_args(base)))
    if base is bool:
        return "true or false"
    if base in (int, float):
        noun = "an integer" if base is int else "a number"
        if limits in ("at least 1", "positive"):
            return f"a positive {noun.split()[-1]}"
        if limits is None:
            return noun
        return f"{noun} {limits}" if limits.startswith(("between", "in ")) else f"{noun}, {limits}"
    if base is str:
        return "a path" if any(isinstance(m, BeforeValidator) for m in meta) else "text (a string)"
    if base is Path:
        return "a path"
    if get_origin(base) is tuple:
        return f"a list, each {describe(get_args(base)[0])}"
    return f"a {getattr(base, '__name__', base)}"


def show(value: Any) -> str:
    """A value as the user would have written it, on one line and briefly."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return repr(value)
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    # Line breaks JSON leaves alone (U+0085, U+2028), direction overrides, lone surrogates: escaped.
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


# The smallest VAE factor of the model families (8 for SD v1); the loaded model's own is checked again later.
DEFAULT_VAE_FACTOR = min(family.vae_factor for family in FAMILIES)
MAX_SEED = 2**32 - 1


# Field types shared by several configs.
DType = Literal["auto", "fp32", "fp16", "bf16"]
Device = Literal["auto", "cpu", "cuda", "mps"]
WeightsDType = Literal["fp32", "fp16", "bf16"]
Seed = Annotated[int, Strict(), Ge(0), Le(MAX_SEED)]


def _on_vae_grid(value: int) -> int:
    reason = size_problem(value, DEFAULT_VAE_FACTOR)
    if reason:
        raise PydanticCustomError("reason", "{reason}", {"reason": reason})
    return value


# An image side: a multiple of the VAE factor (the loaded model's own is checked again).
ImageSize = Annotated[int, Strict(), Ge(DEFAULT_VAE_FACTOR), AfterValidator(_on_vae_grid)]
DTYPES: tuple[str, ...] = get_args(DType)
DEVICES: tuple[str, ...] = get_args(Device)
DTYPE_HELP = f"{', '.join(DTYPES)}; auto = fp16 on CUDA, else fp32."


def size_problem(value: int, factor: int) -> str | None:
    """Why an image side cannot be used with a VAE of `factor`, or None."""
    if value < factor:
        return f"must be at least {factor}, got {value}"
    if value % factor:
        low = value - value % factor
        return f"{value} is not a multiple of the VAE factor {factor}; nearest valid: {low} or {low + factor}"
    return None


def validate_size(
    height: int | None, width: int | None, factor: int, names: tuple[str, ...] = ("--height", "--width")
) -> None:
    """Height and width must be positive multiples of the VAE's downsampling factor."""
    for option, value in zip(names, (height, width), strict=False):
        reason = None if value is None else size_problem(value, factor)
        if reason:
            raise UsageError(f"{option} {reason}")
