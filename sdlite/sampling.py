"""Text-to-image: `sample(config)` runs the diffusers pipeline and writes PNGs with their metadata.

The pipeline itself is diffusers' own StableDiffusionPipeline; sdlite only chooses the scheduler,
seeds one CPU generator per image (image i of a run uses seed + i, so any image can be regenerated
alone, on any device), and records what made each image.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlite import metadata
from sdlite.adapters import load_loras
from sdlite.config import Generation, SampleConfig, validate_size
from sdlite.errors import NumericalError, ResourceError, writing
from sdlite.models import ResolvedModel, load_pipeline, pick_device, pick_dtype, resolve_model, vae_factor
from sdlite.modes import apply_mode, load_device
from sdlite.schedulers import SCHEDULERS, make_scheduler

log = logging.getLogger("sdlite")
ProgressFn = Callable[[int, int], None]
_NAME = re.compile(r"^(\d{5})-")


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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what `--json` prints)."""
        return {**dataclasses.asdict(self), "path": str(self.path)}


@dataclass(frozen=True)
class SampleRun:
    """Everything a run produced: the images in order, the optional grid, and any warnings."""

    images: tuple[SampleResult, ...]
    grid: Path | None
    warnings: tuple[str, ...]
    speedups: tuple[str, ...] = ()  # what --fast / --low-memory switched on


def sample(
    config: SampleConfig,
    progress: ProgressFn | None = None,
    on_image: Callable[[SampleResult], None] | None = None,
) -> SampleRun:
    """Generate every image `config` asks for and write them under `config.out`.

    `progress(done, total)` is called after each denoising step, `on_image` after each file is
    written, so callers can stream results; nothing here prints.
    """
    # 1. Locate and check the model; check sizes against its own VAE before loading any weights.
    model = resolve_model(config.model, config.offline, config.allow_pickle, config.tokenizer, config.ema_weights)
    factor = vae_factor(model.configs()["vae"])
    native = model.native_size()
    for gen in config.generations:
        validate_size(gen.height, gen.width, factor)

    # 2. Load the pipeline on the chosen device and precision; note what identifies the model.
    device = pick_device(config.device)
    pipe = load_pipeline(model, load_device(config.mode, device), pick_dtype(config.dtype, device))
    base_scheduler_config = pipe.scheduler.config  # every sampler is built from the model's own schedule
    warnings: list[str] = []
    loras = load_loras(pipe, config.loras, warnings)
    applied = apply_mode(pipe, config.mode, device, bool(loras))
    facts = _facts(config.model, model, device, str(pipe.unet.dtype), loras or None, config.mode)
    if config.expected_model_hash and config.expected_model_hash != facts.model_hash:
        _warn(
            warnings,
            f"model {facts.ref} (hash {facts.model_hash[:10]}) is not the one the source image was made with "
            f"(hash {config.expected_model_hash[:10]}); the pixels will differ",
        )

    # 3. Denoise in batches and write each image as soon as its batch is done.
    out = _prepare_out(config.out)
    counter = _StepCounter(progress, sum(g.steps * g.num_images for g in config.generations))
    results: list[SampleResult] = []
    for gen in config.generations:
        warning = _truncation_warning(pipe.tokenizer, gen.prompt)
        if warning:
            _warn(warnings, warning)
        pipe.scheduler = make_scheduler(gen.scheduler, base_scheduler_config)
        height, width = gen.height or native, gen.width or native
        for start in range(0, gen.num_images, config.batch_size):
            seeds = list(range(gen.seed + start, gen.seed + min(gen.num_images, start + config.batch_size)))
            pixels = _generate(pipe, gen, seeds, height, width, counter)
            for seed, image in zip(seeds, pipe.numpy_to_pil(pixels), strict=True):
                if config.keep_seeds and seed not in config.keep_seeds:
                    continue
                settings = {**dataclasses.asdict(gen), "seed": seed, "height": height, "width": width}
                settings.pop("num_images")
                result = _save(out, image, settings, seeds, facts)
                results.append(result)
                if on_image:
                    on_image(result)

    grid = _write_grid(out, results) if config.grid else None
    return SampleRun(tuple(results), grid, tuple(warnings), tuple(applied))


@dataclass(frozen=True)
class _ModelFacts:
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


def _facts(source: str, model: ResolvedModel, device: str, dtype: str, lora: list[dict[str, Any]] | None,
           mode: str) -> _ModelFacts:  # fmt: skip
    model_hash, file_hashes = metadata.model_hashes(model.path, model.weight_files)
    local = Path(source).expanduser().exists()
    return _ModelFacts(
        # How to find the model again: an absolute path for local folders, the id for hub models.
        ref=str(Path(source).expanduser().resolve()) if local else source,
        name=model.path.resolve().name if local else source,
        model_hash=model_hash,
        file_hashes=file_hashes,
        device=device,
        dtype=dtype,
        versions=metadata.library_versions(),
        lora=lora,
        mode=mode,
        single_file=_single_file_record(model),
    )


def _single_file_record(model: ResolvedModel) -> dict[str, Any]:
    """What a single-file model needs besides its path to load the same way again."""
    if model.single_file is None:
        return {}
    return {
        "tokenizer": str(model.tokenizer.resolve()) if model.tokenizer else None,
        "ema_weights": model.use_ema and model.single_file.has_ema,
    }


def _save(out: Path, image: Any, settings: dict[str, Any], batch: list[int], facts: _ModelFacts) -> SampleResult:
    """Write one PNG with both metadata chunks and describe it."""
    record = {
        "format": metadata.FORMAT_VERSION,
        "settings": settings,
        "model": {"source": facts.ref, "hash": facts.model_hash, "files": facts.file_hashes, **facts.single_file},
        "run": {"batch_seeds": batch, "device": facts.device, "dtype": facts.dtype, "mode": facts.mode},
        "versions": facts.versions,
        "lora": facts.lora,
    }
    spec = SCHEDULERS[settings["scheduler"]]
    info = metadata.png_info(metadata.a1111_parameters(settings, spec, facts.model_hash, facts.name), record)
    path, index = _write_png(out, settings["seed"], image, info)
    return SampleResult(path=path, index=index, model=facts.ref, model_hash=facts.model_hash, **settings)


def _generate(pipe: Any, gen: Generation, seeds: list[int], height: int, width: int, counter: _StepCounter) -> Any:
    """One pipeline call for one batch; returns float pixels in [0, 1], refusing NaN/inf results."""
    import numpy as np
    import torch

    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    extra: dict[str, Any] = {"eta": gen.eta} if SCHEDULERS[gen.scheduler].accepts_eta else {}
    try:
        output = pipe(
            prompt=[gen.prompt] * len(seeds),
            negative_prompt=[gen.negative_prompt] * len(seeds) if gen.negative_prompt else None,
            num_inference_steps=gen.steps,
            guidance_scale=gen.guidance,
            height=height,
            width=width,
            generator=generators,
            output_type="np",
            callback_on_step_end=counter,
            **extra,
        )
    except torch.OutOfMemoryError as exc:
        raise ResourceError(
            f"out of memory generating {len(seeds)} image(s) at {width}x{height}: lower --batch-size"
        ) from exc
    except _NonFiniteLatents as exc:
        raise NumericalError(
            f"the latents became NaN/inf at denoising step {exc.step} for seeds {seeds[0]}..{seeds[-1]} "
            "(fp16 overflow? try --dtype fp32 or bf16); nothing was saved for them"
        ) from None
    pixels = output.images
    if not np.isfinite(pixels).all():
        raise NumericalError(
            f"the model produced NaN/inf pixels for seeds {seeds[0]}..{seeds[-1]} "
            "(fp16 overflow? try --dtype fp32 or bf16); nothing was saved for them"
        )
    return pixels


class _NonFiniteLatents(Exception):
    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


class _StepCounter:
    """A pipeline step-end callback that reports overall progress across all batches."""

    def __init__(self, progress: ProgressFn | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        latents = kwargs["latents"]
        # Stop at once: every later step and the decode would be wasted. On an accelerator the check
        # waits for the device, so there it runs once per batch, at the last step.
        watch = latents.device.type == "cpu" or step + 1 == pipe.num_timesteps
        if watch and not latents.isfinite().all():
            raise _NonFiniteLatents(step + 1)
        self.done += latents.shape[0]
        if self.progress:
            self.progress(min(self.done, self.total), self.total)
        return kwargs


def _warn(warnings: list[str], message: str) -> None:
    """Log a warning now (the CLI shows it on stderr) and keep it for the run's result."""
    log.warning(message)
    warnings.append(message)


def _truncation_warning(tokenizer: Any, prompt: str) -> str | None:
    """Name the words the text encoder will never see (CLIP keeps only its first 77 tokens)."""
    limit = tokenizer.model_max_length
    ids = tokenizer(prompt, truncation=False, add_special_tokens=True).input_ids
    if len(ids) <= limit:
        return None
    dropped = tokenizer.decode(ids[limit - 1 : -1], skip_special_tokens=True).strip()
    return f"prompt is longer than {limit} tokens; these words are ignored: {dropped!r}"


def _prepare_out(out: Path) -> Path:
    with writing(f"to output folder {out}"):
        out.mkdir(parents=True, exist_ok=True)
    return out


def _write_png(out: Path, seed: int, image: Any, info: Any) -> tuple[Path, int]:
    """Write `NNNNN-SEED.png` under the next free index; exclusive creation, so nothing is overwritten."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    index = _next_index(out)
    while True:
        path = out / f"{index:05d}-{seed}.png"
        try:
            with path.open("xb") as f:
                f.write(buffer.getvalue())
            return path, index
        except FileExistsError:
            index += 1
        except OSError:
            path.unlink(missing_ok=True)  # never leave a partial image behind
            with writing(str(path)):
                raise


def _next_index(out: Path) -> int:
    taken = [int(m.group(1)) for p in out.iterdir() if (m := _NAME.match(p.name))]
    return max(taken, default=-1) + 1


def _write_grid(out: Path, results: list[SampleResult]) -> Path:
    """A contact sheet of every image with its prompt and seed underneath, saved as grid-NNNNN.png."""
    from sdlite.grid import contact_sheet

    sheet = contact_sheet([(r.path, f"{r.prompt} | seed {r.seed}") for r in results])
    index = results[0].index if results else _next_index(out)
    path = out / f"grid-{index:05d}.png"
    n = 0
    while path.exists():
        n += 1
        path = out / f"grid-{index:05d}-{n}.png"
    try:
        with writing(str(path)):
            sheet.save(path)
    except ResourceError:
        path.unlink(missing_ok=True)
        raise
    return path
