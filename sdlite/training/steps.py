"""The parts of an optimizer step both trainers share: the micro-batches and their seeds, and the guard that stops a run whose loss stops being finite.

Every random draw comes from a generator seeded by (seed, optimizer step, position in the global batch),
and the data order from a permutation seeded by (seed, epoch). Nothing depends on hidden RNG state, so a
resumed run sees exactly the batches and noise of an uninterrupted one, whatever the number of
processes, and checkpoints need no pickled RNG state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sdlite.data.buckets import Layout
from sdlite.errors import NumericalError
from sdlite.seeds import mix
from sdlite.training.config import TrainConfig
from sdlite.training.plan import TrainPlan
from sdlite.training.reporting import Emitter

LossHook = Callable[[int, Any], Any]  # (global step, loss) -> loss; lets tests inject faults
MAX_BAD_STEPS = 5  # consecutive non-finite losses before the run stops


@dataclass(frozen=True)
class MicroBatch:
    """This process's share of one micro-batch: which examples, at which global positions of the step.

    Every random draw of an example (caption dropout, latent sample, noise, timestep) comes from a generator
    seeded by (seed, step, position), so a global batch gets the same draws however it is split into
    processes, micro-batches and accumulation steps.
    """

    step: int
    epoch: int
    indices: tuple[int, ...]
    positions: tuple[int, ...]
    size: tuple[int, int]  # (width, height) of the batch's bucket
    effective_batch: int
    resolution: int  # class images are trained square, at the run's resolution

    @classmethod
    def of(cls, m: int, plan: TrainPlan, layout: Layout, config: TrainConfig, rank: int) -> MicroBatch:
        step, micro = divmod(m, config.grad_accum)
        batch = layout.order.batch(step, config.seed)
        start = micro * plan.batch_size * plan.num_processes + rank * plan.batch_size
        positions = tuple(range(start, start + plan.batch_size))
        indices = tuple(batch[p] for p in positions)
        epoch = step // layout.order.batches_per_epoch
        return cls(step, epoch, indices, positions, layout.sizes[indices[0]], plan.effective_batch, plan.resolution)

    def generators(self, seed: int, *salt: int) -> list[Any]:
        import torch

        return [torch.Generator().manual_seed(mix(seed, self.step, p, *salt)) for p in self.positions]


class FiniteGuard:
    """Skips steps whose loss is NaN/inf (reported as warnings) and stops the run after
    MAX_BAD_STEPS in a row; `in_row` > 0 means the latest step was skipped."""

    def __init__(self, emit: Emitter) -> None:
        self.emit, self.in_row, self.total = emit, 0, 0

    def finite(self, loss: float, step: int) -> bool:
        if math.isfinite(loss):
            self.in_row = 0
            return True
        self.in_row, self.total = self.in_row + 1, self.total + 1
        self.emit("warning", step=step, message=f"non-finite loss at step {step}; step skipped")
        if self.in_row >= MAX_BAD_STEPS:
            raise NumericalError(
                f"{self.in_row} non-finite losses in a row (last at step {step}); stopped. "
                "Lower --lr, or use --mixed-precision bf16/no; earlier checkpoints are intact"
            )
        return False
