"""Progress on stderr: a tqdm bar on a terminal, plain paced lines in logs, for sampling and training."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

LOG_EVERY_S = 10.0  # plain progress lines (stderr not a terminal): at most this far apart,
LOG_EVERY_FRACTION = 0.1  # and at each further tenth of the run (but not more than once a second)


@contextmanager
def progress_bar(enabled: bool, images: int | None = None) -> Iterator[Any]:
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


@contextmanager
def train_reporter(json_events: bool, quiet: bool) -> Iterator[Any]:
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
            if event.get("optimizer"):
                typer.echo(f"optimizer: {event['optimizer']}", err=True)
            for part in event.get("datasets") or []:
                typer.echo(
                    f"dataset {part['path']}: {part['images']} images x{part['repeats']} ({part['share']:.0%} of the "
                    "steps)" + (f" at {part['resolution']}" if part.get("resolution") else ""),
                    err=True,
                )
            if event.get("validation_images"):
                typer.echo(f"validation loss: {event['validation_images']} held-out images", err=True)
            if event.get("memory_gib"):
                typer.echo(
                    f"memory: about {event['memory_gib']:.3g} GiB per process at batch {event['batch_size']}"
                    + (
                        f"; batch sizes up to {event['largest_batch']} fit in {event['memory_limit']}"
                        if event.get("largest_batch")
                        else ""
                    ),
                    err=True,
                )
            buckets = ", ".join(f"{size} x{count}" for size, count in event.get("buckets", {}).items())
            typer.echo(f"buckets {event.get('bucket_note', '')}" + (f": {buckets}" if buckets else ""), err=True)
            micro = event.get("micro_conditioning")
            if micro:
                sizes = ", ".join(f"{size} x{count}" for size, count in micro["original_sizes"].items())
                typer.echo(
                    f"micro-conditioning: original sizes {sizes}; crop top-left {micro['crop_top_left']}; target "
                    f"size {micro['target_size']}",
                    err=True,
                )
            if event.get("class_images"):
                typer.echo(f"prior preservation: {event['class_images']} class images", err=True)
        elif event["event"] == "class_images" and not quiet:
            typer.echo(
                f"class images in {event['folder']}: {event['have']} there, generating {event['generating']}", err=True
            )
        elif event["event"] == "speedups" and not quiet:
            typer.echo(f"speed-ups: {', '.join(event['applied'])}", err=True)
        elif event["event"] == "validation_loss" and not quiet:
            typer.echo(
                f"validation loss {event['loss']:.6g} at step {event['step']} (best {event['best_loss']:.6g} at step "
                f"{event['best_step']})",
                err=True,
            )
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
    parts = [
        f"step {event['step']}/{event['steps']}",
        f"loss {event['loss']:.4g}",
        f"lr {event['lr']:.3g}",
        f"{event['images_per_s']:.3g} images/s",
    ]
    if event.get("mfu") is not None:
        parts.append(f"MFU {event['mfu']:.1%}")
    if event["step"] < event["steps"] and event.get("eta") is not None:
        parts.append(f"ETA {_clock(event['eta'])}")
    elif event.get("elapsed") is not None:
        parts.append(f"done in {_clock(event['elapsed'])}")
    return ", ".join(parts)
