"""What makes an image reproducible: PNG text chunks, model hashes, library versions.

Each PNG carries two chunks: `parameters`, the A1111 text line the common UIs read, and `sdlite`,
a JSON object with the full resolved settings that `sample --from-image` reads back.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from sdlite.errors import DataError
from sdlite.formats.infotext import a1111_parameters, quote_value  # noqa: F401 - written with every PNG

CHUNK = "sdlite"
A1111_CHUNK = "parameters"
FORMAT_VERSION = 1
_LIBRARIES = ("sdlite", "torch", "diffusers", "transformers", "safetensors")


def png_info(parameters: str, record: dict[str, Any]) -> Any:
    """PIL PngInfo with both chunks (iTXt is used automatically for non-Latin-1 prompts)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(A1111_CHUNK, parameters)
    info.add_text(CHUNK, json.dumps(record, sort_keys=True))
    return info


def read_record(path: Path) -> dict[str, Any]:
    """The `sdlite` JSON chunk of a PNG sdlite wrote; DataError when absent or unreadable."""
    return _record(path, png_text(path))


def png_text(path: Path) -> dict[str, str]:
    """The text chunks of an image; DataError when it is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return dict(getattr(image, "text", {}) or {})
    except FileNotFoundError as exc:
        raise DataError(f"{path} does not exist") from exc
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path} is not a readable image: {exc}") from exc


def _record(path: Path, text: dict[str, str]) -> dict[str, Any]:
    if CHUNK not in text:
        raise DataError(f"{path} has no sdlite metadata (was it written by `sdlite sample`?)")
    try:
        record = json.loads(text[CHUNK])
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: its sdlite metadata is not valid JSON") from exc
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise DataError(f"{path}: its sdlite metadata has no settings")
    return record


def read_settings(path: Path) -> dict[str, Any]:
    """The generation settings and model recorded in a PNG, for regenerating exactly that image.

    A PNG from AUTOMATIC1111 (only a `parameters` chunk) gives its settings, with a warning on what
    cannot be reproduced exactly.
    """
    text = png_text(path)
    if CHUNK not in text and A1111_CHUNK in text:
        return _a1111_settings(path, text[A1111_CHUNK])
    record = _record(path, text)
    settings = dict(record["settings"])
    settings["num_images"] = 1
    model = record.get("model") if isinstance(record.get("model"), dict) else {}
    run = record.get("run") if isinstance(record.get("run"), dict) else {}
    settings["model"] = model.get("source")
    settings["model_hash"] = model.get("hash")
    settings["tokenizer"] = model.get("tokenizer")
    settings["ema_weights"] = model.get("ema_weights")
    settings["batch_seeds"] = run.get("batch_seeds")
    settings["lora"] = record.get("lora")
    settings["mode"] = run.get("mode", "default")
    settings["inputs"] = record.get("inputs")
    return settings


def _a1111_settings(path: Path, parameters: str) -> dict[str, Any]:
    """Settings from another tool's infotext, in the shape `read_settings` gives for sdlite's own PNGs."""
    import logging

    from sdlite.formats.infotext import generation_settings

    settings, model, notes = generation_settings(parameters)
    if not settings["prompt"]:
        raise DataError(f"{path}: its `parameters` text holds no prompt")
    named = (
        f" (it names model {model['name']!r}, hash {model['hash']}: pass that model with --model)"
        if model["name"] or model["hash"]
        else ""
    )
    logging.getLogger("sdlite").warning(
        f"{path} was not written by sdlite: its A1111 settings are replayed, but the pixels will differ "
        f"(other samplers' code, noise drawn differently, prompt emphasis syntax){named}"
        + "".join(f"; {note}" for note in notes)
    )
    return {**settings, "num_images": 1, "model": None, "model_hash": model["hash"] or None, "tokenizer": None,
            "ema_weights": None, "batch_seeds": None, "lora": None, "mode": "default", "inputs": None}  # fmt: skip


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide the pixels, plus Python and the platform."""
    return dict(_library_versions())


@functools.cache
def _library_versions() -> dict[str, str]:
    # Looked up once per process: reading package metadata scans site-packages (milliseconds a call).
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "unknown"
    versions["python"] = platform.python_version()
    versions["platform"] = platform.platform()
    return versions


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
