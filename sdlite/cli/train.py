"""`sdlite train`: fine-tune a model (full, LoRA, DreamBooth) or train a VAE, reporting progress as it goes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from sdlite.cli.failures import one_line_errors
from sdlite.cli.options import MODEL_HELP, AllowPickle, EmaWeights, Offline, Quiet, Tokenizer
from sdlite.cli.output import is_main_process, quiet_libraries
from sdlite.cli.progress import train_reporter
from sdlite.schema import PositiveInt, check_value
from sdlite.training.config import LR_SCHEDULERS, RESUME_HELP, build_train_config


def train(
    model: Annotated[
        str | None,
        typer.Option(
            help=f"Base model. {MODEL_HELP} Default: $SDLITE_MODEL, else the built-in shapes model.",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Captioned images: a folder (metadata.jsonl, metadata.csv or .txt sidecars), a Parquet file or folder "
            "of shards, a `datasets` save_to_disk folder, or a hub dataset id (needs the `datasets` extra).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output folder: the trained model, checkpoints/, validation/, loss.csv, loss.png.", show_default=False
        ),
    ] = None,
    component: Annotated[
        str | None,
        typer.Option(
            help="What to train: unet (the usual) or vae (the autoencoder, starting from the model's VAE; "
            "`sdlite init` makes a model with random weights). [default: unet]"
        ),
    ] = None,
    kl_weight: Annotated[
        float | None, typer.Option(help="--component vae: weight of the KL term. [default: 1e-6]")
    ] = None,
    config_file: Annotated[
        Path | None, typer.Option("--config", help="TOML file with any of these options; the command line wins.")
    ] = None,
    resolution: Annotated[
        int | None, typer.Option(help="Training size (square). [default: the model's native size]")
    ] = None,
    center_crop: Annotated[
        bool | None,
        typer.Option(
            "--center-crop/--random-crop",
            help="Crop to a square at the center or at random. [default: center]",
            show_default=False,
        ),
    ] = None,
    random_flip: Annotated[
        bool | None, typer.Option("--random-flip", help="Flip images horizontally at random.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per process per micro-batch. [default: 1]")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Micro-batches per optimizer step. [default: 1]")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (AdamW). [default: 1e-5]")] = None,
    lr_scheduler: Annotated[str | None, typer.Option(help=f"{', '.join(LR_SCHEDULERS)}. [default: constant]")] = None,
    warmup_steps: Annotated[int | None, typer.Option(help="LR warm-up steps. [default: 0]")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps to train (or --epochs).")] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the data (or --max-steps).")] = None,
    mixed_precision: Annotated[
        str | None, typer.Option(help="no, fp16 or bf16 (trainable weights stay fp32). [default: no]")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seeds data order, augmentation and noise. [default: 0]")] = None,
    gradient_checkpointing: Annotated[
        bool | None, typer.Option("--gradient-checkpointing", help="Trade compute for memory.")
    ] = None,
    ema: Annotated[
        bool | None, typer.Option("--ema", help="Keep an EMA of the UNet; OUT gets the EMA weights.")
    ] = None,
    ema_decay: Annotated[float | None, typer.Option(help="EMA decay. [default: 0.9999]")] = None,
    snr_gamma: Annotated[
        float | None, typer.Option(help="Min-SNR-gamma loss weighting (5 is typical). [default: off]")
    ] = None,
    noise_offset: Annotated[float | None, typer.Option(help="Noise offset (0.05-0.1 typical). [default: 0]")] = None,
    prediction_type: Annotated[str | None, typer.Option(help="epsilon or v_prediction. [default: the model's]")] = None,
    caption_dropout: Annotated[
        float | None, typer.Option(help="Probability of training on an empty caption (for guidance). [default: 0]")
    ] = None,
    train_text_encoder: Annotated[
        bool | None,
        typer.Option(
            "--train-text-encoder",
            help="Train the text encoder too (with --lora: a LoRA on its attention projections).",
        ),
    ] = None,
    lora: Annotated[
        bool | None,
        typer.Option(
            "--lora",
            help="Train a LoRA adapter on the UNet (and the text encoder with --train-text-encoder); OUT holds only "
            "the adapter, alpha included.",
        ),
    ] = None,
    lora_rank: Annotated[int | None, typer.Option(help="LoRA rank. [default: 4]")] = None,
    lora_alpha: Annotated[
        float | None,
        typer.Option(help="LoRA alpha; strength = alpha / rank, saved with the adapter. [default: the rank]"),
    ] = None,
    cache: Annotated[
        bool | None,
        typer.Option(
            "--cache/--no-cache",
            help="Precompute VAE latents and text embeddings once, on disk. [default: on when the augmentation is "
            "fixed (no --random-crop/--random-flip)]",
            show_default=False,
        ),
    ] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="Save a resumable, usable checkpoint every N steps.")
    ] = None,
    keep_checkpoints: Annotated[
        int | None, typer.Option(help="Keep only the newest K checkpoints. [default: all]")
    ] = None,
    resume: Annotated[str | None, typer.Option(help=f"{RESUME_HELP} sdlite wrote.")] = None,
    overwrite: Annotated[
        bool | None,
        typer.Option("--overwrite", help="Train into a non-empty OUT without --resume: replace what is there."),
    ] = None,
    validation_prompt: Annotated[
        list[str] | None, typer.Option(help="Prompt sampled for validation grids (repeatable).")
    ] = None,
    validate_every: Annotated[
        int | None, typer.Option(help="Save a validation grid every N steps (and at the end).")
    ] = None,
    caption_column: Annotated[
        str | None, typer.Option(help="Caption column in metadata.jsonl/csv. [default: text]")
    ] = None,
    skip_bad_images: Annotated[
        bool | None,
        typer.Option("--skip-bad-images", help="Skip unreadable images (listed at the end) instead of stopping."),
    ] = None,
    allow_missing_captions: Annotated[
        bool | None, typer.Option("--allow-missing-captions", help="Train images without a caption on an empty one.")
    ] = None,
    buckets: Annotated[
        bool | None,
        typer.Option(
            "--buckets/--no-buckets",
            help="Aspect-ratio buckets: each image is resized to the bucket nearest its aspect ratio (about "
            "RESOLUTION^2 pixels, sides multiples of --bucket-step) and cropped only by the remainder; every batch "
            "comes from one bucket. --no-buckets squares every image. [default: on when the aspect ratios differ]",
            show_default=False,
        ),
    ] = None,
    bucket_step: Annotated[int | None, typer.Option(help="Bucket sides are multiples of this. [default: 64]")] = None,
    bucket_min_side: Annotated[
        int | None, typer.Option(help="Smallest bucket side. [default: half the resolution]")
    ] = None,
    bucket_max_side: Annotated[
        int | None, typer.Option(help="Largest bucket side. [default: twice the resolution]")
    ] = None,
    max_aspect: Annotated[float | None, typer.Option(help="Largest bucket aspect ratio. [default: 2]")] = None,
    instance_prompt: Annotated[
        str | None,
        typer.Option(
            help='DreamBooth: train every image with this prompt ("a photo of sks dog"); no captions needed, '
            "existing ones are overridden."
        ),
    ] = None,
    class_prompt: Annotated[
        str | None,
        typer.Option(
            help='Prior preservation: the class the subject belongs to ("a photo of a dog"). Its images are trained '
            "beside the subject's so the model keeps what the class looks like."
        ),
    ] = None,
    class_data: Annotated[
        Path | None,
        typer.Option(
            help="Folder of class images; missing ones (up to --num-class-images) are generated first with the base "
            "model and kept for the next run. [default: a folder in sdlite's cache per model and class prompt]"
        ),
    ] = None,
    num_class_images: Annotated[int | None, typer.Option(help="Class images to train with. [default: 100]")] = None,
    prior_loss_weight: Annotated[
        float | None, typer.Option(help="Weight of the class images' loss. [default: 1.0]")
    ] = None,
    image_column: Annotated[
        str | None,
        typer.Option(help="Image column of a Parquet/Arrow dataset (bytes, {bytes, path} or a path). [default: image]"),
    ] = None,
    shuffle_captions: Annotated[
        bool | None,
        typer.Option(
            "--shuffle-captions",
            help="Captions are comma-separated tags: shuffle them per example and epoch (deterministic from --seed).",
        ),
    ] = None,
    keep_tokens: Annotated[
        int | None, typer.Option(help="With --shuffle-captions: keep the first N tags in place. [default: 0]")
    ] = None,
    report_to: Annotated[
        list[str] | None,
        typer.Option(
            help="Experiment tracker: tensorboard (under OUT/logs), wandb, mlflow or trackio (repeatable; each needs "
            "its package). Logs loss, learning rate, images/s and validation grids.",
            show_default=False,
        ),
    ] = None,
    tracker_project: Annotated[
        str | None, typer.Option(help="Project / experiment name for the trackers. [default: sdlite]")
    ] = None,
    compile_unet: Annotated[
        bool | None,
        typer.Option(
            "--compile",
            help="torch.compile the UNet for training (Inductor; caches in sdlite's cache folder). Pays off on GPUs "
            "over long runs; the first steps wait for the compile.",
        ),
    ] = None,
    channels_last: Annotated[
        bool | None,
        typer.Option(
            "--channels-last",
            help="Keep the UNet's weights and inputs in NHWC memory order (tensor-core convolutions on GPUs). "
            "Same results up to float rounding; saved files stay in the usual layout.",
        ),
    ] = None,
    num_processes: Annotated[
        int | None,
        typer.Option(
            help="Run N processes, one per GPU (N CPU processes for tests); accelerate launch and torchrun work too."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check data and settings, print the plan as JSON, train nothing.")
    ] = False,
    json_events: Annotated[
        bool,
        typer.Option(
            "--json-events",
            help="JSON lines on stdout: plan, speedups, cache, resume, step, checkpoint, validation, warning, done.",
        ),
    ] = False,
    quiet: Quiet = False,
    offline: Offline = False,
    allow_pickle: AllowPickle = False,
    tokenizer: Tokenizer = None,
    ema_weights: EmaWeights = True,
) -> None:
    """Fine-tune a model (full, or LoRA) on a captioned image folder, a Parquet/Arrow dataset or a hub dataset, or
    DreamBooth-style on a subject's photos; resumable, aspect-ratio bucketed, on one or many processes."""
    with one_line_errors():
        check_value(PositiveInt | None, num_processes, "--num-processes")
        cli_values = {
            "model": model, "data": data, "out": out, "component": component, "kl_weight": kl_weight,
            "resolution": resolution,
            "crop": None if center_crop is None else ("center" if center_crop else "random"),
            "random_flip": random_flip, "batch_size": batch_size, "grad_accum": grad_accum, "lr": lr,
            "lr_scheduler": lr_scheduler, "warmup_steps": warmup_steps, "max_steps": max_steps, "epochs": epochs,
            "mixed_precision": mixed_precision, "seed": seed, "gradient_checkpointing": gradient_checkpointing,
            "ema": ema, "ema_decay": ema_decay, "snr_gamma": snr_gamma, "noise_offset": noise_offset,
            "prediction_type": prediction_type, "caption_dropout": caption_dropout,
            "train_text_encoder": train_text_encoder, "lora": lora, "lora_rank": lora_rank, "lora_alpha": lora_alpha,
            "cache": cache, "checkpoint_every": checkpoint_every, "keep_checkpoints": keep_checkpoints,
            "resume": resume, "overwrite": overwrite, "validation_prompts": tuple(validation_prompt) if validation_prompt else None,
            "validate_every": validate_every, "caption_column": caption_column, "skip_bad_images": skip_bad_images,
            "allow_missing_captions": allow_missing_captions, "offline": offline or None, "allow_pickle": allow_pickle or None,
            "tokenizer": tokenizer, "ema_weights": None if ema_weights else False,
            "buckets": buckets, "bucket_step": bucket_step, "bucket_min_side": bucket_min_side,
            "bucket_max_side": bucket_max_side, "max_aspect": max_aspect, "instance_prompt": instance_prompt,
            "class_prompt": class_prompt, "class_data": class_data, "num_class_images": num_class_images,
            "prior_loss_weight": prior_loss_weight, "image_column": image_column, "shuffle_captions": shuffle_captions,
            "keep_tokens": keep_tokens, "report_to": tuple(report_to) if report_to else None,
            "tracker_project": tracker_project, "compile": compile_unet,
            "channels_last": channels_last,
        }  # fmt: skip
        config = build_train_config(cli_values, config_file)
        launch = bool(num_processes and num_processes > 1 and "WORLD_SIZE" not in os.environ)
        quiet_libraries(offline)
        from sdlite.training import unet

        if dry_run:  # the plan of N processes, printed once: nothing is launched
            plan = unet.dry_run(config, num_processes if launch else None)
            if is_main_process():
                typer.echo(json.dumps(plan.to_dict(), indent=2))
            return
        if launch:  # options checked once, here
            from sdlite.launch import spawn

            raise typer.Exit(spawn(num_processes or 1, same_threads=False))
        with train_reporter(json_events, quiet) as report:
            result = unet.train(config, on_event=report)
        if not json_events and is_main_process():
            speed = f", {result.images_per_s:.3g} images/s" if result.images_per_s else ""
            speed += f", MFU {result.mfu:.1%}" if result.mfu is not None else ""
            loss = "n/a (no step was finite)" if result.final_loss is None else result.final_loss
            typer.echo(f"{result.out}  {result.steps} steps, final loss {loss}{speed}")
            for note in result.skipped:
                typer.echo(f"skipped: {note}", err=True)
