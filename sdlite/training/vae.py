"""`train --component vae`: the autoencoder, trained on reconstruction MSE plus a small KL term.

Used to build sdlite's own models from scratch (the built-in shapes model). It shares the data
order, per-example seeding, events and loss log of UNet training (training/plan, steps, reporting); it writes
OUT as the base model with the new VAE, whose `scaling_factor` is set from the data (1 / std of the
latents) so the diffusion model sees unit-variance latents.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from sdlite.errors import writing
from sdlite.models.loading import vae_factor
from sdlite.models.source import MODEL_DEFAULTS_FILE
from sdlite.seeds import mix
from sdlite.training import checkpoints
from sdlite.training.config import TrainConfig
from sdlite.training.optimizers import check_optimizer, make_optimizer, make_schedule
from sdlite.training.out_folder import check_out, prepare_out, write_run_record
from sdlite.training.plan import make_plan
from sdlite.training.reporting import Emitter, LossLog, Pace, TrainResult
from sdlite.training.steps import FiniteGuard, MicroBatch

SCALE_SAMPLES = 256  # images used to measure the latent std


def train_vae(config: TrainConfig, accelerator: Any, emit: Emitter, loss_hook: Any) -> TrainResult:
    from diffusers import AutoencoderKL

    check_out(config)
    plan, dataset, model, layout = make_plan(config, accelerator.num_processes)
    check_optimizer(config.optimizer, config.lr, config.weight_decay, config.optimizer_args, accelerator.device.type)
    emit("plan", **plan.to_dict())
    prepare_out(config, accelerator, fresh=True)
    for note in plan.data_warnings:
        emit("warning", message=note)
    vae = AutoencoderKL.from_pretrained(model.path / "vae", use_safetensors=not model.uses_pickle or None)
    vae.train()
    optimizer, kind = make_optimizer(
        list(vae.parameters()), config.optimizer, config.lr, config.weight_decay, config.optimizer_args, torch
    )
    emit("speedups", applied=[kind])
    schedule = make_schedule(config.lr_scheduler, optimizer, config.warmup_steps, plan.steps, config.lr_cycles)
    model_step, optimizer = accelerator.prepare(Reconstruction(vae), optimizer)

    log = LossLog(config.out, 0, accelerator.is_main_process)
    guard, last_loss, pace = FiniteGuard(emit), None, Pace()
    for step in range(plan.steps):
        losses = []
        for micro in range(config.grad_accum):
            m = step * config.grad_accum + micro
            with accelerator.autocast():
                batch = MicroBatch.of(m, plan, layout, config, accelerator.process_index)
                loss = _vae_loss(model_step, vae, batch, plan, dataset, config, accelerator)
                if loss_hook is not None:
                    loss = loss_hook(step, loss)
                accelerator.backward(loss / config.grad_accum)
            losses.append(loss.detach().float())
        # Every micro-batch's loss counts: a NaN in any of them must not reach the weights.
        step_loss = accelerator.reduce(torch.stack(losses).mean(), "mean").item()
        if guard.finite(step_loss, step + 1):
            if config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(vae.parameters(), config.max_grad_norm)
            optimizer.step()
            last_loss = step_loss
        optimizer.zero_grad(set_to_none=True)
        lr = schedule.get_last_lr()[0]
        schedule.step()
        log.add(step + 1, step_loss, lr)
        pace.add(plan.effective_batch)
        emit("step", step=step + 1, steps=plan.steps, loss=step_loss, lr=lr, **pace.timing(plan.steps - step - 1))

    vae.eval()
    scale = _scaling_factor(vae, plan, dataset, config)
    emit("vae", scaling_factor=scale)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with writing(f"the trained model in {config.out}"):
            _write_model(vae, scale, model.path, Path(config.out), config, plan)
    accelerator.wait_for_everyone()
    log.close(plot=True)
    emit(
        "done", out=str(config.out), steps=plan.steps, loss=last_loss, skipped=list(plan.skipped), bad_steps=guard.total
    )
    return TrainResult(Path(config.out), plan.steps, last_loss, (), plan.skipped, guard.total)


class Reconstruction(torch.nn.Module):
    """One training pass of the VAE (encode, sample the posterior with the given noise, decode) as a module
    call: DDP averages gradients over processes only for what runs through its wrapper's forward, so calling
    the unwrapped VAE left every process training its own copy."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, pixels: Any, noise: Any) -> tuple[Any, Any]:
        """The reconstruction and each example's KL to N(0, I), summed over its latent elements."""
        dist = self.vae.encode(pixels).latent_dist
        return self.vae.decode(dist.mean + dist.std * noise).sample, dist.kl()


def _vae_loss(
    model_step: Any, vae: Any, batch: MicroBatch, plan: Any, dataset: Any, config: TrainConfig, accelerator: Any
) -> Any:
    """Reconstruction MSE (pixels in [-1, 1]) + kl_weight * KL to N(0, I), per example then averaged."""
    from sdlite.data.images import load_example, preprocess

    pixels = torch.stack(
        [
            preprocess(
                load_example(dataset.examples[i]),
                plan.resolution,
                config.crop,
                config.random_flip,
                mix(config.seed, batch.epoch, i),
            )
            for i in batch.indices
        ]
    ).to(accelerator.device)
    factor = vae_factor(vae.config)
    latent = (vae.config.latent_channels, pixels.shape[2] // factor, pixels.shape[3] // factor)
    noise = torch.stack([torch.randn(latent, generator=g) for g in batch.generators(config.seed)])
    recon, kl = model_step(pixels, noise.to(accelerator.device))
    mse = torch.nn.functional.mse_loss(recon.float(), pixels.float())
    return mse + config.kl_weight * kl.mean() / noise[0].numel()


def _scaling_factor(vae: Any, plan: Any, dataset: Any, config: TrainConfig) -> float:
    """1 / std of the latent means over up to SCALE_SAMPLES training images (fixed order)."""
    from sdlite.data.images import load_example, preprocess

    means = []
    with torch.no_grad():
        for example in dataset.examples[:SCALE_SAMPLES]:
            pixels = preprocess(load_example(example), plan.resolution, "center", False, 0)[None]
            means.append(vae.encode(pixels.to(vae.device)).latent_dist.mean)
    return float(1.0 / torch.cat(means).std())


def _write_model(vae: Any, scale: float, base: Path, out: Path, config: TrainConfig, plan: Any) -> None:
    """OUT = the base model with this VAE (its config carrying the measured scaling factor)."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".final.", dir=out))
    try:
        for item in base.iterdir():
            if item.name in ("vae", "checkpoints", "validation") or item.name.startswith("."):
                continue
            if item.is_dir():
                checkpoints.link_or_copy_tree(item, staging / item.name)
            elif item.name in ("model_index.json", MODEL_DEFAULTS_FILE):  # with its recommended sampling settings
                shutil.copy2(item, staging / item.name)
        vae.register_to_config(scaling_factor=scale)
        vae.save_pretrained(staging / "vae", safe_serialization=True)
        checkpoints.replace_into(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_run_record(out, config, plan, scaling_factor=scale)
