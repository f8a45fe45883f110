"""Small facts about files, remembered on disk while the file is unchanged: its sha256, an image's size.

A fact is keyed by the file's resolved path, size and modification time (as git's index does), and stored
in a file of its own under sdlite's cache folder, so a lookup or an insert costs one small read or write
however many files are remembered. (One JSON file for all of them, rewritten on every insert, made
hashing a dataset quadratic: 8,000 images took 27 s cold and 15 s warm, 100,000 would take an hour.)
Writes are atomic and best effort: a cache that cannot be written (a file where the folder should be, a
read-only place, a full disk) only costs recomputing the fact, and says so once (`unusable`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any


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
    if unusable() is not None:
        return
    path = _entry(kind, key)
    # Not staging.staged_file: these tiny writes happen once per dataset file, and write_text already gives
    # the umask's mode, so its fresh-name creation and mode fix-up would only add syscalls (0.67 -> 1.1 ms
    # per image on a first run, benchmarks/bench_data.py).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")  # unique per writer
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"key": key, "value": value}))
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # a parent that is a file fails the unlink too
            tmp.unlink(missing_ok=True)
        if exc.errno in _UNWRITABLE:
            unusable(f"{exc.strerror or exc}")


# Errors that say the cache folder as a whole cannot take writes (not that one entry raced another writer).
_UNWRITABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST}
_MIN_FREE = 16 << 20  # bytes: a disk with less room is full for a cache (latent entries alone are ~0.1 MB each)
_problems: dict[Path, str | None] = {}


def unusable(found: str | None = None) -> str | None:
    """Why sdlite's cache folder cannot be written now, or None: a file or other non-folder in its place, a
    read-only place, a full disk (checked once per folder and process), or `found`, a write that just failed.
    The first time a folder turns out unusable, one warning says so and how to choose another; callers then
    run uncached."""
    from sdlite.staging import unwritable

    root = cache_dir()
    if root not in _problems or (found is not None and _problems[root] is None):
        problem = found or unwritable(root)
        if problem is None:
            existing = root if root.is_dir() else next(p for p in root.parents if p.is_dir())
            free = shutil.disk_usage(existing).free
            problem = f"the disk is full ({free >> 20} MiB free)" if free < _MIN_FREE else None
        _problems[root] = problem
        if problem is not None:
            logging.getLogger("sdlite").warning(
                f"sdlite's cache folder {root} cannot be used ({problem}): running uncached (hashes, image sizes "
                "and training latents are computed again); set SDLITE_CACHE_DIR to a writable folder to keep them"
            )
    return _problems[root]


def _entry(kind: str, key: str) -> Path:
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return cache_dir() / kind / digest[:2] / f"{digest}.json"


def file_sha256(path: Path, data: bytes | None = None) -> str:
    """sha256 of a file, remembered while the file is unchanged (sdlite/filecache.py): model files are
    large, datasets are many files, and both rarely change.

    `data`, when the caller already holds the file's bytes, is hashed instead of reading the file again.
    """
    from sdlite import filecache

    key = filecache.file_key(path)
    known = filecache.recall("sha256", key)
    if isinstance(known, str):
        return known
    digest = hashlib.sha256(data).hexdigest() if data is not None else sha256_uncached(path)
    filecache.remember("sha256", key, digest)
    return digest


def cached_sha256(path: Path) -> str | None:
    """The remembered sha256 of a file when it has not changed since it was hashed, else None."""
    from sdlite import filecache

    known = filecache.recall("sha256", filecache.file_key(path))
    return known if isinstance(known, str) else None


def sha256_uncached(path: Path) -> str:
    """sha256 of a file's bytes, read now (for checks that must see the file as it is)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_hashes(root: Path, files: tuple[Path, ...]) -> tuple[str, dict[str, str]]:
    """(model hash, per-file sha256). A single file's hash is its own sha256, as in A1111; a folder's
    is the sha256 of its sorted `relative/path sha256` lines, so any changed weight changes it."""
    per_file = {str(Path(f).relative_to(root)) if root.is_dir() else Path(f).name: file_sha256(f) for f in files}
    if len(per_file) == 1:
        return next(iter(per_file.values())), per_file
    lines = "".join(f"{name} {digest}\n" for name, digest in sorted(per_file.items()))
    return hashlib.sha256(lines.encode()).hexdigest(), per_file


def cache_dir() -> Path:
    """Where sdlite keeps small caches: SDLITE_CACHE_DIR, else $XDG_CACHE_HOME/sdlite, else ~/.cache/sdlite."""
    if os.environ.get("SDLITE_CACHE_DIR"):
        return Path(os.environ["SDLITE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sdlite"
