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
import warnings as warnings_module
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlite.errors import DataError, ModelError, NumericalError, ResourceError, UsageError, writing
from sdlite.families.base import Family
from sdlite.formats import png_record
from sdlite.models import memory
from sdlite.models.loading import (
    ResolvedModel,
    is_inpainting,
    load_pipeline,
    pick_device,
    pick_dtype,
    resolve_model,
    vae_factor,
)
from sdlite.models.vae import find_vae, load_vae
from sdlite.prompts.conditioning import check_clip_skip, text_encoders
from sdlite.prompts.embeddings import Embedding, add_embeddings, embedding_files, ti_hashes
from sdlite.prompts.per_step import BatchConditioning
from sdlite.sampling.config import Generation, SampleConfig
from sdlite.sampling.hires import hires_size, is_latent, upscale
from sdlite.sampling.init_images import (
    REPAINTED_FROM,
    Given,
    UserImages,
    check_init_size,
    check_mask_shape,
    default_size,
    mask_coverage,
)
from sdlite.sampling.interrupt import NonFiniteLatents, ProgressFn, StepCounter, StopRequest
from sdlite.sampling.loras import load_loras, set_scales
from sdlite.sampling.modes import apply_mode, load_device
from sdlite.sampling.outputs import BackgroundWriter, Numbering, write_grid_png, write_image, write_png
from sdlite.sampling.plan import (
    SDXL_KEYS,
    Batch,
    Job,
    denoising_steps,
    image_settings,
    micro_conditioning,
    plan_batches,
    task_record,
)
from sdlite.sampling.previews import X0Recorder
from sdlite.sampling.results import ModelFacts, SampleResult, SampleRun, model_facts
from sdlite.sampling.resume import await_remote, is_whole, kept_images, plan_indices
from sdlite.sampling.sweeps import cells
from sdlite.sampling.variation import initial_noise
from sdlite.sampling.world import World
from sdlite.schedulers import SCHEDULERS, make_scheduler
from sdlite.schema import PREDICTIONS, validate_size
from sdlite.staging import check_output_place

log = logging.getLogger("sdlite")
FAR_ABOVE_NATIVE = 2  # warn when a side is more than this many times the model's native size


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
    check_output_place(config.out, "--out")  # a device, a file or a read-only place fails before any model loads
    world = World.current()
    config = world.share(config)  # one run: the first process's seeds, also the random ones it drew
    model = resolve_model(config.model, config.offline, config.allow_pickle, config.tokenizer, config.ema_weights)
    _check_family_settings(config, model)
    if config.from_a1111 and not model.family.a1111_clip_skip:
        # A1111 reads SD 2.x's and SDXL's own layer whatever its Clip skip says: replayed as it made the image
        config = dataclasses.replace(
            config, generations=tuple(dataclasses.replace(g, clip_skip=1) for g in config.generations)
        )
    for clip_skip in sorted({gen.clip_skip for gen in config.generations}):
        check_clip_skip(model.family, model.configs(), clip_skip)
    vae_file = find_vae(config.vae, config.allow_pickle) if config.vae else None
    embedding_paths, notes = embedding_files(config.embeddings, config.embeddings_dirs, config.allow_pickle)
    user_images = UserImages()  # each init image and mask is read and hashed once per run
    warnings: list[str] = []
    for note in notes:
        _warn(warnings, note)
    sizes = _sizes(config, model, user_images, warnings)
    inpainting_model = is_inpainting(model)
    if inpainting_model and any(gen.init_image is None for gen in config.generations):
        raise ModelError(
            f"{model.path} is an inpainting model (9 input channels): it does not make images from text alone; "
            "give it an image with --init-image (and what to repaint with --mask)"
        )

    # 2. Check the memory the requested sizes and batches need against the device's, before spending any.
    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device)
    memory.check_sample(model, config, device, str(dtype).removeprefix("torch."), _largest_sizes(config, sizes, model))
    native = model.native_size()
    for height, width in dict.fromkeys(sizes):
        if max(height, width) > FAR_ABOVE_NATIVE * native:
            _warn(warnings, _far_above_native(height, width, native))

    # 3. Load the pipeline on the chosen device and precision; note what identifies the model.
    pipe = load_pipeline(model, load_device(config.mode, world.device(device)), dtype, inpainting_ok=inpainting_model)
    if vae_file is not None:  # --vae: the model's own VAE replaced before any mode or pipeline uses it
        vae = load_vae(vae_file, model.configs()["vae"], model.family)
        pipe.register_modules(vae=vae.to(pipe.device, pipe.vae.dtype))
    embeddings = add_embeddings(embedding_paths, pipe.components, model.family.text_encoders)
    loras = load_loras(pipe, config.loras, warnings, model.family)
    applied = apply_mode(pipe, config.mode, device, bool(loras))
    prediction = _prediction(config, model)
    facts = model_facts(config.model, model, device, str(pipe.unet.dtype), loras or None, config.mode, prediction)
    if vae_file is not None:
        facts = dataclasses.replace(facts, vae=vae_file.record())
    facts = dataclasses.replace(facts, embeddings=tuple(e.record() for e in embeddings))
    expected = (config.expected_model_hash or "").lower()
    if expected and not facts.model_hash.startswith(expected):  # A1111 records only the first 10 hex digits
        _warn(
            warnings,
            f"model {facts.ref} (hash {facts.model_hash[:10]}) is not the one the source image was made with "
            f"(hash {config.expected_model_hash[:10]}); the pixels will differ",
        )

    # 4. Plan: the pipeline calls, the images kept from an interrupted run (--resume), every image's name.
    if world.size > 1 and world.rank != 0:  # the first process reports every image, in order
        progress, on_image = None, None
    out = _prepare_out(config.out)
    stop = StopRequest(interrupt_grace)
    total = sum(denoising_steps(g) * g.num_images for g in config.generations)
    run = _Run(
        config,
        world,
        _Pipelines(pipe, inpainting_model, model.family, tuple(embeddings)),
        {**pipe.scheduler.config, "prediction_type": prediction[0]},
        user_images,
        facts,
        out,
        Numbering(out),
        plan_batches(config, sizes),
        stop,
        StepCounter(progress, total, stop),
        warnings,
    )
    _plan_names(run)

    # 5. Denoise in batches; a background writer saves each image while the next batch denoises.
    results = _denoise_and_write(run, on_image)
    grid = run.grids[0] if run.grids else None
    return SampleRun(tuple(results), grid, tuple(warnings), tuple(applied), run.grids)


@dataclass
class _Run:
    """One sample run's state, handed whole to each step: the loaded pipelines and what identifies the model, the
    output folder and its names, the planned batches, the images kept (--resume), Ctrl-C and progress."""

    config: SampleConfig
    world: World
    pipelines: _Pipelines
    base_scheduler_config: Any  # every sampler is built from the model's own schedule
    user_images: UserImages
    facts: ModelFacts
    out: Path
    numbering: Numbering
    batches: list[Batch]
    stop: StopRequest
    counter: StepCounter
    warnings: list[str]
    existing: dict[int, SampleResult] = field(default_factory=dict)  # kept images, by number in the run
    indices: dict[int, int] = field(default_factory=dict)  # every image's index in OUT, by number in the run
    grids: tuple[Path, ...] = ()


def _check_family_settings(config: SampleConfig, model: ResolvedModel) -> None:
    """SDXL's own settings (second prompts, micro-conditioning) given for a model of another family are an error,
    not silently ignored; so is a guidance rescale where the family's pipeline for the task has none."""
    family = model.family
    for gen in config.generations:  # diffusers' SD image-to-image pipelines have no guidance rescale
        if gen.guidance_rescale and (gen.init_image or gen.hires) and not family.micro_conditioning:
            raise UsageError(
                f"--guidance-rescale works for {family.name} in text-to-image only (no image-to-image pass, no hires fix)"
            )
    if family.micro_conditioning:
        return
    for gen in config.generations:
        for key in SDXL_KEYS:
            if getattr(gen, key) is not None:
                flag = "--" + key.replace("_", "-")
                raise UsageError(f"{flag} is for SDXL models; {model.source} is {family.name}")


def _prediction(config: SampleConfig, model: ResolvedModel) -> tuple[str, str]:
    """What the model predicts ("epsilon" or "v_prediction") and where that came from: --prediction-type wins
    over what the model says or its family's convention."""
    if config.prediction_type is not None:
        return PREDICTIONS[config.prediction_type], "--prediction-type"
    return model.prediction()


def _sizes(
    config: SampleConfig, model: ResolvedModel, user_images: UserImages, warnings: list[str]
) -> list[tuple[int, int]]:
    """Each generation's image size (checked against the model's VAE and schedule), from the options, the init
    image or the model's native size; init images under one latent pixel and masks that repaint nothing are
    refused, one that repaints everything is warned about (once per mask)."""
    factor = vae_factor(model.configs()["vae"])
    native = model.native_size()
    timesteps = model.configs()["scheduler"].get("num_train_timesteps", 1000)
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
            continue
        init = user_images.read(gen.init_image)
        check_init_size(init, factor)
        sizes.append(default_size(init.image.size, factor, gen.height, gen.width))
        if gen.mask is not None:
            check_mask_shape(user_images.read(gen.mask), init)
            _check_coverage(user_images, gen, sizes[-1], warnings)
    return sizes


def _largest_sizes(config: SampleConfig, sizes: list[tuple[int, int]], model: ResolvedModel) -> list[tuple[int, int]]:
    """Each generation's largest denoised size: a hires fix's second pass is larger than its first."""
    factor = vae_factor(model.configs()["vae"])
    largest = []
    for gen, (height, width) in zip(config.generations, sizes, strict=True):
        if gen.hires:
            height, width = hires_size(
                height, width, gen.hires_scale, gen.hires_width, gen.hires_height, factor
            ).upscaled
        largest.append((height, width))
    return largest


def _check_coverage(user_images: UserImages, gen: Generation, size: tuple[int, int], warnings: list[str]) -> None:
    """A mask whose white part (after fitting and blur, as the pipeline binarizes it) is empty would run the whole
    schedule to return the input unchanged: refused. One that is all white ignores the init image's pixels."""
    given = user_images.prepare(gen, *size)
    assert given is not None and given.mask is not None
    coverage = mask_coverage(given.mask)
    if coverage == 0:
        raise DataError(
            f"mask {gen.mask} repaints nothing: no pixel is {REPAINTED_FROM} or brighter after fitting"
            f"{' and blur' if gen.mask_blur else ''} (white repaints, black keeps); give a mask with white "
            "where the image should change"
        )
    message = (
        f"mask {gen.mask} repaints the whole image (white everywhere): no pixel of the init image is kept as it "
        "is; without --mask this is plain image-to-image"
    )
    if coverage == 1 and message not in warnings:
        _warn(warnings, message)


def _plan_names(run: _Run) -> None:
    """The first process finds the kept images and plans every image's name; the others take its plan."""
    config, world = run.config, run.world
    if world.rank == 0:
        if config.resume:
            run.existing = kept_images(config, run.out, run.numbering, run.batches, run.facts, run.user_images)
        run.indices = plan_indices(run.batches, run.existing, run.numbering)
    run.existing, run.indices = world.share((run.existing, run.indices))
    run.numbering.after(max(run.indices.values(), default=-1))  # a name taken meanwhile moves past the plan


def _denoise_and_write(run: _Run, on_image: Callable[[SampleResult], None] | None) -> list[SampleResult]:
    """Every batch denoised in order while a background writer saves (or, for another process's images, waits for
    and reports) each finished image; the grid last. Whatever finished before a failure or Ctrl-C is written."""
    config, stop, out = run.config, run.stop, run.out
    results: list[SampleResult] = []

    def write(job: Job) -> None:
        if job.remote is not None and job.remote_gen is not None:  # another process writes it: report it once whole
            extension = png_record.EXTENSIONS[config.image_format]
            kept = await_remote(out, run.indices[job.number], job, run.facts, bool(config.save_progress), extension)
            run.counter.skip(denoising_steps(job.remote_gen))
            job = Job(job.number, kept=kept)
        with stop.writing():  # a hard stop after Ctrl-C waits for this image and its report
            if job.kept is not None and job.strip is not None:  # a kept image whose progress strip was lost
                result = _save_strip(out, run.numbering, job.kept, job.strip)
            else:
                result = job.kept or _save(
                    out, run.numbering, job, run.facts, run.indices[job.number], config.image_format, config.quality
                )
            results.append(result)
            if on_image:
                on_image(result)

    writer = BackgroundWriter(write, limit=2 * config.batch_size)
    try:
        with stop.armed():
            _denoise(run, writer)
            writer.close()
            run.world.barrier()
            stop.check()  # interrupted during the last batch: no grid, exit 130 like any other interruption
            with stop.writing():
                if config.grid and run.world.rank == 0:
                    run.grids = _write_grids(config, out, results, run.numbering)
    finally:
        writer.close(raise_error=False)  # what finished before a failure or Ctrl-C is still written
        run.world.close()
    return results


def _denoise(run: _Run, writer: BackgroundWriter) -> None:
    """Run this process's batches in order and hand each finished image to the writer (images already there
    are kept; the first process also queues, in order, reports of the images the others make)."""
    config, existing, world = run.config, run.existing, run.world
    prepared: tuple[Generation, Any, dict[str, Any]] | None = None
    lora_scale: float | None = None  # the scale the LoRAs are set at (None: each its own --lora-scale)
    for number_of_batch, batch in enumerate(run.batches):
        run.stop.check()
        gen, numbers = batch.gen, range(batch.first_number, batch.first_number + len(batch.seeds))
        wanted = [n for n in numbers if not config.keep_numbers or n in config.keep_numbers]
        if not world.mine(number_of_batch):
            if world.rank == 0:
                _report_others(run, batch, wanted, writer)
            continue
        if all(n in existing and is_whole(existing[n], config) for n in wanted):  # --resume: the batch is there
            run.counter.skip(denoising_steps(gen) * len(batch.seeds))
            for n in wanted:
                writer.put(Job(n, kept=existing[n]))
            continue
        if gen.prompt_syntax == "plain":  # A1111's syntax reads prompts of any length in chunks
            for prompt in dict.fromkeys(g.prompt for g in batch.gens):
                warning = _truncation_warning(run.pipelines.text_to_image.tokenizer, prompt)
                if warning and warning not in run.warnings:
                    _warn(run.warnings, warning)
        if prepared is None or prepared[0] is not gen:
            given = run.user_images.prepare(gen, batch.height, batch.width)
            prepared = (gen, given, task_record(gen, given, run.pipelines.inpainting_model))
        _, given, task = prepared
        if config.loras and gen.image_lora_scale != lora_scale:  # a sweep over the LoRAs' scale
            set_scales(run.pipelines.text_to_image, config.loras, gen.image_lora_scale)
            lora_scale = gen.image_lora_scale
        runner = run.pipelines.for_task(gen.task)
        runner.scheduler = make_scheduler(gen.scheduler, run.base_scheduler_config)
        recorder = X0Recorder() if config.save_progress else None
        text = _text_conditioning(runner, run.pipelines, batch, gen.steps)
        if gen.hires:
            pixels = _hires_fix(run, runner, batch, text)
        else:
            pixels = _generate(runner, batch, run.counter, given, recorder, text)
        strips = recorder.strips(runner.vae, runner.image_processor, config.save_progress) if recorder else []
        for i, (seed, image) in enumerate(zip(batch.seeds, runner.numpy_to_pil(pixels), strict=True)):
            number = batch.first_number + i
            if number not in wanted:
                continue
            if number in existing:  # recomputed with its batch (same rounding), but already written
                kept = existing[number]
                writer.put(Job(number, kept=kept, strip=None if is_whole(kept, config) else strips[i]))
                continue
            if given is not None and given.mask is not None:  # the known region: the original's own pixels
                image = runner.image_processor.apply_overlay(given.mask, given.image, image)
            settings = image_settings(batch.gens[i], seed, batch.height, batch.width, run.facts.micro_conditioning)
            writer.put(
                Job(
                    number,
                    image,
                    settings,
                    batch.record(),
                    task,
                    given.record() if given else None,
                    strips[i] if strips else None,
                )
            )


def _report_others(run: _Run, batch: Batch, wanted: list[int], writer: BackgroundWriter) -> None:
    """The first process queues, in order, the images another process makes (or an earlier run kept)."""
    for n in wanted:
        gen, seed = batch.gens[n - batch.first_number], batch.seeds[n - batch.first_number]
        settings = image_settings(gen, seed, batch.height, batch.width, run.facts.micro_conditioning)
        kept = run.existing.get(n)
        if kept is not None and is_whole(kept, run.config):
            writer.put(Job(n, kept=kept), heavy=False)
        else:
            writer.put(Job(n, remote=settings, remote_gen=gen), heavy=False)


class _Pipelines:
    """diffusers' text-to-image, image-to-image and inpainting pipelines of the model's family over the same
    loaded components."""

    def __init__(self, pipe: Any, inpainting_model: bool, family: Family, embeddings: tuple[Embedding, ...]) -> None:
        self.text_to_image, self.inpainting_model, self.family = pipe, inpainting_model, family
        self.embeddings = embeddings  # textual inversion: loaded into the text encoders, read by name
        self.made: dict[str, Any] = {}

    def for_task(self, task: str) -> Any:
        if task == "text-to-image":
            return self.text_to_image
        # An inpainting model does image-to-image through its own pipeline, with everything to repaint.
        kind = "inpainting" if task == "inpainting" or self.inpainting_model else "image-to-image"
        if kind not in self.made:
            cls = self.family.pipeline_class(kind)
            accepted = inspect.signature(cls.__init__).parameters
            components = self.text_to_image.components
            # The loaded pipeline's own settings (SDXL's force_zeros_for_empty_prompt) and the family's options.
            options = {k: v for k, v in self.text_to_image.config.items() if k in accepted and k not in components}
            options |= {k: v for k, v in self.family.pipeline_options.items() if k in accepted and k not in components}
            made = cls(**{k: v for k, v in components.items() if k in accepted}, **options)  # the same modules
            made.set_progress_bar_config(disable=True)
            self.made[kind] = made
        return self.made[kind]


def _far_above_native(height: int, width: int, native: int) -> str:
    return (
        f"{width}x{height} is far above the model's native {native}x{native} ({max(height, width) / native:.3g}x "
        f"per side): expect repeated or broken composition, and a run at least {height * width / native**2:,.0f} "
        "times as long as one at the native size"
    )


def _save_strip(out: Path, numbering: Numbering, kept: SampleResult, strip: Any) -> SampleResult:
    """A kept image's progress strip, made again with its batch (lost to a kill between image and strip, or
    asked for only now)."""
    progress, _ = write_png(out, numbering, kept.seed, strip, None, kept.index, suffix="-progress")
    return dataclasses.replace(kept, progress=progress)


def _save(
    out: Path, numbering: Numbering, job: Job, facts: ModelFacts, index: int, image_format: str, quality: int
) -> SampleResult:
    """Write one image with both metadata texts (and its progress strip, if any) and describe it."""
    assert job.settings is not None
    record = {
        "format": png_record.FORMAT_VERSION,
        "settings": job.settings,
        "model": facts.record(),
        "run": {
            **job.batch,
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
    settings = job.settings
    texts = [settings[k] for k in ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2") if k in settings]
    hashes = ti_hashes(facts.embeddings, texts)
    parameters = png_record.a1111_parameters(settings, spec, facts.model_hash, facts.name, facts.vae, hashes)
    if image_format != "png":  # how to write it again (--from-image, check)
        record["run"] |= {"image_format": image_format, "quality": quality}
    data = png_record.encode_image(job.image, image_format, quality, parameters, record)
    extension = png_record.EXTENSIONS[image_format]
    path, index = write_image(out, numbering, job.settings["seed"], data, extension, index)
    progress = None
    if job.strip is not None:
        progress, _ = write_png(out, numbering, job.settings["seed"], job.strip, None, index, suffix="-progress")
    return SampleResult(
        path=path, index=index, model=facts.ref, model_hash=facts.model_hash, progress=progress, **job.settings
    )


def _hires_fix(run: _Run, pipe: Any, batch: Batch, text: BatchConditioning | None) -> Any:
    """A1111's hires fix for one batch: the first pass at the batch's size, the upscale, then the image-to-image
    pass at the larger size from each image's own seed again; returns the second pass's pixels."""
    gen, factor = batch.gen, pipe.vae_scale_factor
    assert gen.hires_upscaler is not None and gen.hires_strength is not None
    size = hires_size(batch.height, batch.width, gen.hires_scale, gen.hires_width, gen.hires_height, factor)
    latent = is_latent(gen.hires_upscaler)
    first = _generate(pipe, batch, run.counter, text=text, output_type="latent" if latent else "pil")
    images = upscale(first, gen.hires_upscaler, size, factor)
    second = run.pipelines.for_task("image-to-image")
    second.scheduler = make_scheduler(gen.scheduler, run.base_scheduler_config)
    steps = gen.hires_steps or gen.steps
    larger = dataclasses.replace(batch, height=size.final[0], width=size.final[1])
    text = _text_conditioning(second, run.pipelines, larger, steps, first_pass=gen.steps)
    return _generate(second, larger, run.counter, text=text, second=_SecondPass(images, steps, gen.hires_strength))


@dataclass(frozen=True)
class _SecondPass:
    """A hires fix's image-to-image pass: the upscaled first pass (latents or pictures), its schedule and strength."""

    images: Any
    steps: int
    strength: float


def _text_conditioning(
    pipe: Any, pipelines: _Pipelines, batch: Batch, steps: int, first_pass: int | None = None
) -> BatchConditioning | None:
    """A batch's text conditioning at each of `steps` steps, made by sdlite (A1111's syntax, or clip skip); None
    where the pipeline reads the prompts itself (plain prompts at clip skip 1, exactly as before either option
    existed)."""
    import torch

    gen = batch.gen
    if gen.prompt_syntax == "plain" and gen.clip_skip == 1:
        return None
    plain = gen.prompt_syntax == "plain"
    encoders = text_encoders(pipe, pipelines.family, gen.clip_skip, plain, pipelines.embeddings)
    prompts = [(g.prompt, g.prompt_2 or None) for g in batch.gens]  # diffusers: an empty second prompt is the first
    negatives = [(gen.negative_prompt, gen.negative_prompt_2 or None)] * len(prompts)
    zero = bool(pipe.config.get("force_zeros_for_empty_prompt", False))  # SDXL: an empty negative prompt is zeros
    with torch.no_grad():
        return BatchConditioning(encoders, prompts, negatives, steps, zero, first_pass)


def _generate(
    pipe: Any,
    batch: Batch,
    counter: StepCounter,
    given: Given | None = None,
    recorder: X0Recorder | None = None,
    text: BatchConditioning | None = None,
    output_type: str = "np",
    second: _SecondPass | None = None,
) -> Any:
    """One pipeline call for one batch (each image with its own prompt and seed, every other setting shared);
    returns float pixels in [0, 1], refusing NaN/inf results (or, for a hires fix's first pass, the latents or
    pictures `output_type` names). With `text`, the pipeline reads sdlite's conditioning (swapped at the steps where
    prompt editing changes it) instead of the prompts; with `second`, it is a hires fix's second pass."""
    import numpy as np
    import torch

    gen, seeds, height, width = batch.gen, list(batch.seeds), batch.height, batch.width
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    extra: dict[str, Any] = {"eta": gen.eta} if SCHEDULERS[gen.scheduler].accepts_eta else {}
    if gen.guidance_rescale:
        extra["guidance_rescale"] = gen.guidance_rescale
    callback: Any = counter
    if text is None:
        extra.update(
            prompt=[g.prompt for g in batch.gens],
            negative_prompt=[gen.negative_prompt] * len(seeds) if gen.negative_prompt else None,
        )
    else:
        extra.update(text.arguments())
        if text.changes:
            callback = text.swapping(counter)
            extra["callback_on_step_end_tensor_inputs"] = ["latents", *text.tensor_inputs()]
    steps = second.steps if second is not None else gen.steps
    if second is not None:
        extra.update(image=second.images, strength=second.strength)
    elif given is not None:
        extra.update(image=[given.image] * len(seeds), strength=gen.strength)
        if "mask_image" in inspect.signature(pipe.__call__).parameters:  # inpainting (an inpainting model's too)
            from PIL import Image

            mask = given.mask if given.mask is not None else Image.new("L", given.image.size, 255)
            extra.update(mask_image=[mask] * len(seeds), height=height, width=width)
    else:
        extra.update(height=height, width=width)
        if gen.subseed_strength or gen.seed_resize_from is not None:  # A1111's variation noise, drawn by sdlite
            factor = pipe.vae_scale_factor
            shape = (pipe.unet.config.in_channels, height // factor, width // factor)
            noise = initial_noise(shape, generators, gen.subseed, gen.subseed_strength, gen.seed_resize_from, factor)
            extra["latents"] = noise.to(pipe.unet.dtype)
    if "original_size" in inspect.signature(pipe.__call__).parameters:  # SDXL: second prompts, micro-conditioning
        micro = micro_conditioning(gen, height, width)
        if text is None:
            extra.update(
                prompt_2=[gen.prompt_2] * len(seeds) if gen.prompt_2 is not None else None,
                negative_prompt_2=[gen.negative_prompt_2] * len(seeds) if gen.negative_prompt_2 is not None else None,
            )
        extra.update(
            original_size=tuple(micro["original_size"]),
            crops_coords_top_left=tuple(micro["crops_coords"]),
            target_size=tuple(micro["target_size"]),
        )
    try:
        if given is not None and denoising_steps(gen) == 0:
            return _round_trip(pipe, given.image, generators)
        watching = recorder.watching(pipe.scheduler) if recorder else contextlib.nullcontext()
        with watching, warnings_module.catch_warnings():
            # diffusers' SDXL pipelines upcast an fp16 VAE through their own deprecated method, warning each batch
            warnings_module.filterwarnings("ignore", message="`upcast_vae` is deprecated", category=FutureWarning)
            output = pipe(
                num_inference_steps=steps,
                guidance_scale=gen.guidance,
                generator=generators,
                output_type=output_type,
                callback_on_step_end=callback,
                **extra,
            )
    except torch.OutOfMemoryError as exc:
        raise ResourceError(
            f"out of memory generating {len(seeds)} image(s) at {width}x{height}: lower --batch-size"
        ) from exc
    except NonFiniteLatents as exc:
        raise NumericalError(
            f"the latents became NaN/inf at denoising step {exc.step} for seeds {seeds[0]}..{seeds[-1]} "
            "(fp16 overflow? try --dtype fp32 or bf16); nothing was saved for them"
        ) from None
    pixels = output.images
    if output_type != "np":  # a hires fix's first pass: its latents (checked at the last step) or pictures
        return pixels
    if not np.isfinite(pixels).all():  # the latents were finite (checked at the last step): the decoder failed
        raise NumericalError(
            f"the VAE decoded NaN/inf pixels from finite latents for seeds {seeds[0]}..{seeds[-1]}: "
            f"{_decode_failure(pipe)}; nothing was saved for them"
        )
    return pixels


def _decode_failure(pipe: Any) -> str:
    """Why a VAE turns finite latents into NaN/inf: an fp16 overflow (SDXL's VAE overflows in fp16; its pipelines
    decode in fp32 when the VAE's config says force_upcast), or broken weights."""
    import torch

    vae = pipe.vae
    upcast = vae.config.get("force_upcast", False) and hasattr(pipe, "upcast_vae")  # SDXL's pipelines upcast
    if vae.dtype == torch.float32 or upcast:
        return "it decoded in fp32, where this is no overflow: its weights are damaged (NaN/inf)"
    reason = "its config says force_upcast: false" if hasattr(pipe, "upcast_vae") else "this family decodes as stored"
    return (
        f"its decoder overflowed in {str(vae.dtype).removeprefix('torch.')} ({reason}); use --dtype fp32 or bf16, "
        "or a VAE fixed for fp16 decoding"
    )


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


def _write_grids(
    config: SampleConfig, out: Path, results: list[SampleResult], numbering: Numbering
) -> tuple[Path, ...]:
    """A contact sheet of every image with its prompt and seed underneath, saved as grid-INDEX.png; for a sweep,
    one sheet per prompt laid out by the axes (the first image of each cell)."""
    from sdlite.sampling.grid import contact_sheet, sweep_sheet

    first = results[0].index if results else numbering.take()
    counts = [gen.num_images for gen in config.generations]
    if not config.sweep_axes or len(results) != sum(counts):  # a plain run, or one that kept only some images
        sheet = contact_sheet([(r.path, f"{r.prompt} | seed {r.seed}") for r in results])
        return (write_grid_png(out, first, sheet),)
    combos = cells(config.sweep_axes)
    axes = [(axis.title, list(axis.labels)) for axis in config.sweep_axes]
    starts = [sum(counts[:g]) for g in range(len(counts))]  # each generation's first image in the run
    grids = []
    for prompt in range(len(config.generations) // len(combos)):
        images = {combo: results[starts[prompt * len(combos) + c]].path for c, combo in enumerate(combos)}
        index = results[starts[prompt * len(combos)]].index
        grids.append(write_grid_png(out, index, sweep_sheet(images, axes)))
    return tuple(grids)
