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
# Variation seeds (A1111's): recorded only where they change the noise.
VARIATION_KEYS = ("subseed", "subseed_strength", "seed_resize_from")
# Hires fix (A1111's): recorded only for an image that has its second pass.
HIRES_KEYS = ("hires_scale", "hires_width", "hires_height", "hires_upscaler", "hires_steps", "hires_strength")


@dataclass(frozen=True)
class Batch:
    """One pipeline call: images that share every setting but their prompt and seed, numbered in the run from
    `first_number`; `gens` holds each image's generation (one per seed), `lines` its index in the run's list."""

    gens: tuple[Generation, ...]
    height: int
    width: int
    seeds: tuple[int, ...]
    first_number: int
    lines: tuple[int, ...]

    @property
    def gen(self) -> Generation:
        """The settings every image of the batch shares (its first image's generation)."""
        return self.gens[0]

    @property
    def mixed(self) -> bool:
        """Whether the batch holds images of more than one generation (prompts-file lines filling a batch)."""
        return len(set(self.lines)) > 1

    def record(self) -> dict[str, Any]:
        """What each of its images records about the batch, so `--from-image` and `check` remake it exactly:
        its seeds, and when it mixes generations their prompts too."""
        record: dict[str, Any] = {"batch_seeds": list(self.seeds)}
        if self.mixed:
            record["batch_prompts"] = [g.prompt for g in self.gens]
        return record


def batch_key(gen: Generation, size: tuple[int, int]) -> tuple[Any, ...]:
    """What images must share to be denoised in one pipeline call: everything but the prompt and the seed."""
    return (dataclasses.replace(gen, prompt="", seed=0, num_images=1), size)


@dataclass(frozen=True)
class Job:
    """One image for the writer: new pixels and how they were made, or an image an earlier run already wrote."""

    number: int
    image: Any = None
    settings: dict[str, Any] | None = None
    batch: dict[str, Any] = dataclasses.field(default_factory=dict)  # Batch.record(): what it records of its batch
    task: dict[str, Any] | None = None
    inputs: dict[str, Any] | None = None
    strip: Any = None
    kept: SampleResult | None = None
    remote: dict[str, Any] | None = None  # the settings of an image another process makes
    remote_gen: Generation | None = None


def plan_batches(config: SampleConfig, sizes: list[tuple[int, int]]) -> list[Batch]:
    """The run's pipeline calls, in order: consecutive images that can share a call (the same settings but prompt
    and seed; a prompts file's lines usually can) fill batches of up to --batch-size. A generation listed in
    `config.batch_breaks` starts a new batch (`check` remakes each golden's recorded batch alone)."""
    batches: list[Batch] = []
    pending: list[tuple[int, int]] = []  # (generation, seed) of the batch being filled
    key: Any = None
    breaks = set(config.batch_breaks)

    def close() -> None:
        if pending:
            gens = tuple(config.generations[line] for line, _ in pending)
            height, width = sizes[pending[0][0]]
            first = batches[-1].first_number + len(batches[-1].seeds) if batches else 0
            seeds, lines = tuple(seed for _, seed in pending), tuple(line for line, _ in pending)
            batches.append(Batch(gens, height, width, seeds, first, lines))
            pending.clear()

    for line, (gen, size) in enumerate(zip(config.generations, sizes, strict=True)):
        if (own := batch_key(gen, size)) != key or line in breaks:
            close()
            key = own
        for seed in range(gen.seed, gen.seed + gen.num_images):
            pending.append((line, seed))
            if len(pending) == config.batch_size:
                close()
    close()
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
    if not gen.hires:
        settings = {k: v for k, v in settings.items() if k not in HIRES_KEYS}
    if gen.image_lora_scale is None:
        settings.pop("image_lora_scale")
    if not gen.guidance_rescale:
        settings.pop("guidance_rescale")
    if not gen.subseed_strength and gen.seed_resize_from is None:
        settings = {k: v for k, v in settings.items() if k not in VARIATION_KEYS}
    elif gen.seed_resize_from is not None:
        settings["seed_resize_from"] = list(gen.seed_resize_from)
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
    if gen.hires:  # the first pass, then the hires pass's share of its own schedule
        assert gen.hires_strength is not None
        hires = gen.hires_steps or gen.steps
        return gen.steps + min(int(hires * gen.hires_strength), hires)
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
