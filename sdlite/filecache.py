"""Small facts about files, remembered on disk while the file is unchanged: its sha256, an image's size.

A fact is keyed by the file's resolved path, size and modification time (as git's index does), and stored
in a file of its own under sdlite's cache folder, so a lookup or an insert costs one small read or write
however many files are remembered. (One JSON file for all of them, rewritten on every insert, made
hashing a dataset quadratic: 8,000 images took 27 s cold and 15 s warm, 100,000 would take an hour.)
Writes are atomic and best effort: a cache that cannot be written only costs recomputing the fact.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from sdlite.metadata import cache_dir


def file_key(path: Path) -> str:
    """What identifies a file's content without reading it: resolved path, size, modification time."""
    path = Path(path).resolve()
    stat = path.stat()
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def recall(kind: str, key: str) -> Any:
    """The fact of `kind` stored under `key`, or None."""
    try:
        return json.loads(_entry(kind, key).read_text())["value"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember(kind: str, key: str, value: Any) -> None:
    """Store `value` (JSON) as the fact of `kind` under `key`."""
    path = _entry(kind, key)
    # Not staging.staged_file: these tiny writes happen once per dataset file, and write_text already gives
    # the umask's mode, so its fresh-name creation and mode fix-up would only add syscalls (0.67 -> 1.1 ms
    # per image on a first run, benchmarks/bench_data.py).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")  # unique per writer
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"key": key, "value": value}))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def _entry(kind: str, key: str) -> Path:
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return cache_dir() / kind / digest[:2] / f"{digest}.json"
