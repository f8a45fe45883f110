"""Fine-tuning: `train(config)` minimises the noise-prediction loss with Accelerate.

What a run shares with VAE training (the plan, the batch order and per-example seeding, the optimizer,
OUT's checks, the finite-loss guard, events and the loss log) lives beside it in training/ (plan, steps,
out_folder, reporting), seeds in sdlite/seeds.py. That seeding
leaves nothing to hidden RNG state, so a resumed run sees exactly the batches and noise of an
uninterrupted one, whatever the number of processes, and checkpoints need no pickled RNG state.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlite import filecache
from sdlite.data.masks import latent_mask, load_mask
from sdlite.errors import STOP_SIGNALS, Interrupted, ResourceError, UsageError, sigint_to, signal_name, writing
from sdlite.families.base import Family
from sdlite.formats import lora as lora_format
from sdlite.models.loading import ResolvedModel, load_single_file, silence_library_progress
from sdlite.models.source import MODEL_DEFAULTS_FILE, model_settings_record
from sdlite.schema import PREDICTIONS
from sdlite.seeds import mix
from sdlite.staging import new_folder
from sdlite.training import adapters, checkpoints
from sdlite.training import textual_inversion as ti
from sdlite.training.conditioning import encode, time_ids, token_ids
from sdlite.training.config import TrainConfig
from sdlite.training.losses import elementwise_loss, huber_threshold
from sdlite.training.optimizers import check_optimizer, make_optimizer, make_schedule
from sdlite.training.out_folder import check_out, prepare_out, write_run_record
from sdlite.training.plan import TrainPlan, make_plan, with_flops
from sdlite.training.reporting import Emitter, EventFn, LossLog, Pace, TrainResult
from sdlite.training.samples import check_sample_prompts, sample_point
from sdlite.training.steps import FiniteGuard, LossHook, MicroBatch
from sdlite.training.validation_loss import ValidationLog, fixed_draws

VALIDATION_STEPS = 25
LORA_ADAPTER = "default"  # the adapter name training gives its LoRA(s)
LORA_INIT_SALT = 0x4C6F5241  # "LoRA": the adapters' initial weights, a seed stream of their own
SAFE = {"safe_serialization": True}
# ModelSpec's architecture names of the base model a LoRA was trained on (its `modelspec.architecture` adds /lora).
LORA_ARCHITECTURES = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2", "sdxl": "stable-diffusion-xl-v1-base"}


def train(config: TrainConfig, on_event: EventFn | None = None, loss_hook: LossHook | None = None) -> TrainResult:
    """Train as `config` says and write OUT (a diffusers folder, or a LoRA adapter with `--lora`)."""
    import torch
    from accelerate import Accelerator

    silence_library_progress()
    from sdlite.training.trackers import accelerator_kwargs, check_trackers

    check_trackers(config.report_to)  # Accelerate would drop a tracker whose package is missing, silently
    # On a machine with no accelerator, cpu=True is what makes the processes of one run (--num-processes,
    # torchrun) join one gloo world (without it, each of them trains alone).
    no_accelerator = not torch.cuda.is_available() and not torch.backends.mps.is_available()
    if no_accelerator and config.mixed_precision == "fp16":  # Accelerate would silently train in fp32 instead
        raise UsageError(
            "--mixed-precision fp16 needs a GPU: on a CPU Accelerate runs no fp16 autocast (the UNet would train "
            "in fp32 beside fp16 encoders, and validation would fail); use --mixed-precision bf16 or no"
        )
    compiled = {}
    if config.compile:  # Accelerate compiles the prepared UNet with Inductor; caches live in sdlite's cache
        from accelerate.utils import TorchDynamoPlugin

        from sdlite.sampling.modes import compile_cache

        compile_cache()
        compiled = {"dynamo_plugin": TorchDynamoPlugin(backend="inductor")}
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, cpu=no_accelerator, **accelerator_kwargs(config), **compiled
    )
    emit = Emitter(on_event, accelerator.is_main_process)
    try:
        if config.component == "vae":
            from sdlite.training.vae import train_vae

            return train_vae(config, accelerator, emit, loss_hook)
        return _train(config, accelerator, emit, loss_hook, torch)
    finally:
        accelerator.end_training()  # tear the process group down cleanly (else gloo aborts at exit)
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()  # let a later train() in this process choose its own precision


@dataclass
class _Run:
    """One UNet training run's live state, built once and handed whole to each part of the loop: the model and
    its loaded components, the data, the accelerator, the optimizer, its schedule and the EMA."""

    config: TrainConfig
    plan: TrainPlan
    model: ResolvedModel
    dataset: Any
    layout: Any
    accelerator: Any
    emit: Emitter
    torch: Any
    class_set: ClassSet | None = None
    parts: _Parts | None = None  # type: ignore[assignment]
    optimizer: Any = None
    lr_schedule: Any = None
    validation_log: ValidationLog | None = None  # the held-out images' losses (--validation-data/-split)
    validation_inputs: list[Any] | None = None  # their fixed inputs, made at the first validation
    ema: Any = None
    wrapped: list[Any] = field(default_factory=list)  # the trained modules as prepared (DDP, compile), UNet first
    params: list[Any] = field(default_factory=list)  # what the optimizer updates (and the gradient clip sees)
    cache: Any = None

    @property
    def unet(self) -> Any:
        return self.wrapped[0] if self.wrapped and not self.config.embedding else self.parts.unet

    @property
    def text_encoders(self) -> list[Any]:
        """The text encoders as the loss calls them (prepared when trained), in the family's order."""
        if self.config.embedding and self.wrapped:  # textual inversion: only the text encoders are prepared
            return self.wrapped
        return self.wrapped[1:] if self.config.train_text_encoder and self.wrapped else self.parts.text_encoders


def _train(config: TrainConfig, accelerator: Any, emit: Emitter, loss_hook: LossHook | None, torch: Any) -> TrainResult:
    # 1. Plan: model and data checked, and the checkpoint to resume verified, before OUT is touched or weights load.
    run, resume = _plan(config, accelerator, emit, torch)
    prepare_out(config, accelerator, fresh=resume is None)
    for note in (*run.plan.data_warnings, *run.plan.skipped):
        emit("warning", message=note)
    run.class_set = _class_set(run)
    # 2. Components (frozen ones in the compute precision, trained ones in fp32), optimizer, schedule, EMA.
    _build(run)
    # 3. Resume: weights, optimizer, schedule and EMA from the verified checkpoint; the step says the rest.
    start_step = _resume(run, resume)
    prepared = accelerator.prepare(*run.parts.trained, run.optimizer)
    run.wrapped, run.optimizer = list(prepared[:-1]), prepared[-1]
    run.cache = _fill_cache(run)
    from sdlite.training.trackers import Trackers

    trackers = Trackers()
    trackers.start(accelerator, config, run.plan.to_dict(), start_step)
    if config.sample_at_start and start_step == 0:
        _samples(run, 0, config.model, None, "start")
    # 4. The loop: one optimizer step per `grad_accum` micro-batches on every process.
    log = LossLog(config.out, start_step, accelerator.is_main_process)
    if run.dataset.validation:
        run.validation_log = ValidationLog(config.out, start_step, accelerator.is_main_process)
    guard, pace, saved = FiniteGuard(emit), Pace(), []
    last_loss = _loop(run, start_step, log, guard, pace, saved, trackers, loss_hook)
    # 5. Output: the trained model (EMA weights with --ema), the last validation grid, the loss log and its curve.
    _save_output(run)
    if config.sample_prompts is not None:
        _samples(run, run.plan.steps, *_sampled_as(config, config.out), "final")
    plan = run.plan
    validating = config.validation_prompts or run.dataset.validation
    if validating and not (config.validate_every and plan.steps % config.validate_every == 0):
        _validate_and_report(run, plan.steps, trackers)
    log.close(plot=True)
    trackers.finish()
    rate = pace.overall()
    mfu = _mfu(plan, rate) if rate else {}
    emit(
        "done",
        out=str(config.out),
        steps=plan.steps,
        loss=last_loss,
        skipped=list(plan.skipped),
        bad_steps=guard.total,
        images_per_s=rate,
        **mfu,
        **_best_validation(run),
    )
    return TrainResult(config.out, plan.steps, last_loss, tuple(saved), plan.skipped, guard.total, rate, mfu.get("mfu"))


def _plan(config: TrainConfig, accelerator: Any, emit: Emitter, torch: Any) -> tuple[_Run, tuple[Path, int] | None]:
    """The run's plan (emitted), and the checkpoint it resumes from and its step, verified against this run's
    settings."""
    check_out(config)
    plan, dataset, model, layout = make_plan(config, accelerator.num_processes)
    check_optimizer(config.optimizer, config.lr, config.weight_decay, config.optimizer_args, accelerator.device.type)
    check_sample_prompts(config, accelerator.num_processes)
    if config.class_prompt is not None and config.class_data is None and (problem := filecache.unusable()):
        raise ResourceError(
            f"prior preservation keeps its class images in sdlite's cache folder, which cannot be used ({problem}): "
            "give --class-data DIR (a folder for them), or set SDLITE_CACHE_DIR to a writable folder"
        )
    plan = with_flops(plan, model, config, accelerator.device)
    emit("plan", **plan.to_dict())
    resume_from, resume = resume_folder(config), None
    if resume_from is not None:
        manifest = checkpoints.verify(resume_from, resume_settings(config, plan.num_processes))
        if manifest["step"] >= plan.steps:
            raise UsageError(
                f"{resume_from} is at step {manifest['step']} and this run ends at step {plan.steps}: nothing is "
                f"left to train, and resuming would replace the model in {config.out} with the checkpoint's; "
                f"give --max-steps (or --epochs) past step {manifest['step']}"
            )
        resume = (resume_from, manifest["step"])
    return _Run(config, plan, model, dataset, layout, accelerator, emit, torch), resume


def _class_set(run: _Run) -> ClassSet | None:
    """Prior preservation's class images (the run's, or each [[datasets]] table's own); missing ones are generated
    first, once, by the main process."""
    from sdlite.training.dreambooth import class_images

    config = run.config
    sources = {  # dataset -> (class prompt, class-data folder): its own, else the run's
        number: (spec.class_prompt, spec.class_data) if spec.class_prompt else (config.class_prompt, config.class_data)
        for number, spec in enumerate(config.datasets)
    }
    if not any(prompt for prompt, _ in sources.values()) if config.datasets else config.class_prompt is None:
        return None
    with run.accelerator.main_process_first():
        emit = run.emit if run.accelerator.is_main_process else None
        if not config.datasets:
            return ClassSet(tuple(class_images(config, emit)))
        examples: list[Any] = []
        groups: dict[int, tuple[int, ...]] = {}
        for number, (prompt, data) in sources.items():
            if prompt is not None:
                found = class_images(config, emit, (prompt, data))
                groups[number] = tuple(range(len(examples), len(examples) + len(found)))
                examples += found
        return ClassSet(tuple(examples), groups)


def _build(run: _Run) -> None:
    """Load the components and make the optimizer, its learning-rate schedule and the EMA."""
    config, torch = run.config, run.torch
    run.parts = _load_components(run.model, config, run.accelerator, torch)
    too_long = long_captions(run.parts.tokenizer, [e.caption for e in run.dataset.examples])
    if too_long:
        run.emit("warning", message=too_long)
    run.params = [p for m in run.parts.trained for p in m.parameters() if p.requires_grad]
    run.optimizer, kind = make_optimizer(
        run.params, config.optimizer, config.lr, config.weight_decay, config.optimizer_args, torch
    )
    run.emit(
        "speedups",
        applied=[
            kind,
            "SDPA attention",
            *_tf32(run.accelerator, torch),
            *(["channels_last"] if config.channels_last else []),
            *(["torch.compile (Inductor)"] if config.compile else []),
        ],
    )
    run.lr_schedule = make_schedule(
        config.lr_scheduler, run.optimizer, config.warmup_steps, run.plan.steps, config.lr_cycles
    )
    if config.ema:
        from diffusers.training_utils import EMAModel

        run.ema = EMAModel(run.parts.unet.parameters(), decay=config.ema_decay)


def _resume(run: _Run, resume: tuple[Path, int] | None) -> int:
    """Restore a verified checkpoint into the run; the step to start from (0 for a fresh run)."""
    if resume is None:
        return 0
    (folder, step), optimizer, ema = resume, run.optimizer, run.ema
    _load_trained_weights(run.parts, folder, run.config, run.torch)
    checkpoints.load_optimizer(optimizer, folder / "training")
    run.lr_schedule.load_state_dict(json.loads((folder / "training" / "lr_schedule.json").read_text()))
    if ema is not None:
        checkpoints.load_ema(ema, folder / "training")
    run.emit("resume", checkpoint=str(folder), step=step)
    return step


def _fill_cache(run: _Run) -> Any:
    """The latent and text-embedding cache, filled once (by the main process first), or None without one."""
    if not run.plan.cache:
        return None
    from sdlite.training.encoding_cache import CacheUnwritable, EncodingCache

    config, accelerator, torch = run.config, run.accelerator, run.torch
    shuffled = config.shuffle_captions or any(spec.shuffle_captions for spec in config.datasets)
    text_fixed = not config.train_text_encoder and not shuffled and not config.embedding
    masks = ("alpha" if config.alpha_mask else "files") if config.masked_loss else None
    cache = EncodingCache(run.parts, run.model, text_fixed, masks)
    counts, failed = {}, 0
    with accelerator.main_process_first():
        try:
            counts = cache.fill(run.dataset.examples, run.layout.sizes, accelerator.is_main_process)
            if run.class_set is not None:
                square = (run.plan.resolution, run.plan.resolution)
                examples = run.class_set.examples
                more = cache.fill(examples, (square,) * len(examples), accelerator.is_main_process, masked=False)
                counts = {k: counts[k] + more.get(k, 0) for k in counts}
        except CacheUnwritable:  # warned by the cache; the uncached path trains the same way
            failed = 1
    # The main process fills; every process must agree to run uncached when its writes failed.
    if accelerator.reduce(torch.tensor(failed, device=accelerator.device), "sum").item():
        return None
    run.emit("cache", **counts)
    return cache


def _loop(
    run: _Run,
    start_step: int,
    log: LossLog,
    guard: FiniteGuard,
    pace: Pace,
    saved: list[Path],
    trackers: Any,
    loss_hook: LossHook | None,
) -> float | None:
    """Every optimizer step from `start_step`; the last finite loss. Each micro-batch's inputs are drawn while
    the device runs the previous backward; the host waits on the device once per step, for the loss and the stop
    flag (one all-reduce), then queues the optimizer step. A stop signal (Ctrl-C, SIGTERM, SIGHUP) on any process
    keeps the step, checkpoints and stops (a second one ends the process at once)."""
    config, plan, accelerator = run.config, run.plan, run.accelerator
    stop, last_loss = _StopFlag(config.checkpoint_on_signal), None
    upcoming = _draw_micro(run, start_step * config.grad_accum) if start_step < plan.steps else None
    with stop.armed():
        for step in range(start_step, plan.steps):
            step_loss, stops, upcoming = _accumulate(run, step, upcoming, stop, loss_hook)
            pace.add(plan.effective_batch)
            if guard.finite(step_loss, step + 1):
                if config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(run.params, config.max_grad_norm)
                run.optimizer.step()
                if config.embedding:  # only the new token's rows change
                    ti.keep_only([_unwrapped(accelerator, m) for m in run.text_encoders], run.parts.tables,
                                 run.parts.token_rows)  # fmt: skip
                if run.ema is not None:
                    run.ema.step(run.parts.unet.parameters())
                last_loss = step_loss
            run.optimizer.zero_grad(set_to_none=True)
            lr = run.lr_schedule.get_last_lr()[0]  # the rate this step used
            run.lr_schedule.step()
            done = step + 1
            timing = pace.timing(plan.steps - done)
            log.add(done, step_loss, lr)
            run.emit(
                "step",
                step=done,
                steps=plan.steps,
                loss=step_loss,
                lr=lr,
                **timing,
                **_mfu(plan, timing["images_per_s"]),
            )
            trackers.log_step(done, step_loss, lr, timing["images_per_s"])
            _after_step(run, done, stop.seen(stops), guard, saved, trackers)
    return last_loss


def _accumulate(
    run: _Run, step: int, upcoming: Any, stop: _StopFlag, loss_hook: LossHook | None
) -> tuple[float, float, Any]:
    """Forward and backward over the step's micro-batches (the gradient all-reduced on the last one only);
    the step's mean loss over processes, the processes' stop requests, and the next step's first inputs."""
    config, accelerator, torch = run.config, run.accelerator, run.torch
    losses = []
    for micro in range(config.grad_accum):
        m = step * config.grad_accum + micro
        syncing = micro == config.grad_accum - 1
        with _no_sync(accelerator, run.wrapped, not syncing), accelerator.autocast():
            loss = _micro_loss(run, upcoming)
            if loss_hook is not None:
                loss = loss_hook(step, loss)
            accelerator.backward(loss / config.grad_accum)
        losses.append(loss.detach().float())
        if m + 1 < run.plan.steps * config.grad_accum:
            upcoming = _draw_micro(run, m + 1)
    requested = torch.tensor(float(stop.signum), device=accelerator.device)  # 0: none
    totals = accelerator.reduce(torch.stack([torch.stack(losses).mean(), requested]), "sum")
    totals[0] /= accelerator.num_processes  # the mean loss over processes
    step_loss, stops = totals.tolist()  # the step's one wait on the device
    return step_loss, stops, upcoming


def _after_step(run: _Run, done: int, stop: int, guard: FiniteGuard, saved: list[Path], trackers: Any) -> None:
    """Checkpoints (on a stop signal `stop`, then stop; and every --checkpoint-every) and validation grids after
    step `done`."""
    config, steps = run.config, run.plan.steps
    if stop and done < steps:  # a stop signal (on any process): this step is kept, then a checkpoint
        path = _save_checkpoint(run, done)
        run.emit("checkpoint", step=done, path=str(path), reason="interrupted" if stop == signal.SIGINT else "signal")
        what = "interrupted" if stop == signal.SIGINT else f"stopped by {signal_name(stop)}"
        raise Interrupted(f"{what} at step {done}; resume with --resume latest (checkpoint {path})", stop)
    # A checkpoint right after a non-finite loss could hold damaged state: keep the last good one.
    due = config.checkpoint_every and done % config.checkpoint_every == 0 and done < steps
    if due and guard.in_row == 0:
        path = _save_checkpoint(run, done)
        saved.append(path)
        run.emit("checkpoint", step=done, path=str(path))
        if config.sample_prompts is not None:
            _samples(run, done, *_sampled_as(config, path), path.name)
    if config.validate_every and done % config.validate_every == 0:
        _validate_and_report(run, done, trackers)


def _sampled_as(config: TrainConfig, folder: Path) -> tuple[str, Path | None]:
    """How a checkpoint or OUT is sampled: as the model it is, or (a LoRA) the base model with it."""
    return (config.model, folder) if config.lora else (str(folder), None)


def _samples(run: _Run, step: int, model: str, lora: Path | None, label: str) -> None:
    """--sample-prompts at one point of the run, by `sdlite sample` itself (main process)."""
    if run.accelerator.is_main_process:
        paths = sample_point(run.config, model, lora, label)
        run.emit("samples", step=step, paths=[str(p) for p in paths])


def _validate_and_report(run: _Run, step: int, trackers: Any) -> None:
    grid = _validate(run, step)
    if grid:
        run.emit("validation", step=step, path=str(grid))
        trackers.log_grid(step, grid)
    if run.dataset.validation and run.validation_log is not None:
        loss = _validation_loss(run)
        run.validation_log.add(step, loss)
        best = run.validation_log.best
        run.emit("validation_loss", step=step, loss=loss, best_step=best.step, best_loss=best.loss)
        trackers.log_validation_loss(step, loss)


def _best_validation(run: _Run) -> dict[str, Any]:
    """The lowest validation loss of the run and its step, for the end-of-run report."""
    best = run.validation_log.best if run.validation_log is not None else None
    if best is None or best.step is None:
        return {}
    return {"best_validation_step": best.step, "best_validation_loss": best.loss}


def _validation_loss(run: _Run) -> float:
    """The mean denoising loss of the held-out images at their fixed timesteps and noise (inputs made once)."""
    torch = run.torch
    if run.validation_inputs is None:
        run.validation_inputs = _validation_inputs(run)
    losses = []
    with torch.no_grad(), run.accelerator.autocast():
        for inputs in run.validation_inputs:
            losses.append(_denoising_loss(run, inputs).float())
    return float(torch.cat(losses).mean())


def _validation_inputs(run: _Run) -> list[_Inputs]:
    """Each validation image's noised latents at the fixed timesteps, targets and text: one batch per image."""
    from sdlite.data.images import crop_of, load_example, preprocess

    config, torch, parts, device = run.config, run.torch, run.parts, run.accelerator.device
    size = (run.plan.resolution, run.plan.resolution)
    steps = parts.noise_scheduler.config.num_train_timesteps
    made = []
    for number, example in enumerate(run.dataset.validation):
        image = load_example(example)
        pixels = preprocess(image, size, "center", False, 0)[None]
        numbers = crop_of(image.size, size, "center", False, 0).micro_conditioning()
        with torch.no_grad():
            dist = parts.vae.encode(to_device(pixels, parts.vae.device, parts.weight_dtype)).latent_dist
        mean, std = dist.mean.float(), dist.std.float()
        draws = fixed_draws(config.seed, number, steps, tuple(mean.shape[1:]))
        timesteps = to_device(torch.tensor([t for t, _, _ in draws]), device)
        sample_noise = to_device(torch.stack([d[1] for d in draws]), device)
        noise = to_device(torch.stack([d[2] for d in draws]), device)
        latents = (mean + std * sample_noise) * parts.vae.config.scaling_factor
        noisy = parts.noise_scheduler.add_noise(latents, noise, timesteps)
        target = _target(parts.noise_scheduler, latents, noise, timesteps)
        ids = [to_device(t, device) for t in token_ids(parts.tokenizers, [example.caption] * len(draws))]
        text = pooled = None
        if (
            not config.train_text_encoder and not config.embedding
        ):  # frozen: encoded once (the cache holds only the training captions)
            with torch.no_grad():
                text, pooled = encode(parts.family, run.text_encoders, ids)
            ids = None
        times = to_device(time_ids([numbers] * len(draws)), device) if parts.family.micro_conditioning else None
        made.append(_Inputs(noisy, timesteps, target, text, ids, pooled, times))
    return made


def _mfu(plan: TrainPlan, images_per_s: float) -> dict[str, float]:
    """Model FLOP utilisation over all processes' devices, when the peak is known."""
    if not plan.tflops_per_image or not plan.peak_tflops:
        return {}
    return {"mfu": images_per_s * plan.tflops_per_image / (plan.peak_tflops * plan.num_processes)}


def _tf32(accelerator: Any, torch: Any) -> list[str]:
    """TF32 matmuls and convolutions on GPUs that have them (Ampere and later): fp32 range, ~8x speed."""
    device = accelerator.device
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 0):
        return []
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return ["TF32"]


def resume_settings(config: TrainConfig, num_processes: int) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it: the settings that shape the weights, and
    the number of processes, which with the batch size decides every step's examples."""
    return config.fingerprint() | {"num_processes": num_processes}


def resume_folder(config: TrainConfig) -> Path | None:
    """The checkpoint this run continues from: `--resume latest` or a folder; `auto` takes the newest
    checkpoint when there is one and starts fresh when there is none (a preemptible job's restart)."""
    if config.resume == "auto":
        found = checkpoints.list_checkpoints(config.out)
        return found[-1] if found else None
    return checkpoints.find_resume(config.out, config.resume) if config.resume else None


def long_captions(tokenizer: Any, captions: list[str]) -> str | None:
    """One warning when captions run past what the text encoder reads (CLIP keeps its first 77 tokens)."""
    unique = sorted(set(captions))
    if not unique:
        return None
    limit = tokenizer.model_max_length
    lengths = {c: len(ids) for c, ids in zip(unique, tokenizer(unique, truncation=False).input_ids, strict=True)}
    long = [c for c in captions if lengths[c] > limit]
    if not long:
        return None
    example = max(unique, key=lambda c: lengths[c])
    return (
        f"{len(long)} of {len(captions)} captions are longer than the text encoder's {limit} tokens; the words "
        f"past that are never seen in training (longest: {lengths[example]} tokens, {example[:60]!r}...)"
    )


@dataclass
class _Parts:
    """The loaded components, text encoders and tokenizers in the family's order; `trained` lists the modules the
    optimizer updates, UNet first."""

    family: Family
    tokenizers: list[Any]
    text_encoders: list[Any]
    vae: Any
    unet: Any
    noise_scheduler: Any
    trained: list[Any]
    weight_dtype: Any
    token_rows: list[Any] = field(default_factory=list)  # --embedding: the new token's rows, per text encoder
    tables: list[Any] = field(default_factory=list)  # --embedding: each embedding table as loaded, to put back

    @property
    def tokenizer(self) -> Any:
        return self.tokenizers[0]

    @property
    def text_encoder(self) -> Any:
        return self.text_encoders[0]


def _load_components(model: ResolvedModel, config: TrainConfig, accelerator: Any, torch: Any) -> _Parts:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    root, safe, family = model.path, not model.uses_pickle, model.family
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision, torch.float32)
    # Frozen components load in the compute precision; trained ones in fp32 (kept so under autocast).
    text_dtype = torch.float32 if config.train_text_encoder or config.embedding else weight_dtype
    if model.single_file is not None:
        loaded = load_single_file(model)
        tokenizers = [loaded[name] for name in family.tokenizers]
        text_encoders = [loaded[name].to(dtype=text_dtype) for name in family.text_encoders]
        vae = loaded["vae"].to(dtype=weight_dtype)
        unet = loaded["unet"].to(dtype=torch.float32)
    else:
        tokenizers = [CLIPTokenizer.from_pretrained(root / name) for name in family.tokenizers]
        text_encoders = [
            # SDXL's second encoder has the projection its pooled output is made with
            (CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel).from_pretrained(
                root / name, use_safetensors=safe or None, dtype=text_dtype
            )
            for name in family.text_encoders
        ]
        vae = AutoencoderKL.from_pretrained(root / "vae", use_safetensors=safe or None, dtype=weight_dtype)
        unet = UNet2DConditionModel.from_pretrained(root / "unet", use_safetensors=safe or None, dtype=torch.float32)
    scheduler_config = model.configs()["scheduler"]
    if config.prediction_type:
        scheduler_config["prediction_type"] = PREDICTIONS[config.prediction_type]
    if config.zero_terminal_snr:  # betas rescaled so the last timestep is pure noise (Lin et al. 2024)
        scheduler_config |= ZERO_TERMINAL_SNR
    noise_scheduler = DDPMScheduler.from_config(scheduler_config)

    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())  # torch's fused scaled-dot-product attention
    vae.requires_grad_(False)
    for text_encoder in text_encoders:
        text_encoder.requires_grad_(config.train_text_encoder and not config.lora)
    unet.requires_grad_(not config.lora and not config.embedding)
    trained = [unet, *text_encoders] if config.train_text_encoder else [unet]
    token_rows, tables = [], []
    if config.embedding:  # textual inversion: the new token's embedding rows are all that trains
        assert config.init_token is not None
        token_rows = ti.add_token(tokenizers, text_encoders, config.embedding, config.init_token, config.num_vectors)
        for text_encoder in text_encoders:
            table = text_encoder.get_input_embeddings().weight
            table.requires_grad_(True)
            tables.append(table.detach().clone())
        trained = list(text_encoders)
    if config.lora:  # only the adapters' weights train; alpha is part of each adapter's config (and saved file)
        # peft draws the adapters' first matrices from torch's global generator: seeded from --seed, so the same
        # command trains the same adapter, and restored after, so nothing else depends on it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix(config.seed, LORA_INIT_SALT))
            unet.add_adapter(_lora_config(config, family, "unet"), adapter_name=LORA_ADAPTER)
            if config.train_text_encoder:
                # peft's own injection: transformers' add_adapter wants a newer peft than diffusers works with
                from peft import inject_adapter_in_model

                for name, text_encoder in zip(family.text_encoders, text_encoders, strict=True):
                    # in the family's order: the same adapters from the same seed
                    inject_adapter_in_model(_lora_config(config, family, name), text_encoder, adapter_name=LORA_ADAPTER)
    if family.micro_conditioning and config.train_text_encoder:
        # SDXL reads the first encoder's penultimate hidden states: its last layer and final norm take no part in
        # the loss. Frozen, they are left out of the optimizer and of DDP, which fails on parameters with no grad.
        tower = getattr(text_encoders[0], "text_model", text_encoders[0])
        for module in (tower.encoder.layers[-1], tower.final_layer_norm):
            module.requires_grad_(False)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if config.train_text_encoder:
            for text_encoder in text_encoders:
                text_encoder.gradient_checkpointing_enable()
    for module in (vae, *text_encoders, unet):
        module.to(accelerator.device)
    if config.channels_last:  # saved files stay contiguous: safetensors writers make them so
        unet.to(memory_format=torch.channels_last)
    for module in trained:
        module.train()
    tables = [table.to(accelerator.device) for table in tables]
    return _Parts(
        family, tokenizers, text_encoders, vae, unet, noise_scheduler, trained, weight_dtype, token_rows, tables
    )


def _lora_config(config: TrainConfig, family: Family, component: str) -> Any:
    """peft's config of `component`'s adapter: --lora-type, its targets and ranks."""
    targets = adapters.target_modules(family, component, config.lora_targets, config.lora_conv_rank is not None)
    return adapters.peft_config(
        config.lora_type,
        config.lora_rank,
        config.lora_alpha or config.lora_rank,
        targets,
        family.conv_lora_targets,
        config.lora_conv_rank,
        config.lora_conv_alpha,
    )


@dataclass(frozen=True)
class ClassSet:
    """Prior preservation's class images: each instance example is trained beside one of them, chosen by
    its global position in the run from a permutation per pass over the class images."""

    examples: tuple[Any, ...]
    # [[datasets]] with class images: dataset -> its class images' indices in `examples` (a dataset without any
    # trains no class image beside its own); empty: every example draws from all of them
    groups: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def pick(self, batch: MicroBatch, seed: int, datasets: list[int]) -> list[int | None]:
        """The class image (index into `examples`) beside each instance example of `batch`, None for none."""
        import torch

        picked: list[int | None] = []
        for position, dataset in zip(batch.positions, datasets, strict=True):
            n = batch.step * batch.effective_batch + position  # the instance example's number in the whole run
            group = self.groups.get(dataset, ()) if self.groups else range(len(self.examples))
            if not group:
                picked.append(None)
                continue
            cycle, index = divmod(n, len(group))
            salt = (seed, cycle, 7) if not self.groups else (seed, cycle, 7, dataset)
            order = torch.randperm(len(group), generator=torch.Generator().manual_seed(mix(*salt)))
            picked.append(group[int(order[index])])
        return picked


@dataclass(frozen=True)
class _Inputs:
    """Everything a loss needs that does not depend on the trained weights, already on the device.

    Drawn for the next micro-batch while the device still runs this one's backward pass (copies are
    non-blocking from pinned memory on CUDA), so the host never makes the device wait between steps.
    """

    noisy: Any  # latents with the drawn noise at the drawn timesteps
    timesteps: Any
    target: Any  # the noise, or the velocity for v-prediction
    text: Any  # caption embeddings when no gradient flows through them, else None
    ids: Any  # token ids for the trained text encoders (one tensor each), else None
    pooled: Any = None  # SDXL: the pooled caption embedding, when no gradient flows through it
    time_ids: Any = None  # SDXL: each image's original size, crop top-left and target size
    mask: Any = None  # --masked-loss: each image's loss mask on the latent grid, (batch, 1, h, w)


def _draw_micro(run: _Run, m: int) -> tuple[_Inputs, _Inputs | None]:
    """This process's inputs for micro-batch `m`: its examples and, with prior preservation, their class images."""
    config, class_set = run.config, run.class_set
    batch = MicroBatch.of(m, run.plan, run.layout, config, run.accelerator.process_index)
    examples = [run.dataset.examples[i] for i in batch.indices]
    with run.accelerator.autocast():
        inputs = _draw(run, examples, batch.indices, batch.size, batch.generators(config.seed), batch, augment=True)
        if class_set is None:
            return inputs, None
        picked = class_set.pick(batch, config.seed, [e.dataset for e in examples])
        kept = [k for k, i in enumerate(picked) if i is not None]
        if not kept:
            return inputs, None
        chosen = [picked[k] for k in kept]
        class_examples = [class_set.examples[i] for i in chosen]
        square = (batch.resolution, batch.resolution)
        gens = batch.generators(config.seed, 1)
        gens = [gens[k] for k in kept]
        return inputs, _draw(run, class_examples, chosen, square, gens, batch, augment=False)


def _micro_loss(run: _Run, drawn: tuple[_Inputs, _Inputs | None]) -> Any:
    """The noise-prediction loss of one micro-batch on this process (plus the weighted class loss)."""
    inputs, class_inputs = drawn
    loss = _denoising_loss(run, inputs).mean()
    if class_inputs is not None:
        loss = loss + run.config.prior_loss_weight * _denoising_loss(run, class_inputs).mean()
    return loss


def _draw(
    run: _Run,
    examples: list[Any],
    indices: Any,
    size: tuple[int, int],
    gens: list[Any],
    batch: MicroBatch,
    augment: bool,
) -> _Inputs:
    """The noised latents, timesteps, targets and text of `examples` at `size`, every draw from `gens`."""
    config, torch, parts, device = run.config, run.torch, run.parts, run.accelerator.device
    captions = _captions(run, examples, gens, batch)
    mean, std, cuts = _latent_distribution(run, examples, indices, size, batch, augment)
    sample_noise = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in gens])
    noise = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in gens])
    if config.noise_offset:
        offset = torch.stack([torch.randn(mean.shape[1], 1, 1, generator=g) for g in gens])
        noise = noise + config.noise_offset * offset
    steps = parts.noise_scheduler.config.num_train_timesteps
    timesteps = torch.stack([torch.randint(0, steps, (), generator=g) for g in gens])
    mean, std, sample_noise, noise, timesteps = (
        to_device(t, device) for t in (mean, std, sample_noise, noise, timesteps)
    )
    latents = (mean + std * sample_noise) * parts.vae.config.scaling_factor
    text, pooled, ids = _text(run, captions)
    noised_with = noise
    if config.input_perturbation:  # the noise the latents get differs a little from the one to predict
        wobble = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in gens])
        noised_with = noise + config.input_perturbation * to_device(wobble, device)
    noisy = parts.noise_scheduler.add_noise(latents, noised_with, timesteps)
    target = _target(parts.noise_scheduler, latents, noise, timesteps)
    times = to_device(time_ids(cuts), device) if parts.family.micro_conditioning else None
    mask = None
    if config.masked_loss and augment:  # the training images' masks (class images count everywhere)
        mask = to_device(_masks(run, examples, indices, size, batch, mean.shape[-1]), device)
    return _Inputs(noisy, timesteps, target, text, ids, pooled, times, mask)


def _masks(run: _Run, examples: list[Any], indices: Any, size: tuple[int, int], batch: MicroBatch, width: int) -> Any:
    """Each example's loss mask, cut by the same resize, crop and flip as its image (`_latent_distribution`'s seeds),
    on the latent grid (`width` latent pixels across)."""
    from sdlite.data.images import load_example

    config, torch = run.config, run.torch
    if run.cache is not None and run.cache.masks:  # cut as the cached latents are (a fixed augmentation)
        return run.cache.loss_masks(examples, [size] * len(examples))
    masks = []
    for example, i in zip(examples, indices, strict=True):
        mask = load_mask(example, config.alpha_mask)
        image_size = example.size or load_example(example).size
        seed = mix(config.seed, batch.epoch, i)
        masks.append(latent_mask(mask, image_size, size, config.crop, config.random_flip, seed, size[0] // width))
    return torch.stack(masks)


def _target(noise_scheduler: Any, latents: Any, noise: Any, timesteps: Any) -> Any:
    """What the UNet learns to predict: the noise, or v for a v-prediction model."""
    if noise_scheduler.config.prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    return noise


def _captions(run: _Run, examples: list[Any], gens: list[Any], batch: MicroBatch) -> list[str]:
    """The examples' captions as this step trains them: dropped (for guidance) and tag-shuffled as configured."""
    config, torch = run.config, run.torch
    settings = [_caption_settings(config, e) for e in examples]  # a [[datasets]] table's own, else the run's
    drop = [
        rate > 0 and torch.rand((), generator=g).item() < rate for (rate, _, _), g in zip(settings, gens, strict=True)
    ]
    captions = ["" if d else e.caption for d, e in zip(drop, examples, strict=True)]
    if not any(shuffle for _, shuffle, _ in settings):
        return captions
    from sdlite.data.captions import shuffle_tags

    return [
        shuffle_tags(c, keep, mix(config.seed, batch.step, p, 2)) if c and shuffle else c
        for c, p, (_, shuffle, keep) in zip(captions, batch.positions, settings, strict=True)
    ]


def _caption_settings(config: TrainConfig, example: Any) -> tuple[float, bool, int]:
    """(caption dropout, shuffle, keep tokens) for one example: its dataset's where the table sets them."""
    own = example.captions
    if own is None:
        return config.caption_dropout, config.shuffle_captions, config.keep_tokens
    return (
        config.caption_dropout if own.caption_dropout is None else own.caption_dropout,
        config.shuffle_captions if own.shuffle_captions is None else own.shuffle_captions,
        config.keep_tokens if own.keep_tokens is None else own.keep_tokens,
    )


def _latent_distribution(
    run: _Run, examples: list[Any], indices: Any, size: tuple[int, int], batch: MicroBatch, augment: bool
) -> tuple[Any, Any, list[tuple[int, ...]]]:
    """The VAE's latent mean and std of each example at `size` (from the cache, or encoded now), and each image's
    micro-conditioning: original size, crop top-left and target size (what SDXL is told)."""
    config, torch, parts = run.config, run.torch, run.parts
    if run.cache is not None:
        return run.cache.latent_stats(examples, [size] * len(examples))
    from sdlite.data.images import crop_of, load_example, preprocess

    crop, flip = (config.crop, config.random_flip) if augment else ("center", False)
    images, numbers = [], []
    for e, i in zip(examples, indices, strict=True):
        image, seed = load_example(e), mix(config.seed, batch.epoch, i, *(() if augment else (1,)))
        images.append(preprocess(image, size, crop, flip, seed))
        numbers.append(crop_of(image.size, size, crop, flip, seed).micro_conditioning())
    with torch.no_grad():
        dist = parts.vae.encode(to_device(torch.stack(images), parts.vae.device, parts.weight_dtype)).latent_dist
    return dist.mean.float(), dist.std.float(), numbers


def _text(run: _Run, captions: list[str]) -> tuple[Any, Any, Any]:
    """(embeddings, pooled embeddings or None, None) when no gradient flows through the text encoders, else
    (None, None, token ids per encoder)."""
    device = run.accelerator.device
    if run.cache is not None and run.cache.has_text:
        hidden, pooled = run.cache.text_embeddings(captions)
        return to_device(hidden, device), None if pooled is None else to_device(pooled, device), None
    ids = [to_device(tokens, device) for tokens in token_ids(run.parts.tokenizers, captions)]
    if run.config.train_text_encoder or run.config.embedding:
        return None, None, ids
    with run.torch.no_grad():  # frozen: encoded now, ahead of the step
        hidden, pooled = encode(run.parts.family, run.text_encoders, ids)
        return hidden, pooled, None


def _denoising_loss(run: _Run, inputs: _Inputs) -> Any:
    """Per-example (min-SNR weighted) noise-prediction losses."""
    torch, scheduler = run.torch, run.parts.noise_scheduler
    text, pooled = inputs.text, inputs.pooled
    if inputs.ids is not None:
        text, pooled = encode(run.parts.family, run.text_encoders, inputs.ids)
    noisy = inputs.noisy
    if run.config.channels_last:
        noisy = noisy.contiguous(memory_format=torch.channels_last)
    added = {}
    if inputs.time_ids is not None:  # SDXL: the pooled text and the micro-conditioning numbers
        added["added_cond_kwargs"] = {
            "text_embeds": pooled.to(noisy.dtype),
            "time_ids": inputs.time_ids.to(noisy.dtype),
        }
    prediction = run.unet(noisy, inputs.timesteps, encoder_hidden_states=text.to(dtype=noisy.dtype), **added).sample
    config = run.config
    threshold = None
    if config.loss != "l2":
        threshold = huber_threshold(scheduler, inputs.timesteps, config.huber_c, config.huber_schedule)
    per_element = elementwise_loss(prediction, inputs.target, config.loss, threshold)
    if inputs.mask is not None:  # --masked-loss: what the mask leaves out adds nothing (kohya: not renormalised)
        per_element = per_element * inputs.mask
    return per_element.mean(dim=(1, 2, 3)) * loss_weights(scheduler, inputs.timesteps, config.snr_gamma)


# Zero terminal SNR: the rescaled betas, and trailing timesteps so sampling starts at the pure-noise step.
ZERO_TERMINAL_SNR = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}


def to_device(tensor: Any, device: Any, dtype: Any = None) -> Any:
    """`tensor` on `device`; from the CPU to a CUDA device through pinned memory without blocking, so the host
    can run ahead. A tensor already on a GPU (the VAE's latents without the cache) moves as it is: only CPU
    memory can be pinned."""
    import torch

    # Cast after the copy, on the device: a CPU-side cast would make a new, unpinned tensor.
    if tensor.device.type == "cpu" and torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True).to(dtype=dtype)
    return tensor.to(device, dtype=dtype)


def loss_weights(noise_scheduler: Any, timesteps: Any, snr_gamma: float | None) -> Any:
    """Min-SNR-gamma weights (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v."""
    import torch

    if snr_gamma is None:
        return torch.ones(timesteps.shape, device=timesteps.device)
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    clipped = torch.clamp(snr, max=snr_gamma)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


@contextlib.contextmanager
def _no_sync(accelerator: Any, modules: list[Any], skip: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on micro-batches that do not end an accumulation."""
    with contextlib.ExitStack() as stack:
        if skip:
            for module in modules:
                stack.enter_context(accelerator.no_sync(module))
        yield


def _unwrapped(accelerator: Any, module: Any) -> Any:
    """The module itself, outside DDP and torch.compile's wrapper (whose state-dict keys gain `_orig_mod.`):
    what is saved, validated and averaged."""
    return accelerator.unwrap_model(module, keep_torch_compile=False)


def _assemble(run: _Run, folder: Path) -> None:
    """Write a usable model into `folder`: frozen components linked from the base, trained ones saved."""
    config, model, parts, family = run.config, run.model, run.parts, run.parts.family
    unet = _unwrapped(run.accelerator, run.unet)
    text_encoders = dict(
        zip(family.text_encoders, (_unwrapped(run.accelerator, m) for m in run.text_encoders), strict=True)
    )
    if config.lora:
        _save_lora(folder, unet, text_encoders, config, family)
        return
    if config.embedding:  # textual inversion: the embedding, in A1111's and diffusers' layouts
        ti.save(folder, config.embedding, list(text_encoders.values()), parts.token_rows)
        return
    frozen = ("vae", *family.tokenizers, *(() if config.train_text_encoder else family.text_encoders))
    if model.single_file is not None:  # no base folder to link from: save the frozen parts themselves
        loaded = {"vae": parts.vae, **dict(zip(family.tokenizers, parts.tokenizers, strict=True)), **text_encoders}
        for name in frozen:
            loaded[name].save_pretrained(folder / name, **({} if name.startswith("tokenizer") else SAFE))
        (folder / "model_index.json").write_text(json.dumps(family.model_index, indent=2))
    else:
        for name in (*frozen, "model_index.json"):
            source = model.path / name
            if source.is_dir():
                checkpoints.link_or_copy_tree(source, folder / name)
            else:
                shutil.copy2(source, folder / name)
    (folder / "scheduler").mkdir()
    scheduler_config = model.configs()["scheduler"]
    scheduler_config["prediction_type"] = parts.noise_scheduler.config.prediction_type
    if config.zero_terminal_snr:  # samplers read the rescaled schedule, from its last (pure-noise) timestep
        scheduler_config |= ZERO_TERMINAL_SNR
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2))
    settings, _ = model_settings_record(str(model.path))
    if settings is not None:  # the base's recommended sampling settings (sdlite.json) stay with its fine-tune
        (folder / MODEL_DEFAULTS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    if config.train_text_encoder:
        for name, text_encoder in text_encoders.items():
            text_encoder.save_pretrained(folder / name, safe_serialization=True)


def _save_lora(folder: Path, unet: Any, text_encoders: dict[str, Any], config: TrainConfig, family: Family) -> None:
    """LORA_FILE with the UNet adapter (and the text encoders' with --train-text-encoder), each saved with
    its PEFT config as diffusers' adapter metadata: loaders then apply the trained alpha, not alpha = rank."""
    from peft.utils import get_peft_model_state_dict

    parts = {"unet": unet, **(text_encoders if config.train_text_encoder else {})}
    if config.lora_type in adapters.DIFFUSERS_TYPES:
        kwargs: dict[str, Any] = {}
        for name, module in parts.items():
            state = get_peft_model_state_dict(module, adapter_name=LORA_ADAPTER)
            # peft's own names (lora_A/lora_B): diffusers' older names exist only for attention layers, and a file
            # that mixes both loses its attention pairs in diffusers 0.42's loader
            kwargs[f"{name}_lora_layers"] = state
            kwargs[f"{name}_lora_adapter_metadata"] = module.peft_config[LORA_ADAPTER].to_dict()
        family.pipeline_class("text-to-image").save_lora_weights(folder, safe_serialization=True, **kwargs)
        source = folder / lora_format.LORA_FILE
    else:  # DoRA, LoHa, LoKr: peft's names and configs in one file (adapters.DIFFUSERS_TYPES says why)
        source = folder / lora_format.PEFT_FILE
        tensors: dict[str, Any] = {}
        configs: dict[str, Any] = {}
        for name, module in parts.items():
            state = get_peft_model_state_dict(module, adapter_name=LORA_ADAPTER)
            tensors |= {f"{name}.{key}": value.detach().cpu().contiguous() for key, value in state.items()}
            configs |= {f"{name}.{key}": value for key, value in module.peft_config[LORA_ADAPTER].to_dict().items()}
        metadata = {lora_format.METADATA_KEY: json.dumps(configs, default=list), "format": "pt"}
        lora_format.save_atomically(tensors, metadata, source)
    # The same adapter in the layout A1111, Forge and ComfyUI load (kohya names, `.alpha` tensors), named for the run.
    name = config.output_name or Path(config.out).name
    modelspec = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{LORA_ARCHITECTURES[family.key]}/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": name,
    }
    norms = _dora_norms(parts) if config.lora_type == "dora" else None
    lora_format.export_lora(source, folder / f"{name}.safetensors", "kohya", modelspec, norms)


def _dora_norms(parts: dict[str, Any]) -> dict[tuple[str, str], Any]:
    """|W| / |W + delta| per output row of every DoRA layer (what the LyCORIS copy's `dora_scale` needs)."""
    import torch

    from sdlite.formats import lycoris

    norms = {}
    with torch.no_grad():
        for component, module in parts.items():
            for path, layer in module.named_modules():
                if LORA_ADAPTER in getattr(layer, "lora_magnitude_vector", {}):
                    weight = layer.get_base_layer().weight.float()
                    delta = layer.get_delta_weight(LORA_ADAPTER).float().reshape(weight.shape)
                    norms[(component, path)] = lycoris.norm_ratio(weight, delta).cpu()
    return norms


def _save_checkpoint(run: _Run, step: int) -> Path:
    """Write checkpoint `step` atomically (main process only), then drop the oldest beyond --keep-checkpoints."""
    config, accelerator = run.config, run.accelerator
    final = checkpoints.checkpoint_dir(config.out, step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with writing(f"checkpoint {final}"):
            final.parent.mkdir(parents=True, exist_ok=True)
            staging = new_folder(final.parent, f".{final.name}.")  # the umask's mode, unlike mkdtemp's 0700
            try:
                _write_checkpoint(run, staging)
                checkpoints.write_manifest(staging, step, resume_settings(config, accelerator.num_processes))
                checkpoints.commit(staging, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        checkpoints.prune(config.out, config.keep_checkpoints, step)
    accelerator.wait_for_everyone()
    return final


def _write_checkpoint(run: _Run, staging: Path) -> None:
    """Everything a checkpoint holds except its manifest: the usable model and the training state."""
    config, accelerator, optimizer = run.config, run.accelerator, run.optimizer
    _assemble(run, staging)
    state = staging / "training"
    state.mkdir()
    if config.lora:
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        raw = [_unwrapped(accelerator, m) for m in (run.unet, *run.text_encoders)]
        for file, module in _adapter_files(config, run.parts.family, raw):
            adapter = get_peft_model_state_dict(module, adapter_name=LORA_ADAPTER)
            save_file({k: v.detach().cpu().contiguous() for k, v in adapter.items()}, state / file)
    checkpoints.save_optimizer(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, state)
    (state / "lr_schedule.json").write_text(json.dumps(run.lr_schedule.state_dict()))
    if run.ema is not None:
        checkpoints.save_ema(run.ema, state)


def _load_trained_weights(parts: _Parts, folder: Path, config: TrainConfig, torch: Any) -> None:
    from safetensors.torch import load_file

    if config.lora:
        from peft.utils import set_peft_model_state_dict

        for file, module in _adapter_files(config, parts.family, [parts.unet, *parts.text_encoders]):
            set_peft_model_state_dict(module, load_file(folder / "training" / file), adapter_name=LORA_ADAPTER)
        return
    if config.embedding:
        ti.load(folder, config.embedding, parts.text_encoders, parts.token_rows)
        return
    parts.unet.load_state_dict(_load_folder_weights(folder / "unet", load_file))
    if config.train_text_encoder:
        for name, text_encoder in zip(parts.family.text_encoders, parts.text_encoders, strict=True):
            text_encoder.load_state_dict(_load_folder_weights(folder / name, load_file))


def _adapter_files(config: TrainConfig, family: Family, modules: list[Any]) -> list[tuple[str, Any]]:
    """(file under training/, module) of each LoRA adapter a checkpoint holds for exact resume; `modules` are the
    UNet and the text encoders in the family's order."""
    unet, *text_encoders = modules
    return [
        ("adapter.safetensors", unet),
        *(
            [(f"{name}_adapter.safetensors", m) for name, m in zip(family.text_encoders, text_encoders, strict=True)]
            if config.train_text_encoder
            else []
        ),
    ]


def _load_folder_weights(folder: Path, load_file: Any) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(file))
    return state


def _save_output(run: _Run) -> None:
    """OUT becomes the trained model (EMA weights with --ema) plus the resolved config and plan."""
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out = Path(run.config.out)
        with writing(f"the trained model in {out}"):
            out.mkdir(parents=True, exist_ok=True)
            staging = new_folder(out, ".final.")
            try:
                with _ema_weights(run.ema, _unwrapped(accelerator, run.unet)):
                    _assemble(run, staging)
                checkpoints.replace_into(staging, out)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            write_run_record(out, run.config, run.plan)
    accelerator.wait_for_everyone()


@contextlib.contextmanager
def _ema_weights(ema: Any, unet: Any) -> Iterator[None]:
    """Temporarily put the EMA weights into the UNet (for saving or validation), then restore."""
    if ema is None:
        yield
        return
    ema.store(unet.parameters())
    ema.copy_to(unet.parameters())
    try:
        yield
    finally:
        ema.restore(unet.parameters())


def _validate(run: _Run, step: int) -> Path | None:
    """Sample the validation prompts with fixed seeds and save a labelled grid under OUT/validation."""
    config, accelerator, parts, torch = run.config, run.accelerator, run.parts, run.torch
    if not accelerator.is_main_process:
        return None
    from diffusers import DDIMScheduler

    from sdlite.sampling.grid import contact_sheet

    raw_unet = _unwrapped(accelerator, run.unet)
    scheduler = DDIMScheduler.from_config(
        run.model.configs()["scheduler"],
        prediction_type=parts.noise_scheduler.config.prediction_type,
        **(ZERO_TERMINAL_SNR if config.zero_terminal_snr else {}),
    )
    family = parts.family
    pipe = family.pipeline_class("text-to-image")(
        vae=parts.vae,
        unet=raw_unet,
        scheduler=scheduler,
        **dict(zip(family.text_encoders, (_unwrapped(accelerator, m) for m in run.text_encoders), strict=True)),
        **dict(zip(family.tokenizers, parts.tokenizers, strict=True)),
        **family.pipeline_options,
    )
    pipe.set_progress_bar_config(disable=True)
    images = []
    raw_unet.eval()
    with _ema_weights(run.ema, raw_unet), torch.no_grad(), accelerator.autocast():
        for i, prompt in enumerate(config.validation_prompts):
            generator = torch.Generator("cpu").manual_seed(config.seed + i)
            image = pipe(prompt, num_inference_steps=VALIDATION_STEPS, generator=generator).images[0]
            images.append((image, f"{prompt} | seed {config.seed + i}"))
    raw_unet.train()
    folder = Path(config.out) / "validation"
    path = folder / f"step-{step:06d}.png"
    with writing(f"validation grid {path}"):
        folder.mkdir(parents=True, exist_ok=True)
        contact_sheet(images).save(path)
    return path


class _StopFlag:
    """A stop signal (Ctrl-C, SIGTERM, SIGHUP) sets a flag; the loop saves a checkpoint at the next step boundary
    and stops. A second signal ends the run at once, wherever it is (a checkpoint being written is staged, never
    half-visible). With `--no-checkpoint-on-signal` the signals keep their usual meaning: an immediate end."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled, self.signum = enabled, 0

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:  # raised where the run is: no further step, no checkpoint
            raise Interrupted(f"{signal_name(signum)} again: stopped at once; resume from the last checkpoint", signum)
        self.signum = signum

    def seen(self, total: float) -> int:
        """The signal to stop for after a step, 0 for none, decided by the step's all-reduced `total` alone (each
        process reports its signal's number, 0 for none), so every process stops at the same step: one that got a
        signal after reporting stops a step later with the others. Named as this process's own signal, else as the
        sum says (one number when one process, or all alike, got it)."""
        if total <= 0:
            return 0
        if self.signum:
            return self.signum
        number = int(total)
        return number if number in STOP_SIGNALS else signal.SIGTERM

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with sigint_to(self._handle):
            yield
