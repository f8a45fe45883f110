"""The plan of a training run, worked out before any weights load: model and data checked, buckets, steps,
batch sizes, memory and FLOPs; `dry_run` returns it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from sdlite import filecache
from sdlite.data.buckets import Layout, make_layout
from sdlite.data.masks import check_masks
from sdlite.errors import DataError, UsageError
from sdlite.models import memory
from sdlite.models.loading import ResolvedModel, resolve_model, vae_factor
from sdlite.schema import validate_size
from sdlite.training.config import TrainConfig
from sdlite.training.optimizers import describe


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
    # What the data holds that trains poorly or was changed on the way in (warned before training starts).
    data_warnings: tuple[str, ...] = ()
    buckets: dict[str, int] = dataclasses.field(default_factory=dict)  # images per bucket ("WxH")
    bucket_note: str = ""
    class_images: int = 0  # prior preservation: class images trained beside the instance images
    tflops_per_image: float | None = None  # model FLOPs of one image's step (see sdlite/training/flops.py)
    peak_tflops: float | None = None  # the device's dense peak at this precision, when known: MFU = achieved / peak
    memory_gib: float | None = None  # estimated peak memory of one process (sdlite/models/memory.py)
    largest_batch: int | None = None  # the largest --batch-size whose estimate fits `memory_limit` now
    memory_limit: str = ""  # what bounds this process's memory ("139 GiB (free memory on NVIDIA H200)")
    # SDXL: what each image tells the model besides its pixels: its original size ("WxH": images), how its crop's
    # top-left corner is chosen, and that the target size is its bucket.
    micro_conditioning: dict[str, Any] = dataclasses.field(default_factory=dict)
    optimizer: str = ""  # the optimizer, its settings and the learning-rate schedule, in words
    validation_images: int = 0  # held-out images whose loss is scored (--validation-data / --validation-split)
    datasets: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # [[datasets]]: images, repeats, share

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _several(config: TrainConfig) -> Any:
    """The examples of every [[datasets]] table, each repeated `repeats` times (in its table's order, which the
    seeded batch order then shuffles), with its caption options and DreamBooth prompt."""
    from sdlite.data.examples import Dataset, discover
    from sdlite.data.images import check_images

    examples: list[Any] = []
    skipped: list[str] = []
    notes: list[str] = []
    for number, spec in enumerate(config.datasets):
        found = check_images(
            discover(spec.path, config.caption_column,
                     config.allow_missing_captions or bool(spec.instance_prompt or config.instance_prompt),
                     image_column=config.image_column, offline=config.offline, strict=config.strict_data,
                     masks=config.masked_loss and not config.alpha_mask,
                     caption_extension=spec.caption_extension or config.caption_extension),
            config.skip_bad_images,
        )  # fmt: skip
        prompt = spec.instance_prompt if spec.instance_prompt is not None else config.instance_prompt
        own = tuple(
            dataclasses.replace(e, captions=spec.captions, dataset=number,
                                caption=prompt if prompt is not None else e.caption)
            for e in found.examples
        )  # fmt: skip
        examples += list(own) * spec.repeats
        skipped += list(found.skipped)
        notes += list(found.notes)
    return Dataset(tuple(examples), "datasets", tuple(skipped), tuple(notes))


def _class_sets(config: TrainConfig) -> int:
    """How many sets of class images prior preservation trains with: the run's, or one per [[datasets]] table that
    has a class prompt (its own or the run's)."""
    if not config.datasets:
        return int(config.class_prompt is not None)
    return sum(1 for spec in config.datasets if (spec.class_prompt or config.class_prompt) is not None)


def dataset_shares(config: TrainConfig, dataset: Any) -> list[dict[str, Any]]:
    """Each [[datasets]] table's images, repeats and share of the training examples (so of the steps)."""
    counts = [0] * len(config.datasets)
    for example in dataset.examples:
        counts[example.dataset] += 1
    total = sum(counts) or 1
    return [
        {"path": str(spec.path), "images": count // spec.repeats, "repeats": spec.repeats, "share": count / total}
        | ({"resolution": spec.resolution} if spec.resolution else {})
        for spec, count in zip(config.datasets, counts, strict=True)
    ]


def _hold_out(dataset: Any, config: TrainConfig) -> Any:
    """The dataset with its validation images: those of --validation-data, or --validation-split's share of the
    training images (chosen by --seed, taken out of training)."""
    import random

    from sdlite.data.examples import discover
    from sdlite.data.images import check_images

    if config.validation_data is not None:
        held = check_images(
            discover(config.validation_data, config.caption_column, config.allow_missing_captions,
                     image_column=config.image_column, offline=config.offline, strict=config.strict_data,
                     masks=config.masked_loss and not config.alpha_mask,
                     caption_extension=config.caption_extension),
            config.skip_bad_images,
        )  # fmt: skip
        return dataclasses.replace(dataset, validation=held.examples)
    if config.validation_split is None:
        return dataset
    count = len(dataset.examples)
    chosen = set(random.Random(config.seed).sample(range(count), max(1, round(count * config.validation_split))))
    if len(chosen) >= count:
        raise UsageError(f"--validation-split {config.validation_split} of {count} images leaves none to train on")
    return dataclasses.replace(
        dataset,
        examples=tuple(e for i, e in enumerate(dataset.examples) if i not in chosen),
        validation=tuple(e for i, e in enumerate(dataset.examples) if i in chosen),
    )


def make_plan(config: TrainConfig, num_processes: int = 1) -> tuple[TrainPlan, Any, ResolvedModel, Layout]:
    """Check the model and every image; work out buckets, steps, epochs and batch sizes."""
    from sdlite.data.examples import discover
    from sdlite.data.images import check_images

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
    for number, spec in enumerate(config.datasets, start=1):
        if spec.resolution is not None:
            validate_size(spec.resolution, None, factor, names=(f"[[datasets]] {number} resolution",))
    largest = max([resolution] + [spec.resolution or 0 for spec in config.datasets])
    fit = memory.check_train(model, config, largest, num_processes)  # before any image is read or weight loaded
    if config.datasets:  # [[datasets]]: several folders, each with its repeats and caption options
        dataset = _several(config)
    else:
        dataset = check_images(
            discover(
                config.data,
                config.caption_column,
                config.allow_missing_captions or bool(config.instance_prompt),
                image_column=config.image_column,
                offline=config.offline,
                strict=config.strict_data,
                masks=config.masked_loss and not config.alpha_mask,
                caption_extension=config.caption_extension,
            ),
            config.skip_bad_images,
        )
    if config.masked_loss:
        check_masks(dataset.examples, config.alpha_mask)
    if (
        config.instance_prompt is not None and not config.datasets
    ):  # DreamBooth: one prompt for every image, captions or not
        examples = tuple(dataclasses.replace(e, caption=config.instance_prompt) for e in dataset.examples)
        dataset = dataclasses.replace(
            dataset,
            examples=examples,
            skipped=tuple(n for n in dataset.skipped if not n.endswith("missing caption (empty caption used)")),
        )
    if config.embedding and not any(config.embedding in e.caption for e in dataset.examples):
        raise DataError(
            f"no caption holds {config.embedding!r}: textual inversion learns the token from the captions that use it "
            f"(write it into them, or --instance-prompt 'a photo of {config.embedding}')"
        )
    dataset = _hold_out(dataset, config)
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
    trains = ("unet", *model.family.text_encoders) if config.train_text_encoder else ("unet",)
    if config.lora:
        trains = tuple(f"{name} lora" for name in trains)
    if config.component == "vae":
        trains = ("vae",)
    data_warnings = dataset.notes + _degenerate_images(dataset, layout, factor, config)
    cache, cache_note = config.cache_choice()
    if cache and (problem := filecache.unusable()) is not None:  # warned once; training runs uncached
        cache, cache_note = False, f"off: sdlite's cache folder cannot be used ({problem})"
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
        data_warnings=data_warnings,
        buckets=layout.histogram(),
        bucket_note=layout.note,
        class_images=config.num_class_images * _class_sets(config),
        memory_gib=fit.estimate.total / memory.GIB,
        largest_batch=fit.largest_batch,
        memory_limit=f"{memory.size_text(fit.limit.bytes)} ({fit.limit.source})" if fit.limit else "",
        micro_conditioning=_micro_conditioning(dataset, config) if model.family.micro_conditioning else {},
        validation_images=len(dataset.validation),
        datasets=dataset_shares(config, dataset) if config.datasets else [],
        optimizer=describe(
            config.optimizer, config.lr, config.weight_decay, config.optimizer_args, config.lr_scheduler,
            config.warmup_steps,
        ),
    )  # fmt: skip
    return plan, dataset, model, layout


UPSCALE_LIMIT = 4.0  # an image scaled up more than this to its training size trains mostly interpolation blur


def _degenerate_images(dataset: Any, layout: Layout, factor: int, config: TrainConfig) -> tuple[str, ...]:
    """Warnings for images too small to learn from: a side under one latent pixel (the VAE factor), or scaled up
    more than UPSCALE_LIMIT to cover their training size. With --strict-data the first such image is a DataError."""
    tiny, blown = [], []
    for example, (width, height) in zip(dataset.examples, layout.sizes, strict=True):
        w, h = example.size
        scale = max(width / w, height / h)  # every crop rule scales the image to cover its training size
        if min(w, h) < factor:
            tiny.append(f"{example} ({w}x{h})")
        elif scale > UPSCALE_LIMIT:
            blown.append((scale, f"{example} ({w}x{h}, {scale:.1f}x to {width}x{height})"))
    notes = []
    if tiny:
        notes.append(f"{_first(tiny)}: {len(tiny)} image(s) smaller than {factor} pixels on a side (one latent "
                     "pixel of this model's VAE): they hold almost nothing to learn")  # fmt: skip
    if blown:
        worst = [name for _, name in sorted(blown, key=lambda item: -item[0])]
        notes.append(f"{_first(worst)}: {len(blown)} image(s) scaled up more than {UPSCALE_LIMIT:g}x to their "
                     "training size: they teach blur (lower --resolution, or leave them out)")  # fmt: skip
    if notes and config.strict_data:
        raise DataError(f"{notes[0]}; --strict-data refuses such data (without it they train with a warning)")
    return tuple(notes)


def _first(names: list[str]) -> str:
    return names[0] + (f" and {len(names) - 1} more" if len(names) > 1 else "")


def _micro_conditioning(dataset: Any, config: TrainConfig) -> dict[str, Any]:
    """What SDXL is told of each image: its original size, its crop's top-left corner and the target size."""
    sizes: dict[str, int] = {}
    for example in dataset.examples:
        key = f"{example.size[0]}x{example.size[1]}"
        sizes[key] = sizes.get(key, 0) + 1
    crop = "random (drawn per step)" if config.crop == "random" else "centred"
    return {
        "original_sizes": dict(sorted(sizes.items())),
        "crop_top_left": f"{crop} in the image resized to cover its bucket"
        + ("; mirrored when the image is flipped" if config.random_flip else ""),
        "target_size": "the image's bucket",
    }


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
    own = [
        (spec.resolution or resolution, spec.bucket_min_side or config.bucket_min_side,
         spec.bucket_max_side or config.bucket_max_side)
        for spec in config.datasets
    ]  # fmt: skip
    differ = any((s.resolution, s.bucket_min_side, s.bucket_max_side) != (None, None, None) for s in config.datasets)
    return make_layout(
        [e.size for e in dataset.examples],
        resolution,
        effective,
        config.buckets,
        config.bucket_step,
        config.bucket_min_side,
        config.bucket_max_side,
        config.max_aspect,
        [own[e.dataset] for e in dataset.examples] if differ else None,
    )


def dry_run(config: TrainConfig, num_processes: int | None = None) -> TrainPlan:
    """Validate data and settings and return the plan, as the run itself reports it (with `num_processes`, or
    the processes of this run); nothing is trained or written."""
    import os

    import torch

    plan, _, model, _ = make_plan(config, num_processes or int(os.environ.get("WORLD_SIZE", "1")))
    if config.component != "unet":
        return plan
    return with_flops(plan, model, config, torch.device(memory.train_device()))


def with_flops(plan: TrainPlan, model: ResolvedModel, config: TrainConfig, device: Any) -> TrainPlan:
    """The plan with the model FLOPs of one image's UNet step and, on a GPU in the table, the device's peak."""
    from sdlite.training.flops import peak_flops, train_flops_per_image

    flops = train_flops_per_image(model.configs(), plan.resolution, plan.resolution, config.train_text_encoder)
    peak = None
    if device.type == "cuda":
        import torch

        peak = peak_flops(torch.cuda.get_device_name(device), config.mixed_precision)
    return dataclasses.replace(plan, tflops_per_image=flops / 1e12, peak_tflops=peak / 1e12 if peak else None)
