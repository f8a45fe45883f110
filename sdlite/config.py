"""Frozen settings objects, one per command, validated once before any model loads.

Nothing here imports torch or diffusers: a bad value must be reported instantly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlite.errors import DataError, UsageError
from sdlite.modes import FAST_SETTINGS, MODES
from sdlite.schedulers import SCHEDULERS

DTYPES = ("auto", "fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRESETS = ("tiny", "shapes", "sd1-tiny", "sd15")
MODEL_ENV = "SDLITE_MODEL"
# The model sdlite trained itself (`make default-model`), used when no model is given.
DEFAULT_MODEL = Path(__file__).resolve().parent / "default_model"
MODEL_DEFAULTS_FILE = "sdlite.json"
# Stable Diffusion v1 VAEs downsample by 8; the loaded model's own factor is checked again later.
DEFAULT_VAE_FACTOR = 8
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Generation:
    """Everything besides the model that decides the pixels of one prompt's images.

    Image j of this prompt uses seed `seed + j`; height/width None mean the model's native size.
    """

    prompt: str
    negative_prompt: str = ""
    steps: int = 50
    guidance: float = 7.5
    scheduler: str = "ddim"
    eta: float = 0.0
    seed: int = 0
    num_images: int = 1
    height: int | None = None
    width: int | None = None


# Per-prompt settings a prompts-file line or `--from-image` may carry.
GENERATION_KEYS = tuple(f.name for f in dataclasses.fields(Generation))


@dataclass(frozen=True)
class LoraChoice:
    """One LoRA of a sample run: the adapter (a folder holding pytorch_lora_weights.safetensors, or a
    diffusers- or kohya-layout .safetensors file) and the strength it is applied at."""

    source: str
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.scale):
            raise UsageError(f"--lora-scale must be a finite number, got {self.scale}")


def lora_choices(sources: tuple[str, ...], scales: tuple[float, ...]) -> tuple[LoraChoice, ...]:
    """Pair `--lora` and `--lora-scale` by position: either no scale (each LoRA at 1.0) or one per LoRA."""
    if scales and not sources:
        raise UsageError("--lora-scale needs a --lora to apply to")
    if scales and len(scales) != len(sources):
        raise UsageError(
            f"{len(scales)} --lora-scale for {len(sources)} LoRAs: give one --lora-scale per --lora, "
            "in the same order, or none (each LoRA at 1.0)"
        )
    return tuple(
        LoraChoice(source, scale) for source, scale in zip(sources, scales or (1.0,) * len(sources), strict=True)
    )


@dataclass(frozen=True)
class SampleConfig:
    """A whole `sdlite sample` run: which model, which images, where they go."""

    model: str
    generations: tuple[Generation, ...]
    out: Path = Path("outputs")
    batch_size: int = 1
    dtype: str = "auto"
    device: str = "auto"
    grid: bool = False
    offline: bool = False
    allow_pickle: bool = False
    # When set, only images with these seeds are written. `--from-image` uses it to recompute the
    # whole batch an image was made in: batched matmuls round differently from single ones.
    keep_seeds: tuple[int, ...] = ()
    # The model hash recorded in a `--from-image` source: a different model gets a warning.
    expected_model_hash: str | None = None
    loras: tuple[LoraChoice, ...] = ()  # LoRA adapters applied together, each at its own scale
    mode: str = "default"  # "fast" or "low-memory": see sdlite/modes.py
    tokenizer: str | None = None  # a single-file model's tokenizer (folder or hub id); default: found
    ema_weights: bool = True  # a single file's EMA weights when it has them

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))  # Python callers may pass a str
        # ... and LoRA paths for LoraChoice(path) at scale 1
        loras = tuple(c if isinstance(c, LoraChoice) else LoraChoice(str(c)) for c in self.loras)
        object.__setattr__(self, "loras", loras)
        _check_choice("mode", self.mode, MODES)
        if not self.generations:
            raise UsageError("no prompt given: pass PROMPT arguments, --prompts-file or --from-image")
        for gen in self.generations:
            validate_generation(gen)
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        _check_choice("--dtype", self.dtype, DTYPES)
        _check_choice("--device", self.device, DEVICES)


@dataclass(frozen=True)
class InitConfig:
    """`sdlite init`: which preset architecture to write, where, and from which seed."""

    out: Path
    preset: str = "tiny"
    seed: int = 0
    dtype: str = "fp32"
    overwrite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))  # Python callers may pass a str
        _check_choice("--preset", self.preset, PRESETS)
        _check_choice("--dtype", self.dtype, ("fp32", "fp16", "bf16"))
        _check_seed(self.seed)


@dataclass(frozen=True)
class InfoConfig:
    """`sdlite info`: which model to describe, and at which image size to trace the shapes."""

    model: str
    height: int | None = None
    width: int | None = None
    offline: bool = False
    allow_pickle: bool = False
    tokenizer: str | None = None
    ema_weights: bool = True

    def __post_init__(self) -> None:
        validate_size(self.height, self.width, DEFAULT_VAE_FACTOR)


@dataclass(frozen=True)
class ExportConfig:
    """`sdlite export`: a model or LoRA, where to write it, in which layout and precision."""

    source: str
    out: Path
    format: str | None = None  # None: single-file for models, kohya for LoRAs
    dtype: str | None = None  # None: as stored
    tokenizer: str | None = None
    ema_weights: bool = True
    offline: bool = False
    allow_pickle: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        if self.format is not None:
            _check_choice("--format", self.format, ("single-file", "diffusers", "kohya"))
        if self.dtype is not None:
            _check_choice("--dtype", self.dtype, ("fp32", "fp16", "bf16"))


@dataclass(frozen=True)
class SampleOverrides:
    """What the user typed for `sdlite sample`, None where an option was not given.

    Kept apart from SampleConfig so that prompts files and `--from-image` can supply values the
    command line did not, while an explicit option always wins.
    """

    prompts: tuple[str, ...] = ()
    model: str | None = None
    prompts_file: Path | None = None
    from_image: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # Generation fields given on the command line
    out: Path | None = None
    batch_size: int | None = None
    dtype: str | None = None
    device: str | None = None
    grid: bool = False
    offline: bool = False
    allow_pickle: bool = False
    lora: tuple[str, ...] = ()  # every --lora, in order
    lora_scale: tuple[float, ...] = ()  # every --lora-scale, in order (paired with --lora by position)
    fast: bool = False
    low_memory: bool = False
    tokenizer: str | None = None
    ema_weights: bool | None = None


def build_sample_config(opts: SampleOverrides, env: dict[str, str] | None = None) -> SampleConfig:
    """Merge command line, prompts file, source-image metadata and defaults into one SampleConfig.

    Precedence: command line > prompts-file line > `--from-image` metadata > `--fast`'s sampler
    and steps > the model's own recommended settings (`sdlite.json` in its folder) > built-in
    defaults, except that a
    prompts-file line's own seed beats `--seed`, which only starts the run's counter. Seeds are
    resolved here (random when not given) so the config says exactly which images will be made.
    """
    env = dict(os.environ) if env is None else env
    cli = {k: v for k, v in opts.settings.items() if v is not None}
    unknown = set(cli) - set(GENERATION_KEYS)
    if unknown:
        raise UsageError(f"unknown sample settings: {', '.join(sorted(unknown))}")

    if opts.fast and opts.low_memory:
        raise UsageError("--fast and --low-memory cannot be combined: choose speed or memory")
    mode = "fast" if opts.fast else "low-memory" if opts.low_memory else None
    base: dict[str, Any] = {}
    model = opts.model
    batch_size, keep_seeds, expected_hash = opts.batch_size, (), None
    lora, lora_scale = _as_tuple(opts.lora), _as_tuple(opts.lora_scale)
    tokenizer, ema_weights = opts.tokenizer, opts.ema_weights
    if opts.from_image is not None:
        from sdlite.metadata import read_settings

        recorded = read_settings(opts.from_image)
        base = {k: recorded[k] for k in GENERATION_KEYS if k in recorded}
        if not model:  # a single file's tokenizer and weights choice belong to the recorded model
            model = recorded.get("model")
            tokenizer = tokenizer or recorded.get("tokenizer")
            ema_weights = recorded.get("ema_weights") if ema_weights is None else ema_weights
        expected_hash = recorded.get("model_hash")
        mode = mode or recorded.get("mode")
        if recorded.get("lora") and not lora:  # the recorded LoRAs; --lora-scale may still change their scales
            used = _recorded_loras(recorded["lora"], opts.from_image)
            lora, lora_scale = tuple(r["source"] for r in used), lora_scale or tuple(r["scale"] for r in used)
        batch = recorded.get("batch_seeds") or [base.get("seed")]
        remake_batch = not ({"seed", "num_images"} & set(cli) or opts.prompts or opts.prompts_file or batch_size)
        if remake_batch and len(batch) > 1:
            base.update(seed=batch[0], num_images=len(batch))
            batch_size, keep_seeds = len(batch), (recorded["seed"],)
    model = resolve_model_source(model, env)
    base = {**model_defaults(model), **(FAST_SETTINGS if mode == "fast" else {}), **base}

    rows: list[dict[str, Any]] = [{"prompt": p} for p in opts.prompts]
    if opts.prompts_file is not None:
        rows += read_prompts_file(opts.prompts_file)
    if not rows and opts.from_image is not None:
        rows = [{}]

    first_seed = cli.get("seed", base.get("seed"))
    if first_seed is None:
        first_seed = secrets.randbelow(MAX_SEED + 1)
    _check_seed(first_seed)
    generations = []
    next_seed = first_seed
    for row in rows:
        merged = {**base, **row, **{k: v for k, v in cli.items() if k != "seed"}}
        if "seed" not in row:  # a line's own seed wins; --seed only starts the run's counter
            merged["seed"] = next_seed
        if "prompt" not in merged:
            raise UsageError("no prompt given: pass PROMPT arguments, --prompts-file or --from-image")
        try:
            gen = Generation(**merged)
        except TypeError as exc:
            raise UsageError(f"bad sample settings: {exc}") from exc
        generations.append(gen)
        next_seed = gen.seed + gen.num_images

    return SampleConfig(
        model=model,
        generations=tuple(generations),
        out=opts.out or Path("outputs"),
        batch_size=batch_size or 1,
        dtype=opts.dtype or "auto",
        device=opts.device or "auto",
        grid=opts.grid,
        offline=opts.offline,
        allow_pickle=opts.allow_pickle,
        keep_seeds=keep_seeds,
        expected_model_hash=expected_hash,
        loras=lora_choices(lora, lora_scale),
        mode=mode or "default",
        tokenizer=tokenizer,
        ema_weights=True if ema_weights is None else ema_weights,
    )


def _as_tuple(value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str | int | float) else tuple(value)


def _recorded_loras(value: Any, image: Path) -> list[dict[str, Any]]:
    """The LoRAs a PNG records: a list of {source, hash, scale}, or one such dict (earlier sdlite versions)."""
    rows = [value] if isinstance(value, dict) else value
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and isinstance(r.get("source"), str) and isinstance(r.get("scale"), int | float)
        for r in rows
    ):
        raise DataError(f"{image}: its sdlite metadata has a malformed lora record")
    return rows


def resolve_model_source(model: str | None, env: dict[str, str] | None = None) -> str:
    """The model to use: the one given, else $SDLITE_MODEL, else the built-in shapes model."""
    env = dict(os.environ) if env is None else env
    model = model or env.get(MODEL_ENV)
    if model:
        return model
    if (DEFAULT_MODEL / "model_index.json").is_file():
        return str(DEFAULT_MODEL)
    raise UsageError(
        f"no model given and the built-in model is missing ({DEFAULT_MODEL}): pass --model PATH_OR_HUB_ID or set "
        f"{MODEL_ENV} (make a test model with `sdlite init DIR --preset tiny`)"
    )


def model_defaults(model: str) -> dict[str, Any]:
    """Settings a model folder recommends for itself (`sdlite.json`: {"defaults": {"steps": 30, ...}})."""
    path = Path(model).expanduser() / MODEL_DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        defaults = json.loads(path.read_text(encoding="utf-8")).get("defaults", {})
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from exc
    return {k: v for k, v in defaults.items() if k in GENERATION_KEYS and k not in ("prompt", "seed", "num_images")}


def read_prompts_file(path: Path) -> list[dict[str, Any]]:
    """Read one prompt per line, or JSON objects with `prompt` plus per-line setting overrides.

    Blank lines and lines starting with `#` are skipped. A bad line is a data error naming the line.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read prompts file {path}: {exc}") from exc
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if not text.startswith("{"):
            rows.append({"prompt": text})
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        unknown = set(row) - set(GENERATION_KEYS)
        if unknown:
            raise DataError(f"{path}:{number}: unknown keys {sorted(unknown)}; allowed: {', '.join(GENERATION_KEYS)}")
        if not isinstance(row.get("prompt"), str):
            raise DataError(f'{path}:{number}: a JSON line needs a string "prompt"')
        rows.append(row)
    if not rows:
        raise DataError(f"prompts file {path} holds no prompts")
    return rows


def validate_generation(gen: Generation) -> None:
    """Reject values that cannot produce an image, naming the option and a valid alternative."""
    if gen.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {gen.steps}")
    if gen.guidance < 0:
        raise UsageError(f"--guidance must be 0 or more, got {gen.guidance}")
    if gen.num_images < 1:
        raise UsageError(f"--num-images must be at least 1, got {gen.num_images}")
    _check_choice("--scheduler", gen.scheduler, tuple(SCHEDULERS))
    if gen.eta < 0:
        raise UsageError(f"--eta must be 0 or more, got {gen.eta}")
    if gen.eta > 0 and not SCHEDULERS[gen.scheduler].accepts_eta:
        names = [n for n, s in SCHEDULERS.items() if s.accepts_eta]
        raise UsageError(f"--eta has no effect with --scheduler {gen.scheduler}; it applies to: {', '.join(names)}")
    _check_seed(gen.seed)
    validate_size(gen.height, gen.width, DEFAULT_VAE_FACTOR)


def validate_size(height: int | None, width: int | None, factor: int) -> None:
    """Height and width must be positive multiples of the VAE's downsampling factor."""
    for name, value in (("--height", height), ("--width", width)):
        if value is None:
            continue
        if value < factor:
            raise UsageError(f"{name} must be at least {factor}, got {value}")
        if value % factor:
            low = value - value % factor
            raise UsageError(
                f"{name} {value} is not a multiple of the VAE factor {factor}; nearest valid: {low} or {low + factor}"
            )


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{option} must be one of {', '.join(choices)}; got {value!r}")


def _check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed must be between 0 and {MAX_SEED}, got {seed}")


LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
PRECISIONS = ("no", "fp16", "bf16")
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class TrainConfig:
    """A whole `sdlite train` run. Fields that change the trained weights are part of the
    checkpoint fingerprint (see `fingerprint`): resuming with different ones is refused."""

    model: str
    data: Path
    out: Path
    component: str = "unet"  # unet: the denoiser (the usual fine-tune); vae: the autoencoder
    kl_weight: float = 1e-6  # --component vae: weight of the KL term against reconstruction MSE
    resolution: int | None = None  # None: the model's native size
    crop: str = "center"  # center | random
    random_flip: bool = False
    batch_size: int = 1  # per process
    grad_accum: int = 1
    lr: float = 1e-5
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    max_steps: int | None = None
    epochs: int | None = None
    mixed_precision: str = "no"
    seed: int = 0
    gradient_checkpointing: bool = False
    ema: bool = False
    ema_decay: float = 0.9999
    snr_gamma: float | None = None
    noise_offset: float = 0.0
    prediction_type: str | None = None  # None: the model's own
    caption_dropout: float = 0.0
    train_text_encoder: bool = False
    lora: bool = False  # a LoRA on the UNet (and, with train_text_encoder, on the text encoder) instead of full weights
    lora_rank: int = 4
    lora_alpha: float | None = None  # None: equal to the rank (scale 1); saved with the adapter
    cache: bool | None = None  # None: on whenever the augmentation is fixed (see cache_choice)
    checkpoint_every: int | None = None
    keep_checkpoints: int | None = None  # None: keep all
    resume: str | None = None  # "latest" or a checkpoint folder
    validation_prompts: tuple[str, ...] = ()
    validate_every: int | None = None
    caption_column: str = "text"
    skip_bad_images: bool = False
    allow_missing_captions: bool = False
    max_grad_norm: float = 1.0
    offline: bool = False
    allow_pickle: bool = False
    tokenizer: str | None = None  # a single-file base model's tokenizer (folder or hub id)
    ema_weights: bool = True  # a single-file base model's EMA weights when it has them

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "validation_prompts", tuple(self.validation_prompts))
        if self.resolution is not None:
            validate_size(self.resolution, None, DEFAULT_VAE_FACTOR)
        _check_choice("--component", self.component, ("unet", "vae"))
        if self.component == "vae":
            unet_only = {
                "--lora": self.lora, "--train-text-encoder": self.train_text_encoder, "--ema": self.ema,
                "--cache": self.cache, "--snr-gamma": self.snr_gamma is not None, "--noise-offset": self.noise_offset > 0,
                "--prediction-type": self.prediction_type is not None, "--caption-dropout": self.caption_dropout > 0,
                "--checkpoint-every": self.checkpoint_every is not None, "--resume": self.resume is not None,
                "--validation-prompt": bool(self.validation_prompts),
            }  # fmt: skip
            given = [name for name, used in unet_only.items() if used]
            if given:
                raise UsageError(f"--component vae does not support {', '.join(given)}")
        if self.kl_weight < 0:
            raise UsageError(f"--kl-weight must be 0 or more, got {self.kl_weight}")
        _check_choice("--crop", self.crop, ("center", "random"))
        _check_choice("--lr-scheduler", self.lr_scheduler, LR_SCHEDULERS)
        _check_choice("--mixed-precision", self.mixed_precision, PRECISIONS)
        if self.prediction_type is not None:
            _check_choice("--prediction-type", self.prediction_type, PREDICTION_TYPES)
        for option, value in (
            ("--batch-size", self.batch_size),
            ("--grad-accum", self.grad_accum),
            ("--lora-rank", self.lora_rank),
        ):
            if value < 1:
                raise UsageError(f"{option} must be at least 1, got {value}")
        for option, value in (
            ("--max-steps", self.max_steps),
            ("--epochs", self.epochs),
            ("--checkpoint-every", self.checkpoint_every),
            ("--keep-checkpoints", self.keep_checkpoints),
            ("--validate-every", self.validate_every),
        ):
            if value is not None and value < 1:
                raise UsageError(f"{option} must be at least 1, got {value}")
        if (self.max_steps is None) == (self.epochs is None):
            raise UsageError("give exactly one of --max-steps or --epochs")
        if self.lr <= 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if self.warmup_steps < 0:
            raise UsageError(f"--warmup-steps must be 0 or more, got {self.warmup_steps}")
        if not 0 <= self.caption_dropout < 1:
            raise UsageError(f"--caption-dropout must be in [0, 1), got {self.caption_dropout}")
        if not 0 < self.ema_decay < 1:
            raise UsageError(f"--ema-decay must be between 0 and 1, got {self.ema_decay}")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise UsageError(f"--snr-gamma must be positive, got {self.snr_gamma}")
        if self.noise_offset < 0:
            raise UsageError(f"--noise-offset must be 0 or more, got {self.noise_offset}")
        if self.lora and self.ema:
            raise UsageError("--ema applies to full fine-tuning; drop it with --lora")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise UsageError(f"--lora-alpha must be positive, got {self.lora_alpha}")
        if self.cache and (self.crop == "random" or self.random_flip):
            raise UsageError(
                "--cache needs a fixed augmentation: drop --random-crop / --random-flip, or pass --no-cache"
            )
        if self.validate_every is not None and not self.validation_prompts:
            raise UsageError("--validate-every needs at least one --validation-prompt")
        _check_seed(self.seed)

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
            "max_steps", "epochs", "out", "resume", "checkpoint_every", "keep_checkpoints", "cache",
            "gradient_checkpointing", "validation_prompts", "validate_every", "offline", "allow_pickle",
            "skip_bad_images", "allow_missing_captions", "tokenizer",
        }  # fmt: skip
        return {k: _jsonable(v) for k, v in dataclasses.asdict(self).items() if k not in ignored}


TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def build_train_config(
    cli: dict[str, Any], config_file: Path | None = None, env: dict[str, str] | None = None
) -> TrainConfig:
    """Merge a TOML file (any option, dashes or underscores) under the command line's explicit options.

    `cli` holds the command-line values, None where an option was not given.
    """
    merged: dict[str, Any] = {}
    if config_file is not None:
        merged.update(read_toml(config_file))
    merged.update({k: v for k, v in cli.items() if v is not None})
    merged["model"] = resolve_model_source(merged.get("model"), env)
    for required in ("data", "out"):
        if not merged.get(required):
            raise UsageError(f"--{required} is required (on the command line or in the --config file)")
    if isinstance(merged.get("validation_prompts"), str):
        merged["validation_prompts"] = (merged["validation_prompts"],)
    try:
        return TrainConfig(**merged)
    except TypeError as exc:
        raise UsageError(f"bad training settings: {exc}") from exc


def read_toml(path: Path) -> dict[str, Any]:
    """Options from a TOML file: top-level keys named like the command-line options."""
    import tomllib

    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(f"config file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from exc
    options = {key.replace("-", "_"): value for key, value in raw.items()}
    options = {("validation_prompts" if k == "validation_prompt" else k): v for k, v in options.items()}
    unknown = sorted(set(options) - set(TRAIN_KEYS))
    if unknown:
        raise UsageError(f"config file {path}: unknown options {', '.join(unknown)}")
    return options


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclass(frozen=True)
class EvalConfig:
    """`sdlite eval shapes`: how many scenes to sample and judge, with which sampler settings.

    Unset sampler settings come from the model's own recommendations, then the built-in defaults.
    """

    model: str
    n: int = 240  # half from training triples, half from held-out triples
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    batch_size: int = 16
    out: Path | None = None  # where the judged images go (default: a temporary folder)
    offline: bool = False
    fast: bool = False  # judge `sample --fast` (its sampler and steps unless given)
    tokenizer: str | None = None
    ema_weights: bool = True

    def __post_init__(self) -> None:
        if self.n < 2:
            raise UsageError(f"--n must be at least 2, got {self.n}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        _check_seed(self.seed)
        probe = {"steps": self.steps, "guidance": self.guidance, "scheduler": self.scheduler}
        validate_generation(Generation("probe", **{k: v for k, v in probe.items() if v is not None}))
