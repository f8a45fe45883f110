"""Frozen settings objects, one per command: the schema every source of a setting passes through.

Each dataclass declares its fields with a checked type (see sdlite/schema.py): a range, a list of
names, strict numbers (a boolean is not an integer). `__post_init__` checks them and the rules that
join several fields, so a config is valid however it was made: from the command line, a TOML file,
a prompts-file line, a PNG's metadata, or by a Python caller. The builders below check each source
on its own first, so an error names the file and line or the option it came from, and they run
before any model loads. Nothing here imports torch or diffusers: a bad value is reported instantly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

from annotated_types import Ge, Gt, Le, Lt
from pydantic import AfterValidator, AllowInfNan, InstanceOf, Strict
from pydantic_core import PydanticCustomError

from sdlite.errors import DataError, ModelError, UsageError
from sdlite.modes import FAST_SETTINGS, MODES
from sdlite.schedulers import SCHEDULERS
from sdlite.schema import (
    COMMAND_LINE,
    FilePath,
    Flag,
    NonEmptyText,
    NonNegativeInt,
    NonNegativeNumber,
    Number,
    PathText,
    PositiveInt,
    PositiveNumber,
    Prompt,
    Source,
    Text,
    check,
    check_value,
    fail,
    name,
    one_of,
    origin,
    show,
    validate_fields,
)

MODEL_ENV = "SDLITE_MODEL"
# The model sdlite trained itself (`make default-model`), used when no model is given.
DEFAULT_MODEL = Path(__file__).resolve().parent / "default_model"
MODEL_DEFAULTS_FILE = "sdlite.json"
# Stable Diffusion v1 VAEs downsample by 8; the loaded model's own factor is checked again later.
DEFAULT_VAE_FACTOR = 8
MAX_SEED = 2**32 - 1

# Field types shared by several configs.
DType = Literal["auto", "fp32", "fp16", "bf16"]
Device = Literal["auto", "cpu", "cuda", "mps"]
Preset = Literal["tiny", "shapes", "sd1-tiny", "sd15"]
WeightsDType = Literal["fp32", "fp16", "bf16"]
SchedulerName = one_of(tuple(SCHEDULERS))
Mode = one_of(MODES)
Seed = Annotated[int, Strict(), Ge(0), Le(MAX_SEED)]
Tracker = Literal["tensorboard", "wandb", "mlflow", "trackio"]
TRACKERS: tuple[str, ...] = get_args(Tracker)
# Image-to-image: the share of the schedule re-run from the user's image (1 = from (almost) pure noise).
Strength = Annotated[float, Strict(), AllowInfNan(False), Gt(0), Le(1)]
ResizeRule = Literal["crop", "fit", "stretch"]
RESIZE_RULES: tuple[str, ...] = get_args(ResizeRule)
DEFAULT_STRENGTH = 0.75


def _on_vae_grid(value: int) -> int:
    reason = size_problem(value, DEFAULT_VAE_FACTOR)
    if reason:
        raise PydanticCustomError("reason", "{reason}", {"reason": reason})
    return value


# An image side: a multiple of the VAE factor (8 for SD v1; the loaded model's own is checked again).
ImageSize = Annotated[int, Strict(), Ge(DEFAULT_VAE_FACTOR), AfterValidator(_on_vae_grid)]

DTYPES: tuple[str, ...] = get_args(DType)
DEVICES: tuple[str, ...] = get_args(Device)
PRESETS: tuple[str, ...] = get_args(Preset)

# Prompts files: one JSON value for the whole file when it starts like a JSON array.
_JSON_ARRAY_START = re.compile(r"\[\s*[\[{\"\]]")
_JSON_SPACE = re.compile(r"[ \t\r\n]*")


@dataclass(frozen=True)
class Generation:
    """Everything besides the model that decides the pixels of one prompt's images.

    Image j of this prompt uses seed `seed + j`; height/width None mean the model's native size, or with an
    init image that image's own size rounded down to the VAE factor. With `init_image` the run is
    image-to-image (`strength` of the schedule re-run, 0.75 by default), with `mask` too it is inpainting
    (white = repaint, the edge softened by `mask_blur` pixels); `resize` says how the inputs meet the output
    size. Those four are None for text-to-image, and filled in with their defaults when an init image is given.
    """

    prompt: Prompt
    negative_prompt: Prompt = ""
    steps: PositiveInt = 50
    guidance: NonNegativeNumber = 7.5
    scheduler: SchedulerName = "ddim"
    eta: NonNegativeNumber = 0.0
    seed: Seed = 0
    num_images: PositiveInt = 1
    height: ImageSize | None = None
    width: ImageSize | None = None
    init_image: PathText | None = None
    strength: Strength | None = None
    mask: PathText | None = None
    mask_blur: NonNegativeInt | None = None
    resize: ResizeRule | None = None

    _option_names: ClassVar[dict[str, str]] = {"prompt": "PROMPT"}

    def __post_init__(self) -> None:
        validate_fields(self)
        validate_generation(self)
        if self.init_image is not None:  # image-to-image: the defaults of its own settings
            defaults = {"strength": DEFAULT_STRENGTH, "resize": "crop", "mask_blur": 0 if self.mask else None}
            for key, value in defaults.items():
                if getattr(self, key) is None:
                    object.__setattr__(self, key, value)

    @property
    def task(self) -> str:
        """text-to-image, image-to-image or inpainting."""
        return "inpainting" if self.mask else "image-to-image" if self.init_image else "text-to-image"


# Per-prompt settings a prompts-file line or `--from-image` may carry.
GENERATION_KEYS = tuple(f.name for f in dataclasses.fields(Generation))
# The files an image is made from besides the model: recorded with their sha256, found again to replay.
INPUT_KEYS = {"init_image": "--init-image", "mask": "--mask"}


@dataclass(frozen=True)
class LoraChoice:
    """One LoRA of a sample run: the adapter (a folder holding pytorch_lora_weights.safetensors, or a
    diffusers- or kohya-layout .safetensors file) and the strength it is applied at."""

    source: PathText
    scale: Number = 1.0

    _option_names: ClassVar[dict[str, str]] = {"source": "--lora", "scale": "--lora-scale"}

    def __post_init__(self) -> None:
        validate_fields(self)


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

    model: PathText
    generations: tuple[InstanceOf[Generation], ...]
    out: FilePath = Path("outputs")  # Python callers may pass a str
    batch_size: PositiveInt = 1
    dtype: DType = "auto"
    device: Device = "auto"
    grid: Flag = False
    offline: Flag = False
    allow_pickle: Flag = False
    # When set, only images with these seeds are written. `--from-image` uses it to recompute the
    # whole batch an image was made in: batched matmuls round differently from single ones.
    keep_seeds: tuple[Seed, ...] = ()
    # The model hash recorded in a `--from-image` source: a different model gets a warning.
    expected_model_hash: Text | None = None
    loras: tuple[InstanceOf[LoraChoice], ...] = ()  # LoRA adapters applied together, each at its own scale
    mode: Mode = "default"  # "fast" or "low-memory": see sdlite/modes.py
    tokenizer: PathText | None = None  # a single-file model's tokenizer (folder or hub id); default: found
    ema_weights: Flag = True  # a single file's EMA weights when it has them
    # Also write, per image, a strip of the model's clean-image estimate at this many denoising steps.
    save_progress: PositiveInt | None = None
    # Keep the images an interrupted run of the same command wrote into `out`; make only the missing ones.
    resume: Flag = False

    _option_names: ClassVar[dict[str, str]] = {
        "generations": "PROMPT", "loras": "--lora", "mode": "--fast/--low-memory",
        "ema_weights": "--ema-weights/--no-ema-weights",
    }  # fmt: skip

    def __post_init__(self) -> None:
        if isinstance(self.loras, tuple | list):  # LoRA paths for LoraChoice(path) at scale 1
            loras = tuple(c if isinstance(c, LoraChoice) else LoraChoice(c) for c in self.loras)
            object.__setattr__(self, "loras", loras)
        validate_fields(self)
        if not self.generations:
            raise UsageError("no prompt given: pass PROMPT arguments, --prompts-file or --from-image")


@dataclass(frozen=True)
class InitConfig:
    """`sdlite init`: which preset architecture to write, where, and from which seed."""

    out: FilePath
    preset: Preset = "tiny"
    seed: Seed = 0
    dtype: WeightsDType = "fp32"
    overwrite: Flag = False

    _option_names: ClassVar[dict[str, str]] = {"out": "OUT", "overwrite": "--force"}

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class InfoConfig:
    """`sdlite info`: which model to describe, and at which image size to trace the shapes."""

    model: PathText
    height: ImageSize | None = None
    width: ImageSize | None = None
    offline: Flag = False
    allow_pickle: Flag = False
    tokenizer: PathText | None = None
    ema_weights: Flag = True

    _option_names: ClassVar[dict[str, str]] = {"model": "MODEL", "ema_weights": "--ema-weights/--no-ema-weights"}

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class ExportConfig:
    """`sdlite export`: a model or LoRA, where to write it, in which layout and precision."""

    source: PathText
    out: FilePath
    format: Literal["single-file", "diffusers", "kohya"] | None = None  # None: single-file for models, kohya for LoRAs
    dtype: WeightsDType | None = None  # None: as stored
    tokenizer: PathText | None = None
    ema_weights: Flag = True
    offline: Flag = False
    allow_pickle: Flag = False
    force: Flag = False

    _option_names: ClassVar[dict[str, str]] = {
        "source": "SOURCE", "out": "OUT", "ema_weights": "--ema-weights/--no-ema-weights"
    }  # fmt: skip

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class NoiseConfig:
    """A whole `sdlite noise` run: which picture, which model's schedule, how many frames, where."""

    image: PathText
    out: FilePath
    model: PathText
    frames: Annotated[int, Strict(), Ge(2)] = 11  # at least the clean image and the last step
    steps: PositiveInt = 50
    seed: Seed = 0
    height: ImageSize | None = None
    width: ImageSize | None = None
    resize: ResizeRule = "crop"
    dtype: DType = "auto"
    device: Device = "auto"
    offline: Flag = False
    allow_pickle: Flag = False
    tokenizer: PathText | None = None
    ema_weights: Flag = True
    overwrite: Flag = False

    _option_names: ClassVar[dict[str, str]] = {
        "image": "IMAGE", "overwrite": "--force", "ema_weights": "--ema-weights/--no-ema-weights"
    }  # fmt: skip

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.frames > self.steps + 1:
            fail("frames", f"{name(NoiseConfig, 'frames')} {self.frames} is more than the {self.steps + 1} steps "
                           f"0..{self.steps} of {name(NoiseConfig, 'steps')} {self.steps}")  # fmt: skip


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
    save_progress: int | None = None
    resume: bool = False


def build_sample_config(opts: SampleOverrides, env: dict[str, str] | None = None) -> SampleConfig:
    """Merge command line, prompts file, source-image metadata and defaults into one SampleConfig.

    Precedence: command line > prompts-file line > `--from-image` metadata > `--fast`'s sampler
    and steps > the model's own recommended settings (`sdlite.json` in its folder, or in the metadata of a
    file `sdlite export` wrote) > built-in defaults, except that a
    prompts-file line's own seed beats `--seed`, which only starts the run's counter. Seeds are
    resolved here (random when not given) so the config says exactly which images will be made.
    Every source is checked on its own first, so an error names the option, or the file and line.
    """
    env = dict(os.environ) if env is None else env
    cli = {k: v for k, v in opts.settings.items() if v is not None}
    unknown = set(cli) - set(GENERATION_KEYS)
    if unknown:
        raise UsageError(f"unknown sample settings: {', '.join(sorted(unknown))}")
    check(Generation, cli, COMMAND_LINE)
    given = {"batch_size": opts.batch_size, "dtype": opts.dtype, "device": opts.device,
             "save_progress": opts.save_progress}  # fmt: skip
    check(SampleConfig, {k: v for k, v in given.items() if v is not None}, COMMAND_LINE)

    if opts.fast and opts.low_memory:
        raise UsageError("--fast and --low-memory cannot be combined: choose speed or memory")
    mode = "fast" if opts.fast else "low-memory" if opts.low_memory else None
    recorded_base: dict[str, Any] = {}
    image = None
    model = opts.model
    batch_size, keep_seeds, expected_hash = opts.batch_size, (), None
    lora, lora_scale = _as_tuple(opts.lora), _as_tuple(opts.lora_scale)
    tokenizer, ema_weights = opts.tokenizer, opts.ema_weights
    if opts.from_image is not None:
        recorded, image = _read_image_settings(opts.from_image)
        recorded_base = {k: recorded[k] for k in GENERATION_KEYS if k in recorded}
        _find_inputs(recorded_base, recorded.get("inputs"), cli, image)
        if not model or _same_file(model, recorded.get("model")):
            # a single file's tokenizer and weights choice belong to the recorded model (also when named again)
            model = model or recorded.get("model")
            tokenizer = tokenizer or recorded.get("tokenizer")
            ema_weights = recorded.get("ema_weights") if ema_weights is None else ema_weights
        expected_hash = recorded.get("model_hash")
        mode = mode or recorded.get("mode")
        if recorded.get("lora") and not lora:  # the recorded LoRAs; --lora-scale may still change their scales
            used = _recorded_loras(recorded["lora"], image)
            lora, lora_scale = tuple(r["source"] for r in used), lora_scale or tuple(r["scale"] for r in used)
        own_seed = recorded_base.get("seed")
        batch = recorded.get("batch_seeds") or [own_seed]
        remake_batch = not (
            {"seed", "num_images"} & set(cli) or opts.prompts or opts.prompts_file or batch_size is not None
        )
        if remake_batch and len(batch) > 1 and own_seed is not None:
            if own_seed not in range(batch[0], batch[0] + len(batch)):
                raise image.fail(f"its sdlite metadata records seed {own_seed} outside its batch {show(batch)}")
            recorded_base.update(seed=batch[0], num_images=len(batch))
            batch_size, keep_seeds = len(batch), (own_seed,)
    model = resolve_model_source(model, env)
    defaults, defaults_source = _model_defaults(model)
    fast = FAST_SETTINGS if mode == "fast" else {}
    base = {**defaults, **fast, **recorded_base}
    base_origin = {
        **{k: defaults_source for k in defaults}, **{k: COMMAND_LINE for k in fast}, **{k: image for k in recorded_base}
    }  # fmt: skip

    rows: list[tuple[dict[str, Any], Source]] = [({"prompt": p}, COMMAND_LINE) for p in opts.prompts]
    if opts.prompts_file is not None:
        rows += _prompt_rows(Path(opts.prompts_file))
    if not rows and image is not None:
        rows = [({}, image)]

    first_seed = cli.get("seed", base.get("seed"))
    if first_seed is None:
        first_seed = secrets.randbelow(MAX_SEED + 1)
    generations = []
    next_seed = first_seed
    for number, (row, row_source) in enumerate(rows, start=1):
        merged = {**base, **row, **{k: v for k, v in cli.items() if k != "seed"}}
        sources = {**base_origin, **{k: row_source for k in row}, **{k: COMMAND_LINE for k in cli}}
        if "seed" not in row:  # a line's own seed wins; --seed only starts the run's counter
            if next_seed > MAX_SEED:
                where = row_source.where or f"prompt {number}"
                raise UsageError(
                    f"the run's seeds pass {MAX_SEED} at {where} (--seed {first_seed} + 1 per image): "
                    "give a smaller --seed, or that prompt its own seed"
                )
            merged["seed"] = next_seed
        if "prompt" not in merged:
            if row_source is image:
                raise image.fail('its sdlite metadata records no "prompt"')
            raise UsageError("no prompt given: pass PROMPT arguments, --prompts-file or --from-image")
        with origin({k: v for k, v in sources.items() if v is not None}):
            gen = Generation(**merged)
        generations.append(gen)
        next_seed = gen.seed + gen.num_images

    return SampleConfig(
        model=model,
        generations=tuple(generations),
        out=opts.out or Path("outputs"),
        batch_size=1 if batch_size is None else batch_size,
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
        save_progress=opts.save_progress,
        resume=opts.resume,
    )


def _same_file(model: str, recorded: str | None) -> bool:
    """Whether `model` is the very file a PNG records (`--model` naming the golden's own single file)."""
    path = Path(model).expanduser()
    return recorded is not None and path.is_file() and path.resolve() == Path(recorded).expanduser().resolve()


def _as_tuple(value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str | int | float) else tuple(value)


def _read_image_settings(path: Path) -> tuple[dict[str, Any], Source]:
    """The settings a PNG records for `--from-image`, each checked like a prompts-file line's."""
    from sdlite.metadata import read_settings

    try:
        recorded = read_settings(path)
    except (AttributeError, TypeError, KeyError) as exc:  # a record whose parts have the wrong JSON types
        raise DataError(f"{path}: its sdlite metadata is malformed ({type(exc).__name__}: {exc})") from exc
    image = Source(where=str(path), style="json", error=DataError)
    check(Generation, {k: recorded[k] for k in GENERATION_KEYS if k in recorded}, image)
    for key, hint in (
        ("model", PathText | None), ("tokenizer", PathText | None), ("ema_weights", Flag | None),
        ("model_hash", Text | None), ("batch_seeds", list[Seed] | None), ("mode", Mode | None),
    ):  # fmt: skip
        check_value(hint, recorded.get(key), f'its sdlite metadata field "{key}"', image)
    return recorded, image


def _find_inputs(recorded: dict[str, Any], inputs: Any, cli: dict[str, Any], image: Source) -> None:
    """Check that the init image and mask a PNG was made from are still there, unchanged, for `--from-image`.

    A file given again on the command line wins (with a warning when it is not the recorded one); a recorded
    file that is missing or changed is a data error naming it. Image-to-image settings recorded without an
    init image (an A1111 img2img PNG, which does not record it) are dropped unless one is given.
    """
    import logging

    from sdlite.metadata import sha256_uncached

    inputs = inputs if isinstance(inputs, dict) else {}
    for key, option in INPUT_KEYS.items():
        expected = inputs.get(key, {}).get("sha256") if isinstance(inputs.get(key), dict) else None
        path = cli.get(key) or recorded.get(key)
        if path is None or expected is None:
            continue
        try:
            digest = sha256_uncached(Path(path).expanduser())
        except OSError as exc:
            if key in cli:
                raise DataError(f"cannot read {option} {path}: {exc.strerror or exc}") from exc
            raise image.fail(
                f"it was made from {option.removeprefix('--').replace('-', ' ')} {path}, which is missing: "
                f"pass that file with {option}"
            ) from exc
        if digest == expected:
            continue
        if key in cli:
            logging.getLogger("sdlite").warning(
                f"{option} {path} is not the file {image.where} was made from (sha256 {expected[:12]}...): "
                "the pixels will differ"
            )
        else:
            raise image.fail(
                f"its {option.removeprefix('--').replace('-', ' ')} {path} has changed since (sha256 {digest[:12]}... "
                f"instead of {expected[:12]}...): pass the original with {option}"
            )
    if recorded.get("init_image") is None and "init_image" not in cli:
        for key in ("strength", "mask", "mask_blur", "resize"):
            recorded.pop(key, None)
    if recorded.get("mask") is None and "mask" not in cli:
        recorded.pop("mask_blur", None)


def _recorded_loras(value: Any, image: Source) -> list[dict[str, Any]]:
    """The LoRAs a PNG records: a list of {source, hash, scale}, or one such dict (earlier sdlite versions)."""
    rows = [value] if isinstance(value, dict) else value
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"source", "scale"} <= set(r) for r in rows):
        raise image.fail("its sdlite metadata has a malformed lora record")
    for row in rows:
        check(LoraChoice, {"source": row["source"], "scale": row["scale"]}, image)
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
    """Settings a model recommends for itself (`sdlite.json`: {"defaults": {"steps": 30, ...}}, in its folder or,
    for a file `sdlite export` wrote, in the file's metadata)."""
    return _model_defaults(model)[0]


def model_settings_record(model: str) -> tuple[Any, str]:
    """A model's own `sdlite.json` record (None when it has none) and where it was read: the folder's file, or the
    copy `sdlite export` keeps in a single file's metadata, so the settings survive the trip through one file.

    A record that is not JSON is a corrupt model (ModelError naming it); files of other tools have no record.
    """
    path = Path(model).expanduser()
    if path.is_file():
        from sdlite.formats.single_file import SETTINGS_METADATA, read_metadata

        where = f"{path} (its {SETTINGS_METADATA} metadata)"
        text = read_metadata(path).get(SETTINGS_METADATA)
    else:
        where = str(path / MODEL_DEFAULTS_FILE)
        try:
            text = (path / MODEL_DEFAULTS_FILE).read_text(encoding="utf-8") if path.is_dir() else None
        except FileNotFoundError:
            text = None
        except (OSError, ValueError) as exc:  # ValueError: not UTF-8
            raise ModelError(f"{where} is not readable: {exc}") from exc
    if text is None:
        return None, where
    try:
        return json.loads(text), where
    except ValueError as exc:
        raise ModelError(f"{where} is not valid JSON (a corrupt model): {exc}") from exc


def _model_defaults(model: str) -> tuple[dict[str, Any], Source]:
    record, where = model_settings_record(model)
    source = Source(where=where, style="json", error=UsageError)
    if record is None:
        return {}, source
    defaults = record.get("defaults", {}) if isinstance(record, dict) else None
    if not isinstance(defaults, dict):
        raise UsageError(f'{where}: "defaults" must be a JSON object of sample settings')
    defaults = {k: v for k, v in defaults.items() if k in GENERATION_KEYS and k not in ("prompt", "seed", "num_images")}
    check(Generation, defaults, source)
    return defaults, source


def read_prompts_file(path: Path) -> list[dict[str, Any]]:
    """Read prompts: one per line, JSON lines with `prompt` plus per-line setting overrides, or one
    JSON array of such objects (or strings).

    Blank lines and lines starting with `#` are skipped. Every value is checked like the option it
    overrides; a bad one is a data error naming the file and line.
    """
    return [row for row, _ in _prompt_rows(Path(path))]


def _prompt_rows(path: Path) -> list[tuple[dict[str, Any], Source]]:
    """The rows of a prompts file, each with the source (`file:line`) its errors name."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read prompts file {path}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is not part of the first prompt
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x})") from exc
    body = text.strip()
    rows = _json_document_rows(path, text) if body.startswith(("[", "{")) else None
    if rows is None:
        rows = []
        for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may be in a prompt
            line = line.strip()
            if line and not line.startswith("#"):
                rows.append(_prompt_row(line, Source(where=f"{path}:{number}", style="json", error=DataError)))
    if not rows:
        raise DataError(f"prompts file {path} holds no prompts")
    anchored = [(_anchored(row, path.parent), source) for row, source in rows]
    for row, source in anchored:  # a missing input file is named with its line, before any model loads
        for key in INPUT_KEYS:
            if row.get(key) == "":
                raise source.fail(f'"{key}" is empty: give an image path, or leave the key out')
            if isinstance(row.get(key), str) and not Path(row[key]).expanduser().exists():
                raise source.fail(f'"{key}" {row[key]} does not exist')
    return anchored


def _anchored(row: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A prompts file's relative `init_image`/`mask` paths are relative to the file, so it can be moved with them."""
    return {
        k: str(folder / v) if k in INPUT_KEYS and isinstance(v, str) and v and not Path(v).expanduser().is_absolute()
        else v
        for k, v in row.items()
    }  # fmt: skip


def _prompt_row(line: str, source: Source) -> tuple[dict[str, Any], Source]:
    """One line: a plain prompt, or a JSON object when it starts with `{`."""
    if not line.startswith("{"):
        return {"prompt": line}, source
    try:
        row = json.loads(line)
    except ValueError as exc:  # JSONDecodeError, or a number too long to convert
        raise source.fail(f"not valid JSON ({getattr(exc, 'msg', None) or str(exc).split(';')[0]})") from exc
    return _object_row(row, source), source


def _json_document_rows(path: Path, text: str) -> list[tuple[dict[str, Any], Source]] | None:
    """The whole file as one JSON array (or object), with each item's line; None for line-by-line files."""
    decoder = json.JSONDecoder()
    start = len(text) - len(text.lstrip())
    try:
        document, end = decoder.raw_decode(text, start)
    except ValueError as exc:
        if text.startswith("{", start) or not _JSON_ARRAY_START.match(text, start):
            return None  # JSON lines, or a plain prompt such as "[cinematic] a cat"
        line = text.count("\n", 0, getattr(exc, "pos", start)) + 1
        reason = getattr(exc, "msg", None) or str(exc).split(";")[0]
        raise DataError(
            f"{path}:{line}: not valid JSON ({reason}); a JSON prompts file is one array of objects"
        ) from exc
    if text[end:].strip():
        if isinstance(document, dict) or not _JSON_ARRAY_START.match(text, start):
            return None  # JSON lines (one object per line), or a plain prompt such as "[1, 2] a cat"
        line = text.count("\n", 0, end) + 1
        raise DataError(f"{path}:{line}: text after the JSON array; a JSON prompts file is one array of objects")
    if isinstance(document, dict):  # one object, perhaps over several lines
        return [(_object_row(document, _at(path, 1)), _at(path, 1))]
    if not isinstance(document, list):
        return None
    rows = []
    lines = [text.count("\n", 0, i) + 1 for i in _array_item_starts(text, start)]
    shared = {line for line, count in Counter(lines).items() if count > 1}
    for index, (item, line) in enumerate(zip(document, lines, strict=True)):
        source = _at(path, line, index + 1 if line in shared else None)
        if isinstance(item, str):
            rows.append(({"prompt": item}, source))
        elif isinstance(item, dict):
            rows.append((_object_row(item, source), source))
        else:
            raise source.fail(f'an item must be an object with a "prompt" (or a prompt string), got {show(item)}')
    return rows


def _at(path: Path, line: int, item: int | None = None) -> Source:
    where = f"{path}:{line}" if item is None else f"{path}:{line} (item {item})"
    return Source(where=where, style="json", error=DataError)


def _array_item_starts(text: str, start: int) -> list[int]:
    """Where each item of the (valid) JSON array at `start` begins, to name its line."""
    decoder, starts = json.JSONDecoder(), []
    i = _JSON_SPACE.match(text, start + 1).end()  # type: ignore[union-attr]
    while text[i] != "]":
        starts.append(i)
        _, i = decoder.raw_decode(text, i)
        i = _JSON_SPACE.match(text, i).end()  # type: ignore[union-attr]
        if text[i] == ",":
            i = _JSON_SPACE.match(text, i + 1).end()  # type: ignore[union-attr]
    return starts


def _object_row(row: dict[str, Any], source: Source) -> dict[str, Any]:
    unknown = set(row) - set(GENERATION_KEYS)
    if unknown:
        raise source.fail(f"unknown keys {sorted(unknown)}; allowed: {', '.join(GENERATION_KEYS)}")
    if not isinstance(row.get("prompt"), str):
        raise source.fail(f'a JSON line needs a string "prompt", got {show(row.get("prompt"))}')
    check(Generation, row, source)
    return row


def validate_generation(gen: Generation) -> None:
    """The rules that join fields of one Generation (each field's own type is checked already)."""
    if gen.init_image is None:
        for key in ("strength", "mask", "resize"):
            if getattr(gen, key) is not None:
                fail(key, f"{name(Generation, key)} needs {name(Generation, 'init_image')} (an image to start from)")
    if gen.mask is None and gen.mask_blur is not None:
        fail("mask_blur", f"{name(Generation, 'mask_blur')} needs {name(Generation, 'mask')} (what to repaint)")
    if gen.eta > 0 and not SCHEDULERS[gen.scheduler].accepts_eta:
        names = [n for n, s in SCHEDULERS.items() if s.accepts_eta]
        fail(
            "eta",
            f"{name(Generation, 'eta')} has no effect with {name(Generation, 'scheduler')} {gen.scheduler}; "
            f"it applies to: {', '.join(names)}",
        )
    if gen.seed + gen.num_images - 1 > MAX_SEED:
        fail(
            "num_images",
            f"{name(Generation, 'num_images')} {gen.num_images} from {name(Generation, 'seed')} {gen.seed} runs past "
            f"the largest seed {MAX_SEED}",
        )


def size_problem(value: int, factor: int) -> str | None:
    """Why an image side cannot be used with a VAE of `factor`, or None."""
    if value < factor:
        return f"must be at least {factor}, got {value}"
    if value % factor:
        low = value - value % factor
        return f"{value} is not a multiple of the VAE factor {factor}; nearest valid: {low} or {low + factor}"
    return None


def validate_size(
    height: int | None, width: int | None, factor: int, names: tuple[str, ...] = ("--height", "--width")
) -> None:
    """Height and width must be positive multiples of the VAE's downsampling factor."""
    for option, value in zip(names, (height, width), strict=False):
        reason = None if value is None else size_problem(value, factor)
        if reason:
            raise UsageError(f"{option} {reason}")


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


def read_toml(path: Path) -> dict[str, Any]:
    """Options from a TOML file: top-level keys named like the command-line options, each checked."""
    return _read_toml(Path(path))[0]


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


@dataclass(frozen=True)
class EvalConfig:
    """`sdlite eval shapes`: how many scenes to sample and judge, with which sampler settings.

    Unset sampler settings come from the model's own recommendations, then the built-in defaults.
    """

    model: PathText
    n: Annotated[int, Strict(), Ge(2)] = 240  # half from training triples, half from held-out triples
    seed: Seed = 0
    steps: PositiveInt | None = None
    guidance: NonNegativeNumber | None = None
    scheduler: SchedulerName | None = None
    batch_size: PositiveInt = 16
    out: FilePath | None = None  # where the judged images go (default: a temporary folder)
    offline: Flag = False
    fast: Flag = False  # judge `sample --fast` (its sampler and steps unless given)
    tokenizer: PathText | None = None
    ema_weights: Flag = True

    _option_names: ClassVar[dict[str, str]] = {"ema_weights": "--ema-weights/--no-ema-weights"}

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.n % 2:  # an odd count would be judged one image short, silently
            fail("n", f"{name(EvalConfig, 'n')} must be even (half seen triples, half held out), got {self.n}")


# The pass rule of `sdlite check` (how these were measured: sdlite/check.py).
DEFAULT_TOLERANCE = 4.0  # gray levels (of 255) a channel may move and the pixel still count as unchanged
DEFAULT_MAX_CHANGED = 0.005  # share of an image's pixels that may change beyond the tolerance
Share = Annotated[float, Strict(), AllowInfNan(False), Ge(0), Le(1)]


@dataclass(frozen=True)
class CheckConfig:
    """A whole `sdlite check` run: which goldens, which model (None: each golden's own), what passes, which
    reports to write."""

    paths: tuple[PathText, ...]  # folders (searched recursively for *.png) and single PNG files
    model: PathText | None = None  # check every golden with this model instead of the one it records
    loras: tuple[InstanceOf[LoraChoice], ...] = ()  # when given, these LoRAs replace the recorded ones
    tolerance: NonNegativeNumber = DEFAULT_TOLERANCE  # a pixel changed: a channel moved by more gray levels
    max_changed: Share = DEFAULT_MAX_CHANGED  # an image passes while at most this share of its pixels changed
    junit: FilePath | None = None  # write a JUnit XML report here (one test case per golden)
    diff_dir: FilePath | None = None  # write a difference heatmap per failing golden here
    dtype: DType = "auto"
    device: Device = "auto"
    offline: Flag = False
    allow_pickle: Flag = False
    # A single-file model's tokenizer (folder or hub id); None: the golden's recorded one when the model is the
    # file it records (no --model, or --model naming that file), else found as `sample` finds it.
    tokenizer: PathText | None = None
    # A single file's EMA weights: False takes the raw ones; None: what each golden records (EMA when present).
    ema_weights: Flag | None = None

    _option_names: ClassVar[dict[str, str]] = {
        "paths": "DIR", "loras": "--lora", "diff_dir": "--diff", "max_changed": "--max-changed",
        "ema_weights": "--ema-weights/--no-ema-weights",
    }  # fmt: skip

    def __post_init__(self) -> None:
        if isinstance(self.paths, str | os.PathLike):  # one folder
            object.__setattr__(self, "paths", (self.paths,))
        if isinstance(self.loras, tuple | list):
            loras = tuple(c if isinstance(c, LoraChoice) else LoraChoice(c) for c in self.loras)
            object.__setattr__(self, "loras", loras)
        validate_fields(self)
        if not self.paths:
            raise UsageError("no goldens given: pass DIR arguments (or --goldens DIR)")
