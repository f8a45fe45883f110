"""What a training run reports as it goes: events, images/s and ETA, the loss log, and the final result."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlite.errors import writing

EventFn = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrainResult:
    out: Path
    steps: int
    final_loss: float | None
    checkpoints: tuple[Path, ...]
    skipped: tuple[str, ...]
    bad_steps: int
    images_per_s: float | None = None
    mfu: float | None = None  # model FLOP utilisation, on GPUs whose peak sdlite knows


class Pace:
    """Images per second over the last WINDOW steps, so a compile or warm-up in the first steps fades out of
    the step events (and their MFU and ETA), and over the whole run, for the final line."""

    WINDOW = 20

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.images = self.last = 0
        self.marks: collections.deque[tuple[float, int]] = collections.deque([(self.start, 0)], self.WINDOW + 1)

    def add(self, images: int) -> None:
        """A step of `images` images has just finished."""
        self.images, self.last = self.images + images, images
        self.marks.append((time.perf_counter(), self.images))

    def recent(self) -> float:
        (t0, n0), (t1, n1) = self.marks[0], self.marks[-1]
        return (n1 - n0) / max(t1 - t0, 1e-9)

    def overall(self) -> float | None:
        return self.images / max(time.perf_counter() - self.start, 1e-9) if self.images else None

    def timing(self, steps_left: int) -> dict[str, float]:
        """A step event's `images_per_s` (recent), `elapsed` (this run's) and `eta` (seconds at that pace)."""
        rate = self.recent()
        return {
            "images_per_s": rate,
            "elapsed": round(self.marks[-1][0] - self.start, 3),
            "eta": round(steps_left * self.last / rate, 3),
        }


class Emitter:
    """Sends events to the caller's callback, from the main process only.

    Step events also get `epoch` (epochs completed, fractional, as the plan counts them), worked out from
    the plan event sent before them, for the UNet and VAE loops alike.
    """

    def __init__(self, on_event: EventFn | None, main: bool) -> None:
        self.on_event, self.main = on_event, main
        self.steps_per_epoch = 0.0

    def __call__(self, kind: str, **data: Any) -> None:
        if kind == "plan":
            self.steps_per_epoch = data["steps_per_epoch"]
        elif kind == "step":
            epoch = round(data["step"] / self.steps_per_epoch, 4) if self.steps_per_epoch else None
            data = {**data, "epoch": epoch}
        if self.on_event is not None and self.main:
            self.on_event({"event": kind, **data})


class LossLog:
    """OUT/loss.csv (step, loss, lr), continued on resume; OUT/loss.png drawn at the end."""

    def __init__(self, out: Path, start_step: int, main: bool) -> None:
        self.path, self.main = Path(out) / "loss.csv", main
        if not main:
            return
        kept = ["step,loss,lr"]
        if start_step and self.path.exists():
            kept += [row for row in self.path.read_text().splitlines()[1:] if int(row.split(",")[0]) <= start_step]
        with writing(str(self.path)):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("\n".join(kept) + "\n")

    def add(self, step: int, loss: float, lr: float) -> None:
        if self.main:
            with writing(str(self.path)), self.path.open("a") as f:
                f.write(f"{step},{loss:.6g},{lr:.6g}\n")

    def close(self, plot: bool) -> None:
        if self.main and plot:
            from sdlite.training.loss_plot import loss_curve

            with writing(str(self.path.with_suffix(".png"))):
                loss_curve(self.path, self.path.with_suffix(".png"))
