"""A validation loss that means something: the denoising loss of held-out images with noise and timesteps fixed
once, so successive values differ only because the weights changed.

Each validation image is scored at `TIMESTEPS` timesteps spread evenly over the schedule (the middle of each of
4 equal spans), each with its own noise drawn from a generator seeded by (seed, image, timestep): the same noised
latents every time. Images are centre-cropped squares at the training resolution, captions as written (no dropout,
no shuffling). The inputs are made once, at the first validation, and kept. Rows go to OUT/validation_loss.csv
(continued on resume); the lowest value and its step are reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlite.errors import writing
from sdlite.seeds import mix

TIMESTEPS = 4
STREAM = 7  # the seed stream of validation draws (training draws use others)
CSV = "validation_loss.csv"


@dataclass
class Best:
    """The lowest validation loss so far and its step."""

    step: int | None = None
    loss: float | None = None

    def update(self, step: int, loss: float) -> None:
        if self.loss is None or loss < self.loss:
            self.step, self.loss = step, loss


def fixed_draws(seed: int, image: int, steps: int, shape: tuple[int, ...]) -> list[tuple[int, Any, Any]]:
    """(timestep, latent-sample noise, noise) for each of an image's fixed timesteps."""
    import torch

    draws = []
    for k in range(TIMESTEPS):
        generator = torch.Generator().manual_seed(mix(seed, STREAM, image, k))
        timestep = int((k + 0.5) * steps / TIMESTEPS)
        draws.append((timestep, torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)))
    return draws


class ValidationLog:
    """OUT/validation_loss.csv (step, loss), continued on resume, and the best value so far."""

    def __init__(self, out: Path, start_step: int, main: bool) -> None:
        self.path, self.main, self.best = Path(out) / CSV, main, Best()
        if not main:
            return
        kept = ["step,loss"]
        if start_step and self.path.exists():
            kept += [row for row in self.path.read_text().splitlines()[1:] if int(row.split(",")[0]) <= start_step]
        for row in kept[1:]:
            step, loss = row.split(",")
            self.best.update(int(step), float(loss))
        with writing(str(self.path)):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("\n".join(kept) + "\n")

    def add(self, step: int, loss: float) -> None:
        self.best.update(step, loss)
        if self.main:
            with writing(str(self.path)), self.path.open("a") as f:
                f.write(f"{step},{loss:.9g}\n")
