"""`sdlite sample`: text-to-image, image-to-image and inpainting, one line per written image."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from sdlite.cli.failures import one_line_errors
from sdlite.cli.options import DTYPE_HELP, AllowPickle, EmaWeights, JsonOut, Offline, Quiet, Tokenizer
from sdlite.cli.output import is_main_process, print_result, quiet_libraries
from sdlite.cli.progress import progress_bar
from sdlite.sampling.sources import SampleOverrides, build_sample_config
from sdlite.schedulers import scheduler_names
from sdlite.schema import DEVICES, MODEL_HELP, PositiveInt, check_value

# Ctrl-C while sampling stops at the next denoising step; a single operation still running this many
# seconds later (one step of a huge image) is abandoned and the process exits 130 anyway.
INTERRUPT_GRACE = 2.0


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
    dtype: Annotated[str | None, typer.Option(help=DTYPE_HELP)] = None,
    device: Annotated[str | None, typer.Option(help=f"{', '.join(DEVICES)}. [default: auto]")] = None,
    grid: Annotated[bool, typer.Option("--grid", help="Also save a labelled contact sheet of the run.")] = False,
    json_out: JsonOut = False,
    quiet: Quiet = False,
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
            help="Split the run's batches over N processes (one per GPU; N CPU processes for tests), started by "
            "sdlite: the same files, names, pixels and metadata as one process, reported in order."
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
    with one_line_errors():
        check_value(PositiveInt | None, num_processes, "--num-processes")
        if num_processes and num_processes > 1 and "WORLD_SIZE" not in os.environ:
            from sdlite.launch import spawn

            raise typer.Exit(spawn(num_processes))
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
        quiet_libraries(offline)
        from sdlite.sampling.run import sample as run_sample

        images = len(config.keep_seeds) or sum(g.num_images for g in config.generations)
        with progress_bar(enabled=not quiet and is_main_process(), images=images) as progress:
            run = run_sample(
                config,
                progress=progress,
                on_image=partial(print_result, json_out=json_out, progress=progress),
                interrupt_grace=INTERRUPT_GRACE,
            )
        if run.grid:
            typer.echo(json.dumps({"grid": str(run.grid)}) if json_out else f"{run.grid}  grid")
        if run.speedups and not quiet and is_main_process():
            typer.echo(f"{config.mode}: {', '.join(run.speedups)}", err=True)
