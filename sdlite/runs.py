"""What every training run shares: the UNet trainer (training.py) and the VAE trainer (vae_training.py) both
import this module, so neither imports the other.

Here are the plan (model and data checked, buckets, steps and batch sizes worked out before any weights
load), the batch order and seeding of each micro-batch, the optimizer, the OUT folder's checks and run
record, the finite-loss guard, the event emitter and the loss log.

Every random draw comes from a generator seeded by (seed, optimizer step, position in the global batch),
and the data order from a permutation seeded by (seed, epoch). Nothing depends on hidden RNG state, so a
resumed run sees exactly the batches and noise of an uninterrupted one, whatever the number of
processes, and checkpoints need no pickled RNG state.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlite import checkpoints, resources
from sdlite.buckets import Layout, make_layout
from sdlite.config import MODEL_DEFAULTS_FILE, TrainConfig, validate_size
from sdlite.errors import NumericalError, UsageError, writing
from sdlite.formats.lora import LORA_FILE
from sdlite.models import ResolvedModel, resolve_model, vae_factor

EventFn = Callable[[dict[str, Any]], None]
LossHook = Callable[[int, Any], Any]  # (global step, loss) -> loss; lets tests inject faults
MAX_BAD_STEPS = 5  # consecutive non-finite losses before the run stops


@dataclass(frozen=True)
class TrainPlan:
    """What a run will do, computed before any weights load (`--dry-run` prints it)."""

    images: int
    captioned: int
    skipped: tuple[str, ...]
    resolution: int
    num_processes: int
    batch_size: int
    grad_accum: int
    effective_batch: int
    micro_batches_per_epoch: int
    steps_per_epoch: float
    steps: int
    epochs: float
    cache: bool
    cache_note: str
    trains: tuple[str, ...]
    buckets: dict[str, int] = dataclasses.field(default_factory=dict)  # images per bucket ("WxH")
    bucket_note: str = ""
    class_images: int = 0  # prior preservation: class images trained beside the instance images
    tflops_per_image: float | None = None  # model FLOPs of one image's step (see sdlite/flops.py)
    peak_tflops: float | None = None  # the device's dense peak at this precision, when known: MFU = achieved / peak
    memory_gib: float | None = None  # estimated peak memory of one process (sdlite/resources.py)
    largest_batch: int | None = None  # the largest --batch-size whose estimate fits `memory_limit` now
    memory_limit: str = ""  # what bounds this process's memory ("139 GiB (free memory on NVIDIA H200)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


def make_plan(config: TrainConfig, num_processes: int = 1) -> tuple[TrainPlan, Any, ResolvedModel, Layout]:
    """Check the model and every image; work out buckets, steps, epochs and batch sizes."""
    from sdlite.data import check_images, discover

    model = resolve_model(config.model, config.offline, config.allow_pickle, config.tokenizer, config.ema_weights)
    if config.component == "vae" and model.single_file is not None:
        raise UsageError(
            "--component vae trains from a diffusers folder: convert the single file first "
            f"(sdlite export {model.path} DIR --format diffusers)"
        )
    configs = model.configs()
    factor = vae_factor(configs["vae"])
    resolution = config.resolution or model.native_size()
    validate_size(resolution, None, factor, names=("--resolution",))
    fit = resources.check_train(model, config, resolution, num_processes)  # before any image is read or weight loaded
    dataset = check_images(
        discover(
            config.data,
            config.caption_column,
            config.allow_missing_captions or bool(config.instance_prompt),
            image_column=config.image_column,
            offline=config.offline,
        ),
        config.skip_bad_images,
    )
    if config.instance_prompt is not None:  # DreamBooth: one prompt for every image, captions or not
        examples = tuple(dataclasses.replace(e, caption=config.instance_prompt) for e in dataset.examples)
        dataset = dataclasses.replace(dataset, examples=examples, skipped=tuple(
            n for n in dataset.skipped if not n.endswith("missing caption (empty caption used)")))  # fmt: skip
    per_micro = config.batch_size * num_processes
    effective = per_micro * config.grad_accum
    layout = _layout(dataset, resolution, effective, config, configs)
    per_epoch = layout.order.batches_per_epoch
    if per_epoch == 0:
        raise UsageError(
            f"{len(dataset.examples)} images cannot fill one global batch of {effective} "
            f"({config.batch_size} per process x {num_processes} processes x {config.grad_accum} accumulation); "
            "lower --batch-size or --grad-accum"
        )
    steps = config.max_steps or max(1, math.ceil(config.epochs * per_epoch))  # type: ignore[operator]
    trains = ("unet", "text_encoder") if config.train_text_encoder else ("unet",)
    if config.lora:
        trains = tuple(f"{name} lora" for name in trains)
    if config.component == "vae":
        trains = ("vae",)
    cache, cache_note = config.cache_choice()
    plan = TrainPlan(
        images=len(dataset.examples),
        captioned=sum(1 for e in dataset.examples if e.caption),
        skipped=dataset.skipped,
        resolution=resolution,
        num_processes=num_processes,
        batch_size=config.batch_size,
        grad_accum=config.grad_accum,
        effective_batch=effective,
        micro_batches_per_epoch=per_epoch * config.grad_accum,
        steps_per_epoch=float(per_epoch),
        steps=steps,
        epochs=steps / per_epoch,
        cache=cache,
        cache_note=cache_note,
        trains=trains,
        buckets=layout.histogram(),
        bucket_note=layout.note,
        class_images=config.num_class_images if config.class_prompt else 0,
        memory_gib=fit.estimate.total / resources.GIB,
        largest_batch=fit.largest_batch,
        memory_limit=f"{resources.size_text(fit.limit.bytes)} ({fit.limit.source})" if fit.limit else "",
    )
    return plan, dataset, model, layout


def _layout(dataset: Any, resolution: int, effective: int, config: TrainConfig, configs: dict[str, Any]) -> Layout:
    """Buckets for the UNet (sides on the UNet's latent grid), a plain square for VAE training."""
    if config.component == "vae":
        return make_layout([e.size for e in dataset.examples], resolution, effective, False, 1, None, None, 1.0)
    grid = vae_factor(configs["vae"]) * 2 ** (len(configs["unet"]["block_out_channels"]) - 1)
    if config.buckets is not False and config.bucket_step % grid:
        raise UsageError(
            f"--bucket-step {config.bucket_step} must be a multiple of {grid} for this model (VAE factor x UNet "
            "downsampling), or pass --no-buckets"
        )
    return make_layout([e.size for e in dataset.examples], resolution, effective, config.buckets, config.bucket_step,
                       config.bucket_min_side, config.bucket_max_side, config.max_aspect)  # fmt: skip


def dry_run(config: TrainConfig, num_processes: int | None = None) -> TrainPlan:
    """Validate data and settings and return the plan, as the run itself reports it (with `num_processes`, or
    the processes of this run); nothing is trained or written."""
    import os

    import torch

    plan, _, model, _ = make_plan(config, num_processes or int(os.environ.get("WORLD_SIZE", "1")))
    if config.component != "unet":
        return plan
    return with_flops(plan, model, config, torch.device(resources.train_device()))


def with_flops(plan: TrainPlan, model: ResolvedModel, config: TrainConfig, device: Any) -> TrainPlan:
    """The plan with the model FLOPs of one image's UNet step and, on a GPU in the table, the device's peak."""
    from sdlite.flops import peak_flops, train_flops_per_image

    flops = train_flops_per_image(model.configs(), plan.resolution, plan.resolution, config.train_text_encoder)
    peak = None
    if device.type == "cuda":
        import torch

        peak = peak_flops(torch.cuda.get_device_name(device), config.mixed_precision)
    return dataclasses.replace(plan, tflops_per_image=flops / 1e12, peak_tflops=peak / 1e12 if peak else None)


def make_optimizer(params: list[Any], lr: float, torch: Any) -> tuple[Any, str]:
    """AdamW with the fused kernel (all tensors in one pass) where torch has it for these tensors,
    else the foreach one; the per-tensor loop is never used."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=1e-2, fused=True), "fused AdamW"
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=1e-2, foreach=True), "foreach AdamW"


# What only a finished run leaves in OUT (its model), and with what a run writes as it goes, everything it
# writes there: `--overwrite` removes these (and nothing else) before it starts.
FINISHED_ENTRIES = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler", LORA_FILE,
                    MODEL_DEFAULTS_FILE)  # fmt: skip
OUT_ENTRIES = ("checkpoints", "validation", "logs", "loss.csv", "loss.png", "sdlite-train.json", *FINISHED_ENTRIES)


def check_out(config: TrainConfig) -> None:
    """A fresh run refuses an OUT that already holds files, so an earlier run's model and checkpoints
    are never mixed with or replaced by a new one by accident (`--resume` continues, `--overwrite` replaces).

    `--resume auto` with no checkpoint yet starts fresh (a preemptible job's first start, or a restart
    before its first checkpoint): it may replace the files an unfinished run writes as it goes, never a
    finished run's model or anything a run does not write."""
    if config.overwrite:
        return
    out = Path(config.out)
    held = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
    shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
    if config.resume == "auto" and not checkpoints.list_checkpoints(out):
        if any(name in FINISHED_ENTRIES or name not in OUT_ENTRIES for name in held):
            raise UsageError(
                f"--out {out} holds a finished run or other files ({shown}) and no checkpoint: --resume auto would "
                "start fresh over them; pass --overwrite to replace that run, or another --out"
            )
        return
    if config.resume:
        return
    if held:
        raise UsageError(
            f"--out {out} is not empty ({shown}): pass --resume latest (or auto) to continue that run, "
            "--overwrite to replace it, or another --out"
        )


def prepare_out(config: TrainConfig, accelerator: Any, fresh: bool) -> None:
    """Create OUT before any weights load (an unwritable location fails in seconds, not after a
    model load) and clear what a killed run may have left half-written there; a fresh run with
    `--overwrite` first removes an earlier run's outputs."""
    if accelerator.is_main_process:
        out = Path(config.out)
        with writing(f"to output folder {out}"):
            out.mkdir(parents=True, exist_ok=True)
            if fresh and config.overwrite:
                for name in OUT_ENTRIES:
                    target = out / name
                    shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        checkpoints.clean_staging(config.out)
    accelerator.wait_for_everyone()


def write_run_record(out: Path, config: TrainConfig, plan: TrainPlan, **extra: Any) -> None:
    """OUT/sdlite-train.json: the resolved settings and plan that produced this model."""
    record = {"config": config.fingerprint() | {"max_steps": config.max_steps, "epochs": config.epochs},
              "plan": plan.to_dict(), **extra}  # fmt: skip
    (Path(out) / "sdlite-train.json").write_text(json.dumps(record, indent=2, default=str))


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


def mix(*numbers: int) -> int:
    """A 63-bit seed from integers: well spread, and the same on every machine and process."""
    digest = hashlib.sha256(json.dumps(numbers).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


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
        return {"images_per_s": rate, "elapsed": round(self.marks[-1][0] - self.start, 3),
                "eta": round(steps_left * self.last / rate, 3)}  # fmt: skip


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
            from sdlite.plot import loss_curve

            with writing(str(self.path.with_suffix(".png"))):
                loss_curve(self.path, self.path.with_suffix(".png"))
