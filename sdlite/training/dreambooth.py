"""DreamBooth prior preservation: the class images trained beside the instance images.

Fine-tuning on a handful of photos of one subject ("a photo of sks dog") makes the model forget what
the class ("a photo of a dog") looked like; training on the base model's own images of the class at
the same time keeps that prior. Those images are made once by sdlite's own sampling, so each carries
its full metadata (prompt, seed, model hash) and can be regenerated or checked later, and they are kept
in a folder that is reused: by default one per model, class prompt and resolution in sdlite's cache.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdlite.data.examples import Example
from sdlite.errors import UsageError
from sdlite.seeds import mix
from sdlite.training.config import TrainConfig

EmitFn = Callable[..., None]  # called as emit(kind, **data), like training's event emitter
CLASS_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
GENERATION_BATCH = 4  # images per pipeline call while generating class images
_SEED_SALT = 0x636C617373  # "class": class-image seeds differ from every other seed derived from --seed
_SEED_SPAN = 2**31  # base seeds stay below this, so base + index is a valid seed for any realistic count
_GENERATED = re.compile(r"^\d{5,}-(\d+)\.png$")  # sampling's `INDEX-SEED.png`
_SAMPLER_KEYS = ("negative_prompt", "steps", "guidance", "scheduler", "eta")


def class_images(
    config: TrainConfig, on_event: EmitFn | None = None, source: tuple[str, Path | None] | None = None
) -> list[Example]:
    """The first `config.num_class_images` class images (sorted by name), generating the missing ones first.

    `source` is a [[datasets]] table's own (class prompt, class-data folder or None), instead of the run's.

    Any PNG/JPG/WEBP already in the folder counts, the user's own photos included; only the shortfall is
    generated, with seeds that continue after those already used, so raising the count adds new images.
    A second call with the same settings generates nothing. `on_event("class_images", have=, generating=,
    needed=, folder=)` is sent once, then `on_event("class_image", done=, total=, path=)` per image made.

    In a multi-process run call it inside `accelerator.main_process_first()`: the main process generates,
    the others then find every image in place and generate nothing. Call it before the training model is
    loaded: sampling loads its own pipeline, freed when this returns.
    """
    prompt, data = source if source is not None else (config.class_prompt, config.class_data)
    if prompt is None:
        raise UsageError("class images need --class-prompt (the prompt their images show)")
    emit = on_event if on_event is not None else (lambda kind, **data: None)
    folder, resolution = _folder(config, prompt, data)
    existing = _images(folder)
    missing = max(config.num_class_images - len(existing), 0)
    emit("class_images", have=len(existing), generating=missing, needed=config.num_class_images, folder=str(folder))
    if missing:
        _generate(config, prompt, folder, resolution, existing, missing, emit)
        existing = _images(folder)
    return [Example(path=p.resolve(), caption=prompt) for p in existing[: config.num_class_images]]


def _folder(config: TrainConfig, prompt: str, data: Path | None) -> tuple[Path, int]:
    """The class-image folder and the image side: `--class-data`, else a cache folder
    named by what decides the images (model and weights, class prompt, resolution)."""
    from sdlite.filecache import cache_dir, model_hashes
    from sdlite.models.loading import resolve_model

    if data is not None and data.exists() and not data.is_dir():
        raise UsageError(f"--class-data {data} is a file; it must be a folder (of class images)")
    model = resolve_model(config.model, config.offline, config.allow_pickle, config.tokenizer, config.ema_weights)
    resolution = config.resolution or model.native_size()
    if data is not None:
        return Path(data), resolution
    local = Path(config.model).expanduser().exists()
    source = str(Path(config.model).expanduser().resolve()) if local else config.model  # as sampling records it
    weights_hash, _ = model_hashes(model.path, model.weight_files)  # cached by size and mtime after the first
    ema = bool(model.single_file is not None and model.use_ema and model.single_file.has_ema)
    key = json.dumps([source, weights_hash, ema, prompt, resolution])
    return cache_dir() / "class-images" / hashlib.sha256(key.encode()).hexdigest()[:16], resolution


def _images(folder: Path) -> list[Path]:
    """The images in `folder` (not below it; hidden files skipped), sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(
        (
            p
            for p in folder.iterdir()
            if p.suffix.lower() in CLASS_IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        ),
        key=lambda p: p.name,
    )


def _generate(
    config: TrainConfig, prompt: str, folder: Path, resolution: int, existing: list[Path], missing: int, emit: EmitFn
) -> None:
    """Make `missing` class images in `folder` with the base model, at the model's recommended sampler settings."""
    from sdlite.sampling.config import Generation, SampleConfig
    from sdlite.sampling.run import sample
    from sdlite.sampling.sources import model_defaults

    base = mix(config.seed, _SEED_SALT) % _SEED_SPAN
    used = [int(m.group(1)) for p in existing if (m := _GENERATED.match(p.name))]
    start = max([base + len(existing)] + [seed + 1 for seed in used if seed >= base])
    sampler = {k: v for k, v in model_defaults(config.model).items() if k in _SAMPLER_KEYS}
    generation = Generation(prompt, **sampler, seed=start, num_images=missing, height=resolution, width=resolution)
    sample_config = SampleConfig(
        model=config.model,
        generations=(generation,),
        out=folder,
        batch_size=min(GENERATION_BATCH, missing),
        offline=config.offline,
        allow_pickle=config.allow_pickle,
        tokenizer=config.tokenizer,
        ema_weights=config.ema_weights,
    )
    done = 0

    def on_image(result: Any) -> None:
        nonlocal done
        done += 1
        emit("class_image", done=done, total=missing, path=str(result.path))

    sample(sample_config, on_image=on_image)
    _release_memory()


def _release_memory() -> None:
    """Hand the sampling pipeline's accelerator memory back before training loads its own model."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
