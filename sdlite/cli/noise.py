"""`sdlite noise`: show the forward diffusion process on a picture, frame by frame."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sdlite.cli.failures import one_line_errors
from sdlite.cli.options import AllowPickle, Device, Dtype, EmaWeights, JsonOut, Offline, Tokenizer
from sdlite.cli.output import quiet_libraries
from sdlite.sampling.config import NoiseConfig
from sdlite.schema import MODEL_HELP


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
    dtype: Dtype = "auto",
    device: Device = "auto",
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
    with one_line_errors():
        from sdlite.models.source import resolve_model_source

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
        quiet_libraries(offline)
        from sdlite.sampling.noising import noise_strip

        strip = noise_strip(config)
        if json_out:
            typer.echo(json.dumps(strip.to_dict()))
            return
        typer.echo(f"{'step':>4}  {'t':>4}  {'signal':>6}  {'noise':>6}")
        for frame in strip.frames:
            t = "-" if frame.t is None else frame.t
            typer.echo(f"{frame.step:>4}  {t:>4}  {frame.signal:6.4f}  {frame.noise:6.4f}")
        typer.echo(str(strip.path))
