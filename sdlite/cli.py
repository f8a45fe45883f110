"""The `sdlite` command line: declares the commands and turns failures into one-line errors.

Each command builds one frozen config and hands it to a core function. Heavy libraries (torch,
diffusers) are imported inside the commands, so `--help` and usage errors answer instantly.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from sdlite import __version__
from sdlite.check import DEFAULT_MAX_CHANGED, DEFAULT_TOLERANCE, CheckConfig
from sdlite.config import (
    DEVICES,
    DTYPES,
    LR_SCHEDULERS,
    PRESETS,
    RESUME_HELP,
    EvalConfig,
    ExportConfig,
    Generation,
    InfoConfig,
    InitConfig,
    LoraChoice,
    NoiseConfig,
    SampleConfig,
    SampleOverrides,
    TrainConfig,
    build_sample_config,
    build_train_config,
)
from sdlite.errors import DISK_FULL, EXIT_CODES, ResourceError, SdliteError
from sdlite.schedulers import scheduler_names
from sdlite.schema import PositiveInt, check_value, describe_field, show

# "\b" keeps click from re-wrapping the table.
EPILOG = "\b\nExit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())
DEBUG_ENV = "SDLITE_DEBUG"

# Click's own usage errors (an unknown option, a value that is not a number) are reported like sdlite's:
# one `error:` line. Typer vendors click, so its classes are reached through the public BadParameter.
_CLICK_USAGE_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
# The schema field behind an option, per command, to say what a value that does not parse should be.
_OPTION_SCHEMAS: dict[str, tuple[type, ...]] = {
    "sample": (Generation, SampleConfig), "train": (TrainConfig,), "info": (InfoConfig,), "init": (InitConfig,),
    "export": (ExportConfig,), "eval shapes": (EvalConfig,), "noise": (NoiseConfig,), "check": (CheckConfig,),
}  # fmt: skip
_OPTION_FIELDS = {"lora_scale": (LoraChoice, "scale"), "force": (InitConfig, "overwrite")}


def _usage_message(exc: Any) -> str:
    """A click usage error in sdlite's words: `--steps must be a positive integer, got "ten"`."""
    param, ctx, cause = getattr(exc, "param", None), getattr(exc, "ctx", None), exc.__cause__
    errors = cause.errors() if cause is not None and hasattr(cause, "errors") else None
    if param is not None and getattr(param, "opts", None) and errors:
        command = " ".join(ctx.command_path.split()[1:]) if ctx is not None else ""
        candidates = [(owner, param.name) for owner in _OPTION_SCHEMAS.get(command, ())]
        if param.name in _OPTION_FIELDS:
            candidates.insert(0, _OPTION_FIELDS[param.name])
        wanted = next(filter(None, (describe_field(owner, key) for owner, key in candidates)), None)
        if wanted is None:
            wanted = {"int_parsing": "an integer", "float_parsing": "a number"}.get(errors[0]["type"])
        if wanted is not None:
            return f"{max(param.opts, key=len)} must be {wanted}, got {show(errors[0].get('input'))}"
    message = exc.format_message().rstrip(".")
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return _one_line(message + hint)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


@contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    try:
        yield
    except _CLICK_USAGE_ERROR as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `sdlite` or `sdlite data`: show the help
            raise
        typer.echo(f"error: {_usage_message(exc)}", err=True)
        raise typer.Exit(2) from None


class _Group(TyperGroup):
    """The command group: parses like Typer's, but reports a bad command line in one `error:` line."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _one_line_usage_errors():
            return super().invoke(ctx)


app = typer.Typer(
    cls=_Group,
    name="sdlite",
    help="Stable Diffusion from the command line: sample images, inspect and create models. "
    f"Set {DEBUG_ENV}=1 to see tracebacks.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Options shared by the commands that load a model.
Offline = Annotated[
    bool, typer.Option("--offline", help="Use only the local Hugging Face cache for hub ids (also HF_HUB_OFFLINE=1).")
]
AllowPickle = Annotated[
    bool,
    typer.Option(
        "--allow-pickle", help="Allow loading pickle weights (.ckpt/.bin/.pt). Pickles can run code: trust the source."
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
Tokenizer = Annotated[
    str | None,
    typer.Option(
        help="Single-file models: the CLIP tokenizer (folder or hub id). [default: the local Hugging Face cache's "
        "openai/clip-vit-large-patch14, then stable-diffusion-v1-5's; online, just those files]",
        show_default=False,
    ),
]
EmaWeights = Annotated[
    bool,
    typer.Option(
        "--ema-weights/--no-ema-weights",
        help="Single-file models holding an EMA copy of the UNet: use it (the usual for sampling) or the raw weights.",
    ),
]
MODEL_HELP = (
    "Diffusers folder, hub id (ORG/NAME) or original-layout single file (.safetensors; .ckpt with --allow-pickle)."
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sdlite {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Stable Diffusion from the command line."""


@app.command()
def init(
    out: Annotated[Path, typer.Argument(help="Folder to create (a standard diffusers model folder).")],
    preset: Annotated[str, typer.Option(help=f"Architecture: {', '.join(PRESETS)}.")] = "tiny",
    seed: Annotated[int, typer.Option(help="Weights are drawn from this seed: same seed, same weights.")] = 0,
    dtype: Annotated[str, typer.Option(help="Precision of the saved weights: fp32, fp16 or bf16.")] = "fp32",
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists and is not empty.")] = False,
) -> None:
    """Write a model with random weights, offline: `tiny` for tests and CI, `sd15` for the real SD v1.5 shapes."""
    with _errors():
        config = InitConfig(out=out, preset=preset, seed=seed, dtype=dtype, overwrite=force)
        _quiet_libraries()
        from sdlite.presets import init_model

        typer.echo(str(init_model(config)))


@app.command()
def sample(
    prompts: Annotated[list[str] | None, typer.Argument(help="One or more prompts.", show_default=False)] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help=f"{MODEL_HELP} Default: $SDLITE_MODEL, else the built-in shapes model.",
            show_default=False,
        ),
    ] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="What to steer away from. [default: none]")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps. [default: 50]", show_default=False)] = None,
    guidance: Annotated[
        float | None, typer.Option(help="Classifier-free guidance scale; 1 or less turns it off. [default: 7.5]")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help=f"Sampler: {', '.join(scheduler_names())}. [default: ddim]", show_default=False)
    ] = None,
    eta: Annotated[float | None, typer.Option(help="DDIM noise (0 = deterministic DDIM). [default: 0]")] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed of the first image; image i of the run uses seed + i. [default: random, always reported]"
        ),
    ] = None,
    num_images: Annotated[int | None, typer.Option(help="Images per prompt. [default: 1]")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Images denoised together (memory vs speed). [default: 1]")
    ] = None,
    height: Annotated[
        int | None, typer.Option(help="Image height, a multiple of 8. [default: the model's native size]")
    ] = None,
    width: Annotated[
        int | None, typer.Option(help="Image width, a multiple of 8. [default: the model's native size]")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder; existing files are never overwritten. [default: outputs]")
    ] = None,
    prompts_file: Annotated[
        Path | None,
        typer.Option(help='One prompt per line, or JSON lines like {"prompt": ..., "seed": 7, "steps": 20}.'),
    ] = None,
    from_image: Annotated[
        Path | None, typer.Option(help="Regenerate a PNG sdlite wrote, from its own metadata (options given here win).")
    ] = None,
    dtype: Annotated[str | None, typer.Option(help=f"{', '.join(DTYPES)}; auto = fp16 on CUDA, else fp32.")] = None,
    device: Annotated[str | None, typer.Option(help=f"{', '.join(DEVICES)}. [default: auto]")] = None,
    grid: Annotated[bool, typer.Option("--grid", help="Also save a labelled contact sheet of the run.")] = False,
    json_out: JsonOut = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    lora: Annotated[
        list[str] | None,
        typer.Option(
            help="A LoRA adapter: a folder holding pytorch_lora_weights.safetensors, or a .safetensors file "
            "(diffusers or kohya/A1111 layout). Repeat to apply several together.",
            metavar="PATH",
            show_default=False,
        ),
    ] = None,
    lora_scale: Annotated[
        list[float] | None,
        typer.Option(
            help="Strength of each --lora, paired by position: give none (every LoRA at 1.0) or one per --lora. "
            "[default: 1.0]",
            metavar="S",
            show_default=False,
        ),
    ] = None,
    fast: Annotated[
        bool,
        typer.Option(
            "--fast",
            help="Speed preset: SDPA attention, channels_last, and on CUDA TF32, fused QKV and torch.compile; "
            "DPM-Solver++ 2M with Karras sigmas (dpm++2m-karras) at 20 steps unless --scheduler/--steps say otherwise.",
        ),
    ] = False,
    low_memory: Annotated[
        bool,
        typer.Option(
            "--low-memory",
            help="Memory preset: attention slicing, VAE slicing and tiling, and on an accelerator model CPU offload.",
        ),
    ] = False,
    init_image: Annotated[
        Path | None,
        typer.Option(
            help="Image-to-image: start from this picture (any format and size; EXIF orientation, transparency "
            "and 16-bit handled) instead of pure noise. The output takes its size, rounded down to the VAE factor, "
            "unless --height/--width say otherwise.",
            show_default=False,
        ),
    ] = None,
    strength: Annotated[
        float | None,
        typer.Option(
            help="With --init-image: how much of the noise schedule to re-run, 0 < S <= 1. Low keeps the picture "
            "and changes details; 1 keeps almost nothing of it. Runs int(steps x S) steps. [default: 0.75]",
            show_default=False,
        ),
    ] = None,
    mask: Annotated[
        Path | None,
        typer.Option(
            help="Inpainting, with --init-image: white = repaint, black = keep. Kept pixels are the original's; "
            "an inpainting model (9 input channels) uses its own UNet input, any other model has the kept "
            "region's latents put back at every step.",
            show_default=False,
        ),
    ] = None,
    mask_blur: Annotated[
        int | None,
        typer.Option(
            help="Soften the mask's edge by this many pixels (Gaussian blur). [default: 0]", show_default=False
        ),
    ] = None,
    resize: Annotated[
        str | None,
        typer.Option(
            help="How --init-image and --mask meet the output size: crop (cover, cut the overflow evenly), fit (fit "
            "inside, fill the rest from the image's edges) or stretch. [default: crop]",
            show_default=False,
        ),
    ] = None,
    save_progress: Annotated[
        int | None,
        typer.Option(
            help="Also write INDEX-SEED-progress.png per image: the model's estimate of the clean image (predicted "
            "x0, decoded) at K evenly spaced denoising steps. The image itself is unchanged.",
            metavar="K",
            show_default=False,
        ),
    ] = None,
    num_processes: Annotated[
        int | None,
        typer.Option(
            help="Split the run's batches over N processes (one per GPU; N CPU processes for tests) through "
            "accelerate launch: the same files, names, pixels and metadata as one process, reported in order."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted run of this same command in --out: images it already wrote (checked "
            "from their own metadata) are kept, only the missing ones are made, under the names an uninterrupted "
            "run gives them.",
        ),
    ] = False,
    offline: Offline = False,
    allow_pickle: AllowPickle = False,
    tokenizer: Tokenizer = None,
    ema_weights: EmaWeights = True,
) -> None:
    """Generate images from text, or from a picture (--init-image) and a mask (--mask). Each PNG records how
    to make it again (A1111 `parameters` + full JSON, with the sha256 of the files it started from)."""
    with _errors():
        check_value(PositiveInt | None, num_processes, "--num-processes")
        if num_processes and num_processes > 1 and "WORLD_SIZE" not in os.environ:
            from sdlite.launch import relaunch

            raise typer.Exit(relaunch(num_processes, same_threads=True))
        config = build_sample_config(
            SampleOverrides(
                prompts=tuple(prompts or ()),
                model=model,
                prompts_file=prompts_file,
                from_image=from_image,
                settings={
                    "negative_prompt": negative_prompt,
                    "steps": steps,
                    "guidance": guidance,
                    "scheduler": scheduler,
                    "eta": eta,
                    "seed": seed,
                    "num_images": num_images,
                    "height": height,
                    "width": width,
                    "init_image": str(init_image) if init_image is not None else None,
                    "strength": strength,
                    "mask": str(mask) if mask is not None else None,
                    "mask_blur": mask_blur,
                    "resize": resize,
                },
                out=out,
                batch_size=batch_size,
                dtype=dtype,
                device=device,
                grid=grid,
                offline=offline,
                allow_pickle=allow_pickle,
                lora=tuple(lora or ()),
                lora_scale=tuple(lora_scale or ()),
                fast=fast,
                low_memory=low_memory,
                tokenizer=tokenizer,
                ema_weights=None if ema_weights else False,
                save_progress=save_progress,
                resume=resume,
            )
        )
        _quiet_libraries(offline)
        from sdlite.sampling import sample as run_sample

        images = len(config.keep_seeds) or sum(g.num_images for g in config.generations)
        with _progress_bar(enabled=not quiet and _is_main_process(), images=images) as progress:
            run = run_sample(
                config,
                progress=progress,
                on_image=partial(_print_result, json_out=json_out, progress=progress),
                interrupt_grace=INTERRUPT_GRACE,
            )
        if run.grid:
            typer.echo(json.dumps({"grid": str(run.grid)}) if json_out else f"{run.grid}  grid")
        if run.speedups and not quiet and _is_main_process():
            typer.echo(f"{config.mode}: {', '.join(run.speedups)}", err=True)


@app.command()
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
        typer.Option(help="What to train: unet (the usual) or vae (the autoencoder, from scratch). [default: unet]"),
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
    num_processes: Annotated[
        int | None, typer.Option(help="Launch N processes through accelerate (multi-GPU, or CPU for tests).")
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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    offline: Offline = False,
    allow_pickle: AllowPickle = False,
    tokenizer: Tokenizer = None,
    ema_weights: EmaWeights = True,
) -> None:
    """Fine-tune a model (full, or LoRA) on a captioned image folder, a Parquet/Arrow dataset or a hub dataset, or
    DreamBooth-style on a subject's photos; resumable, aspect-ratio bucketed, on one or many processes."""
    with _errors():
        check_value(PositiveInt | None, num_processes, "--num-processes")
        if num_processes and num_processes > 1 and "WORLD_SIZE" not in os.environ:
            from sdlite.launch import relaunch

            raise typer.Exit(relaunch(num_processes))
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
        }  # fmt: skip
        config = build_train_config(cli_values, config_file)
        _quiet_libraries(offline)
        from sdlite import training

        if dry_run:
            typer.echo(json.dumps(training.dry_run(config).to_dict(), indent=2))
            return
        with _train_reporter(json_events, quiet) as report:
            result = training.train(config, on_event=report)
        if not json_events and _is_main_process():
            speed = f", {result.images_per_s:.3g} images/s" if result.images_per_s else ""
            typer.echo(f"{result.out}  {result.steps} steps, final loss {result.final_loss}{speed}")
            for note in result.skipped:
                typer.echo(f"skipped: {note}", err=True)


data_app = typer.Typer(help="Make training datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("shapes")
def data_shapes(
    out: Annotated[Path, typer.Argument(help="Folder to create: PNGs + metadata.jsonl (Hugging Face imagefolder).")],
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 10000,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 64,
    seed: Annotated[int, typer.Option(help="Same seed, same dataset.")] = 0,
) -> None:
    """Synthetic scenes captioned `a {color} {shape} on a {color} background` (held-out triples excluded)."""
    with _errors():
        from sdlite.shapes import write_dataset

        typer.echo(str(write_dataset(out, n, size, seed)))


eval_app = typer.Typer(help="Measure a model's quality.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("shapes")
def eval_shapes(
    model: Annotated[
        str | None,
        typer.Option(help="Model to judge. Default: $SDLITE_MODEL, else the built-in model.", show_default=False),
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Images: half from training triples, half held out.")] = 240,
    seed: Annotated[int, typer.Option(help="Seed of the first image (image i uses seed + i).")] = 0,
    steps: Annotated[int | None, typer.Option(help="Denoising steps. [default: the model's]")] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance scale. [default: the model's]")] = None,
    scheduler: Annotated[
        str | None, typer.Option(help=f"Sampler: {', '.join(scheduler_names())}. [default: the model's]")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images denoised together.")] = 16,
    out: Annotated[Path | None, typer.Option(help="Keep the judged images here. [default: discarded]")] = None,
    fast: Annotated[
        bool, typer.Option("--fast", help="Judge `sample --fast` (DPM-Solver++ 2M Karras, 20 steps).")
    ] = False,
    json_out: JsonOut = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    offline: Offline = False,
    tokenizer: Tokenizer = None,
    ema_weights: EmaWeights = True,
) -> None:
    """Sample shapes scenes, judge shape, shape color and background with a fixed classifier, print accuracies."""
    with _errors():
        from sdlite.config import resolve_model_source

        config = EvalConfig(model=resolve_model_source(model), n=n, seed=seed, steps=steps, guidance=guidance,
                            scheduler=scheduler, batch_size=batch_size, out=out, offline=offline, fast=fast,
                            tokenizer=tokenizer, ema_weights=ema_weights)  # fmt: skip
        _quiet_libraries(offline)
        from sdlite.shapes import evaluate, format_report

        with _progress_bar(enabled=not quiet) as progress:
            report = evaluate(config, progress)
        typer.echo(json.dumps(report, indent=2) if json_out else format_report(report))


@app.command()
def info(
    model: Annotated[
        str | None,
        typer.Argument(
            help=f"{MODEL_HELP} Default: $SDLITE_MODEL, else the built-in shapes model.",
            show_default=False,
        ),
    ] = None,
    height: Annotated[int | None, typer.Option(help="Trace the shapes at this height. [default: native]")] = None,
    width: Annotated[int | None, typer.Option(help="Trace the shapes at this width. [default: native]")] = None,
    json_out: JsonOut = False,
    offline: Offline = False,
    allow_pickle: AllowPickle = False,
    tokenizer: Tokenizer = None,
    ema_weights: EmaWeights = True,
) -> None:
    """Show a model's components, parameter counts, dtypes, scheduler and the tensor shapes of its flow."""
    with _errors():
        from sdlite.config import resolve_model_source

        config = InfoConfig(
            model=resolve_model_source(model),
            height=height,
            width=width,
            offline=offline,
            allow_pickle=allow_pickle,
            tokenizer=tokenizer,
            ema_weights=ema_weights,
        )
        _quiet_libraries(offline)
        from sdlite.info import describe, format_info

        details = describe(config)
        typer.echo(json.dumps(details, indent=2) if json_out else format_info(details))


@app.command()
def export(
    source: Annotated[
        str,
        typer.Argument(
            help="A model (diffusers folder, hub id, single file, or a training checkpoint OUT/checkpoints/step-N) "
            "or a LoRA (folder or file).",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Argument(help="The file (.safetensors) or folder to write.", show_default=False)],
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="Models: single-file (one original-layout .safetensors for A1111/ComfyUI/Forge) or diffusers (a "
            "folder). LoRAs: kohya (A1111/ComfyUI; alpha kept) or diffusers. [default: single-file, kohya for LoRAs]",
            show_default=False,
        ),
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="Precision of the written weights: fp16, bf16 or fp32. [default: as stored]")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    offline: Offline = False,
    allow_pickle: AllowPickle = False,
    tokenizer: Tokenizer = None,
    ema_weights: EmaWeights = True,
) -> None:
    """Write a model or LoRA in the layout other tools load: A1111, ComfyUI, Forge, diffusers."""
    with _errors():
        config = ExportConfig(source=source, out=out, format=format, dtype=dtype, tokenizer=tokenizer,
                              ema_weights=ema_weights, offline=offline, allow_pickle=allow_pickle, force=force)  # fmt: skip
        _quiet_libraries(offline)
        from sdlite.export import export as run_export

        typer.echo(str(run_export(config)))


@app.command()
def noise(
    image: Annotated[Path, typer.Argument(help="The picture to add noise to (any image file).", show_default=False)],
    out: Annotated[
        Path,
        typer.Option(
            help="The strip PNG to write: top row the noisy latents decoded by the VAE, bottom row the same "
            "amount of noise added to the pixels. Its `sdlite.noise` text chunk records every frame.",
            show_default=False,
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            help=f"Whose noise schedule and VAE. {MODEL_HELP} Default: $SDLITE_MODEL, else the built-in shapes model.",
            show_default=False,
        ),
    ] = None,
    frames: Annotated[
        int,
        typer.Option(
            help="Columns of the strip (at least 2): steps 0..STEPS evenly spaced, always the clean image (step 0) "
            "and the last step."
        ),
    ] = 11,
    steps: Annotated[
        int,
        typer.Option(
            help="Forward steps, spread evenly over the model's T training timesteps: step n is timestep "
            "round(n*T/STEPS)-1, so the last step is T-1, where training starts from (almost) pure noise."
        ),
    ] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the noise: same seed, same strip, byte for byte.")] = 0,
    height: Annotated[
        int | None, typer.Option(help="Height, a multiple of 8. [default: the image's, rounded down to the VAE factor]")
    ] = None,
    width: Annotated[
        int | None, typer.Option(help="Width, a multiple of 8. [default: the image's, rounded down to the VAE factor]")
    ] = None,
    resize: Annotated[
        str,
        typer.Option(
            help="How the image meets --height/--width: crop (cover and cut the overflow), fit (fit inside, fill "
            "from its edges) or stretch."
        ),
    ] = "crop",
    json_out: JsonOut = False,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
    dtype: Annotated[str, typer.Option(help=f"{', '.join(DTYPES)}; auto = fp16 on CUDA, else fp32.")] = "auto",
    device: Annotated[str, typer.Option(help=f"{', '.join(DEVICES)}.")] = "auto",
    offline: Offline = False,
    allow_pickle: AllowPickle = False,
    tokenizer: Tokenizer = None,
    ema_weights: EmaWeights = True,
) -> None:
    """Show the forward diffusion process: IMAGE drowned step by step in the model's own noise schedule.

    Training noises a latent z0 to z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps and teaches the UNet to undo
    it. `signal` is sqrt(abar_t), the share of the original picture left at that step (1 = clean; about 0.07
    at Stable Diffusion's last timestep, so even "pure noise" keeps a trace); `noise` is sqrt(1 - abar_t)
    (signal^2 + noise^2 = 1). Only the VAE is loaded. Prints one line per frame, then the strip's path.
    """
    with _errors():
        from sdlite.config import resolve_model_source

        config = NoiseConfig(
            image=str(image),
            out=out,
            model=resolve_model_source(model),
            frames=frames,
            steps=steps,
            seed=seed,
            height=height,
            width=width,
            resize=resize,
            dtype=dtype,
            device=device,
            offline=offline,
            allow_pickle=allow_pickle,
            tokenizer=tokenizer,
            ema_weights=ema_weights,
            overwrite=force,
        )
        _quiet_libraries(offline)
        from sdlite.noising import noise_strip

        strip = noise_strip(config)
        if json_out:
            typer.echo(json.dumps(strip.to_dict()))
            return
        typer.echo(f"{'step':>4}  {'t':>4}  {'signal':>6}  {'noise':>6}")
        for frame in strip.frames:
            t = "-" if frame.t is None else frame.t
            typer.echo(f"{frame.step:>4}  {t:>4}  {frame.signal:6.4f}  {frame.noise:6.4f}")
        typer.echo(str(strip.path))


@app.command()
def check(
    goldens: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Folders of goldens (searched recursively for PNGs sdlite wrote) or single PNG files.",
            metavar="DIR",
            show_default=False,
        ),
    ] = None,
    goldens_option: Annotated[
        list[Path] | None,
        typer.Option("--goldens", help="The same as DIR (repeatable).", metavar="DIR", show_default=False),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help=f"Check every golden with this model instead of the one it records (a new model against old "
            f"goldens). {MODEL_HELP} [default: each golden's own; goldens of the built-in model use this "
            "installation's]",
            show_default=False,
        ),
    ] = None,
    lora: Annotated[
        list[str] | None,
        typer.Option(
            help="Apply this LoRA instead of the ones the goldens record (repeatable, like `sample --lora`).",
            metavar="PATH",
            show_default=False,
        ),
    ] = None,
    lora_scale: Annotated[
        list[float] | None,
        typer.Option(
            help="Strength of each --lora, paired by position. [default: 1.0]", metavar="S", show_default=False
        ),
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(
            help="Gray levels (of 255) a pixel's channel may move and the pixel still count as unchanged. "
            "Float noise across batch sizes, threads, modes and CPUs moves pixels by 1-3 levels.",
            metavar="LEVELS",
        ),
    ] = DEFAULT_TOLERANCE,
    max_changed: Annotated[
        float,
        typer.Option(
            help="Share of an image's pixels (0-1) that may change by more than --tolerance; an image passes "
            "while no more have. `--tolerance 0 --max-changed 0` asks for identical pixels.",
            metavar="SHARE",
        ),
    ] = DEFAULT_MAX_CHANGED,
    junit: Annotated[
        Path | None,
        typer.Option(
            help="Write a JUnit XML report (one test case per golden, named by its file name) for CI to display.",
            metavar="FILE",
            show_default=False,
        ),
    ] = None,
    diff: Annotated[
        Path | None,
        typer.Option(
            "--diff",
            help="Write NAME-diff.png per failing golden into this folder: golden | regenerated | difference heatmap.",
            metavar="DIR",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOut = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    dtype: Annotated[str, typer.Option(help=f"{', '.join(DTYPES)}; auto = fp16 on CUDA, else fp32.")] = "auto",
    device: Annotated[str, typer.Option(help=f"{', '.join(DEVICES)}.")] = "auto",
    offline: Offline = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Golden-image regression check for CI: regenerate every sdlite PNG under DIR from its own metadata and
    compare it with the stored pixels. Exit 0: all within tolerance; 7: some differ; 3: a golden unreadable."""
    with _errors():
        from sdlite.config import lora_choices

        config = CheckConfig(
            paths=tuple(str(p) for p in [*(goldens or ()), *(goldens_option or ())]),
            model=model,
            loras=lora_choices(tuple(lora or ()), tuple(lora_scale or ())),
            tolerance=tolerance,
            max_changed=max_changed,
            junit=junit,
            diff_dir=diff,
            dtype=dtype,
            device=device,
            offline=offline,
            allow_pickle=allow_pickle,
        )
        _quiet_libraries(offline)
        from sdlite.check import check as run_check

        with _progress_bar(enabled=not quiet) as progress:
            report = run_check(config, progress=progress, on_result=partial(_print_check_result, json_out=json_out))
        summary = report.summary()
        if json_out:
            typer.echo(json.dumps({"summary": summary}))
        else:
            typer.echo(
                f"checked {summary['checked']} images: {summary['passed']} passed, {summary['failed']} failed, "
                f"{summary['skipped']} skipped, {summary['errors']} errors (pass: at most {config.max_changed:.2%} "
                f"of pixels beyond {config.tolerance:g} gray levels); {summary['model_loads']} model load(s), "
                f"{summary['seconds']:.1f} s" + (f"; JUnit report {report.junit}" if report.junit else "")
            )
        report.raise_for_status()  # 3 when a golden could not be checked, else 7 when one differs


_CHECK_WORDS = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP", "error": "ERROR"}


def _print_check_result(result: Any, json_out: bool) -> None:
    """One line per golden: `PASS 00003-7.png  max 0  psnr inf`, the reason for the others (JSON with --json)."""
    from tqdm import tqdm

    if json_out:
        line = json.dumps(result.to_dict())
    else:
        line = f"{_CHECK_WORDS[result.status]} {result.name}"
        m = result.metrics
        if m is not None:
            psnr = "inf" if m.psnr == float("inf") else f"{m.psnr:.1f}"
            line += f"  max {m.max_diff}  psnr {psnr}  changed {m.changed:.2%}"
            if result.model_changed:
                line += f"  model changed ({result.golden_model_hash[:10]} -> {result.model_hash[:10]})"
        elif result.reason:
            line += f"  {result.reason}"
        if result.diff:
            line += f"  heatmap {result.diff}"
    with tqdm.external_write_mode():  # lift a progress bar out of the way instead of printing over it
        typer.echo(line)


def _print_result(result: Any, json_out: bool, progress: Any = None) -> None:
    """One line per written image on stdout: JSON, or the path and the seed that remakes it."""
    from tqdm import tqdm

    with tqdm.external_write_mode():  # lift a progress bar out of the way instead of printing over it
        typer.echo(json.dumps(result.to_dict()) if json_out else f"{result.path}  seed {result.seed}")
    if progress is not None:
        progress.image_done()


OUT_OF_MEMORY_HINT = "lower --batch-size or the resolution, try --low-memory for sampling, or use a smaller model"


@contextmanager
def _errors() -> Iterator[None]:
    """Turn sdlite's errors into `error: ...` on stderr and their exit code; Ctrl-C exits 130."""
    _show_warnings()
    try:
        yield
    except SdliteError as exc:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        typer.echo(f"error: {_one_line(str(exc))}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # host RAM or torch device
            typer.echo(f"error: out of memory: {OUT_OF_MEMORY_HINT}", err=True)
            raise typer.Exit(ResourceError.exit_code) from None
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:  # e.g. --json into a full disk
            typer.echo(f"error: cannot write output: {DISK_FULL[exc.errno]}", err=True)
            raise typer.Exit(ResourceError.exit_code) from None
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        typer.echo(
            f"internal error: {type(exc).__name__}: {message} (rerun with {DEBUG_ENV}=1 for the traceback)", err=True
        )
        raise typer.Exit(1) from None


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (test runners replace it between calls)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")


def _show_warnings() -> None:
    """sdlite's own warnings (e.g. a truncated prompt) go to stderr as `warning: ...` lines."""
    logger = logging.getLogger("sdlite")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


# Ctrl-C while sampling stops at the next denoising step; a single operation still running this many
# seconds later (one step of a huge image) is abandoned and the process exits 130 anyway.
INTERRUPT_GRACE = 2.0
LOG_EVERY_S = 10.0  # plain progress lines (stderr not a terminal): at most this far apart,
LOG_EVERY_FRACTION = 0.1  # and at each further tenth of the run (but not more than once a second)


@contextmanager
def _progress_bar(enabled: bool, images: int | None = None) -> Iterator[Any]:
    """Progress on stderr unless --quiet: a tqdm bar on a terminal; plain lines for logs (CI, Slurm,
    nohup) when stderr is not one. Yields a callable `(done, total)` (denoising steps), or None."""
    if not enabled:
        yield None
        return
    bar = _StepBar() if sys.stderr.isatty() else _StepLines(images)
    try:
        yield bar
    finally:
        bar.close()


class _StepBar:
    """A tqdm bar created at the first report, when the total number of steps is known."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        self.update(done, total)

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def image_done(self) -> None:
        pass

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Pacer:
    """When to print the next plain progress line: LOG_EVERY_S apart, or at each further
    LOG_EVERY_FRACTION of the run (at most once a second), and always at the end."""

    def __init__(self) -> None:
        self.last_time, self.last_done = time.monotonic(), 0

    def due(self, done: int, total: int) -> bool:
        now = time.monotonic()
        waited = now - self.last_time
        tenth = done - self.last_done >= LOG_EVERY_FRACTION * total and waited >= 1.0
        if done >= total or waited >= LOG_EVERY_S or tenth:
            self.last_time, self.last_done = now, done
            return True
        return False


class _StepLines:
    """Sampling progress as plain lines: `sample: 3/8 images, 120/400 steps, 12.4 steps/s, ETA 0:00:25`."""

    def __init__(self, images: int | None) -> None:
        self.images, self.images_done = images, 0
        self.done, self.total = 0, 0
        self.started: tuple[float, int] | None = None  # time and steps at the first report
        self.pacer = _Pacer()

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        if self.started is None:  # the pace is measured from the first step, not from the model load
            self.started, self.pacer = (time.monotonic(), done), _Pacer()
        elif done < total and self.pacer.due(done, total):
            self._line(final=False)

    def image_done(self) -> None:
        self.images_done += 1
        if self.images and self.images_done == self.images:
            self._line(final=True)

    def close(self) -> None:
        if self.images is None and 0 < self.total <= self.done:  # no images to end on (eval): the last step
            self._line(final=True)

    def _line(self, final: bool) -> None:
        parts = [f"{self.images_done}/{self.images} images"] if self.images else []
        parts.append(f"{self.done}/{self.total} steps")
        if self.started is not None:
            seconds, steps = time.monotonic() - self.started[0], self.done - self.started[1]
            if seconds > 0 and steps > 0:
                parts.append(f"{steps / seconds:.3g} steps/s")
                if not final:
                    parts.append(f"ETA {_clock((self.total - self.done) * seconds / steps)}")
            if final:
                parts.append(f"done in {_clock(seconds)}")
        _progress_line(f"sample: {', '.join(parts)}")


def _clock(seconds: float) -> str:
    """H:MM:SS."""
    whole = max(round(seconds), 0)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _progress_line(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def _train_reporter(json_events: bool, quiet: bool) -> Iterator[Any]:
    """Training events as JSON lines on stdout, or progress and warnings on stderr: a bar (loss, images/s)
    on a terminal, else plain lines (`step N/M, loss, lr, images/s, ETA`) at the pace of _Pacer."""
    bar = _StepBar() if not json_events and not quiet and sys.stderr.isatty() else None
    pacer = _Pacer() if not json_events and not quiet and bar is None else None

    def report(event: dict[str, Any]) -> None:
        if json_events:
            typer.echo(json.dumps(event, default=str))
        elif event["event"] == "warning":
            typer.echo(f"warning: {event['message']}", err=True)
        elif event["event"] == "step" and bar is not None:
            bar.update(event["step"], event["steps"])
            bar.bar.set_postfix(loss=f"{event['loss']:.4f}", img_s=f"{event['images_per_s']:.1f}", refresh=False)
        elif event["event"] == "step" and pacer is not None and pacer.due(event["step"], event["steps"]):
            _progress_line(_step_line(event))
        elif event["event"] == "plan" and not quiet:
            typer.echo(
                f"plan: {event['images']} images, {event['steps']} steps ({event['epochs']:.3g} epochs), effective "
                f"batch {event['effective_batch']}, {event['resolution']}px; cache {event['cache_note']}"
                + (f"; {event['tflops_per_image']:.3g} TFLOP per image" if event.get("tflops_per_image") else "")
                + (f" against a {event['peak_tflops']:.0f} TFLOP/s peak" if event.get("peak_tflops") else ""),
                err=True,
            )
            buckets = ", ".join(f"{size} x{count}" for size, count in event.get("buckets", {}).items())
            typer.echo(f"buckets {event.get('bucket_note', '')}" + (f": {buckets}" if buckets else ""), err=True)
            if event.get("class_images"):
                typer.echo(f"prior preservation: {event['class_images']} class images", err=True)
        elif event["event"] == "class_images" and not quiet:
            typer.echo(f"class images in {event['folder']}: {event['have']} there, generating {event['generating']}",
                       err=True)  # fmt: skip
        elif event["event"] == "speedups" and not quiet:
            typer.echo(f"speed-ups: {', '.join(event['applied'])}", err=True)
        elif event["event"] in ("checkpoint", "validation", "resume"):
            typer.echo(
                f"{event['event']}: {event.get('path') or event.get('checkpoint')} (step {event['step']})", err=True
            )

    try:
        yield report
    finally:
        if bar is not None:
            bar.close()


def _step_line(event: dict[str, Any]) -> str:
    """`step 120/1000, loss 0.1234, lr 1e-04, 12.3 images/s, ETA 0:01:12` (the end: `done in`)."""
    parts = [f"step {event['step']}/{event['steps']}", f"loss {event['loss']:.4g}", f"lr {event['lr']:.3g}",
             f"{event['images_per_s']:.3g} images/s"]  # fmt: skip
    if event.get("mfu") is not None:
        parts.append(f"MFU {event['mfu']:.1%}")
    if event["step"] < event["steps"] and event.get("eta") is not None:
        parts.append(f"ETA {_clock(event['eta'])}")
    elif event.get("elapsed") is not None:
        parts.append(f"done in {_clock(event['elapsed'])}")
    return ", ".join(parts)


def _quiet_libraries(offline: bool = False) -> None:
    """Keep library chatter (deprecation notes, download bars) off stderr; our own warnings still show."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"


def main() -> None:
    """Console-script entry point: run the command, then leave without the interpreter's teardown.

    Once torch and diffusers are imported, Python's normal shutdown (module teardown, library exit
    hooks) takes about 0.8 s on the 2-core machine, 15% of a one-image `sample`. Every file sdlite
    writes is closed by then and training tears its process group down itself, so after flushing
    the standard streams nothing is left to do.
    """
    try:
        app()
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
            sys.stderr.write(exc.code + "\n")
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader (`| head`) left early: nothing to report
        pass
    except OSError as exc:
        sys.stderr.write(f"error: cannot write standard output: {exc.strerror or exc}\n")
        code = code or ResourceError.exit_code
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
