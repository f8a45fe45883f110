"""`sdlite noise`: show the forward diffusion process on a picture, frame by frame."""

from __future__ import annotations

import json
from typing import Any

import typer

from sdlite.cli.failures import one_line_errors
from sdlite.cli.options import JsonOut, build_config, config_options, model_values
from sdlite.cli.output import quiet_libraries
from sdlite.sampling.config import NoiseConfig


@config_options(NoiseConfig)
def noise(json_out: JsonOut = False, **options: Any) -> None:
    """Show the forward diffusion process: IMAGE drowned step by step in the model's own noise schedule.

    Training noises a latent z0 to z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps and teaches the UNet to undo
    it. `signal` is sqrt(abar_t), the share of the original picture left at that step (1 = clean; about 0.07
    at Stable Diffusion's last timestep, so even "pure noise" keeps a trace); `noise` is sqrt(1 - abar_t)
    (signal^2 + noise^2 = 1). Only the VAE is loaded. Prints one line per frame, then the strip's path.
    """
    with one_line_errors():
        config = build_config(NoiseConfig, model_values(NoiseConfig, options))
        quiet_libraries(config.offline)
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
