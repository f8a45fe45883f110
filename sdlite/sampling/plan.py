"""How a run's images are split into pipeline calls, numbered, and what settings each image records."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlite.sampling.config import Generation, SampleConfig
from sdlite.sampling.init_images import Given
from sdlite.sampling.results import SampleResult

IMAGE_TO_IMAGE_KEYS = ("init_image", "strength", "mask", "mask_blur", "resize")
# SDXL's: its second text encoder's prompts and its micro-conditioning.
SDXL_KEYS = ("prompt_2", "negative_prompt_2", "original_size", "crops_coords", "target_size")


@dataclass(frozen=True)
class Batch:
    """One pipeline call: a generation's images with these seeds, numbered in the run from `first_number`."""

    gen: Generation
    height: int
    width: int
    seeds: tuple[int, ...]
    first_number: int


@dataclass(frozen=True)
class Job:
    """One image for the writer: new pixels and how they were made, or an image an earlier run already wrote."""

    number: int
    image: Any = None
    settings: dict[str, Any] | None = None
    batch: tuple[int, ...] = ()
    task: dict[str, Any] | None = None
    inputs: dict[str, Any] | None = None
    strip: Any = None
    kept: SampleResult | None = None
    remote: dict[str, Any] | None = None  # the settings of an image another process makes
    remote_gen: Generation | None = None


def plan_batches(config: SampleConfig, sizes: list[tuple[int, int]]) -> list[Batch]:
    batches, number = [], 0
    for gen, (height, width) in zip(config.generations, sizes, strict=True):
        for start in range(0, gen.num_images, config.batch_size):
            seeds = tuple(range(gen.seed + start, gen.seed + min(gen.num_images, start + config.batch_size)))
            batches.append(Batch(gen, height, width, seeds, number))
            number += len(seeds)
    return batches


def image_settings(gen: Generation, seed: int, height: int, width: int, micro: bool = False) -> dict[str, Any]:
    """The settings an image records: its generation's, with its own seed and size; for a micro-conditioned
    model (SDXL) also the original size, crop and target size it was told, defaults filled in as diffusers does."""
    settings = {**dataclasses.asdict(gen), "seed": seed, "height": height, "width": width}
    settings.pop("num_images")
    if micro:
        settings.update(micro_conditioning(gen, height, width))
    else:  # the other families record exactly what they always did
        settings = {k: v for k, v in settings.items() if k not in SDXL_KEYS}
    if gen.init_image is None:  # text-to-image records exactly what it always did
        return {k: v for k, v in settings.items() if k not in IMAGE_TO_IMAGE_KEYS}
    settings["init_image"] = str(Path(gen.init_image).expanduser().resolve())
    settings["mask"] = str(Path(gen.mask).expanduser().resolve()) if gen.mask else None
    return settings


def micro_conditioning(gen: Generation, height: int, width: int) -> dict[str, list[int]]:
    """SDXL's six conditioning numbers for an image of this size: diffusers' defaults (original and target size
    the image's own, crop at 0,0) where the generation does not say, as JSON lists (height, width) and (top, left)."""
    return {
        "original_size": list(gen.original_size or (height, width)),
        "crops_coords": list(gen.crops_coords or (0, 0)),
        "target_size": list(gen.target_size or (height, width)),
    }


def denoising_steps(gen: Generation) -> int:
    """Steps a generation actually runs: image-to-image re-runs only the last `strength` of the schedule
    (diffusers' rule: int(steps * strength)); 0 means the image only makes the VAE round trip."""
    if gen.init_image is None or gen.strength is None:
        return gen.steps
    return min(int(gen.steps * gen.strength), gen.steps)


def task_record(gen: Generation, given: Given | None, inpainting_model: bool) -> dict[str, Any]:
    """What the PNG says about how the image was made from the user's images."""
    if given is None:
        return {"task": gen.task}
    record: dict[str, Any] = {"task": gen.task}
    if gen.mask is not None:
        record["inpainting"] = (
            "inpainting model (mask and masked image as UNet input)"
            if inpainting_model
            else "latent blend (the known region's noised latents put back at every step)"
        )
        record["overlay"] = "original pixels outside the mask"
    elif inpainting_model:
        record["inpainting"] = "inpainting model with everything to repaint"
    if denoising_steps(gen) == 0:
        record["note"] = f"strength {gen.strength} x {gen.steps} steps runs no denoising step: VAE round trip only"
    return record
