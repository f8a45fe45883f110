"""A1111's hires fix: a text-to-image pass at the given size, an upscale, then an image-to-image pass at the larger
size from the same seed (`modules/processing.py`, `StableDiffusionProcessingTxt2Img`, v1.10).

The target size is A1111's: `--hires-scale S` multiplies both sides; `--hires-width`/`--hires-height` alone keeps
the first pass's aspect ratio; both cover that size and the overflow is cut evenly (A1111's truncation, in latent
pixels). Sides are floored to the VAE factor, as A1111's latent upscale floors them. The latent upscalers resize the
first pass's latents with torch's interpolation (A1111's modes); the image upscalers decode, resize the picture with
PIL and let the second pass encode it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

Upscaler = Literal[
    "latent",
    "latent-antialiased",
    "latent-bicubic",
    "latent-bicubic-antialiased",
    "latent-nearest",
    "latent-nearest-exact",
    "lanczos",
    "nearest",
]
UPSCALERS: tuple[str, ...] = get_args(Upscaler)
# A1111's names (`Hires upscaler`), and each latent mode's torch interpolation.
A1111_NAMES = {
    "latent": "Latent",
    "latent-antialiased": "Latent (antialiased)",
    "latent-bicubic": "Latent (bicubic)",
    "latent-bicubic-antialiased": "Latent (bicubic antialiased)",
    "latent-nearest": "Latent (nearest)",
    "latent-nearest-exact": "Latent (nearest-exact)",
    "lanczos": "Lanczos",
    "nearest": "Nearest",
}
_LATENT_MODES = {
    "latent": ("bilinear", False),
    "latent-antialiased": ("bilinear", True),
    "latent-bicubic": ("bicubic", False),
    "latent-bicubic-antialiased": ("bicubic", True),
    "latent-nearest": ("nearest", False),
    "latent-nearest-exact": ("nearest-exact", False),
}


@dataclass(frozen=True)
class HiresSize:
    """Where the upscale goes: the size the first pass is upscaled to, then the size kept after the even cut."""

    upscaled: tuple[int, int]  # (height, width)
    final: tuple[int, int]


def hires_size(
    height: int, width: int, scale: float | None, to_width: int | None, to_height: int | None, factor: int
) -> HiresSize:
    """A1111's target size for a first pass of height x width, floored to the VAE factor."""

    def floor(side: float) -> int:
        return max(factor, int(side) // factor * factor)

    if not to_width and not to_height:
        size = (floor(height * (scale or 1)), floor(width * (scale or 1)))
        return HiresSize(size, size)
    if not to_height:
        assert to_width is not None
        size = (floor(to_width * height // width), floor(to_width))
        return HiresSize(size, size)
    if not to_width:
        size = (floor(to_height), floor(to_height * width // height))
        return HiresSize(size, size)
    if width / height < to_width / to_height:  # cover: the first pass's shape, cut to the target's
        upscaled = (floor(to_width * height // width), floor(to_width))
    else:
        upscaled = (floor(to_height), floor(to_height * width // height))
    return HiresSize(upscaled, (min(upscaled[0], floor(to_height)), min(upscaled[1], floor(to_width))))


def upscale(first: Any, upscaler: str, size: HiresSize, factor: int) -> Any:
    """The first pass's result (latents, or PIL images for the image upscalers) at the second pass's size."""
    if upscaler in _LATENT_MODES:
        import torch

        mode, antialias = _LATENT_MODES[upscaler]
        height, width = size.upscaled[0] // factor, size.upscaled[1] // factor
        latents = torch.nn.functional.interpolate(first, size=(height, width), mode=mode, antialias=antialias)
        cut_y, cut_x = height - size.final[0] // factor, width - size.final[1] // factor
        return latents[:, :, cut_y // 2 : height - (cut_y + 1) // 2, cut_x // 2 : width - (cut_x + 1) // 2]
    from PIL import Image

    method = Image.Resampling.LANCZOS if upscaler == "lanczos" else Image.Resampling.NEAREST
    out = []
    for image in first:
        big = image.resize((size.upscaled[1], size.upscaled[0]), method)
        cut_y, cut_x = size.upscaled[0] - size.final[0], size.upscaled[1] - size.final[1]
        out.append(big.crop((cut_x // 2, cut_y // 2, cut_x // 2 + size.final[1], cut_y // 2 + size.final[0])))
    return out


def is_latent(upscaler: str) -> bool:
    return upscaler in _LATENT_MODES
