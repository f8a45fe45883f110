"""Frozen settings of `sdlite train` and how a TOML file and the command line merge into them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from annotated_types import Ge, Gt, Le, Lt
from pydantic import AllowInfNan, InstanceOf, Strict

from sdlite.data.specs import DatasetSpec, dataset_specs
from sdlite.errors import UsageError
from sdlite.models.source import resolve_model_source
from sdlite.schema import (
    COMMAND_LINE,
    MODEL_HELP,
    PREDICTION_HELP,
    CaptionExtension,
    FilePath,
    FileStem,
    Flag,
    ImageSize,
    NonEmptyText,
    NonNegativeInt,
    NonNegativeNumber,
    PathText,
    PositiveInt,
    PositiveNumber,
    PredictionType,
    Prompt,
    Seed,
    Source,
    allow_pickle_option,
    check,
    ema_weights_option,
    fail,
    name,
    offline_option,
    one_of,
    option,
    origin,
    tokenizer_option,
    validate_fields,
)
from sdlite.training.adapters import ADAPTER_TARGETS, ADAPTER_TYPES
from sdlite.training.losses import HUBER_SCHEDULES, LOSSES
from sdlite.training.optimizers import OPTIMIZERS, SCHEDULES

Tracker = Literal["tensorboard", "wandb", "mlflow", "trackio"]
TRACKERS: tuple[str, ...] = get_args(Tracker)
LR_SCHEDULERS = (*SCHEDULES, "constant_with_warmup", "cosine_with_restarts")  # both spellings
PRECISIONS = ("no", "fp16", "bf16")
LrScheduler = one_of(LR_SCHEDULERS)
LossKind = one_of(LOSSES)
HuberSchedule = one_of(HUBER_SCHEDULES)
Optimizer = one_of(OPTIMIZERS)
AdapterType = one_of(ADAPTER_TYPES)
AdapterTargets = one_of(ADAPTER_TARGETS)
Precision = one_of(PRECISIONS)


RESUME_HELP = (
    "latest, auto (resume when a checkpoint exists, else start fresh: for preemptible jobs), or a checkpoint folder"
)


@dataclass(frozen=True)
class TrainConfig:
    """A whole `sdlite train` run. Fields that change the trained weights are part of the
    checkpoint fingerprint (see `fingerprint`): resuming with different ones is refused."""

    model: PathText = option(help=f"Base model. {MODEL_HELP}", shown="$SDLITE_MODEL, else the built-in shapes model")
    data: FilePath = option(
        help="Captioned images: a folder (metadata.jsonl, metadata.csv or .txt sidecars), a Parquet file or folder of "
        "shards, a `datasets` save_to_disk folder, or a hub dataset id (needs the `datasets` extra)."
    )
    out: FilePath = option(help="Output folder: the trained model, checkpoints/, validation/, loss.csv, loss.png.")
    # `[[datasets]]` in a --config TOML: several folders, each with its repeats and caption options (then `data`
    # is the first one's path).
    datasets: tuple[InstanceOf[DatasetSpec], ...] = ()
    component: Literal["unet", "vae"] = option(
        "unet",
        "What to train: unet (the denoiser, the usual) or vae (the autoencoder, starting from the model's VAE; "
        "`sdlite init` makes a model with random weights).",
    )
    kl_weight: NonNegativeNumber = option(1e-6, "--component vae: weight of the KL term against reconstruction MSE.")
    resolution: ImageSize | None = option(None, "Training size (square).", shown="the model's native size")
    crop: Literal["center", "random"] = option(
        "center", "Crop to a square at the center or at random.", flag="--center-crop/--random-crop"
    )
    random_flip: Flag = option(False, "Flip images horizontally at random.")
    batch_size: PositiveInt = option(1, "Images per process per micro-batch.")
    grad_accum: PositiveInt = option(1, "Micro-batches per optimizer step.")
    lr: PositiveNumber = option(1e-5, "Learning rate (Prodigy: its multiplier, usually 1).")
    optimizer: Optimizer = option(
        "adamw",
        "adamw (fused), adamw8bit (bitsandbytes, CUDA), adafactor (transformers, fixed LR), prodigy (extra "
        "'prodigy'), lion (extra 'lion') or sgd.",
    )
    optimizer_args: tuple[str, ...] = option(
        (), "More keyword arguments for the optimizer, NAME=VALUE, repeatable: betas=0.9,0.99, eps=1e-8, momentum=0.9.",
        metavar="NAME=VALUE",
    )  # fmt: skip
    weight_decay: NonNegativeNumber = option(1e-2, "Weight decay.")
    lr_scheduler: LrScheduler = option(
        "constant", f"{', '.join(SCHEDULES)} (diffusers' own; underscores accepted too)."
    )
    warmup_steps: NonNegativeInt = option(0, "LR warm-up steps.", flag="--lr-warmup-steps", aliases=("--warmup-steps",))
    lr_cycles: PositiveInt | None = option(
        None, "cosine-with-restarts: how many cosine cycles (hard restarts) over the run.", shown="1"
    )
    max_steps: PositiveInt | None = option(None, "Optimizer steps to train (or --epochs).")
    epochs: Annotated[float, Strict(), AllowInfNan(False), Ge(1)] | None = option(
        None, "Passes over the data, fractions allowed: 1.5 (or --max-steps)."
    )
    mixed_precision: Precision = option("no", "no, fp16 or bf16 (trainable weights stay fp32).")
    seed: Seed = option(0, "Seeds data order, augmentation, noise and LoRA initialisation.")
    gradient_checkpointing: Flag = option(False, "Trade compute for memory.")
    ema: Flag = option(False, "Keep an EMA of the UNet; OUT gets the EMA weights.")
    ema_decay: Annotated[float, Strict(), AllowInfNan(False), Gt(0), Lt(1)] = option(0.9999, "EMA decay.")
    snr_gamma: PositiveNumber | None = option(None, "Min-SNR-gamma loss weighting (5 is typical).", shown="off")
    noise_offset: NonNegativeNumber = option(0.0, "Noise offset (0.05-0.1 typical).")
    loss: LossKind = option(
        "l2", "The denoising loss: l2 (squared error), huber or smooth-l1 (pseudo-Huber, kohya's, robust to outliers)."
    )
    huber_c: Annotated[float, Strict(), AllowInfNan(False), Gt(0), Le(1)] = option(
        0.1, "huber/smooth-l1: the threshold c (at the last timestep with --huber-schedule snr or exponential)."
    )
    huber_schedule: HuberSchedule = option(
        "snr", "huber/smooth-l1: c by timestep: snr (from 1 at clean to c at noise, kohya's default), exponential, "
        "constant.",
    )  # fmt: skip
    embedding: FileStem | None = option(
        None,
        "Textual inversion: train only a new token TOKEN's vectors (every text encoder of the family); OUT gets "
        "TOKEN.safetensors (A1111's layout; `sdlite sample --embedding OUT/TOKEN.safetensors`, then TOKEN in a "
        "prompt) and learned_embeds.safetensors (diffusers' load_textual_inversion). Captions must hold TOKEN "
        "(--instance-prompt 'a photo of TOKEN' for uncaptioned images).",
        metavar="TOKEN",
    )
    init_token: NonEmptyText | None = option(
        None, "--embedding: the word whose embedding the new vectors start from (e.g. dog, style).", metavar="WORD"
    )
    num_vectors: PositiveInt = option(1, "--embedding: how many vectors the token stands for.", metavar="N")
    masked_loss: Flag = option(
        False,
        "Weight the loss by a mask per image: NAME_mask.png beside NAME.ext (white counts, black not at all), moved "
        "with the image's resize, crop and flip and averaged down to the latent grid (kohya's masked loss).",
    )
    alpha_mask: Flag = option(False, "--masked-loss: take each image's alpha channel as its mask (opaque counts).")
    input_perturbation: NonNegativeNumber = option(
        0.0, "Noise the latents with noise + P x N(0,1) but predict the noise (0.1 typical; Ning et al. 2023)."
    )
    zero_terminal_snr: Flag = option(
        False,
        "Rescale the betas so the last timestep is pure noise (Lin et al. 2024); the model's scheduler config says so "
        "(trailing timesteps). Train v-prediction with it, and sample with --guidance-rescale 0.7.",
    )
    prediction_type: PredictionType | None = option(
        None, f"{PREDICTION_HELP} Saved in OUT's scheduler config.", shown="the model's"
    )
    caption_dropout: Annotated[float, Strict(), AllowInfNan(False), Ge(0), Lt(1)] = option(
        0.0, "Probability of training on an empty caption (for guidance)."
    )
    train_text_encoder: Flag = option(
        False, "Train the text encoder too (with --lora: a LoRA on its attention projections)."
    )
    lora: Flag = option(
        False,
        "Train a LoRA adapter on the UNet (and the text encoder with --train-text-encoder) instead of full weights; "
        "OUT holds only the adapter, alpha included.",
    )
    lora_rank: PositiveInt = option(4, "LoRA rank.")
    lora_alpha: PositiveNumber | None = option(
        None, "LoRA alpha; strength = alpha / rank, saved with the adapter.", shown="the rank"
    )
    lora_type: AdapterType = option(
        "lora",
        "With --lora: lora, dora (LoRA with a learned magnitude per output, Liu et al. 2024), loha (Hadamard product "
        "of two low-rank pairs) or lokr (Kronecker product), all through peft. See README's table of which tools read "
        "each.",
    )
    lora_targets: AdapterTargets = option(
        "attention",
        "With --lora: the layers adapted. attention: the attention projections; attention+mlp: and the feed-forward "
        "layers (text encoder: its MLP); all: every linear and 1x1 layer of the transformer blocks and resnets too "
        "(proj_in/out, time embeddings, skip convs).",
    )
    lora_conv_rank: PositiveInt | None = option(
        None,
        "With --lora: adapt the UNet's 3x3 convolutions too (resnets, down/upsamplers) at this rank (LoCon).",
        shown="off",
    )
    lora_conv_alpha: PositiveNumber | None = option(
        None, "Alpha of the 3x3 convolutions' adapters (strength = alpha / conv rank).", shown="the conv rank"
    )
    cache: Flag | None = option(
        None,
        "Precompute VAE latents and text embeddings once, on disk.",
        flag="--cache/--no-cache",
        shown="on when the augmentation is fixed (no --random-crop/--random-flip)",
    )
    checkpoint_every: PositiveInt | None = option(None, "Save a resumable, usable checkpoint every N steps.")
    keep_checkpoints: PositiveInt | None = option(None, "Keep only the newest K checkpoints.", shown="all")
    output_name: FileStem | None = option(
        None,
        "With --lora: the name of the A1111/Forge/ComfyUI copy of the adapter, OUT/NAME.safetensors (kohya layout, "
        "written beside pytorch_lora_weights.safetensors and in each checkpoint).",
        shown="OUT's folder name",
        metavar="NAME",
    )
    checkpoint_on_signal: Flag = option(
        True,
        "On Ctrl-C, SIGTERM (Slurm before preemption, timeout, docker stop) or SIGHUP: finish the step, save a "
        "checkpoint, exit 130/143/129 saying how to resume. Off: those signals end the run at once.",
        flag="--checkpoint-on-signal/--no-checkpoint-on-signal",
    )
    resume: NonEmptyText | None = option(None, f"{RESUME_HELP} sdlite wrote.")
    overwrite: Flag = option(False, "Train into a non-empty OUT without --resume: replace what is there.")
    validation_prompts: tuple[Prompt, ...] = option(
        (), "Prompt sampled for validation grids (repeatable).", flag="--validation-prompt"
    )
    validate_every: PositiveInt | None = option(
        None, "Every N steps (and at the end): save a validation grid, and score the validation loss."
    )
    sample_prompts: FilePath | None = option(
        None,
        "Sample these prompts (a prompts file: one per line, or JSON lines with their own seed, steps, guidance, size, "
        "negative prompt, scheduler) at every checkpoint and at the end, by `sdlite sample` itself: "
        "OUT/samples/<checkpoint>/, each PNG replayable with --from-image.",
        metavar="FILE",
    )
    sample_at_start: Flag = option(False, "--sample-prompts: also sample the base model before training.")
    validation_data: FilePath | None = option(
        None,
        "Held-out captioned images (any --data layout) whose denoising loss is scored with noise and timesteps fixed "
        "once, so the values move only because the weights do: OUT/validation_loss.csv, events, trackers, "
        "loss.png; the best step is reported.",
        metavar="DIR",
    )
    validation_split: Annotated[float, Strict(), AllowInfNan(False), Gt(0), Lt(0.5)] | None = option(
        None, "Hold out this share of --data (chosen by --seed) as the validation images instead.", metavar="F"
    )
    caption_column: NonEmptyText = option("text", "Caption column in metadata.jsonl/csv.")
    caption_extension: CaptionExtension = option(
        ".txt", "Sidecar captions: the extension of NAME.EXT beside each image."
    )
    skip_bad_images: Flag = option(False, "Skip unreadable images (listed at the end) instead of stopping.")
    allow_missing_captions: Flag = option(False, "Train images without a caption on an empty one.")
    strict_data: Flag = option(
        False,
        "Refuse data that trains poorly instead of warning: images under 8 px a side or scaled up more than 4x, "
        "captions with control characters (NUL, ESC).",
    )
    max_grad_norm: PositiveNumber = option(1.0, "Clip the gradients' global norm to this before each step.")
    offline: Flag = offline_option()
    allow_pickle: Flag = allow_pickle_option()
    tokenizer: PathText | None = tokenizer_option()
    ema_weights: Flag = ema_weights_option()
    buckets: Flag | None = option(
        None,
        "Aspect-ratio buckets: each image is resized to the bucket nearest its aspect ratio (about RESOLUTION^2 "
        "pixels, sides multiples of --bucket-step) and cropped only by the remainder; every batch comes from one "
        "bucket. --no-buckets squares every image.",
        flag="--buckets/--no-buckets",
        shown="on when the aspect ratios differ",
    )
    bucket_step: PositiveInt = option(64, "Bucket sides are multiples of this.")
    bucket_min_side: PositiveInt | None = option(None, "Smallest bucket side.", shown="half the resolution")
    bucket_max_side: PositiveInt | None = option(None, "Largest bucket side.", shown="twice the resolution")
    max_aspect: Annotated[float, Strict(), AllowInfNan(False), Ge(1)] = option(2.0, "Largest bucket aspect ratio.")
    instance_prompt: Prompt | None = option(
        None,
        'DreamBooth: train every image with this prompt ("a photo of sks dog"); no captions needed, existing ones '
        "are overridden.",
    )
    class_prompt: Prompt | None = option(
        None,
        'Prior preservation: the class the subject belongs to ("a photo of a dog"). Its images are trained beside '
        "the subject's so the model keeps what the class looks like.",
    )
    class_data: FilePath | None = option(
        None,
        "Folder of class images; missing ones (up to --num-class-images) are generated first with the base model "
        "and kept for the next run.",
        shown="a folder in sdlite's cache per model and class prompt",
    )
    num_class_images: PositiveInt = option(100, "Class images to train with.")
    prior_loss_weight: NonNegativeNumber = option(1.0, "Weight of the class images' loss.")
    image_column: NonEmptyText = option(
        "image", "Image column of a Parquet/Arrow dataset (bytes, {bytes, path} or a path)."
    )
    shuffle_captions: Flag = option(
        False, "Captions are comma-separated tags: shuffle them per example and epoch (deterministic from --seed)."
    )
    keep_tokens: NonNegativeInt = option(0, "With --shuffle-captions: keep the first N tags in place.")
    report_to: tuple[Tracker, ...] = option(
        (),
        "Experiment tracker: tensorboard (under OUT/logs), wandb, mlflow or trackio (repeatable; each needs its "
        "package). Logs loss, learning rate, images/s and validation grids.",
    )
    tracker_project: NonEmptyText = option("sdlite", "Project / experiment name for the trackers.")
    compile: Flag = option(
        False,
        "torch.compile the UNet for training (Inductor; caches in sdlite's cache folder). Pays off on GPUs over long "
        "runs; the first steps wait for the compile.",
    )
    channels_last: Flag = option(
        False,
        "Keep the UNet's weights and inputs in NHWC memory order (tensor-core convolutions on GPUs). Same results up "
        "to float rounding; saved files stay in the usual layout.",
    )

    def __post_init__(self) -> None:
        validate_fields(self)

        def n(key: str) -> str:
            return name(TrainConfig, key)

        if self.embedding is not None:
            if self.init_token is None:
                fail("init_token", f"{n('embedding')} needs {n('init_token')} (the word its vectors start from)")
            for key in ("lora", "train_text_encoder", "ema", "sample_prompts"):
                if getattr(self, key):
                    fail(key, f"{n(key)} does not go with {n('embedding')} (textual inversion trains only the token)")
        elif self.init_token is not None or self.num_vectors != 1:
            key = "init_token" if self.init_token is not None else "num_vectors"
            fail(key, f"{n(key)} is for {n('embedding')} (textual inversion)")
        if self.sample_at_start and self.sample_prompts is None:
            fail("sample_at_start", f"{n('sample_at_start')} needs {n('sample_prompts')}")
        if self.alpha_mask and not self.masked_loss:
            fail("alpha_mask", f"{n('alpha_mask')} says where {n('masked_loss')}'s masks are: give both")
        if self.validation_data is not None and self.validation_split is not None:
            fail("validation_split", f"give {n('validation_data')} or {n('validation_split')}, not both")
        if self.lr_cycles is not None and self.lr_scheduler.replace("_", "-") != "cosine-with-restarts":
            fail("lr_cycles", f"{n('lr_cycles')} is for {n('lr_scheduler')} cosine-with-restarts")
        if self.component == "vae":
            unet_only = {
                "lora": self.lora,
                "train_text_encoder": self.train_text_encoder,
                "ema": self.ema,
                "cache": self.cache,
                "snr_gamma": self.snr_gamma is not None,
                "noise_offset": self.noise_offset > 0,
                "validation_data": self.validation_data is not None,
                "sample_prompts": self.sample_prompts is not None,
                "masked_loss": self.masked_loss,
                "embedding": self.embedding is not None,
                "validation_split": self.validation_split is not None,
                "loss": self.loss != "l2",
                "input_perturbation": self.input_perturbation > 0,
                "zero_terminal_snr": self.zero_terminal_snr,
                "prediction_type": self.prediction_type is not None,
                "caption_dropout": self.caption_dropout > 0,
                "checkpoint_every": self.checkpoint_every is not None,
                "resume": self.resume is not None,
                "validation_prompts": bool(self.validation_prompts),
                "buckets": bool(self.buckets),
                "instance_prompt": self.instance_prompt is not None,
                "class_prompt": self.class_prompt is not None,
                "shuffle_captions": self.shuffle_captions,
                "report_to": bool(self.report_to),
                "gradient_checkpointing": self.gradient_checkpointing,
                "channels_last": self.channels_last,
                "compile": self.compile,
            }
            given = [key for key, used in unet_only.items() if used]
            if given:
                fail(given[0], f"{n('component')} vae does not support {', '.join(map(n, given))}")
        if (self.max_steps is None) == (self.epochs is None):
            fail(
                "epochs" if self.epochs is not None else "max_steps",
                f"give exactly one of {n('max_steps')} or {n('epochs')}",
            )
        if self.lora and self.ema:
            fail("ema", f"{n('ema')} applies to full fine-tuning; drop it with {n('lora')}")
        adapter_options = {
            "lora_type": self.lora_type != "lora",
            "lora_targets": self.lora_targets != "attention",
            "lora_conv_rank": self.lora_conv_rank is not None,
            "lora_conv_alpha": self.lora_conv_alpha is not None,
        }
        for key, given in adapter_options.items():
            if given and not self.lora:
                fail(key, f"{n(key)} shapes a LoRA adapter: it needs {n('lora')}")
        if self.lora_conv_alpha is not None and self.lora_conv_rank is None:
            fail("lora_conv_alpha", f"{n('lora_conv_alpha')} needs {n('lora_conv_rank')}")
        if self.output_name is not None and not self.lora:
            fail("output_name", f"{n('output_name')} names the A1111/ComfyUI copy of a LoRA: it needs {n('lora')}")
        if self.cache and not self.fixed_augmentation:
            fail(
                "cache",
                "--cache needs a fixed augmentation: drop --random-crop / --random-flip, or pass --no-cache",
            )
        validating = self.validation_prompts or self.validation_data is not None or self.validation_split is not None
        if self.validate_every is not None and not validating:
            fail(
                "validate_every",
                f"{n('validate_every')} needs at least one {n('validation_prompts')}, or {n('validation_data')} / "
                f"{n('validation_split')}",
            )
        if self.class_prompt is not None and self.instance_prompt is None and not self.datasets:
            fail("class_prompt", f"{n('class_prompt')} (prior preservation) needs {n('instance_prompt')}")
        for number, spec in enumerate(self.datasets, start=1):
            prompted = spec.instance_prompt is not None or self.instance_prompt is not None
            if (spec.class_prompt is not None or self.class_prompt is not None) and not prompted:
                fail("datasets", f"[[datasets]] {number}: a class prompt (prior preservation) needs an instance-prompt")
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

    @property
    def fixed_augmentation(self) -> bool:
        """Whether every epoch sees the same pixels, so VAE latents can be computed once and cached."""
        return self.crop == "center" and not self.random_flip

    def cache_choice(self) -> tuple[bool, str]:
        """Whether to cache latents and text embeddings, and why: on by default when it is valid."""
        if self.component == "vae":
            return False, "off: VAE training encodes every step"
        if self.cache is False:
            return False, "off: --no-cache"
        if not self.fixed_augmentation:
            return False, "off: random crop/flip change the pixels every epoch"
        return True, "on: " + ("--cache" if self.cache else "the augmentation is fixed (--no-cache turns it off)")

    def fingerprint(self) -> dict[str, Any]:
        """The settings a checkpoint must share with the run that resumes it (not length, output or I/O)."""
        ignored = {
            "max_steps",
            "epochs",
            "out",
            "resume",
            "overwrite",
            "checkpoint_every",
            "keep_checkpoints",
            "checkpoint_on_signal",
            "output_name",
            "cache",
            "gradient_checkpointing",
            "validation_prompts",
            "validate_every",
            "validation_data",
            "sample_prompts",
            "sample_at_start",
            "offline",
            "allow_pickle",
            "skip_bad_images",
            "allow_missing_captions",
            "strict_data",
            "tokenizer",
            "report_to",
            "tracker_project",
            "compile",
            "channels_last",
        }
        values = {k: _jsonable(v) for k, v in dataclasses.asdict(self).items() if k not in ignored}
        # Settings added after checkpoints were first written: left out at their defaults, so a checkpoint of an
        # earlier sdlite (which trained with exactly those) still resumes.
        return {k: v for k, v in values.items() if k not in ADDED_LATER or v != ADDED_LATER[k]}


TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))
ADDED_LATER = {
    "embedding": None,
    "init_token": None,
    "num_vectors": 1,
    "caption_extension": ".txt",
    "datasets": [],
    "masked_loss": False,
    "alpha_mask": False,
    "validation_split": None,  # it changes which images train
    "optimizer": "adamw",
    "optimizer_args": [],
    "weight_decay": 0.01,
    "lr_cycles": None,
    "loss": "l2",
    "huber_c": 0.1,
    "huber_schedule": "snr",
    "input_perturbation": 0.0,
    "zero_terminal_snr": False,
    "lora_type": "lora",
    "lora_targets": "attention",
    "lora_conv_rank": None,
    "lora_conv_alpha": None,
}


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
    if merged.get("datasets") and not merged.get("data"):  # the first dataset stands for --data where one is named
        merged["data"] = merged["datasets"][0].path
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
    if "datasets" in options:
        options["datasets"] = dataset_specs(options["datasets"], str(path))
    source = Source(where=str(path), style="toml", error=UsageError, spelling=spelling)
    check(TrainConfig, options, source)
    return options, source


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):  # a [[datasets]] table
        return {key: _jsonable(item) for key, item in value.items()}
    return value
