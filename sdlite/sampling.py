"""Text-to-image, image-to-image and inpainting: `sample(config)` runs diffusers' own pipelines and writes
PNGs with their metadata.

The pipelines are diffusers' StableDiffusionPipeline, StableDiffusionImg2ImgPipeline and
StableDiffusionInpaintPipeline, the latter two made from the components already loaded (one load per
run). sdlite only chooses the scheduler, seeds one CPU generator per image (image i of a run uses
seed + i, so any image can be regenerated alone, on any device), sizes the user's images, and records
what made each image, including the sha256 of the files it started from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlite import metadata, resources
from sdlite.adapters import load_loras
from sdlite.config import Generation, SampleConfig, validate_size
from sdlite.errors import DataError, ModelError, NumericalError, ResourceError, UsageError, sigint_to, writing
from sdlite.init_images import UserImage, default_size, fit_to, read_user_image
from sdlite.models import (
    ResolvedModel,
    is_inpainting,
    load_pipeline,
    pick_device,
    pick_dtype,
    resolve_model,
    vae_factor,
)
from sdlite.modes import apply_mode, load_device
from sdlite.outputs import NAME, BackgroundWriter, find_existing, write_grid_png, write_png
from sdlite.outputs import Numbering as _Numbering
from sdlite.previews import X0Recorder
from sdlite.schedulers import SCHEDULERS, make_scheduler

log = logging.getLogger("sdlite")
ProgressFn = Callable[[int, int], None]
_IMAGE_TO_IMAGE_KEYS = ("init_image", "strength", "mask", "mask_blur", "resize")
FAR_ABOVE_NATIVE = 2  # warn when a side is more than this many times the model's native size


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
    progress: Path | None = None  # --save-progress: the strip of the model's clean-image estimates

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what `--json` prints)."""
        return {**dataclasses.asdict(self), "path": str(self.path),
                "progress": str(self.progress) if self.progress else None}  # fmt: skip


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
    interrupt_grace: float | None = None,
) -> SampleRun:
    """Generate every image `config` asks for and write them under `config.out`.

    `progress(done, total)` is called after each denoising step, `on_image` after each file is
    written, so callers can stream results; nothing here prints.

    Ctrl-C (SIGINT, when called from the main thread) stops the run at the next denoising step or
    batch with KeyboardInterrupt; every image finished before it is written. With `interrupt_grace`
    (the CLI's choice), a single operation still running that many seconds after Ctrl-C (a huge image)
    ends the process with exit status 130 instead, once any image being written is complete.
    """
    # 1. Locate and check the model; size every image against its own VAE before loading any weights.
    world = _World.current()
    config = world.share(config)  # one run: the first process's seeds, also the random ones it drew
    model = resolve_model(config.model, config.offline, config.allow_pickle, config.tokenizer, config.ema_weights)
    factor = vae_factor(model.configs()["vae"])
    native = model.native_size()
    timesteps = model.configs()["scheduler"].get("num_train_timesteps", 1000)
    user_images = _UserImages()  # each init image and mask is read and hashed once per run
    sizes = []
    for gen in config.generations:
        validate_size(gen.height, gen.width, factor)
        if gen.steps >= timesteps:  # the schedulers index past their last timestep
            raise UsageError(
                f"steps {gen.steps} is more than this model's noise schedule has ({timesteps} training timesteps): "
                f"use at most {timesteps - 1}"
            )
        if gen.init_image is None:
            sizes.append((gen.height or native, gen.width or native))
        else:
            sizes.append(default_size(user_images.read(gen.init_image).image.size, factor, gen.height, gen.width))
            if gen.mask is not None:
                _check_mask_shape(user_images.read(gen.mask), user_images.read(gen.init_image))
    inpainting_model = is_inpainting(model)
    if inpainting_model and any(gen.init_image is None for gen in config.generations):
        raise ModelError(
            f"{model.path} is an inpainting model (9 input channels): it does not make images from text alone; "
            "give it an image with --init-image (and what to repaint with --mask)"
        )

    # 2. Check the memory the requested sizes and batches need against the device's, before spending any.
    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device)
    resources.check_sample(model, config, device, str(dtype).removeprefix("torch."), sizes)
    warnings: list[str] = []
    for height, width in dict.fromkeys(sizes):
        if max(height, width) > FAR_ABOVE_NATIVE * native:
            _warn(warnings, _far_above_native(height, width, native))

    # 3. Load the pipeline on the chosen device and precision; note what identifies the model.
    if world.size > 1 and world.rank != 0:  # the first process reports every image, in order
        progress, on_image = None, None
    pipe = load_pipeline(model, load_device(config.mode, world.device(device)), dtype, inpainting_ok=inpainting_model)
    base_scheduler_config = pipe.scheduler.config  # every sampler is built from the model's own schedule
    loras = load_loras(pipe, config.loras, warnings)
    applied = apply_mode(pipe, config.mode, device, bool(loras))
    pipelines = _Pipelines(pipe, inpainting_model)
    facts = _facts(config.model, model, device, str(pipe.unet.dtype), loras or None, config.mode)
    expected = (config.expected_model_hash or "").lower()
    if expected and not facts.model_hash.startswith(expected):  # A1111 records only the first 10 hex digits
        _warn(
            warnings,
            f"model {facts.ref} (hash {facts.model_hash[:10]}) is not the one the source image was made with "
            f"(hash {config.expected_model_hash[:10]}); the pixels will differ",
        )

    # 4. Denoise in batches; a background writer saves each image while the next batch denoises.
    out = _prepare_out(config.out)
    numbering = _Numbering(out)
    batches = _batches(config, sizes)
    existing: dict[int, SampleResult] = {}
    indices: dict[int, int] = {}
    if world.rank == 0:  # the first process finds the kept images and plans the names; the others take its plan
        existing = _resume(config, out, numbering, batches, facts, user_images) if config.resume else {}
        indices = _plan_indices(batches, existing, numbering)
    existing, indices = world.share((existing, indices))
    numbering.after(max(indices.values(), default=-1))  # a name taken meanwhile moves past the plan, everywhere
    stop = _StopRequest(interrupt_grace)
    total = sum(denoising_steps(g) * g.num_images for g in config.generations)
    counter = _StepCounter(progress, total, stop)
    results: list[SampleResult] = []

    def write(job: _Job) -> None:
        if job.remote is not None and job.remote_gen is not None:  # another process writes it: report it once whole
            kept = _await_remote(out, indices[job.number], job, facts, bool(config.save_progress))
            counter.skip(denoising_steps(job.remote_gen))
            job = _Job(job.number, kept=kept)
        with stop.writing():  # a hard stop after Ctrl-C waits for this image and its report
            if job.kept is not None and job.strip is not None:  # a kept image whose progress strip was lost
                result = _save_strip(out, numbering, job.kept, job.strip)
            else:
                result = job.kept or _save(out, numbering, job, facts, indices[job.number])
            results.append(result)
            if on_image:
                on_image(result)

    writer = BackgroundWriter(write, limit=2 * config.batch_size)
    try:
        with stop.armed():
            _denoise(config, batches, existing, pipelines, base_scheduler_config, user_images, inpainting_model,
                     counter, stop, writer, warnings, facts, world)  # fmt: skip
            writer.close()
            world.barrier()
            stop.check()  # interrupted during the last batch: no grid, exit 130 like any other interruption
            with stop.writing():
                grid = _write_grid(out, results, numbering) if config.grid and world.rank == 0 else None
    finally:
        writer.close(raise_error=False)  # what finished before a failure or Ctrl-C is still written
        world.close()
    return SampleRun(tuple(results), grid, tuple(warnings), tuple(applied))


@dataclass(frozen=True)
class _Batch:
    """One pipeline call: a generation's images with these seeds, numbered in the run from `first_number`."""

    gen: Generation
    height: int
    width: int
    seeds: tuple[int, ...]
    first_number: int


@dataclass(frozen=True)
class _Job:
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


def _batches(config: SampleConfig, sizes: list[tuple[int, int]]) -> list[_Batch]:
    batches, number = [], 0
    for gen, (height, width) in zip(config.generations, sizes, strict=True):
        for start in range(0, gen.num_images, config.batch_size):
            seeds = tuple(range(gen.seed + start, gen.seed + min(gen.num_images, start + config.batch_size)))
            batches.append(_Batch(gen, height, width, seeds, number))
            number += len(seeds)
    return batches


def _settings(gen: Generation, seed: int, height: int, width: int) -> dict[str, Any]:
    """The settings an image records: its generation's, with its own seed and size."""
    settings = {**dataclasses.asdict(gen), "seed": seed, "height": height, "width": width}
    settings.pop("num_images")
    if gen.init_image is None:  # text-to-image records exactly what it always did
        return {k: v for k, v in settings.items() if k not in _IMAGE_TO_IMAGE_KEYS}
    settings["init_image"] = str(Path(gen.init_image).expanduser().resolve())
    settings["mask"] = str(Path(gen.mask).expanduser().resolve()) if gen.mask else None
    return settings


def _denoise(config: SampleConfig, batches: list[_Batch], existing: dict[int, SampleResult], pipelines: _Pipelines,
             base_scheduler_config: Any, user_images: _UserImages, inpainting_model: bool, counter: _StepCounter,
             stop: _StopRequest, writer: BackgroundWriter, warnings: list[str], facts: _ModelFacts,
             world: _World) -> None:  # fmt: skip
    """Run this process's batches in order and hand each finished image to the writer (images already there
    are kept; the first process also queues, in order, reports of the images the others make)."""
    prepared: tuple[Generation, Any, dict[str, Any]] | None = None
    for number_of_batch, batch in enumerate(batches):
        stop.check()
        gen, numbers = batch.gen, range(batch.first_number, batch.first_number + len(batch.seeds))
        wanted = [n for n, seed in zip(numbers, batch.seeds, strict=True)
                  if not config.keep_seeds or seed in config.keep_seeds]  # fmt: skip
        if not world.mine(number_of_batch):
            if world.rank == 0:
                for n in wanted:
                    seed = batch.seeds[n - batch.first_number]
                    settings = _settings(gen, seed, batch.height, batch.width)
                    job = existing.get(n)
                    if job is not None and _whole(job, config):
                        writer.put(_Job(n, kept=job), heavy=False)
                    else:
                        writer.put(_Job(n, remote=settings, remote_gen=gen), heavy=False)
            continue
        if all(n in existing and _whole(existing[n], config) for n in wanted):  # --resume: the batch is there
            counter.skip(denoising_steps(gen) * len(batch.seeds))
            for n in wanted:
                writer.put(_Job(n, kept=existing[n]))
            continue
        if prepared is None or prepared[0] is not gen:
            warning = _truncation_warning(pipelines.text_to_image.tokenizer, gen.prompt)
            if warning:
                _warn(warnings, warning)
            given = user_images.prepare(gen, batch.height, batch.width)
            prepared = (gen, given, _task_record(gen, given, inpainting_model))
        _, given, task = prepared
        runner = pipelines.for_task(gen.task)
        runner.scheduler = make_scheduler(gen.scheduler, base_scheduler_config)
        recorder = X0Recorder() if config.save_progress else None
        pixels = _generate(runner, gen, list(batch.seeds), batch.height, batch.width, counter, given, recorder)
        strips = recorder.strips(runner.vae, runner.image_processor, config.save_progress) if recorder else []
        for i, (seed, image) in enumerate(zip(batch.seeds, runner.numpy_to_pil(pixels), strict=True)):
            number = batch.first_number + i
            if number not in wanted:
                continue
            if number in existing:  # recomputed with its batch (same rounding), but already written
                kept = existing[number]
                writer.put(_Job(number, kept=kept, strip=None if _whole(kept, config) else strips[i]))
                continue
            if given is not None and given.mask is not None:  # the known region: the original's own pixels
                image = runner.image_processor.apply_overlay(given.mask, given.image, image)
            settings = _settings(gen, seed, batch.height, batch.width)
            writer.put(_Job(number, image, settings, batch.seeds, task, given.record() if given else None,
                            strips[i] if strips else None))  # fmt: skip


@dataclass(frozen=True)
class _World:
    """The processes of one sample run (`--num-processes`, `accelerate launch`, `torchrun`): batch b is made by
    process b mod N, every process writes its own images under the names one process would give them, and the
    first process reports every image in order."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def current(cls) -> _World:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size == 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():  # small objects only: gloo serves CPU and GPU runs alike
            dist.init_process_group("gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def device(self, device: str) -> str:
        """Each process its own GPU; the metadata still says just `cuda`."""
        if self.size > 1 and device == "cuda":
            import torch

            torch.cuda.set_device(self.local_rank)
            return f"cuda:{self.local_rank}"
        return device

    def mine(self, batch: int) -> bool:
        return batch % self.size == self.rank

    def share(self, value: Any) -> Any:
        """The first process's `value`, on every process."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Tear the process group down (without it gloo aborts the process at exit)."""
        if self.size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _await_remote(out: Path, index: int, job: _Job, facts: _ModelFacts, with_strip: bool,
                  poll: float = 0.05) -> SampleResult:  # fmt: skip
    """Wait until another process has linked this image (and its strip) into place, whole, then describe it."""
    settings = job.remote or {}
    path = out / f"{index:05d}-{settings['seed']}.png"
    strip = path.with_name(f"{path.stem}-progress.png")
    while not path.exists() or (with_strip and not strip.exists()):
        time.sleep(poll)
    return _on_disk(path, index, settings, facts)


def _plan_indices(batches: list[_Batch], existing: dict[int, SampleResult], numbering: _Numbering) -> dict[int, int]:
    """Every image's index in the folder, fixed before any is made, so each process names images alike.

    A kept image (--resume) keeps its own; a new one continues the run's numbering (an interrupted run's, so
    the folder ends as an uninterrupted run leaves it), unless a file of another run holds that index, when
    it takes the next index past everything in the folder."""
    first = numbering.first
    if existing:
        number = min(existing)
        first = existing[number].index - number
    kept = {result.index for result in existing.values()}
    taken = {int(m.group(1)) for name in numbering.names if (m := NAME.match(name))} - kept
    if batches:  # a moved image goes past the indices the run's other images are planned at, too
        numbering.after(first + batches[-1].first_number + len(batches[-1].seeds) - 1)
    indices = {}
    for batch in batches:
        for number in range(batch.first_number, batch.first_number + len(batch.seeds)):
            if number in existing:
                indices[number] = existing[number].index
                continue
            index = first + number
            if index in taken:
                index = numbering.take()
            numbering.after(index)
            indices[number] = index
    return indices


def _whole(kept: SampleResult, config: SampleConfig) -> bool:
    """Whether a kept image has everything this run writes for it: its progress strip, when one is asked for."""
    return kept.progress is not None or not config.save_progress


def _on_disk(path: Path, index: int, settings: dict[str, Any], facts: _ModelFacts) -> SampleResult:
    """An image already written (by an earlier run or another process), with its progress strip if there is one."""
    strip = path.with_name(f"{path.stem}-progress.png")
    return SampleResult(path=path, index=index, model=facts.ref, model_hash=facts.model_hash,
                        progress=strip if strip.is_file() else None, **settings)  # fmt: skip


def _resume(config: SampleConfig, out: Path, numbering: _Numbering, batches: list[_Batch],
            facts: _ModelFacts, user_images: _UserImages) -> dict[int, SampleResult]:  # fmt: skip
    """The images an interrupted run of this same command already wrote into `out`, by number in the run: made
    with the same settings, place in the run, model, LoRAs, mode, device, precision and input files' bytes."""
    expected = []
    for batch in batches:
        gen = batch.gen
        inputs = {key: user_images.read(path).sha256 for key, path in (("init_image", gen.init_image),
                                                                        ("mask", gen.mask)) if path}  # fmt: skip
        for i, seed in enumerate(batch.seeds):
            wanted = {"settings": _settings(gen, seed, batch.height, batch.width), "batch": list(batch.seeds),
                      "number": batch.first_number + i, "inputs": inputs}  # fmt: skip
            expected.append((batch.first_number + i, seed, wanted))

    def same(record: dict[str, Any], wanted: dict[str, Any]) -> bool:
        run, made_by = record.get("run", {}), record.get("model", {})
        inputs = {key: item.get("sha256") for key, item in record.get("inputs", {}).items()}
        return (
            record.get("settings") == wanted["settings"] and run.get("batch_seeds") == wanted["batch"]
            and run.get("number") == wanted["number"] and run.get("mode") == facts.mode
            and run.get("device") == facts.device and run.get("dtype") == facts.dtype
            and made_by.get("hash") == facts.model_hash and record.get("lora") == facts.lora
            and all(made_by.get(k) == v for k, v in facts.single_file.items()) and inputs == wanted["inputs"]
        )  # fmt: skip

    found = find_existing(out, numbering, expected, same)
    settings = {number: wanted["settings"] for number, _, wanted in expected}
    return {number: _on_disk(path, index, settings[number], facts) for number, (path, index) in found.items()}


def denoising_steps(gen: Generation) -> int:
    """Steps a generation actually runs: image-to-image re-runs only the last `strength` of the schedule
    (diffusers' rule: int(steps * strength)); 0 means the image only makes the VAE round trip."""
    if gen.init_image is None or gen.strength is None:
        return gen.steps
    return min(int(gen.steps * gen.strength), gen.steps)


@dataclass(frozen=True)
class _Given:
    """A generation's own images at the output size: the init image and the (blurred) mask."""

    init: UserImage
    image: Any  # PIL RGB at the output size
    mask_file: UserImage | None
    mask: Any  # PIL L at the output size, or None

    def record(self) -> dict[str, Any]:
        inputs = {"init_image": self.init.record()}
        if self.mask_file is not None:
            inputs["mask"] = self.mask_file.record()
        return inputs


def _check_mask_shape(mask: UserImage, init: UserImage) -> None:
    """A mask must have its image's shape (its size, or scaled): each is fitted to the output on its own,
    so one of another aspect ratio would be cropped differently and repaint the wrong region."""
    (mask_w, mask_h), (init_w, init_h) = mask.image.size, init.image.size
    # Scaled by some factor and rounded either way, each side lands within a pixel: the factors those allow
    # for the width and for the height must overlap.
    if max((mask_w - 1) / init_w, (mask_h - 1) / init_h) > min((mask_w + 1) / init_w, (mask_h + 1) / init_h):
        raise DataError(
            f"mask {mask.path} is {mask_w}x{mask_h} but the init image {init.path} is {init_w}x{init_h}: "
            "the mask must have the image's shape (the same size, or scaled)"
        )


class _UserImages:
    """Init images and masks of one run, each file read and hashed once however many prompts use it."""

    def __init__(self) -> None:
        self.read_files: dict[str, UserImage] = {}

    def read(self, path: str) -> UserImage:
        if path not in self.read_files:
            self.read_files[path] = read_user_image(path)
        return self.read_files[path]

    def prepare(self, gen: Generation, height: int, width: int) -> _Given | None:
        if gen.init_image is None:
            return None
        assert gen.resize is not None
        init = self.read(gen.init_image)
        image = fit_to(init.image, height, width, gen.resize)
        if gen.mask is None:
            return _Given(init, image, None, None)
        from PIL import ImageFilter

        mask_file = self.read(gen.mask)
        mask = fit_to(mask_file.image, height, width, gen.resize).convert("L")
        if gen.mask_blur:
            mask = mask.filter(ImageFilter.GaussianBlur(gen.mask_blur))
        return _Given(init, image, mask_file, mask)


class _Pipelines:
    """diffusers' text-to-image, image-to-image and inpainting pipelines over the same loaded components."""

    def __init__(self, pipe: Any, inpainting_model: bool) -> None:
        self.text_to_image, self.inpainting_model = pipe, inpainting_model
        self.made: dict[str, Any] = {}

    def for_task(self, task: str) -> Any:
        if task == "text-to-image":
            return self.text_to_image
        # An inpainting model does image-to-image through its own pipeline, with everything to repaint.
        kind = "inpainting" if task == "inpainting" or self.inpainting_model else "image-to-image"
        if kind not in self.made:
            from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

            cls = StableDiffusionInpaintPipeline if kind == "inpainting" else StableDiffusionImg2ImgPipeline
            made = cls(**self.text_to_image.components, requires_safety_checker=False)  # the same modules, shared
            made.set_progress_bar_config(disable=True)
            self.made[kind] = made
        return self.made[kind]


def _task_record(gen: Generation, given: _Given | None, inpainting_model: bool) -> dict[str, Any]:
    """What the PNG says about how the image was made from the user's images."""
    if given is None:
        return {"task": gen.task}
    record: dict[str, Any] = {"task": gen.task}
    if gen.mask is not None:
        record["inpainting"] = (
            "inpainting model (mask and masked image as UNet input)" if inpainting_model
            else "latent blend (the known region's noised latents put back at every step)"
        )  # fmt: skip
        record["overlay"] = "original pixels outside the mask"
    elif inpainting_model:
        record["inpainting"] = "inpainting model with everything to repaint"
    if denoising_steps(gen) == 0:
        record["note"] = f"strength {gen.strength} x {gen.steps} steps runs no denoising step: VAE round trip only"
    return record


def _far_above_native(height: int, width: int, native: int) -> str:
    return (
        f"{width}x{height} is far above the model's native {native}x{native} ({max(height, width) / native:.3g}x "
        f"per side): expect repeated or broken composition, and a run at least {height * width / native**2:,.0f} "
        "times as long as one at the native size"
    )


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


def _save_strip(out: Path, numbering: _Numbering, kept: SampleResult, strip: Any) -> SampleResult:
    """A kept image's progress strip, made again with its batch (lost to a kill between image and strip, or
    asked for only now)."""
    progress, _ = write_png(out, numbering, kept.seed, strip, None, kept.index, suffix="-progress")
    return dataclasses.replace(kept, progress=progress)


def _save(out: Path, numbering: _Numbering, job: _Job, facts: _ModelFacts, index: int) -> SampleResult:
    """Write one PNG with both metadata chunks (and its progress strip, if any) and describe it."""
    assert job.settings is not None
    record = {
        "format": metadata.FORMAT_VERSION,
        "settings": job.settings,
        "model": {"source": facts.ref, "hash": facts.model_hash, "files": facts.file_hashes, **facts.single_file},
        "run": {
            "batch_seeds": list(job.batch),
            "number": job.number,
            "device": facts.device,
            "dtype": facts.dtype,
            "mode": facts.mode,
            **(job.task or {}),
        },
        "versions": facts.versions,
        "lora": facts.lora,
    }
    if job.inputs:
        record["inputs"] = job.inputs  # each file the image was made from: path and sha256
    spec = SCHEDULERS[job.settings["scheduler"]]
    info = metadata.png_info(metadata.a1111_parameters(job.settings, spec, facts.model_hash, facts.name), record)
    path, index = write_png(out, numbering, job.settings["seed"], job.image, info, index)
    progress = None
    if job.strip is not None:
        progress, _ = write_png(out, numbering, job.settings["seed"], job.strip, None, index, suffix="-progress")
    return SampleResult(path=path, index=index, model=facts.ref, model_hash=facts.model_hash, progress=progress,
                        **job.settings)  # fmt: skip


def _generate(pipe: Any, gen: Generation, seeds: list[int], height: int, width: int, counter: _StepCounter,
              given: _Given | None = None, recorder: X0Recorder | None = None) -> Any:  # fmt: skip
    """One pipeline call for one batch; returns float pixels in [0, 1], refusing NaN/inf results."""
    import numpy as np
    import torch

    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    extra: dict[str, Any] = {"eta": gen.eta} if SCHEDULERS[gen.scheduler].accepts_eta else {}
    if given is not None:
        extra.update(image=[given.image] * len(seeds), strength=gen.strength)
        if "mask_image" in inspect.signature(pipe.__call__).parameters:  # inpainting (an inpainting model's too)
            from PIL import Image

            mask = given.mask if given.mask is not None else Image.new("L", given.image.size, 255)
            extra.update(mask_image=[mask] * len(seeds), height=height, width=width)
    else:
        extra.update(height=height, width=width)
    try:
        if given is not None and denoising_steps(gen) == 0:
            return _round_trip(pipe, given.image, generators)
        with recorder.watching(pipe.scheduler) if recorder else contextlib.nullcontext():
            output = pipe(
                prompt=[gen.prompt] * len(seeds),
                negative_prompt=[gen.negative_prompt] * len(seeds) if gen.negative_prompt else None,
                num_inference_steps=gen.steps,
                guidance_scale=gen.guidance,
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


def _round_trip(pipe: Any, image: Any, generators: list[Any]) -> Any:
    """A strength too small for one step: the image through the VAE and back, its latents drawn with each
    image's generator as diffusers' image-to-image draws them."""
    import torch

    device = pipe._execution_device
    with torch.inference_mode():
        pixels = pipe.image_processor.preprocess(image).to(device, pipe.vae.dtype)
        latents = torch.cat([pipe.vae.encode(pixels).latent_dist.sample(g) for g in generators])
        decoded = pipe.vae.decode(latents, return_dict=False)[0]
    return pipe.image_processor.postprocess(decoded.float(), output_type="np")


class _NonFiniteLatents(Exception):
    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


class _StepCounter:
    """A pipeline step-end callback that reports overall progress across all batches and stops the
    run at the step after a Ctrl-C."""

    def __init__(self, progress: ProgressFn | None, total: int, stop: _StopRequest) -> None:
        self.progress, self.total, self.done, self.stop = progress, total, 0, stop

    def skip(self, steps: int) -> None:
        """Count steps that need not run (images an interrupted run already wrote)."""
        self.done += steps
        if self.progress:
            self.progress(min(self.done, self.total), self.total)

    def __call__(self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.stop.check()
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


class _StopRequest:
    """Ctrl-C during sampling: a flag the loop checks between denoising steps and between batches.

    Python runs signal handlers only between bytecodes, so a single long torch call (one step of a huge
    image) would hold the flag back for minutes. With `grace`, a watcher thread learns of each SIGINT at
    once through the interpreter's wakeup fd; if the run has not stopped `grace` seconds after the first
    (or at a second Ctrl-C) it ends the process with status 130, after taking the write lock, so an image
    being written and reported is completed, never cut.
    """

    EXIT_CODE = 130

    def __init__(self, grace: float | None) -> None:
        self.grace, self.requested = grace, False
        self.lock = threading.Lock()
        self.finished = threading.Event()

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        with self.lock:
            yield

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        with sigint_to(self._handle) as installed:
            wakeup = self._watch() if installed and self.grace is not None else None
            try:
                yield
            finally:
                self.finished.set()
                if wakeup is not None:
                    self._unwatch(wakeup)

    @staticmethod
    def _unwatch(wakeup: tuple[int, socket.socket, socket.socket]) -> None:
        """Give the wakeup fd back and close the sockets (which ends the watcher)."""
        previous_fd, writer, reader = wakeup
        signal.set_wakeup_fd(previous_fd)
        with contextlib.suppress(OSError):
            reader.shutdown(socket.SHUT_RDWR)  # wakes the watcher, which then returns
        writer.close()
        reader.close()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and self.grace is None:  # a second Ctrl-C from a Python caller: now
            raise KeyboardInterrupt
        self.requested = True

    def _watch(self) -> tuple[int, socket.socket, socket.socket]:
        """Start the watcher thread; returns the previous wakeup fd and the socket pair to close."""
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._watcher, args=(reader,), daemon=True).start()
        return previous, writer, reader

    def _watcher(self, reader: socket.socket) -> None:
        assert self.grace is not None
        deadline = None
        try:
            while True:
                reader.settimeout(None if deadline is None else max(deadline - time.monotonic(), 0.0))
                try:
                    received = reader.recv(64)
                except TimeoutError:
                    break  # the grace period is over and the run is still busy
                if not received or self.finished.is_set():
                    return  # the run is over
                if signal.SIGINT in received:
                    if deadline is not None:
                        break  # a second Ctrl-C
                    deadline = time.monotonic() + self.grace
        except OSError:
            return
        self._hard_stop()

    def _hard_stop(self) -> None:
        """End the process as the CLI does after KeyboardInterrupt, without waiting for the running operation."""
        locked = self.lock.acquire(timeout=30)  # an image being written and reported is finished first
        if self.finished.is_set():  # the run ended meanwhile and reports its own outcome
            if locked:
                self.lock.release()
            return
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os.write(2, b"\ninterrupted\n" if os.isatty(2) else b"interrupted\n")
        os._exit(self.EXIT_CODE)


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


def _write_grid(out: Path, results: list[SampleResult], numbering: _Numbering) -> Path:
    """A contact sheet of every image with its prompt and seed underneath, saved as grid-INDEX.png."""
    from sdlite.grid import contact_sheet

    sheet = contact_sheet([(r.path, f"{r.prompt} | seed {r.seed}") for r in results])
    return write_grid_png(out, results[0].index if results else numbering.take(), sheet)
