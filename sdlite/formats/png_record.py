"""The record every sampled PNG carries: the A1111 `parameters` text and sdlite's JSON chunk with the full
resolved settings that `sample --from-image` and `sdlite check` read back, plus the library versions.
"""

from __future__ import annotations

import functools
import json
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


# Image formats sdlite writes, by --image-format, and their file extensions.
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
# JPEG and WebP carry the texts in EXIF, as A1111 stores them: `parameters` as the Exif IFD's UserComment (UTF-16
# big-endian after the 8-byte "UNICODE" prefix, piexif's encoding), sdlite's record as IFD0's ImageDescription
# (ASCII JSON).
_EXIF_IFD, _USER_COMMENT, _IMAGE_DESCRIPTION = 0x8769, 0x9286, 0x010E
_UNICODE = b"UNICODE\x00"
_CHARSETS = {_UNICODE: "utf-16-be", b"ASCII\x00\x00\x00": "ascii", b"JIS\x00\x00\x00\x00\x00": "shift_jis"}


def encode_image(image: Any, image_format: str, quality: int, parameters: str, record: dict[str, Any]) -> bytes:
    """The file's bytes: a PNG with both text chunks, or a JPEG/WebP at `quality` with both texts in EXIF."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG", pnginfo=png_info(parameters, record))
        return buffer.getvalue()
    exif = Image.Exif()
    exif[_IMAGE_DESCRIPTION] = json.dumps(record, sort_keys=True)  # ASCII: non-ASCII characters escaped
    exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = _UNICODE + parameters.encode("utf-16-be")
    try:
        image.save(buffer, format=image_format.upper(), quality=quality, exif=exif)
    except ValueError as exc:  # JPEG's EXIF segment holds at most 64 KiB
        raise DataError(f"the image's metadata does not fit in a {image_format.upper()} file ({exc}): use png") from exc
    return buffer.getvalue()


def _exif_text(image: Any) -> dict[str, str]:
    """A JPEG's or WebP's `parameters` (EXIF UserComment) and `sdlite` record (ImageDescription), where present."""
    exif = image.getexif()
    text: dict[str, str] = {}
    comment = exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    if isinstance(comment, bytes) and len(comment) >= 8:
        charset = _CHARSETS.get(comment[:8])
        if charset:
            text[A1111_CHUNK] = comment[8:].decode(charset, errors="replace")
    elif isinstance(comment, str):
        text[A1111_CHUNK] = comment
    description = exif.get(_IMAGE_DESCRIPTION)
    if isinstance(description, str) and description.startswith("{"):
        text[CHUNK] = description
    return text


def read_record(path: Path) -> dict[str, Any]:
    """The `sdlite` JSON chunk of a PNG sdlite wrote; DataError when absent or unreadable."""
    return _record(path, png_text(path))


def png_text(path: Path) -> dict[str, str]:
    """The text chunks of an image; DataError when it is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.format in ("JPEG", "WEBP", "MPO"):
                return _exif_text(image)
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
    settings.setdefault("prompt_syntax", "plain")  # sdlite read every prompt as plain text before it recorded this
    model = record.get("model") if isinstance(record.get("model"), dict) else {}
    run = record.get("run") if isinstance(record.get("run"), dict) else {}
    settings["model"] = model.get("source")
    settings["model_hash"] = model.get("hash")
    settings["tokenizer"] = model.get("tokenizer")
    settings["ema_weights"] = model.get("ema_weights")
    settings["batch_seeds"] = run.get("batch_seeds")
    settings["batch_prompts"] = run.get("batch_prompts")
    settings["lora"] = record.get("lora")
    settings["vae"] = model.get("vae")
    settings["image_format"] = run.get("image_format")
    settings["quality"] = run.get("quality")
    settings["embeddings"] = model.get("embeddings")
    settings["mode"] = run.get("mode", "default")
    settings["inputs"] = record.get("inputs")
    # A prediction type the command line chose is replayed; one the model said is the model's again.
    overridden = model.get("prediction_type_from") == "--prediction-type"
    settings["prediction_type"] = model.get("prediction_type") if overridden else None
    return settings


def _a1111_settings(path: Path, parameters: str) -> dict[str, Any]:
    """Settings from another tool's infotext, in the shape `read_settings` gives for sdlite's own PNGs."""
    import logging

    from sdlite.formats.infotext import generation_settings
    from sdlite.prompts.embeddings import parse_ti_hashes

    settings, model, notes = generation_settings(parameters)
    if not settings["prompt"]:
        raise DataError(f"{path}: its `parameters` text holds no prompt")
    if notes:  # only what sdlite cannot do: every key it replays is replayed silently
        logging.getLogger("sdlite").warning(
            f"{path} was made by another tool; what sdlite cannot replay: " + "; ".join(notes)
        )
    return {
        **settings,
        "a1111": True,  # another tool's infotext: its rules apply where they differ from sdlite's
        "num_images": 1,
        "model": None,
        "model_hash": model["hash"] or None,
        "tokenizer": None,
        "ema_weights": None,
        "batch_seeds": None,
        "batch_prompts": None,
        "lora": None,
        "vae": None,
        "embeddings": None,
        "a1111_vae": {"name": model["VAE"], "hash": model.get("VAE hash", "")} if "VAE" in model else None,
        "ti_hashes": parse_ti_hashes(model["TI hashes"]) if "TI hashes" in model else None,
        "mode": "default",
        "inputs": None,
        "prediction_type": None,
    }


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
