"""`sdlite noise`: the forward diffusion process made visible, one picture drowned step by step.

Training teaches a model to undo this: at timestep t a clean latent z0 becomes
z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, where abar_t (the scheduler's `alphas_cumprod`) is the
share of the original signal's variance still left. The strip shows the model's own schedule twice:
in latent space (what the UNet is trained on, decoded by the VAE to be seen) and, for comparison, the
same amounts of noise added straight to the pixels. At equal signal a shape survives longer among the
pixels: the eye averages noise over neighbouring pixels, while each latent value stands for a patch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sdlite.errors import ModelError, NumericalError, UsageError
from sdlite.sampling.config import NoiseConfig
from sdlite.schema import validate_size
from sdlite.staging import check_output_place

CHUNK = "sdlite.noise"  # the PNG text chunk holding the strip's JSON record


@dataclass(frozen=True)
class NoiseFrame:
    """One column of the strip: forward step `step` of `steps`, at training timestep `t` (None: clean)."""

    step: int
    t: int | None
    signal: float  # sqrt(abar_t): how much of the original is left (1 at step 0)
    noise: float  # sqrt(1 - abar_t): how much of the noise is in (0 at step 0)


@dataclass(frozen=True)
class NoiseStrip:
    """What `noise_strip` wrote: the PNG and what each of its columns shows."""

    path: Path
    frames: tuple[NoiseFrame, ...]
    height: int
    width: int
    seed: int
    steps: int
    model: str
    image: dict[str, str]  # the input's path and sha256

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        return {**record, "path": str(self.path), "frames": [asdict(f) for f in self.frames]}


def timestep(step: int, steps: int, train_timesteps: int) -> int:
    """Training timestep of forward step `step` (1..steps): evenly spread, step `steps` is the last, T-1."""
    return round(step * train_timesteps / steps) - 1


def frame_steps(frames: int, steps: int) -> list[int]:
    """The steps shown: `frames` of 0..steps, evenly spaced, always the first and the last."""
    return sorted({round(i * steps / (frames - 1)) for i in range(frames)})


def noise_strip(config: NoiseConfig) -> NoiseStrip:
    """Noise `config.image` along the model's own schedule; write the labelled strip; say what it shows."""
    import torch
    from diffusers import DDPMScheduler

    from sdlite.models.loading import pick_device, pick_dtype, resolve_model, vae_factor
    from sdlite.sampling import init_images
    from sdlite.sampling.grid import contact_sheet

    out = Path(config.out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder: give the PNG file to write")
    check_output_place(out, "--out", "file")  # a device, FIFO or read-only place: before anything is computed
    if out.exists() and not config.overwrite:
        raise UsageError(f"{out} already exists; pass --force to replace it")
    model = resolve_model(
        config.model, config.offline, config.allow_pickle, config.tokenizer, config.ema_weights, need_tokenizer=False
    )
    configs = model.configs()
    factor = vae_factor(configs["vae"])
    validate_size(config.height, config.width, factor)
    scheduler = DDPMScheduler.from_config(configs["scheduler"])
    total = scheduler.config.num_train_timesteps
    if config.steps > total:
        raise UsageError(f"--steps {config.steps} is more than this model's {total} training timesteps")
    user = init_images.read_user_image(config.image)
    init_images.check_init_size(user, factor, "image")
    height, width = init_images.default_size(user.image.size, factor, config.height, config.width)
    picture = init_images.fit_to(user.image, height, width, config.resize)

    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device)
    if dtype == torch.float16 and configs["vae"].get("force_upcast"):
        dtype = torch.float32  # as diffusers' pipelines do: this VAE overflows in fp16
    vae = _load_vae(model, dtype).to(device)
    scale, shift = vae.config.scaling_factor, vae.config.get("shift_factor") or 0.0
    pixels = torch.from_numpy(_as_array(picture)).permute(2, 0, 1)[None] / 127.5 - 1  # (1, 3, H, W) in [-1, 1]

    frames, latent_row, pixel_row = [], [], []
    with torch.inference_mode():
        z0 = (vae.encode(pixels.to(device, dtype)).latent_dist.mode() - shift) * scale
        generator = torch.Generator().manual_seed(config.seed)  # one generator, latent noise first
        eps = torch.randn(z0.shape, generator=generator).to(device, dtype)
        eps_pixels = torch.randn(pixels.shape, generator=generator)
        for step in frame_steps(config.frames, config.steps):
            t = timestep(step, config.steps, total) if step else None
            abar = 1.0 if t is None else float(scheduler.alphas_cumprod[t])
            frame = NoiseFrame(step, t, math.sqrt(abar), math.sqrt(1 - abar))
            z = z0 if t is None else scheduler.add_noise(z0, eps, torch.tensor([t]))
            decoded = vae.decode(z / scale + shift).sample.float().cpu()
            if not torch.isfinite(decoded).all():
                raise NumericalError(f"the VAE decoded step {step} to NaN or inf in {str(dtype)[6:]}; try --dtype fp32")
            noised = frame.signal * pixels + frame.noise * eps_pixels
            where = "clean" if t is None else f"signal {frame.signal:.2f}"
            latent_row.append(
                (_to_image(decoded), f"step 0 {where}" if t is None else f"step {step}/{config.steps} t={t} {where}")
            )
            pixel_row.append((_to_image(noised), f"pixels, step {step} {where}"))
            frames.append(frame)

    strip = NoiseStrip(out, tuple(frames), height, width, config.seed, config.steps, model.source, user.record())
    _save(contact_sheet(latent_row + pixel_row, columns=len(frames)), strip)
    return strip


def _load_vae(model: Any, dtype: Any) -> Any:
    """Only the autoencoder: the UNet and text encoder play no part in the forward process."""
    from diffusers import AutoencoderKL

    from sdlite.models.loading import load_single_file, silence_library_progress

    silence_library_progress()
    if model.single_file is not None:
        return load_single_file(model)["vae"].to(dtype=dtype)
    try:
        return AutoencoderKL.from_pretrained(
            model.path,
            subfolder="vae",
            local_files_only=True,
            dtype=dtype,
            use_safetensors=None if model.uses_pickle else True,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot load the VAE of {model.source} ({model.path}): {str(exc).splitlines()[0]}") from exc


def _as_array(image: Any) -> Any:
    import numpy as np

    return np.asarray(image.convert("RGB"), dtype=np.float32).copy()


def _to_image(tensor: Any) -> Any:
    """A (1, 3, H, W) tensor in [-1, 1] (clamped: noise overshoots) as an 8-bit PIL image."""
    from PIL import Image

    array = ((tensor[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def _save(sheet: Any, strip: NoiseStrip) -> None:
    """Write the strip atomically with its record; the record leaves out the strip's own path (files move)."""
    from PIL.PngImagePlugin import PngInfo

    from sdlite.staging import staged_file

    record = {k: v for k, v in strip.to_dict().items() if k != "path"}
    info = PngInfo()
    info.add_text(CHUNK, json.dumps(record, sort_keys=True))
    with staged_file(strip.path, "noise strip") as temp:
        sheet.save(temp, format="PNG", pnginfo=info)
