"""Fine-tuning: `train(config)` minimises the noise-prediction loss with Accelerate.

What a run shares with VAE training (the plan, the batch order and per-example seeding, the optimizer,
OUT's checks, the finite-loss guard, events and the loss log) lives in sdlite/runs.py. That seeding
leaves nothing to hidden RNG state, so a resumed run sees exactly the batches and noise of an
uninterrupted one, whatever the number of processes, and checkpoints need no pickled RNG state.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlite.errors import Interrupted, UsageError, sigint_to, writing
from sdlite.families.sd1 import SD1
from sdlite.models.loading import ResolvedModel, load_single_file, silence_library_progress
from sdlite.models.source import MODEL_DEFAULTS_FILE, model_settings_record
from sdlite.seeds import mix
from sdlite.staging import new_folder
from sdlite.training import checkpoints
from sdlite.training.config import TrainConfig
from sdlite.training.out_folder import check_out, prepare_out, write_run_record
from sdlite.training.plan import TrainPlan, make_plan, with_flops
from sdlite.training.reporting import Emitter, EventFn, LossLog, Pace, TrainResult
from sdlite.training.steps import FiniteGuard, LossHook, MicroBatch, make_optimizer

VALIDATION_STEPS = 25
LORA_TARGETS = list(SD1.lora_targets)
# The CLIP attention projections: the text-encoder LoRA targets of kohya's sd-scripts and diffusers' scripts.
TEXT_LORA_TARGETS = list(SD1.text_lora_targets)
LORA_ADAPTER = "default"  # the adapter name training gives its LoRA(s)
LORA_INIT_SALT = 0x4C6F5241  # "LoRA": the adapters' initial weights, a seed stream of their own
SAFE = {"safe_serialization": True}


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
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=no_accelerator, **accelerator_kwargs(config),
                              **compiled)  # fmt: skip
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


def _train(config: TrainConfig, accelerator: Any, emit: Emitter, loss_hook: LossHook | None, torch: Any) -> TrainResult:
    # 1. Plan: model and data checked before any weights load.
    check_out(config)
    plan, dataset, model, layout = make_plan(config, accelerator.num_processes)
    plan = with_flops(plan, model, config, accelerator.device)
    emit("plan", **plan.to_dict())
    resume_from = resume_folder(config)
    manifest = None
    if resume_from is not None:  # checked before OUT is touched or any weights load
        manifest = checkpoints.verify(resume_from, resume_settings(config, plan.num_processes))
        if manifest["step"] >= plan.steps:
            raise UsageError(
                f"{resume_from} is at step {manifest['step']} and this run ends at step {plan.steps}: nothing is "
                f"left to train, and resuming would replace the model in {config.out} with the checkpoint's; "
                f"give --max-steps (or --epochs) past step {manifest['step']}"
            )
    prepare_out(config, accelerator, fresh=resume_from is None)
    for note in plan.skipped:
        emit("warning", message=note)
    class_set = None
    if config.class_prompt is not None:  # prior preservation: missing class images are generated first, once
        from sdlite.training.dreambooth import class_images

        with accelerator.main_process_first():
            class_set = ClassSet(tuple(class_images(config, emit if accelerator.is_main_process else None)))

    # 2. Components: frozen ones in the compute precision, trained ones in fp32.
    parts = _load_components(model, config, accelerator, torch)
    too_long = long_captions(parts.tokenizer, [e.caption for e in dataset.examples])
    if too_long:
        emit("warning", message=too_long)
    params = [p for m in parts.trained for p in m.parameters() if p.requires_grad]
    optimizer, kind = make_optimizer(params, config.lr, torch)
    emit("speedups", applied=[kind, "SDPA attention", *_tf32(accelerator, torch),
                              *(["channels_last"] if config.channels_last else []),
                              *(["torch.compile (Inductor)"] if config.compile else [])])  # fmt: skip
    from diffusers.optimization import get_scheduler

    lr_schedule = get_scheduler(
        config.lr_scheduler, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=plan.steps
    )
    ema = None
    if config.ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(parts.unet.parameters(), decay=config.ema_decay)

    # 3. Resume: weights, optimizer, schedule and EMA from a verified checkpoint; the step says the rest.
    start_step = 0
    if resume_from is not None and manifest is not None:
        folder = resume_from
        _load_trained_weights(parts, folder, config, torch)
        checkpoints.load_optimizer(optimizer, folder / "training")
        lr_schedule.load_state_dict(json.loads((folder / "training" / "lr_schedule.json").read_text()))
        if ema is not None:
            checkpoints.load_ema(ema, folder / "training")
        start_step = manifest["step"]
        emit("resume", checkpoint=str(folder), step=start_step)

    prepared = accelerator.prepare(*parts.trained, optimizer)
    wrapped, optimizer = list(prepared[:-1]), prepared[-1]
    unet = wrapped[0]
    text_encoder = wrapped[1] if config.train_text_encoder else parts.text_encoder

    cache = None
    if plan.cache:
        from sdlite.training.encoding_cache import EncodingCache

        cache = EncodingCache(parts, model, not config.train_text_encoder and not config.shuffle_captions)
        with accelerator.main_process_first():
            counts = cache.fill(dataset.examples, layout.sizes, accelerator.is_main_process)
            if class_set is not None:
                square = (plan.resolution, plan.resolution)
                more = cache.fill(class_set.examples, (square,) * len(class_set.examples), accelerator.is_main_process)
                counts = {k: counts[k] + more[k] for k in counts}
        emit("cache", **counts)

    from sdlite.training.trackers import Trackers

    trackers = Trackers()
    trackers.start(accelerator, config, plan.to_dict(), start_step)

    # 4. The loop: one optimizer step per `grad_accum` micro-batches on every process. Each micro-batch's
    # inputs are drawn while the device runs the previous backward; the host waits on the device once per
    # step, for the loss and the stop flag (one all-reduce), then queues the optimizer step.
    log = LossLog(config.out, start_step, accelerator.is_main_process)
    stop = _StopFlag()
    guard, last_loss, saved = FiniteGuard(emit), None, []
    pace = Pace()
    device, micro_batches = accelerator.device, plan.steps * config.grad_accum

    def draw(m: int) -> tuple[_Inputs, _Inputs | None]:
        batch = MicroBatch.of(m, plan, layout, config, accelerator.process_index)
        with accelerator.autocast():
            return _draw_micro(batch, dataset, class_set, parts, text_encoder, cache, config, device, torch)

    upcoming = draw(start_step * config.grad_accum) if start_step < plan.steps else None
    with stop.armed():
        for step in range(start_step, plan.steps):
            losses = []
            for micro in range(config.grad_accum):
                m = step * config.grad_accum + micro
                syncing = micro == config.grad_accum - 1
                with _no_sync(accelerator, wrapped, not syncing), accelerator.autocast():
                    loss = _micro_loss(upcoming, parts, unet, text_encoder, config)
                    if loss_hook is not None:
                        loss = loss_hook(step, loss)
                    accelerator.backward(loss / config.grad_accum)
                losses.append(loss.detach().float())
                if m + 1 < micro_batches:
                    upcoming = draw(m + 1)
            flags = torch.stack([torch.stack(losses).mean(), torch.tensor(float(stop.requested), device=device)])
            totals = accelerator.reduce(flags, "sum")
            totals[0] /= accelerator.num_processes  # the mean loss over processes
            step_loss, stops = totals.tolist()  # the step's one wait on the device
            pace.add(plan.effective_batch)
            if guard.finite(step_loss, step + 1):
                if config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                if ema is not None:
                    ema.step(parts.unet.parameters())
                last_loss = step_loss
            optimizer.zero_grad(set_to_none=True)
            lr = lr_schedule.get_last_lr()[0]  # the rate this step used
            lr_schedule.step()
            done = step + 1
            timing = pace.timing(plan.steps - done)
            log.add(done, step_loss, lr)
            emit(
                "step",
                step=done,
                steps=plan.steps,
                loss=step_loss,
                lr=lr,
                **timing,
                **_mfu(plan, timing["images_per_s"]),
            )
            trackers.log_step(done, step_loss, lr, timing["images_per_s"])
            if stops > 0 and done < plan.steps:  # Ctrl-C (on any process): this step is kept, then a checkpoint
                path = _save_checkpoint(
                    parts, unet, text_encoder, optimizer, lr_schedule, ema, config, model, done, accelerator
                )
                emit("checkpoint", step=done, path=str(path), reason="interrupted")
                raise Interrupted(f"interrupted at step {done}; resume with --resume latest (checkpoint {path})")
            # A checkpoint right after a non-finite loss could hold damaged state: keep the last good one.
            due = config.checkpoint_every and done % config.checkpoint_every == 0 and done < plan.steps
            if due and guard.in_row == 0:
                path = _save_checkpoint(
                    parts, unet, text_encoder, optimizer, lr_schedule, ema, config, model, done, accelerator
                )
                saved.append(path)
                emit("checkpoint", step=done, path=str(path))
            if config.validate_every and done % config.validate_every == 0:
                grid = _validate(parts, unet, text_encoder, ema, config, model, done, accelerator, torch)
                if grid:
                    emit("validation", step=done, path=str(grid))
                    trackers.log_grid(done, grid)

    # 5. Output: the trained model (EMA weights with --ema), the loss log and its curve.
    _save_output(parts, unet, text_encoder, ema, config, model, plan, accelerator)
    if config.validation_prompts and not (config.validate_every and plan.steps % config.validate_every == 0):
        grid = _validate(parts, unet, text_encoder, ema, config, model, plan.steps, accelerator, torch)
        if grid:
            emit("validation", step=plan.steps, path=str(grid))
            trackers.log_grid(plan.steps, grid)
    log.close(plot=True)
    trackers.finish()
    rate = pace.overall()
    mfu = _mfu(plan, rate) if rate else {}
    emit("done", out=str(config.out), steps=plan.steps, loss=last_loss, skipped=list(plan.skipped),
         bad_steps=guard.total, images_per_s=rate, **mfu)  # fmt: skip
    return TrainResult(config.out, plan.steps, last_loss, tuple(saved), plan.skipped, guard.total, rate, mfu.get("mfu"))


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
    """The loaded components; `trained` lists the modules the optimizer updates, UNet first."""

    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any
    trained: list[Any]
    weight_dtype: Any


def _load_components(model: ResolvedModel, config: TrainConfig, accelerator: Any, torch: Any) -> _Parts:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    root, safe = model.path, not model.uses_pickle
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision, torch.float32)
    # Frozen components load in the compute precision; trained ones in fp32 (kept so under autocast).
    text_dtype = torch.float32 if config.train_text_encoder else weight_dtype
    if model.single_file is not None:
        loaded = load_single_file(model)
        tokenizer = loaded["tokenizer"]
        text_encoder = loaded["text_encoder"].to(dtype=text_dtype)
        vae = loaded["vae"].to(dtype=weight_dtype)
        unet = loaded["unet"].to(dtype=torch.float32)
    else:
        tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(
            root / "text_encoder", use_safetensors=safe or None, dtype=text_dtype
        )
        vae = AutoencoderKL.from_pretrained(root / "vae", use_safetensors=safe or None, dtype=weight_dtype)
        unet = UNet2DConditionModel.from_pretrained(root / "unet", use_safetensors=safe or None, dtype=torch.float32)
    scheduler_config = model.configs()["scheduler"]
    if config.prediction_type:
        scheduler_config["prediction_type"] = config.prediction_type
    noise_scheduler = DDPMScheduler.from_config(scheduler_config)

    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())  # torch's fused scaled-dot-product attention
    vae.requires_grad_(False)
    text_encoder.requires_grad_(config.train_text_encoder and not config.lora)
    unet.requires_grad_(not config.lora)
    trained = [unet, text_encoder] if config.train_text_encoder else [unet]
    if config.lora:  # only the adapters' weights train; alpha is part of each adapter's config (and saved file)
        # peft draws the adapters' first matrices from torch's global generator: seeded from --seed, so the same
        # command trains the same adapter, and restored after, so nothing else depends on it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix(config.seed, LORA_INIT_SALT))
            unet.add_adapter(_lora_config(config, LORA_TARGETS), adapter_name=LORA_ADAPTER)
            if config.train_text_encoder:
                # peft's own injection: transformers' add_adapter wants a newer peft than diffusers works with
                from peft import inject_adapter_in_model

                inject_adapter_in_model(
                    _lora_config(config, TEXT_LORA_TARGETS), text_encoder, adapter_name=LORA_ADAPTER
                )
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if config.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()
    for module in (vae, text_encoder, unet):
        module.to(accelerator.device)
    if config.channels_last:  # saved files stay contiguous: safetensors writers make them so
        unet.to(memory_format=torch.channels_last)
    for module in trained:
        module.train()
    return _Parts(tokenizer, text_encoder, vae, unet, noise_scheduler, trained, weight_dtype)


def _lora_config(config: TrainConfig, targets: list[str]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha or config.lora_rank,
                      init_lora_weights="gaussian", target_modules=targets)  # fmt: skip


@dataclass(frozen=True)
class ClassSet:
    """Prior preservation's class images: each instance example is trained beside one of them, chosen by
    its global position in the run from a permutation per pass over the class images."""

    examples: tuple[Any, ...]

    def pick(self, batch: MicroBatch, seed: int) -> list[int]:
        import torch

        picked = []
        for position in batch.positions:
            n = batch.step * batch.effective_batch + position  # the instance example's number in the whole run
            cycle, index = divmod(n, len(self.examples))
            order = torch.randperm(len(self.examples), generator=torch.Generator().manual_seed(mix(seed, cycle, 7)))
            picked.append(int(order[index]))
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
    ids: Any  # token ids for the trained text encoder, else None


def _draw_micro(batch: MicroBatch, dataset: Any, class_set: ClassSet | None, parts: _Parts, text_encoder: Any,
                cache: Any, config: TrainConfig, device: Any, torch: Any) -> tuple[_Inputs, _Inputs | None]:  # fmt: skip
    """This process's inputs for micro-batch `batch`: its examples and, with prior preservation, their class images."""
    examples = [dataset.examples[i] for i in batch.indices]
    inputs = _draw(examples, batch.indices, batch.size, batch.generators(config.seed), batch, parts, text_encoder,
                   cache, config, device, torch, augment=True)  # fmt: skip
    if class_set is None:
        return inputs, None
    chosen = class_set.pick(batch, config.seed)
    class_examples = [class_set.examples[i] for i in chosen]
    square = (batch.resolution, batch.resolution)
    class_inputs = _draw(class_examples, chosen, square, batch.generators(config.seed, 1), batch, parts, text_encoder,
                         cache, config, device, torch, augment=False)  # fmt: skip
    return inputs, class_inputs


def _micro_loss(drawn: tuple[_Inputs, _Inputs | None], parts: _Parts, unet: Any, text_encoder: Any,
                config: TrainConfig) -> Any:  # fmt: skip
    """The noise-prediction loss of one micro-batch on this process (plus the weighted class loss)."""
    inputs, class_inputs = drawn
    loss = _denoising_loss(inputs, parts, unet, text_encoder, config).mean()
    if class_inputs is not None:
        loss = loss + config.prior_loss_weight * _denoising_loss(class_inputs, parts, unet, text_encoder, config).mean()
    return loss


def _draw(examples: list[Any], indices: Any, size: tuple[int, int], gens: list[Any], batch: MicroBatch,
          parts: _Parts, text_encoder: Any, cache: Any, config: TrainConfig, device: Any, torch: Any,
          augment: bool) -> _Inputs:  # fmt: skip
    """The noised latents, timesteps, targets and text of `examples` at `size`, every draw from `gens`."""
    from sdlite.data.images import load_example, preprocess

    drop = [config.caption_dropout > 0 and torch.rand((), generator=g).item() < config.caption_dropout for g in gens]
    captions = ["" if d else e.caption for d, e in zip(drop, examples, strict=True)]
    if config.shuffle_captions:
        from sdlite.data.captions import shuffle_tags

        captions = [shuffle_tags(c, config.keep_tokens, mix(config.seed, batch.step, p, 2)) if c else c
                    for c, p in zip(captions, batch.positions, strict=True)]  # fmt: skip

    if cache is not None:
        mean, std = cache.latent_stats(examples, [size] * len(examples))
    else:
        crop, flip = (config.crop, config.random_flip) if augment else ("center", False)
        pixels = torch.stack(
            [preprocess(load_example(e), size, crop, flip, mix(config.seed, batch.epoch, i, *(() if augment else (1,))))
             for e, i in zip(examples, indices, strict=True)]
        )  # fmt: skip
        with torch.no_grad():
            dist = parts.vae.encode(to_device(pixels, parts.vae.device, parts.weight_dtype)).latent_dist
        mean, std = dist.mean.float(), dist.std.float()
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

    text = ids = None
    if cache is not None and cache.has_text:
        text = to_device(cache.text_embeddings(captions), device)
    else:
        ids = to_device(parts.tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt").input_ids,
                        device)  # fmt: skip
        if not config.train_text_encoder:  # frozen: encoded now, ahead of the step
            with torch.no_grad():
                text, ids = text_encoder(ids)[0], None

    noisy = parts.noise_scheduler.add_noise(latents, noise, timesteps)
    if parts.noise_scheduler.config.prediction_type == "v_prediction":
        target = parts.noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    return _Inputs(noisy, timesteps, target, text, ids)


def _denoising_loss(inputs: _Inputs, parts: _Parts, unet: Any, text_encoder: Any, config: TrainConfig) -> Any:
    """Per-example (min-SNR weighted) noise-prediction losses."""
    import torch

    text = inputs.text if inputs.ids is None else text_encoder(inputs.ids)[0]
    noisy = inputs.noisy
    if config.channels_last:
        noisy = noisy.contiguous(memory_format=torch.channels_last)
    prediction = unet(noisy, inputs.timesteps, encoder_hidden_states=text.to(dtype=noisy.dtype)).sample
    per_example = torch.nn.functional.mse_loss(prediction.float(), inputs.target.float(), reduction="none")
    return per_example.mean(dim=(1, 2, 3)) * loss_weights(parts.noise_scheduler, inputs.timesteps, config.snr_gamma)


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


def _assemble(parts: _Parts, unet: Any, text_encoder: Any, config: TrainConfig, model: ResolvedModel,
              folder: Path, accelerator: Any) -> None:  # fmt: skip
    """Write a usable model into `folder`: frozen components linked from the base, trained ones saved."""
    if config.lora:
        _save_lora(folder, _unwrapped(accelerator, unet), _unwrapped(accelerator, text_encoder), config)
        return
    frozen = ("tokenizer", "vae", *(() if config.train_text_encoder else ("text_encoder",)))
    if model.single_file is not None:  # no base folder to link from: save the frozen parts themselves
        for name in frozen:
            getattr(parts, name).save_pretrained(folder / name, **({} if name == "tokenizer" else SAFE))
        (folder / "model_index.json").write_text(json.dumps(SD1.model_index, indent=2))
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
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2))
    settings, _ = model_settings_record(str(model.path))
    if settings is not None:  # the base's recommended sampling settings (sdlite.json) stay with its fine-tune
        (folder / MODEL_DEFAULTS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    _unwrapped(accelerator, unet).save_pretrained(folder / "unet", safe_serialization=True)
    if config.train_text_encoder:
        _unwrapped(accelerator, text_encoder).save_pretrained(folder / "text_encoder", safe_serialization=True)


def _save_lora(folder: Path, unet: Any, text_encoder: Any, config: TrainConfig) -> None:
    """LORA_FILE with the UNet adapter (and the text encoder's with --train-text-encoder), each saved with
    its PEFT config as diffusers' adapter metadata: loaders then apply the trained alpha, not alpha = rank."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    parts = {"unet": unet, **({"text_encoder": text_encoder} if config.train_text_encoder else {})}
    kwargs: dict[str, Any] = {}
    for name, module in parts.items():
        state = get_peft_model_state_dict(module, adapter_name=LORA_ADAPTER)
        kwargs[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(state)
        kwargs[f"{name}_lora_adapter_metadata"] = module.peft_config[LORA_ADAPTER].to_dict()
    StableDiffusionPipeline.save_lora_weights(folder, safe_serialization=True, **kwargs)


def _save_checkpoint(parts: _Parts, unet: Any, text_encoder: Any, optimizer: Any, lr_schedule: Any, ema: Any,
                     config: TrainConfig, model: ResolvedModel, step: int, accelerator: Any) -> Path:  # fmt: skip
    """Write checkpoint `step` atomically (main process only), then drop the oldest beyond --keep-checkpoints."""
    final = checkpoints.checkpoint_dir(config.out, step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with writing(f"checkpoint {final}"):
            final.parent.mkdir(parents=True, exist_ok=True)
            staging = new_folder(final.parent, f".{final.name}.")  # the umask's mode, unlike mkdtemp's 0700
            try:
                _write_checkpoint(parts, unet, text_encoder, optimizer, lr_schedule, ema, config, model, staging,
                                  accelerator)  # fmt: skip
                checkpoints.write_manifest(staging, step, resume_settings(config, accelerator.num_processes))
                checkpoints.commit(staging, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        checkpoints.prune(config.out, config.keep_checkpoints, step)
    accelerator.wait_for_everyone()
    return final


def _write_checkpoint(parts: _Parts, unet: Any, text_encoder: Any, optimizer: Any, lr_schedule: Any, ema: Any,
                      config: TrainConfig, model: ResolvedModel, staging: Path, accelerator: Any) -> None:  # fmt: skip
    """Everything a checkpoint holds except its manifest: the usable model and the training state."""
    _assemble(parts, unet, text_encoder, config, model, staging, accelerator)
    state = staging / "training"
    state.mkdir()
    if config.lora:
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        raw = _unwrapped(accelerator, unet), _unwrapped(accelerator, text_encoder)
        for file, module in _adapter_files(config, *raw):
            adapter = get_peft_model_state_dict(module, adapter_name=LORA_ADAPTER)
            save_file({k: v.detach().cpu().contiguous() for k, v in adapter.items()}, state / file)
    checkpoints.save_optimizer(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, state)
    (state / "lr_schedule.json").write_text(json.dumps(lr_schedule.state_dict()))
    if ema is not None:
        checkpoints.save_ema(ema, state)


def _load_trained_weights(parts: _Parts, folder: Path, config: TrainConfig, torch: Any) -> None:
    from safetensors.torch import load_file

    if config.lora:
        from peft.utils import set_peft_model_state_dict

        for file, module in _adapter_files(config, parts.unet, parts.text_encoder):
            set_peft_model_state_dict(module, load_file(folder / "training" / file), adapter_name=LORA_ADAPTER)
        return
    parts.unet.load_state_dict(_load_folder_weights(folder / "unet", load_file))
    if config.train_text_encoder:
        parts.text_encoder.load_state_dict(_load_folder_weights(folder / "text_encoder", load_file))


def _adapter_files(config: TrainConfig, unet: Any, text_encoder: Any) -> list[tuple[str, Any]]:
    """(file under training/, module) of each LoRA adapter a checkpoint holds for exact resume."""
    return [("adapter.safetensors", unet),
            *([("text_encoder_adapter.safetensors", text_encoder)] if config.train_text_encoder else [])]  # fmt: skip


def _load_folder_weights(folder: Path, load_file: Any) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(file))
    return state


def _save_output(parts: _Parts, unet: Any, text_encoder: Any, ema: Any, config: TrainConfig, model: ResolvedModel,
                 plan: TrainPlan, accelerator: Any) -> None:  # fmt: skip
    """OUT becomes the trained model (EMA weights with --ema) plus the resolved config and plan."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out = Path(config.out)
        with writing(f"the trained model in {out}"):
            out.mkdir(parents=True, exist_ok=True)
            staging = new_folder(out, ".final.")
            try:
                with _ema_weights(ema, _unwrapped(accelerator, unet)):
                    _assemble(parts, unet, text_encoder, config, model, staging, accelerator)
                checkpoints.replace_into(staging, out)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            write_run_record(out, config, plan)
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


def _validate(parts: _Parts, unet: Any, text_encoder: Any, ema: Any, config: TrainConfig, model: ResolvedModel,
              step: int, accelerator: Any, torch: Any) -> Path | None:  # fmt: skip
    """Sample the validation prompts with fixed seeds and save a labelled grid under OUT/validation."""
    if not accelerator.is_main_process:
        return None
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from sdlite.sampling.grid import contact_sheet

    raw_unet = _unwrapped(accelerator, unet)
    scheduler = DDIMScheduler.from_config(model.configs()["scheduler"],
                                          prediction_type=parts.noise_scheduler.config.prediction_type)  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=parts.vae, text_encoder=_unwrapped(accelerator, text_encoder), tokenizer=parts.tokenizer, unet=raw_unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    images = []
    raw_unet.eval()
    with _ema_weights(ema, raw_unet), torch.no_grad(), accelerator.autocast():
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
    """Ctrl-C sets a flag; the loop saves a checkpoint at the next step boundary and stops."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        with sigint_to(self._handle):
            yield
