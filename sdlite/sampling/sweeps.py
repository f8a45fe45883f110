"""Sweeps, A1111's X/Y/Z plot: `--sweep KEY=V1,V2,...` up to three times, every combination made as its own image
with its own full settings, and a grid labelled with the axes (`--grid`).

KEY is any per-image setting (`steps`, `guidance` or `cfg`, `scheduler` or `sampler`, `seed`, `strength`,
`clip-skip`, `hires-strength`, `lora-scale`, ...) or `S/R`, A1111's prompt search-and-replace: the first value is
looked for in the prompts and each value put in its place. Values are separated by commas (CSV quoting keeps a comma
in one). As in A1111, every cell uses the same seed (unless the sweep is over seeds); the first axis (X) changes
fastest, the third (Z) slowest.
"""

from __future__ import annotations

import csv
import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sdlite.errors import UsageError

MAX_AXES = 3
SEARCH_REPLACE = "S/R"
ALIASES = {
    "cfg": "guidance",
    "cfg-scale": "guidance",
    "sampler": "scheduler",
    "prompt-s/r": SEARCH_REPLACE,
    "lora-scale": "image_lora_scale",
}
TITLES = {"image_lora_scale": "lora-scale"}  # a field the sweep names otherwise
NOT_SWEPT = ("prompt", "num_images", "init_image", "mask")  # the prompt has S/R; files are not settings to sweep


@dataclass(frozen=True)
class Axis:
    """One swept setting: the Generation field (or S/R) and its values, as written and as typed."""

    key: str
    labels: tuple[str, ...]
    values: tuple[Any, ...]

    @property
    def title(self) -> str:
        return TITLES.get(self.key, self.key.replace("_", "-"))


def parse_axis(text: str, fields: dict[str, Any]) -> Axis:
    """`KEY=V1,V2,...` as an axis of `fields` (the Generation fields, name -> type hint)."""
    key, sep, rest = text.partition("=")
    key = ALIASES.get(key.strip().lower(), key.strip())
    if key.upper() == SEARCH_REPLACE:
        key = SEARCH_REPLACE
    field = key.replace("-", "_")
    if not sep or (key != SEARCH_REPLACE and (field not in fields or field in NOT_SWEPT)):
        known = sorted(TITLES.get(name, name.replace("_", "-")) for name in fields if name not in NOT_SWEPT)
        raise UsageError(
            f"--sweep {text!r}: write KEY=V1,V2,... with KEY one of S/R, {', '.join(known)}"
            if sep
            else f"--sweep {text!r}: write KEY=V1,V2,... (no '=' found)"
        )
    labels = tuple(value.strip() for value in next(csv.reader([rest], skipinitialspace=True), []))
    if len(labels) < 1 or any(label == "" for label in labels):
        raise UsageError(f"--sweep {text!r}: give one or more values separated by commas, none empty")
    if key == SEARCH_REPLACE:
        return Axis(key, labels, labels)
    return Axis(field, labels, tuple(_typed(fields[field], label, text) for label in labels))


def _typed(hint: Any, label: str, text: str) -> Any:
    """A value written on the command line as its field's type (a pair or a name stays text for its validator)."""
    base = _base(hint)
    if label.lower() in ("none", "") and type(None) in typing.get_args(hint):
        return None
    try:
        if base is bool:
            return label.lower() in ("1", "true", "yes", "on")
        if base is int:
            return int(label)
        if base is float:
            return float(label)
    except ValueError:
        kind = "a whole number" if base is int else "a number"
        raise UsageError(f"--sweep {text!r}: {label!r} is not {kind}") from None
    return label


def _base(hint: Any) -> Any:
    """The plain type under Optional[...] and Annotated[...]."""
    while True:
        origin = typing.get_origin(hint)
        if origin is typing.Annotated:
            hint = typing.get_args(hint)[0]
        elif origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        else:
            return hint


def check_axes(axes: Sequence[Axis]) -> None:
    if len(axes) > MAX_AXES:
        raise UsageError(f"--sweep is given {len(axes)} times: at most {MAX_AXES} axes (X, Y, Z)")
    keys = [axis.key for axis in axes]
    for key in keys:
        if keys.count(key) > 1:
            raise UsageError(f"--sweep {key.replace('_', '-')} is given twice: one axis per setting")


def cells(axes: Sequence[Axis]) -> list[tuple[int, ...]]:
    """Every combination's value indices (x, y, z...), X changing fastest."""
    combos: list[tuple[int, ...]] = [()]
    for axis in axes:
        combos = [(*combo, i) for i in range(len(axis.values)) for combo in combos]
    return combos


def swept(base: dict[str, Any], axes: Sequence[Axis], combo: tuple[int, ...]) -> dict[str, Any]:
    """The settings of one cell: the base generation's with each axis's value (S/R replaces in both prompts)."""
    settings = dict(base)
    for axis, index in zip(axes, combo, strict=True):
        if axis.key == SEARCH_REPLACE:
            search, replace = axis.values[0], axis.values[index]
            texts = [k for k in ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2") if settings.get(k)]
            if not any(search in settings[k] for k in texts):
                raise UsageError(f"--sweep S/R: {search!r} is not in the prompt or the negative prompt")
            for key in texts:
                settings[key] = settings[key].replace(search, replace)
        else:
            settings[axis.key] = axis.values[index]
    return settings


def label(axes: Sequence[Axis], combo: tuple[int, ...]) -> list[str]:
    """Each axis's `title: value` for one cell."""
    return [f"{axis.title}: {axis.labels[i]}" for axis, i in zip(axes, combo, strict=True)]


def as_fields(gen: Any) -> dict[str, Any]:
    return {f.name: getattr(gen, f.name) for f in dataclasses.fields(gen)}
