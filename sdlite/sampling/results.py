"""What a sample run returns and what each image records about the model that made it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlite import filecache
from sdlite.formats import png_record
from sdlite.models.loading import (
    ResolvedModel,
)


@dataclass(frozen=True)
class SampleResult:
    """One written image and the settings that reproduce it."""

    path: Path
    index: int
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    scheduler: str
    eta: float
    height: int
    width: int
    model: str
    model_hash: str
    init_image: str | None = None  # image-to-image and inpainting: the absolute path of the image started from
    strength: float | None = None
    mask: str | None = None
    mask_blur: int | None = None
    resize: str | None = None
    prompt_syntax: str = "plain"  # how the prompt was read (images that record none were read as plain text)
    clip_skip: int = 1
    subseed: int | None = None  # variation seed, its strength, and the size the seed's noise was drawn at
    subseed_strength: float = 0.0
    seed_resize_from: list[int] | None = None
    hires_scale: float | None = None  # hires fix: the target scale or size, the upscaler, the second pass
    hires_width: int | None = None
    hires_height: int | None = None
    hires_upscaler: str | None = None
    hires_steps: int | None = None
    hires_strength: float | None = None
    image_lora_scale: float | None = None  # a sweep's lora-scale: every LoRA at this scale for this image
    guidance_rescale: float = 0.0
    # SDXL's second prompts and micro-conditioning (None for the other families).
    prompt_2: str | None = None
    negative_prompt_2: str | None = None
    original_size: list[int] | None = None
    crops_coords: list[int] | None = None
    target_size: list[int] | None = None
    progress: Path | None = None  # --save-progress: the strip of the model's clean-image estimates

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what `--json` prints); SDXL's settings only for an SDXL image (which always has them)."""
        data = {
            **dataclasses.asdict(self),
            "path": str(self.path),
            "progress": str(self.progress) if self.progress else None,
        }
        if self.original_size is None:
            for key in ("prompt_2", "negative_prompt_2", "original_size", "crops_coords", "target_size"):
                del data[key]
        return data


@dataclass(frozen=True)
class SampleRun:
    """Everything a run produced: the images in order, the optional grid, and any warnings."""

    images: tuple[SampleResult, ...]
    grid: Path | None
    warnings: tuple[str, ...]
    speedups: tuple[str, ...] = ()  # what --fast / --low-memory switched on
    grids: tuple[Path, ...] = ()  # every grid written: one, or with --sweep one per prompt (`grid` is the first)


@dataclass(frozen=True)
class ModelFacts:
    """What each image records about the model and the run that made it."""

    ref: str
    name: str
    model_hash: str
    file_hashes: dict[str, str]
    device: str
    dtype: str
    versions: dict[str, str]
    lora: list[dict[str, Any]] | None  # each LoRA's source, sha256 and scale, in --lora order
    mode: str
    single_file: dict[str, Any]  # a single file's tokenizer and EMA choice, for --from-image
    family: str = "SD v1"
    prediction: tuple[str, str] = ("epsilon", "scheduler config")  # what the model predicts, and who said so
    micro_conditioning: bool = False  # SDXL: each image records its original size, crop and target size
    vae: dict[str, str] | None = None  # --vae: the VAE used instead of the model's (source, name, sha256)
    embeddings: tuple[dict[str, str], ...] = ()  # each textual-inversion embedding loaded (name, source, sha256)

    def record(self) -> dict[str, Any]:
        """The `model` part of an image's sdlite record."""
        return {
            "source": self.ref,
            "hash": self.model_hash,
            "files": self.file_hashes,
            "family": self.family,
            "prediction_type": self.prediction[0],
            "prediction_type_from": self.prediction[1],
            **self.single_file,
            **({"vae": self.vae} if self.vae else {}),
            **({"embeddings": list(self.embeddings)} if self.embeddings else {}),
        }


def model_facts(
    source: str,
    model: ResolvedModel,
    device: str,
    dtype: str,
    lora: list[dict[str, Any]] | None,
    mode: str,
    prediction: tuple[str, str],
) -> ModelFacts:
    model_hash, file_hashes = filecache.model_hashes(model.path, model.weight_files)
    local = Path(source).expanduser().exists()
    return ModelFacts(
        # How to find the model again: an absolute path for local folders, the id for hub models.
        ref=str(Path(source).expanduser().resolve()) if local else source,
        name=model.path.resolve().name if local else source,
        model_hash=model_hash,
        file_hashes=file_hashes,
        device=device,
        dtype=dtype,
        versions=png_record.library_versions(),
        lora=lora,
        mode=mode,
        single_file=_single_file_record(model),
        family=model.family.name,
        prediction=prediction,
        micro_conditioning=model.family.micro_conditioning,
    )


def _single_file_record(model: ResolvedModel) -> dict[str, Any]:
    """What a single-file model needs besides its path to load the same way again."""
    if model.single_file is None:
        return {}
    return {
        # one the file carries is found there again: its unpacked copy in the cache is no place to record
        "tokenizer": str(model.tokenizer.resolve()) if model.tokenizer and not model.tokenizer_embedded else None,
        "ema_weights": model.use_ema and model.single_file.has_ema,
    }
