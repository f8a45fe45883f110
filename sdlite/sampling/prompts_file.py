"""Prompts files: one prompt per line, JSON lines with per-line settings, or one JSON array; each row with
the `file:line` its errors name.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from sdlite.errors import DataError
from sdlite.sampling.config import GENERATION_KEYS, INPUT_KEYS, Generation
from sdlite.schema import (
    Source,
    check,
    show,
)

# Prompts files: one JSON value for the whole file when it starts like a JSON array.
_JSON_ARRAY_START = re.compile(r"\[\s*[\[{\"\]]")
_JSON_SPACE = re.compile(r"[ \t\r\n]*")


def prompt_rows(path: Path) -> list[tuple[dict[str, Any], Source]]:
    """The rows of a prompts file, each with the source (`file:line`) its errors name.

    Prompts are one per line, JSON lines with `prompt` plus per-line setting overrides, or one JSON array of such
    objects (or strings). Blank lines and lines starting with `#` are skipped. Every value is checked like the
    option it overrides; a bad one is a data error naming the file and line.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read prompts file {path}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is not part of the first prompt
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x})") from exc
    body = text.strip()
    rows = _json_document_rows(path, text) if body.startswith(("[", "{")) else None
    if rows is None:
        rows = []
        for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may be in a prompt
            line = line.strip()
            if line and not line.startswith("#"):
                rows.append(_prompt_row(line, Source(where=f"{path}:{number}", style="json", error=DataError)))
    if not rows:
        raise DataError(f"prompts file {path} holds no prompts")
    anchored = [(_anchored(row, path.parent), source) for row, source in rows]
    for row, source in anchored:  # a missing input file is named with its line, before any model loads
        for key in INPUT_KEYS:
            if row.get(key) == "":
                raise source.fail(f'"{key}" is empty: give an image path, or leave the key out')
            if isinstance(row.get(key), str) and not Path(row[key]).expanduser().exists():
                raise source.fail(f'"{key}" {row[key]} does not exist')
    return anchored


def _anchored(row: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A prompts file's relative `init_image`/`mask` paths are relative to the file, so it can be moved with them."""
    return {
        k: str(folder / v)
        if k in INPUT_KEYS and isinstance(v, str) and v and not Path(v).expanduser().is_absolute()
        else v
        for k, v in row.items()
    }


def _prompt_row(line: str, source: Source) -> tuple[dict[str, Any], Source]:
    """One line: a plain prompt, or a JSON object when it starts with `{`."""
    if not line.startswith("{"):
        return {"prompt": line}, source
    try:
        row = json.loads(line)
    except ValueError as exc:  # JSONDecodeError, or a number too long to convert
        raise source.fail(f"not valid JSON ({getattr(exc, 'msg', None) or str(exc).split(';')[0]})") from exc
    return _object_row(row, source), source


def _json_document_rows(path: Path, text: str) -> list[tuple[dict[str, Any], Source]] | None:
    """The whole file as one JSON array (or object), with each item's line; None for line-by-line files."""
    decoder = json.JSONDecoder()
    start = len(text) - len(text.lstrip())
    try:
        document, end = decoder.raw_decode(text, start)
    except ValueError as exc:
        if text.startswith("{", start) or not _JSON_ARRAY_START.match(text, start):
            return None  # JSON lines, or a plain prompt such as "[cinematic] a cat"
        line = text.count("\n", 0, getattr(exc, "pos", start)) + 1
        reason = getattr(exc, "msg", None) or str(exc).split(";")[0]
        raise DataError(
            f"{path}:{line}: not valid JSON ({reason}); a JSON prompts file is one array of objects"
        ) from exc
    if text[end:].strip():
        if isinstance(document, dict) or not _JSON_ARRAY_START.match(text, start):
            return None  # JSON lines (one object per line), or a plain prompt such as "[1, 2] a cat"
        line = text.count("\n", 0, end) + 1
        raise DataError(f"{path}:{line}: text after the JSON array; a JSON prompts file is one array of objects")
    if isinstance(document, dict):  # one object, perhaps over several lines
        return [(_object_row(document, _at(path, 1)), _at(path, 1))]
    if not isinstance(document, list):
        return None
    rows = []
    lines = [text.count("\n", 0, i) + 1 for i in _array_item_starts(text, start)]
    shared = {line for line, count in Counter(lines).items() if count > 1}
    for index, (item, line) in enumerate(zip(document, lines, strict=True)):
        source = _at(path, line, index + 1 if line in shared else None)
        if isinstance(item, str):
            rows.append(({"prompt": item}, source))
        elif isinstance(item, dict):
            rows.append((_object_row(item, source), source))
        else:
            raise source.fail(f'an item must be an object with a "prompt" (or a prompt string), got {show(item)}')
    return rows


def _at(path: Path, line: int, item: int | None = None) -> Source:
    where = f"{path}:{line}" if item is None else f"{path}:{line} (item {item})"
    return Source(where=where, style="json", error=DataError)


def _array_item_starts(text: str, start: int) -> list[int]:
    """Where each item of the (valid) JSON array at `start` begins, to name its line."""
    decoder, starts = json.JSONDecoder(), []
    i = _JSON_SPACE.match(text, start + 1).end()  # type: ignore[union-attr]
    while text[i] != "]":
        starts.append(i)
        _, i = decoder.raw_decode(text, i)
        i = _JSON_SPACE.match(text, i).end()  # type: ignore[union-attr]
        if text[i] == ",":
            i = _JSON_SPACE.match(text, i + 1).end()  # type: ignore[union-attr]
    return starts


def _object_row(row: dict[str, Any], source: Source) -> dict[str, Any]:
    unknown = set(row) - set(GENERATION_KEYS)
    if unknown:
        raise source.fail(f"unknown keys {sorted(unknown)}; allowed: {', '.join(GENERATION_KEYS)}")
    if not isinstance(row.get("prompt"), str):
        raise source.fail(f'a JSON line needs a string "prompt", got {show(row.get("prompt"))}')
    check(Generation, row, source)
    return row
