"""A1111's variation seeds: the starting noise of a text-to-image batch when `--subseed-strength` or
`--seed-resize-from` is given, drawn as A1111 draws it with its CPU noise source (`modules/rng.py`, v1.10).

Each image's noise comes from its own seed's generator (which diffusers then goes on drawing from, for ancestral
samplers, exactly as when it draws the noise itself). The subseed's noise is drawn from a fresh generator and mixed
in by A1111's spherical interpolation; a seed resized from WxH draws its noise at that size from a fresh generator
and pastes it, centred (cut or padded), into the image-sized noise drawn from the image's generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PARALLEL = 0.9995  # A1111 interpolates linearly when the two noises are this close to parallel


def slerp(strength: float, low: Any, high: Any) -> Any:
    """A1111's spherical interpolation of two (channels, height, width) noises: the norms and the angle are taken
    along the height axis (dim 1), per channel and column, as its code takes them."""
    import torch

    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > PARALLEL:
        return low * strength + high * (1 - strength)  # A1111's own (reversed) weights on this rare path
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - strength) * omega) / so).unsqueeze(1) * low + (torch.sin(strength * omega) / so).unsqueeze(
        1
    ) * high


def initial_noise(
    shape: tuple[int, int, int],
    generators: Sequence[Any],
    subseed: int | None,
    strength: float,
    resize_from: tuple[int, int] | None,
    factor: int,
) -> Any:
    """The batch's starting noise (images, channels, height, width): each image's from its generator, mixed with the
    subseed's by `strength`, drawn at `resize_from` (height, width in pixels; `factor` pixels per latent) if given."""
    import torch

    def fresh(seed: int, size: tuple[int, int, int]) -> Any:
        return torch.randn(size, generator=torch.Generator("cpu").manual_seed(seed))

    small = shape if resize_from is None else (shape[0], resize_from[0] // factor, resize_from[1] // factor)
    noises = []
    for generator in generators:
        seed = generator.initial_seed()
        noise = torch.randn(shape, generator=generator) if small == shape else fresh(seed, small)
        if subseed is not None and strength:
            noise = slerp(strength, noise, fresh(subseed, small))
        if small != shape:
            noise = _centred(torch.randn(shape, generator=generator), noise)
        noises.append(noise)
    return torch.stack(noises)


def _centred(canvas: Any, noise: Any) -> Any:
    """`noise` pasted into the middle of `canvas`, cut where it is larger (A1111's placement)."""
    dx = (canvas.shape[2] - noise.shape[2]) // 2
    dy = (canvas.shape[1] - noise.shape[1]) // 2
    w = noise.shape[2] if dx >= 0 else noise.shape[2] + 2 * dx
    h = noise.shape[1] if dy >= 0 else noise.shape[1] + 2 * dy
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    canvas[:, ty : ty + h, tx : tx + w] = noise[:, sy : sy + h, sx : sx + w]
    return canvas
