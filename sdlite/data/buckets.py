"""Aspect-ratio buckets and the batch order of a training run.

A square crop cuts the top off a portrait and the sides off a landscape. With buckets each image is
resized to the bucket (a width x height of about resolution^2 pixels, sides multiples of a step) whose
aspect ratio is nearest its own, and cropped only by the remainder; every batch comes from one bucket,
so its latents stack.

The batch order is a function of (seed, epoch, global batch size) only: each epoch every bucket's
images are shuffled and cut into global batches of `effective_batch` images (a bucket's remainder
waits for a later epoch's shuffle), and the batches are shuffled together. A step takes one global
batch; processes, micro-batches and gradient accumulation only slice it. That is what makes the run
the same however the global batch is split, and what lets a resumed run pick up mid-epoch exactly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

Size = tuple[int, int]  # (width, height)


def bucket_sizes(resolution: int, step: int, min_side: int, max_side: int, max_aspect: float) -> list[Size]:
    """Every (width, height) with sides multiples of `step` in [min_side, max_side], area at most
    resolution^2 and the long side as long as it can be for the short one, aspect ratio at most `max_aspect`
    (kohya's sd-scripts make their buckets by the same rule)."""
    area = resolution * resolution
    sizes = set()
    low = max(step, math.ceil(min_side / step) * step)
    for width in range(low, min(max_side, math.isqrt(area)) + 1, step):  # the narrow side; mirrored below
        height = min(max_side, area // width // step * step)
        if height < low:
            continue
        if max(width, height) / min(width, height) <= max_aspect + 1e-9:
            sizes.update({(width, height), (height, width)})
    return sorted(sizes)


def nearest(size: Size, buckets: Sequence[Size]) -> Size:
    """The bucket whose aspect ratio is closest to the image's (in log ratio); ties go to the larger area."""
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def label(size: Size) -> str:
    return f"{size[0]}x{size[1]}"


@dataclass(frozen=True)
class BatchOrder:
    """Which examples make global batch `step`, for a dataset grouped by bucket."""

    groups: tuple[tuple[int, ...], ...]  # example indices of each bucket, in bucket order
    effective_batch: int

    @property
    def batches_per_epoch(self) -> int:
        return sum(len(group) // self.effective_batch for group in self.groups)

    def batch(self, step: int, seed: int) -> tuple[int, ...]:
        """Example indices of the global batch of optimizer step `step` (0-based), in position order."""
        epoch, index = divmod(step, self.batches_per_epoch)
        return self._epoch(seed, epoch)[index]

    @functools.lru_cache(maxsize=2)  # noqa: B019 - a few epochs of one frozen order, freed with it
    def _epoch(self, seed: int, epoch: int) -> tuple[tuple[int, ...], ...]:
        import torch

        from sdlite.seeds import mix

        generator = torch.Generator().manual_seed(mix(seed, epoch))
        batches = []
        for group in self.groups:
            order = [group[i] for i in torch.randperm(len(group), generator=generator).tolist()]
            whole = len(order) // self.effective_batch * self.effective_batch
            batches += [tuple(order[i : i + self.effective_batch]) for i in range(0, whole, self.effective_batch)]
        return tuple(batches[i] for i in torch.randperm(len(batches), generator=generator).tolist())


@dataclass(frozen=True)
class Layout:
    """The bucket of every example and the batch order built on them."""

    sizes: tuple[Size, ...]  # (width, height) each example is trained at
    order: BatchOrder
    bucketed: bool
    note: str  # why buckets are on or off, and what was merged

    def histogram(self) -> dict[str, int]:
        """Images per bucket, largest first: what the plan shows."""
        counts: dict[str, int] = {}
        for size in self.sizes:
            counts[label(size)] = counts.get(label(size), 0) + 1
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def make_layout(
    image_sizes: Sequence[Size],
    resolution: int,
    effective_batch: int,
    choice: bool | None,
    step: int,
    min_side: int | None,
    max_side: int | None,
    max_aspect: float,
    per_image: Sequence[tuple[int, int | None, int | None]] | None = None,
) -> Layout:
    """Assign every image to a bucket (or the square), merge buckets too small for one global batch into
    their nearest neighbours, and build the batch order.

    `choice` None turns buckets on when some image's nearest bucket is not the square one. `per_image` gives an
    image its own (resolution, smallest side, largest side) ([[datasets]] tables with their own); the buckets of
    each are made for those, and a batch holds one size only.
    """
    own = list(per_image) if per_image is not None else [(resolution, min_side, max_side)] * len(image_sizes)
    squares = [(side, side) for side, _, _ in own]
    if choice is False:
        return _squares(squares, effective_batch, "off: --no-buckets")
    table = {
        (side, low, high): bucket_sizes(side, step, low or side // 2, high or side * 2, max_aspect)
        for side, low, high in set(own)
    }
    if not all(table.values()):
        return _squares(squares, effective_batch, "off: no bucket fits these bucket settings")
    assigned = [nearest(size, table[bounds]) for size, bounds in zip(image_sizes, own, strict=True)]
    if choice is None and assigned == squares:
        fits = table.get((resolution, min_side, max_side)) or next(iter(table.values()))
        reason = (
            "every image is (nearly) square" if len(fits) > 1 else f"only {label(fits[0])} fits --bucket-step {step}"
        )
        return _squares(squares, effective_batch, f"off: {reason}")
    assigned, merged = _merge_small(assigned, effective_batch)
    groups = {size: tuple(i for i, s in enumerate(assigned) if s == size) for size in sorted(set(assigned))}
    note = "on: --buckets" if choice else "on: the images' aspect ratios differ (--no-buckets squares them)"
    if merged:
        note += f"; {merged} image(s) moved to a neighbouring bucket (theirs held less than one global batch)"
    return Layout(tuple(assigned), BatchOrder(tuple(groups.values()), effective_batch), True, note)


def _squares(squares: list[Size], effective_batch: int, note: str) -> Layout:
    """No buckets: each image at its square; one batch group per square size (one, unless datasets differ)."""
    groups = {size: tuple(i for i, s in enumerate(squares) if s == size) for size in sorted(set(squares))}
    return Layout(tuple(squares), BatchOrder(tuple(groups.values()), effective_batch), False, note)


def _merge_small(assigned: list[Size], effective_batch: int) -> tuple[list[Size], int]:
    """Move the images of buckets holding fewer than one global batch to the nearest bucket by aspect ratio,
    smallest bucket first, so that no image is left out of every epoch."""
    assigned, moved = list(assigned), 0
    while True:
        counts = {size: assigned.count(size) for size in set(assigned)}
        small = sorted((n, size) for size, n in counts.items() if n < effective_batch)
        if not small or len(counts) == 1:
            return assigned, moved
        _, size = small[0]
        target = nearest(size, [s for s in counts if s != size])
        assigned = [target if s == size else s for s in assigned]
        moved += counts[size]
