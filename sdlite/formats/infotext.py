"""A1111's `parameters` infotext: written for every image, read back from A1111's (and sdlite's) PNGs.

The format belongs to AUTOMATIC1111: the prompt lines, an optional `Negative prompt:` line, then one
line of `Key: value` pairs, a value JSON-quoted when it holds `,`, `:` or a newline. The reader follows
A1111's own parser (`modules/infotext_utils.py` `parse_generation_parameters`): the last line holds the
pairs only when it has at least three of them.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from sdlite.sampling.hires import A1111_NAMES
from sdlite.schedulers import SCHEDULERS, SchedulerSpec

# A1111's pair pattern: a key of word characters, spaces, '-' and '/', then a quoted or a plain value.
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
# Legacy A1111 sampler names that carried their schedule (before "Schedule type" existed, v1.9).
_LEGACY = {"DPM++ 2M Karras": ("DPM++ 2M", "Karras")}
# What A1111's "Automatic" schedule (no `Schedule type`) means for the samplers sdlite has.
_AUTOMATIC = {"DPM++ 2M": "Karras", "Euler": "Uniform", "Euler a": "Uniform", "LMS": "Uniform"}
# Fields that change A1111's pixels and that sdlite does not replay.
_NOT_REPLAYED = (
    "Lora hashes",
    "Face restoration",
    "Refiner",
    "Refiner switch at",
    "ENSD",
    "Eta",
    "Hires prompt",
    "Hires negative prompt",
    "Hires sampler",
    "Hires schedule type",
    "Hires CFG Scale",
    "Token merging ratio",
    "NGMS",
    "Pad conds",
    "Tiling",
    "Noise multiplier",
)
# Keys sdlite replays (or that only describe the image: Version, the model's name and hash).
_REPLAYED = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Seed",
    "Size",
    "Model hash",
    "Model",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Mask blur",
    "Clip skip",
    "TI hashes",
    "Hires upscale",
    "Hires resize",
    "Hires steps",
    "Hires upscaler",
    "RNG",
    "Eta DDIM",
    "Version",
)


def a1111_parameters(
    settings: dict[str, Any],
    spec: SchedulerSpec,
    model_hash: str,
    model_name: str,
    vae: dict[str, str] | None = None,
    ti_hashes: str | None = None,
) -> str:
    """The `parameters` text A1111, ComfyUI and civitai parse: prompt, negative prompt, then key: value pairs.

    Keys, their order and the quoting of values follow A1111's own writer (`create_infotext`), so its
    parser gives back each value as written: `RNG: CPU` because sdlite draws noise on CPU generators
    (A1111 reads a missing RNG as GPU), `Eta DDIM` for DDIM's eta (A1111's `Eta` is the ancestral
    samplers' eta), `Schedule type` where the sampler's sigma spacing matters.
    """
    from sdlite import __version__

    lines = [settings["prompt"]]
    if settings.get("negative_prompt"):
        lines.append(f"Negative prompt: {settings['negative_prompt']}")
    pairs: list[tuple[str, Any]] = [
        ("Steps", settings["steps"]),
        ("Sampler", spec.label),
        ("Schedule type", spec.schedule_type),
        ("CFG scale", f"{settings['guidance']:g}"),
        ("Seed", settings["seed"]),
        ("Size", f"{settings['width']}x{settings['height']}"),
        ("Model hash", model_hash[:10]),
        ("Model", model_name),
        ("VAE hash", vae["sha256"][:10] if vae else None),
        ("VAE", vae["name"] if vae else None),
        ("Variation seed", settings.get("subseed") if settings.get("subseed_strength") else None),
        ("Variation seed strength", f"{settings['subseed_strength']:g}" if settings.get("subseed_strength") else None),
        ("Seed resize from", _size_text(settings.get("seed_resize_from"))),
        ("Denoising strength", _strength(settings)),
        ("Clip skip", settings["clip_skip"] if settings.get("clip_skip", 1) > 1 else None),
        ("Mask blur", settings.get("mask_blur") if settings.get("mask") else None),
        ("TI hashes", ti_hashes),
        ("Hires upscale", f"{settings['hires_scale']:g}" if settings.get("hires_scale") else None),
        ("Hires resize", _hires_resize(settings)),
        ("Hires steps", settings.get("hires_steps") or None),
        ("Hires upscaler", A1111_NAMES.get(settings.get("hires_upscaler") or "")),
        ("RNG", "CPU"),
        ("Eta DDIM", f"{settings['eta']:g}" if settings.get("eta") else None),
        ("Version", f"sdlite {__version__}"),
    ]
    lines.append(", ".join(f"{key}: {quote_value(value)}" for key, value in pairs if value is not None))
    return "\n".join(lines)


def _strength(settings: dict[str, Any]) -> str | None:
    """A1111's `Denoising strength`: image-to-image's strength, or the hires fix's second pass's."""
    if settings.get("init_image"):
        return f"{settings['strength']:g}"
    if settings.get("hires_strength") is not None:
        return f"{settings['hires_strength']:g}"
    return None


def _hires_resize(settings: dict[str, Any]) -> str | None:
    """A1111's `Hires resize: WxH` (0 for a side left to the aspect ratio)."""
    if not settings.get("hires_width") and not settings.get("hires_height"):
        return None
    return f"{settings.get('hires_width') or 0}x{settings.get('hires_height') or 0}"


def _size_text(size: Any) -> str | None:
    """A (height, width) pair as A1111 writes a size: WIDTHxHEIGHT."""
    return None if not size else f"{size[1]}x{size[0]}"


def quote_value(value: Any) -> str:
    """A value as A1111 writes it in `parameters`: JSON-quoted when it holds `,`, `:` or a newline (which
    would end or split the pair), and also when it starts with `"` (A1111's parser would unquote it)."""
    text = str(value)
    if any(c in text for c in ",:\n") or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def parse_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, {key: value}) by A1111's reading rules."""
    *lines, last = text.strip().split("\n")
    if len(_PAIR.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    for line in (line.strip() for line in lines):
        if line.startswith("Negative prompt:"):
            negative.append(line[len("Negative prompt:") :].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    pairs: dict[str, str] = {}
    for key, value in _PAIR.findall(last):
        if len(value) > 1 and value[0] == '"' and value[-1] == '"':
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
        pairs[key] = value
    return "\n".join(prompt), "\n".join(negative), pairs


def _hires_settings(pairs: dict[str, str], settings: dict[str, Any]) -> list[str]:
    """A hires fix's settings from A1111's keys into `settings`; notes on what cannot be replayed."""
    notes = []
    try:
        if "Hires upscale" in pairs:
            settings["hires_scale"] = float(pairs["Hires upscale"])
        resize = re.match(r"^(\d+)x(\d+)$", pairs.get("Hires resize", ""))
        if resize and "hires_scale" not in settings:
            settings["hires_width"] = int(resize.group(1)) or None
            settings["hires_height"] = int(resize.group(2)) or None
        if "Hires steps" in pairs:
            settings["hires_steps"] = int(pairs["Hires steps"])
        if "Denoising strength" in pairs:
            settings["hires_strength"] = float(pairs["Denoising strength"])
    except ValueError:
        notes.append("its hires fix settings are not numbers: not replayed")
        for key in ("hires_scale", "hires_width", "hires_height", "hires_steps", "hires_strength"):
            settings.pop(key, None)
        return notes
    if not any(settings.get(k) for k in ("hires_scale", "hires_width", "hires_height")):
        settings["hires_scale"] = 2.0  # A1111's default upscale, when only the upscaler is written
    name = pairs.get("Hires upscaler", "Latent")
    upscaler = next((key for key, label in A1111_NAMES.items() if label == name), None)
    if upscaler is None:
        notes.append(f"hires upscaler {name!r} is a model sdlite does not have: replayed with lanczos")
        upscaler = "lanczos"
    settings["hires_upscaler"] = upscaler
    return notes


def _unreplayable(pairs: dict[str, str], scheduler: str | None) -> list[str]:
    """What in an infotext sdlite cannot do, each named: A1111's GPU noise, ENSD with an ancestral sampler, emphasis
    modes other than Original, the keys it does not replay, and extensions' keys."""
    notes = []
    rng = pairs.get("RNG", "GPU")  # A1111 writes no RNG for its default, the GPU
    if rng != "CPU":
        notes.append(f"A1111 drew its noise with RNG: {rng}; sdlite draws it on the CPU (A1111's RNG: CPU)")
    if pairs.get("ENSD", "0") not in ("0", "") and scheduler is not None and SCHEDULERS[scheduler].ancestral:
        notes.append(f"ENSD {pairs['ENSD']} offsets the noise of A1111's ancestral samplers, which sdlite's do not")
    if pairs.get("Emphasis", "Original") != "Original":
        notes.append(f"Emphasis: {pairs['Emphasis']} is not replayed (sdlite applies A1111's Original emphasis)")
    ignored = [key for key in _NOT_REPLAYED if key in pairs and not (key == "ENSD" and notes and "ENSD" in notes[-1])]
    if ignored:
        notes.append(f"not replayed: {', '.join(ignored)}")
    foreign = [key for key in pairs if key not in _REPLAYED and key not in _NOT_REPLAYED and key != "Emphasis"]
    if foreign:
        notes.append(f"settings of other scripts or extensions not replayed: {', '.join(foreign)}")
    return notes


def scheduler_for(sampler: str, schedule_type: str | None) -> str | None:
    """The sdlite scheduler an A1111 sampler (and schedule type) names; None when sdlite has no equivalent."""
    sampler, schedule_type = _LEGACY.get(sampler, (sampler, schedule_type))
    if schedule_type in (None, "", "Automatic"):
        schedule_type = _AUTOMATIC.get(sampler)
    for name, spec in SCHEDULERS.items():
        if spec.label == sampler and spec.schedule_type == schedule_type:
            return name
    return None


def generation_settings(text: str) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Settings sdlite can replay from an A1111 infotext, the model it names, and notes on what differs.

    Returns (settings with the Generation field names, {"name", "hash"} of the model, notes).
    """
    prompt, negative, pairs = parse_parameters(text)
    settings: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative}
    notes: list[str] = []
    for key, field, kind in (
        ("Steps", "steps", int),
        ("CFG scale", "guidance", float),
        ("Seed", "seed", int),
        ("Clip skip", "clip_skip", int),
        ("Variation seed", "subseed", int),
        ("Variation seed strength", "subseed_strength", float),
    ):
        if key in pairs:
            try:
                settings[field] = kind(pairs[key])
            except ValueError:
                notes.append(f"{key} {pairs[key]!r} is not a number; the default is used")
    size = _SIZE.match(pairs.get("Size", ""))
    if size:
        settings["width"], settings["height"] = int(size.group(1)), int(size.group(2))
    if not settings.get("subseed_strength"):  # a variation seed at strength 0 changes nothing
        settings.pop("subseed", None)
        settings.pop("subseed_strength", None)
    resized = _SIZE.match(pairs.get("Seed resize from", ""))
    if resized and int(resized.group(1)) > 0 and int(resized.group(2)) > 0:  # A1111 writes -1x-1 for "off"
        settings["seed_resize_from"] = (int(resized.group(2)), int(resized.group(1)))
    if "Sampler" in pairs:
        name = scheduler_for(pairs["Sampler"], pairs.get("Schedule type"))
        if name:
            settings["scheduler"] = name
        else:
            kind = " ".join(filter(None, (pairs["Sampler"], pairs.get("Schedule type"))))
            notes.append(f"sampler {kind!r} has no sdlite equivalent; the default sampler is used")
    if settings.get("scheduler") == "ddim" and "Eta DDIM" in pairs:
        try:
            settings["eta"] = float(pairs["Eta DDIM"])
        except ValueError:
            notes.append(f"Eta DDIM {pairs['Eta DDIM']!r} is not a number; 0 is used")
    hires = "Hires upscale" in pairs or "Hires resize" in pairs or "Hires upscaler" in pairs
    if hires:
        notes += _hires_settings(pairs, settings)
    elif "Denoising strength" in pairs:  # an img2img image (hires fix writes it too)
        try:
            settings["strength"] = float(pairs["Denoising strength"])
            if "Mask blur" in pairs:
                settings["mask_blur"] = int(pairs["Mask blur"])
            notes.append(
                f"it was made from an image (Denoising strength {pairs['Denoising strength']}) that A1111 does not "
                f"record: pass it with --init-image{' and the mask with --mask' if 'Mask blur' in pairs else ''}"
            )
        except ValueError:
            notes.append(f"Denoising strength {pairs['Denoising strength']!r} is not a number; not replayed")
    notes += _unreplayable(pairs, settings.get("scheduler"))
    if "<lora:" in prompt:
        notes.append("A1111 LoRA tags (<lora:...>) in the prompt are read as text: pass the LoRA with --lora")
    model = {"name": pairs.get("Model", ""), "hash": pairs.get("Model hash", "")}
    for key in ("TI hashes", "VAE", "VAE hash"):
        if key in pairs:
            model[key] = pairs[key]
    return settings, model, notes
