"""Frozen settings of `sdlite train` and how a TOML file and the command line merge into them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

from annotated_types import Ge, Gt, Lt
from pydantic import AllowInfNan, Strict

from sdlite.errors import UsageError
from sdlite.models.source import resolve_model_source
from sdlite.schema import (
    COMMAND_LINE,
    FilePath,
    Flag,
    ImageSize,
    NonEmptyText,
    NonNegativeInt,
    NonNegativeNumber,
    PathText,
    PositiveInt,
    PositiveNumber,
    Prompt,
    Seed,
    Source,
    check,
    fail,
    name,
    one_of,
    origin,
    validate_fields,
)

Tracker = Literal["tensorboard", "wandb", "mlflow", "trackio"]


TRACKERS: tuple[str, ...] = get_args(Tracker)


LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


PRECISIONS = ("no", "fp16", "bf16")


PREDICTION_TYPES = ("epsilon", "v_prediction")


LrScheduler = one_of(LR_SCHEDULERS)


Precision = one_of(PRECISIONS)


PredictionType = one_of(PREDICTION_TYPES)


RESUME_HELP = (
    "latest, auto (resume when a checkpoint exists, else start fresh: for preemptible jobs), or a checkpoint folder"
)


@dataclass(frozen=True)
class TrainConfig:
    """A whole `sdlite train` run. Fields that change the trained weights are part of the
    checkpoint fingerprint (see `fingerprint`): resuming with different ones is refused."""

    model: PathText
    data: FilePath
    out: FilePath
    component: Literal["unet", "vae"] = "unet"  # unet: the denoiser (the usual fine-tune); vae: the autoencoder
    kl_weight: NonNegativeNumber = 1e-6  # --component vae: weight of the KL term against reconstruction MSE
    resolution: ImageSize | None = None  # None: the model's native size
    crop: Literal["center", "random"] = "center"
    random_flip: Flag = False
    batch_size: PositiveInt = 1  # per process
    grad_accum: PositiveInt = 1
    lr: PositiveNumber = 1e-5
    lr_scheduler: LrScheduler = "constant"
    warmup_steps: NonNegativeInt = 0
    max_steps: PositiveInt | None = None
    epochs: Annotated[float, Strict(), AllowInfNan(False), Ge(1)] | None = None  # fractions allowed: 1.5
    mixed_precision: Precision = "no"
    seed: Seed = 0
    gradient_checkpointing: Flag = False
    ema: Flag = False
    ema_decay: Annotated[float, Strict(), AllowInfNan(False), Gt(0), Lt(1)] = 0.9999
    snr_gamma: PositiveNumber | None = None
    noise_offset: NonNegativeNumber = 0.0
    prediction_type: PredictionType | None = None  # None: the model's own
    caption_dropout: Annotated[float, Strict(), AllowInfNan(False), Ge(0), Lt(1)] = 0.0
    train_text_encoder: Flag = False
    lora: Flag = False  # a LoRA on the UNet (and, with train_text_encoder, on the text encoder) instead of full weights
    lora_rank: PositiveInt = 4
    lora_alpha: PositiveNumber | None = None  # None: equal to the rank (scale 1); saved with the adapter
    cache: Flag | None = None  # None: on whenever the augmentation is fixed (see cache_choice)
    checkpoint_every: PositiveInt | None = None
    keep_checkpoints: PositiveInt | None = None  # None: keep all
    resume: NonEmptyText | None = None  # "latest", "auto" (resume if a checkpoint exists) or a checkpoint folder
    overwrite: Flag = False  # a fresh run into a non-empty OUT replaces what an earlier run wrote there
    validation_prompts: tuple[Prompt, ...] = ()
    validate_every: PositiveInt | None = None
    caption_column: NonEmptyText = "text"
    skip_bad_images: Flag = False
    allow_missing_captions: Flag = False
    max_grad_norm: PositiveNumber = 1.0
    offline: Flag = False
    allow_pickle: Flag = False
    tokenizer: PathText | None = None  # a single-file base model's tokenizer (folder or hub id)
    ema_weights: Flag = True  # a single-file base model's EMA weights when it has them
    # Aspect-ratio buckets: None = on when the images' aspect ratios differ (see sdlite/buckets.py).
    buckets: Flag | None = None
    bucket_step: PositiveInt = 64  # bucket sides are multiples of this
    bucket_min_side: PositiveInt | None = None  # None: half the resolution
    bucket_max_side: PositiveInt | None = None  # None: twice the resolution
    max_aspect: Annotated[float, Strict(), AllowInfNan(False), Ge(1)] = 2.0
    # DreamBooth: one prompt for every image, and prior preservation with images of the class.
    instance_prompt: Prompt | None = None
    class_prompt: Prompt | None = None
    class_data: FilePath | None = None  # None: a folder in sdlite's cache, per model and class prompt
    num_class_images: PositiveInt = 100
    prior_loss_weight: NonNegativeNumber = 1.0
    # Datasets in files: the columns of a Parquet / Arrow dataset (image: bytes, {bytes, path} or a path).
    image_column: NonEmptyText = "image"
    # Captions as comma-separated tags: shuffled per example and epoch, the first keep_tokens kept in place.
    shuffle_captions: Flag = False
    keep_tokens: NonNegativeInt = 0
    # Experiment trackers (Accelerate's): loss, learning rate, images/s and validation grids.
    report_to: tuple[Tracker, ...] = ()
    tracker_project: NonEmptyText = "sdlite"
    compile: Flag = False  # torch.compile the UNet for training (pays off on GPUs, after a compile of minutes)
    channels_last: Flag = False  # the UNet's weights and inputs in NHWC order (tensor-core convolutions on GPUs)

    _option_names: ClassVar[dict[str, str]] = {
        "validation_prompts": "--validation-prompt", "crop": "--center-crop/--random-crop",
        "cache": "--cache/--no-cache", "ema_weights": "--ema-weights/--no-ema-weights",
        "buckets": "--buckets/--no-buckets",
    }  # fmt: skip

    def __post_init__(self) -> None:
        validate_fields(self)

        def n(key: str) -> str:
            return name(TrainConfig, key)

        if self.component == "vae":
            unet_only = {
                "lora": self.lora, "train_text_encoder": self.train_text_encoder, "ema": self.ema,
                "cache": self.cache, "snr_gamma": self.snr_gamma is not None, "noise_offset": self.noise_offset > 0,
                "prediction_type": self.prediction_type is not None, "caption_dropout": self.caption_dropout > 0,
                "checkpoint_every": self.checkpoint_every is not None, "resume": self.resume is not None,
                "validation_prompts": bool(self.validation_prompts), "buckets": bool(self.buckets),
                "instance_prompt": self.instance_prompt is not None, "class_prompt": self.class_prompt is not None,
                "shuffle_captions": self.shuffle_captions, "report_to": bool(self.report_to),
                "gradient_checkpointing": self.gradient_checkpointing, "channels_last": self.channels_last,
                "compile": self.compile,
            }  # fmt: skip
            given = [key for key, used in unet_only.items() if used]
            if given:
                fail(given[0], f"{n('component')} vae does not support {', '.join(map(n, given))}")
        if (self.max_steps is None) == (self.epochs is None):
            fail("epochs" if self.epochs is not None else "max_steps",
                 f"give exactly one of {n('max_steps')} or {n('epochs')}")  # fmt: skip
        if self.lora and self.ema:
            fail("ema", f"{n('ema')} applies to full fine-tuning; drop it with {n('lora')}")
        if self.cache and (self.crop == "random" or self.random_flip):
            fail(
                "cache",
                "--cache needs a fixed augmentation: drop --random-crop / --random-flip, or pass --no-cache",
            )
        if self.validate_every is not None and not self.validation_prompts:
            fail("validate_every", f"{n('validate_every')} needs at least one {n('validation_prompts')}")
        if self.class_prompt is not None and self.instance_prompt is None:
            fail("class_prompt", f"{n('class_prompt')} (prior preservation) needs {n('instance_prompt')}")
        for key in ("class_data",):
            if getattr(self, key) is not None and self.class_prompt is None:
                fail(key, f"{n(key)} needs {n('class_prompt')} (the prompt its images show)")
        if self.keep_tokens and not self.shuffle_captions:
            fail("keep_tokens", f"{n('keep_tokens')} needs {n('shuffle_captions')}")
        if self.bucket_min_side and self.bucket_max_side and self.bucket_min_side > self.bucket_max_side:
            fail("bucket_min_side", f"{n('bucket_min_side')} is larger than {n('bucket_max_side')}")
        if self.overwrite and self.resume is not None:
            fail(
                "overwrite",
                f"{n('overwrite')} and {n('resume')} contradict: {n('resume')} continues the run in OUT, "
                f"{n('overwrite')} replaces it; give one",
            )

    def cache_choice(self) -> tuple[bool, str]:
        """Whether to cache latents and text embeddings, and why: on by default when it is valid."""
        if self.component == "vae":
            return False, "off: VAE training encodes every step"
        if self.cache is False:
            return False, "off: --no-cache"
        if self.crop == "random" or self.random_flip:
            return False, "off: random crop/flip change the pixels every epoch"
        return True, "on: " + ("--cache" if self.cache else "the augmentation is fixed (--no-cache turns it off)")

    def fingerprint(self) -> dict[str, Any]:
        """The settings a checkpoint must share with the run that resumes it (not length, output or I/O)."""
        ignored = {
            "max_steps", "epochs", "out", "resume", "overwrite", "checkpoint_every", "keep_checkpoints", "cache",
            "gradient_checkpointing", "validation_prompts", "validate_every", "offline", "allow_pickle",
            "skip_bad_images", "allow_missing_captions", "tokenizer", "report_to", "tracker_project", "compile",
            "channels_last",
        }  # fmt: skip
        return {k: _jsonable(v) for k, v in dataclasses.asdict(self).items() if k not in ignored}


TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def build_train_config(
    cli: dict[str, Any], config_file: Path | None = None, env: dict[str, str] | None = None
) -> TrainConfig:
    """Merge a TOML file (any option, dashes or underscores) under the command line's explicit options.

    `cli` holds the command-line values, None where an option was not given. Each source is checked
    on its own first, so a bad value names its option or its TOML key.
    """
    given = {k: v for k, v in cli.items() if v is not None}
    unknown = sorted(set(given) - set(TRAIN_KEYS))
    if unknown:
        raise UsageError(f"unknown training settings: {', '.join(unknown)}")
    check(TrainConfig, given, COMMAND_LINE)
    from_file: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    if config_file is not None:
        from_file, toml = _read_toml(Path(config_file))
        sources = dict.fromkeys(from_file, toml)
    merged = {**from_file, **given}
    sources.update(dict.fromkeys(given, COMMAND_LINE))
    merged["model"] = resolve_model_source(merged.get("model"), env)
    for required in ("data", "out"):
        if not merged.get(required):
            raise UsageError(f"--{required} is required (on the command line or in the --config file)")
    with origin(sources):
        return TrainConfig(**merged)


def _read_toml(path: Path) -> tuple[dict[str, Any], Source]:
    import tomllib

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(f"config file {path} does not exist") from exc
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # TOMLDecodeError, UnicodeDecodeError, a number too long to convert
        raise UsageError(f"config file {path} is not valid TOML: {str(exc).split(';')[0]}") from exc
    spelling: dict[str, str] = {}
    for key in raw:
        option = key.replace("-", "_")
        option = "validation_prompts" if option == "validation_prompt" else option
        if option in spelling:
            raise UsageError(f"config file {path}: {spelling[option]} and {key} are the same option; keep one")
        spelling[option] = key
    options = {option: raw[key] for option, key in spelling.items()}
    unknown = sorted(spelling[k] for k in set(options) - set(TRAIN_KEYS))
    if unknown:
        raise UsageError(f"config file {path}: unknown options {', '.join(unknown)}")
    if isinstance(options.get("validation_prompts"), str):
        options["validation_prompts"] = (options["validation_prompts"],)
    source = Source(where=str(path), style="toml", error=UsageError, spelling=spelling)
    check(TrainConfig, options, source)
    return options, source


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value
