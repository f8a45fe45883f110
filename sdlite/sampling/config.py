"""Frozen settings of `sdlite sample` and `sdlite noise`: a generation, a LoRA choice, a run, a noise strip."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal, get_args

from annotated_types import Ge, Gt, Le
from pydantic import AllowInfNan, InstanceOf, Strict

from sdlite.errors import UsageError
from sdlite.prompts.config import CLIP_SKIP_HELP, PROMPT_SYNTAX_HELP, PromptSyntax
from sdlite.sampling.hires import Upscaler
from sdlite.sampling.modes import MODES
from sdlite.sampling.sweeps import Axis
from sdlite.schedulers import SCHEDULERS
from sdlite.schema import (
    DEVICES,
    DTYPE_HELP,
    MAX_SEED,
    MODEL_HELP,
    CornerPair,
    Device,
    DType,
    FilePath,
    Flag,
    ImageSize,
    NonNegativeInt,
    NonNegativeNumber,
    Number,
    PathText,
    PositiveInt,
    PositiveNumber,
    PredictionType,
    Prompt,
    Seed,
    SizePair,
    Text,
    allow_pickle_option,
    ema_weights_option,
    fail,
    name,
    offline_option,
    one_of,
    option,
    tokenizer_option,
    validate_fields,
)

SchedulerName = one_of(tuple(SCHEDULERS))
Mode = one_of(MODES)


# Image-to-image: the share of the schedule re-run from the user's image (1 = from (almost) pure noise).
Strength = Annotated[float, Strict(), AllowInfNan(False), Gt(0), Le(1)]
Fraction = Annotated[float, Strict(), AllowInfNan(False), Ge(0), Le(1)]
ResizeRule = Literal["crop", "fit", "stretch"]
RESIZE_RULES: tuple[str, ...] = get_args(ResizeRule)
DEFAULT_STRENGTH = 0.75
DEFAULT_HIRES_STRENGTH = 0.7
ImageFormat = Literal["png", "jpeg", "webp"]
DEFAULT_QUALITY = 80  # A1111's default JPEG/WebP quality  # A1111's default Denoising strength for the hires pass


@dataclass(frozen=True)
class Generation:
    """Everything besides the model that decides the pixels of one prompt's images.

    Image j of this prompt uses seed `seed + j`; height/width None mean the model's native size, or with an
    init image that image's own size rounded down to the VAE factor. With `init_image` the run is
    image-to-image (`strength` of the schedule re-run, 0.75 by default), with `mask` too it is inpainting
    (white = repaint, the edge softened by `mask_blur` pixels); `resize` says how the inputs meet the output
    size. Those four are None for text-to-image, and filled in with their defaults when an init image is given.
    """

    prompt: Prompt  # the PROMPTS argument of `sdlite sample`, a prompts-file line, or a PNG's record
    negative_prompt: Prompt = option("", "What to steer away from.", shown="the model's, else none")
    steps: PositiveInt = option(50, "Denoising steps.", shown="the model's, else 50")
    guidance: NonNegativeNumber = option(
        7.5, "Classifier-free guidance scale; 1 or less turns it off.", shown="the model's, else 7.5"
    )
    scheduler: SchedulerName = option("ddim", f"Sampler: {', '.join(SCHEDULERS)}.", shown="the model's, else ddim")
    eta: NonNegativeNumber = option(0.0, "DDIM noise (0 = deterministic DDIM).")
    seed: Seed = option(
        0, "Seed of the first image; image i of the run uses seed + i.", shown="random, always reported"
    )
    num_images: PositiveInt = option(1, "Images per prompt.")
    height: ImageSize | None = option(
        None, "Image height, a multiple of 8.", shown="the model's native size; with --init-image, the image's"
    )
    width: ImageSize | None = option(
        None, "Image width, a multiple of 8.", shown="the model's native size; with --init-image, the image's"
    )
    init_image: PathText | None = option(
        None,
        "Image-to-image: start from this picture (any format and size; EXIF orientation, transparency and 16-bit "
        "handled) instead of pure noise. The output takes its size, rounded down to the VAE factor, unless "
        "--height/--width say otherwise.",
    )
    strength: Strength | None = option(
        None,
        "With --init-image: how much of the noise schedule to re-run, 0 < S <= 1. Low keeps the picture and changes "
        "details; 1 keeps almost nothing of it. Runs int(steps x S) steps.",
        shown=str(DEFAULT_STRENGTH),
    )
    mask: PathText | None = option(
        None,
        "Inpainting, with --init-image: white = repaint, black = keep. Kept pixels are the original's; an "
        "inpainting model (9 input channels) uses its own UNet input, any other model has the kept region's "
        "latents put back at every step.",
    )
    mask_blur: NonNegativeInt | None = option(
        None, "Soften the mask's edge by this many pixels (Gaussian blur).", shown="0"
    )
    resize: ResizeRule | None = option(
        None,
        "How --init-image and --mask meet the output size: crop (cover, cut the overflow evenly), fit (fit inside, "
        "fill the rest from the image's edges) or stretch.",
        shown="crop",
    )
    prompt_2: Prompt | None = option(
        None, "SDXL: the prompt its second text encoder (OpenCLIP bigG) reads.", shown="the prompt"
    )
    negative_prompt_2: Prompt | None = option(
        None, "SDXL: the negative prompt its second text encoder reads.", shown="the negative prompt"
    )
    original_size: SizePair | None = option(
        None,
        "SDXL micro-conditioning: the size the model is told the training image had, WIDTHxHEIGHT (smaller reads "
        "as an upscaled, blurrier picture).",
        shown="the image size",
        metavar="WxH",
    )
    crops_coords: CornerPair | None = option(
        None,
        "SDXL micro-conditioning: the top-left corner the model is told the training image was cropped at, TOP,LEFT "
        "(away from 0,0 reads as a cut-off subject).",
        shown="0,0",
        metavar="TOP,LEFT",
    )
    target_size: SizePair | None = option(
        None,
        "SDXL micro-conditioning: the size the model is told to aim for, WIDTHxHEIGHT.",
        shown="the image size",
        metavar="WxH",
    )

    prompt_syntax: PromptSyntax = option("a1111", PROMPT_SYNTAX_HELP)
    clip_skip: PositiveInt = option(1, CLIP_SKIP_HELP, metavar="N")
    subseed: Seed | None = option(
        None,
        "Text-to-image: a variation seed (A1111's), whose noise --subseed-strength mixes into each image's own by "
        "spherical interpolation as A1111 mixes them; every image of the prompt shares it. -1 draws one.",
        shown="random when --subseed-strength is given",
        metavar="N",
    )
    subseed_strength: Fraction = option(
        0.0, "How much of --subseed's noise: 0 = the seed's own image, 1 = the subseed's.", metavar="S"
    )
    guidance_rescale: Fraction = option(
        0.0,
        "Rescale the guided prediction toward the conditional one's spread (Lin et al. 2024; 0.7 for a model trained "
        "with --zero-terminal-snr). Text-to-image, and SDXL's image-to-image.",
        metavar="R",
    )
    hires_scale: PositiveNumber | None = option(
        None,
        "Hires fix (A1111's), text-to-image: make the image at --width x --height, upscale it by this factor, then "
        "re-run --hires-strength of a --hires-steps schedule on it at the larger size, from the same seed.",
        metavar="S",
    )
    hires_width: ImageSize | None = option(
        None,
        "Hires fix to this width instead of --hires-scale (with --hires-height too: cover that size, the overflow "
        "cut evenly; alone: the first pass's aspect ratio kept).",
    )
    hires_height: ImageSize | None = option(None, "Hires fix to this height (see --hires-width).")
    hires_upscaler: Upscaler | None = option(
        None,
        "How the first pass is enlarged: latent (bilinear), latent-antialiased, latent-bicubic, "
        "latent-bicubic-antialiased, latent-nearest, latent-nearest-exact (the latents, as A1111's Latent modes), "
        "lanczos or nearest (the decoded picture).",
        shown="latent",
    )
    hires_steps: NonNegativeInt | None = option(
        None, "Steps of the second pass's schedule (0 = --steps); it runs int(steps x --hires-strength).", shown="0"
    )
    hires_strength: Strength | None = option(
        None, "How much of the second pass's schedule re-runs (A1111's Denoising strength).", shown="0.7"
    )
    seed_resize_from: SizePair | None = option(
        None,
        "Text-to-image: draw the seed's noise at this size and centre it in the image's (A1111's Seed resize from), "
        "so a seed keeps its composition at another size.",
        metavar="WxH",
    )

    # A sweep's `lora-scale`: every --lora at this scale for this image (None: each at its own --lora-scale).
    image_lora_scale: Number | None = None

    _option_names: ClassVar[dict[str, str]] = {"prompt": "PROMPT", "image_lora_scale": "--sweep lora-scale"}

    def __post_init__(self) -> None:
        validate_fields(self)
        validate_generation(self)
        if self.init_image is not None:  # image-to-image: the defaults of its own settings
            defaults = {"strength": DEFAULT_STRENGTH, "resize": "crop", "mask_blur": 0 if self.mask else None}
            for key, value in defaults.items():
                if getattr(self, key) is None:
                    object.__setattr__(self, key, value)
        if self.hires:  # hires fix: the defaults of its own settings
            defaults = {"hires_upscaler": "latent", "hires_steps": 0, "hires_strength": DEFAULT_HIRES_STRENGTH}
            for key, value in defaults.items():
                if getattr(self, key) is None:
                    object.__setattr__(self, key, value)

    @property
    def hires(self) -> bool:
        """Whether a hires-fix second pass follows (a target scale or size is given)."""
        return bool(self.hires_scale or self.hires_width or self.hires_height)

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
    # When set, only the images with these numbers in the run are written. `--from-image` uses it to recompute
    # the whole batch an image was made in: batched matmuls round differently from single ones.
    keep_numbers: tuple[NonNegativeInt, ...] = ()
    # Generations (by index) that start a new batch instead of filling the one before (`check` remakes each
    # golden's recorded batch on its own).
    batch_breaks: tuple[NonNegativeInt, ...] = ()
    # The model hash recorded in a `--from-image` source: a different model gets a warning.
    expected_model_hash: Text | None = None
    # The settings came from another tool's infotext (an A1111 PNG): A1111's own rules apply where sdlite's differ
    # (A1111 ignores `Clip skip` for SD 2.x and SDXL).
    from_a1111: Flag = False
    loras: tuple[InstanceOf[LoraChoice], ...] = ()  # LoRA adapters applied together, each at its own scale
    mode: Mode = "default"  # "fast" or "low-memory": see sdlite/sampling/modes.py
    tokenizer: PathText | None = None  # a single-file model's tokenizer (folder or hub id); default: found
    ema_weights: Flag = True  # a single file's EMA weights when it has them
    # Also write, per image, a strip of the model's clean-image estimate at this many denoising steps.
    save_progress: PositiveInt | None = None
    # Keep the images an interrupted run of the same command wrote into `out`; make only the missing ones.
    resume: Flag = False
    prediction_type: PredictionType | None = None  # what the model predicts, when it says wrong or nothing
    vae: PathText | None = None  # another VAE instead of the model's own (a diffusers folder or a single file)
    image_format: ImageFormat = "png"  # jpeg and webp carry A1111's parameters in EXIF UserComment
    quality: Annotated[int, Strict(), Ge(1), Le(100)] = DEFAULT_QUALITY  # JPEG and WebP only
    # --sweep: the axes every prompt's generations were made from (cells in order, X fastest), for the grid.
    sweep_axes: tuple[InstanceOf[Axis], ...] = ()
    embeddings: tuple[PathText, ...] = ()  # textual-inversion files, used in prompts by their names
    embeddings_dirs: tuple[PathText, ...] = ()  # folders whose every embedding file is loaded

    _option_names: ClassVar[dict[str, str]] = {
        "generations": "PROMPT",
        "loras": "--lora",
        "mode": "--fast/--low-memory",
        "ema_weights": "--ema-weights/--no-ema-weights",
    }

    def __post_init__(self) -> None:
        if isinstance(self.loras, tuple | list):  # LoRA paths for LoraChoice(path) at scale 1
            loras = tuple(c if isinstance(c, LoraChoice) else LoraChoice(c) for c in self.loras)
            object.__setattr__(self, "loras", loras)
        validate_fields(self)
        if not self.generations:
            raise UsageError("no prompt given: pass PROMPT arguments, --prompts-file or --from-image")
        if not self.loras and any(gen.image_lora_scale is not None for gen in self.generations):
            raise UsageError("--sweep lora-scale needs a --lora to scale")
        if self.save_progress and any(gen.hires for gen in self.generations):
            raise UsageError("--save-progress does not follow a hires fix's second pass yet: leave one of them out")


@dataclass(frozen=True)
class NoiseConfig:
    """A whole `sdlite noise` run: which picture, which model's schedule, how many frames, where."""

    image: PathText = option(help="The picture to add noise to (any image file).", argument="IMAGE")
    out: FilePath = option(
        help="The strip PNG to write: top row the noisy latents decoded by the VAE, bottom row the same amount of "
        "noise added to the pixels. Its `sdlite.noise` text chunk records every frame.",
        required=True,
    )
    model: PathText = option(
        help=f"Whose noise schedule and VAE. {MODEL_HELP}", shown="$SDLITE_MODEL, else the built-in shapes model"
    )
    frames: Annotated[int, Strict(), Ge(2)] = option(
        11,
        "Columns of the strip (at least 2): steps 0..STEPS evenly spaced, always the clean image (step 0) and the "
        "last step.",
    )
    steps: PositiveInt = option(
        50,
        "Forward steps, spread evenly over the model's T training timesteps: step n is timestep round(n*T/STEPS)-1, "
        "so the last step is T-1, where training starts from (almost) pure noise.",
    )
    seed: Seed = option(0, "Seed of the noise: same seed, same strip, byte for byte.")
    height: ImageSize | None = option(
        None, "Height, a multiple of 8.", shown="the image's, rounded down to the VAE factor"
    )
    width: ImageSize | None = option(
        None, "Width, a multiple of 8.", shown="the image's, rounded down to the VAE factor"
    )
    resize: ResizeRule = option(
        "crop",
        "How the image meets --height/--width: crop (cover and cut the overflow), fit (fit inside, fill from its "
        "edges) or stretch.",
    )
    dtype: DType = option("auto", DTYPE_HELP)
    device: Device = option("auto", f"{', '.join(DEVICES)}.")
    offline: Flag = offline_option()
    allow_pickle: Flag = allow_pickle_option()
    tokenizer: PathText | None = tokenizer_option()
    ema_weights: Flag = ema_weights_option()
    overwrite: Flag = option(False, "Replace --out if it exists.", flag="--force")

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.frames > self.steps + 1:
            fail(
                "frames",
                f"{name(NoiseConfig, 'frames')} {self.frames} is more than the {self.steps + 1} steps "
                f"0..{self.steps} of {name(NoiseConfig, 'steps')} {self.steps}",
            )


def validate_generation(gen: Generation) -> None:
    """The rules that join fields of one Generation (each field's own type is checked already)."""
    if gen.init_image is None:
        for key in ("strength", "mask", "resize"):
            if getattr(gen, key) is not None:
                fail(key, f"{name(Generation, key)} needs {name(Generation, 'init_image')} (an image to start from)")
    hires_keys = ("hires_upscaler", "hires_steps", "hires_strength")
    if not gen.hires and any(getattr(gen, key) is not None for key in hires_keys):
        key = next(key for key in hires_keys if getattr(gen, key) is not None)
        fail(key, f"{name(Generation, key)} needs {name(Generation, 'hires_scale')} or {name(Generation, 'hires_width')}"
             f"/{name(Generation, 'hires_height')} (the size to upscale to)")  # fmt: skip
    if gen.hires_scale and (gen.hires_width or gen.hires_height):
        fail("hires_scale", f"give {name(Generation, 'hires_scale')} or a hires size, not both")
    if gen.hires and gen.init_image is not None:
        fail("hires_scale", f"hires fix is for text-to-image; {name(Generation, 'init_image')} was given")
    if gen.hires and gen.hires_strength is not None and int((gen.hires_steps or gen.steps) * gen.hires_strength) < 1:
        fail(
            "hires_strength",
            f"{name(Generation, 'hires_strength')} {gen.hires_strength} of {gen.hires_steps or gen.steps} steps runs "
            "no step of the second pass: raise it or the steps",
        )
    for key in ("subseed_strength", "seed_resize_from"):
        if gen.init_image is not None and getattr(gen, key):
            fail(key, f"{name(Generation, key)} is for text-to-image; {name(Generation, 'init_image')} was given")
    if gen.subseed is not None and not gen.subseed_strength:
        fail("subseed", f"{name(Generation, 'subseed')} needs {name(Generation, 'subseed_strength')} (how much of it)")
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
