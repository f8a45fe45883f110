"""Merging the sources of a sample run's settings: command line, prompts file, a PNG's record (`--from-image`),
`--fast`, the model's recommended settings and the built-in defaults, into one SampleConfig.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from annotated_types import Ge, Le
from pydantic import Strict

from sdlite.errors import DataError, UsageError
from sdlite.models.source import model_settings_record, resolve_model_source
from sdlite.sampling.config import (
    DEFAULT_QUALITY,
    GENERATION_KEYS,
    INPUT_KEYS,
    Generation,
    ImageFormat,
    LoraChoice,
    Mode,
    SampleConfig,
    lora_choices,
)
from sdlite.sampling.modes import FAST_SETTINGS
from sdlite.sampling.prompts_file import prompt_rows
from sdlite.sampling.sweeps import Axis, as_fields, cells, check_axes, parse_axis, swept
from sdlite.schema import (
    COMMAND_LINE,
    DEVICES,
    DTYPE_HELP,
    MAX_SEED,
    MODEL_HELP,
    PREDICTION_HELP,
    Flag,
    PathText,
    PredictionType,
    Prompt,
    Seed,
    Source,
    Text,
    allow_pickle_option,
    check,
    check_value,
    ema_weights_option,
    offline_option,
    option,
    origin,
    show,
    tokenizer_option,
)


@dataclass(frozen=True)
class SampleOverrides:
    """What the user typed for `sdlite sample`, None where an option was not given.

    Kept apart from SampleConfig so that prompts files and `--from-image` can supply values the
    command line did not, while an explicit option always wins.
    """

    prompts: tuple[str, ...] = option((), "One or more prompts.", argument="PROMPTS")
    model: str | None = option(None, MODEL_HELP, shown="$SDLITE_MODEL, else the built-in shapes model")
    prompts_file: Path | None = option(
        None, 'One prompt per line, or JSON lines like {"prompt": ..., "seed": 7, "steps": 20}.'
    )
    from_image: Path | None = option(
        None, "Regenerate a PNG sdlite wrote, from its own metadata (options given here win)."
    )
    settings: dict[str, Any] = field(default_factory=dict)  # the Generation options given on the command line
    out: Path | None = option(None, "Output folder; existing files are never overwritten.", shown="outputs")
    batch_size: int | None = option(None, "Images denoised together (memory vs speed).", shown="1")
    dtype: str | None = option(None, DTYPE_HELP, shown="auto")
    device: str | None = option(None, f"{', '.join(DEVICES)}.", shown="auto")
    grid: bool = option(False, "Also save a labelled contact sheet of the run.")
    offline: bool = offline_option()
    allow_pickle: bool = allow_pickle_option()
    lora: tuple[str, ...] = option(
        (),
        "A LoRA adapter: a folder holding pytorch_lora_weights.safetensors, or a .safetensors file (diffusers or "
        "kohya/A1111 layout). Repeat to apply several together.",
        metavar="PATH",
    )
    lora_scale: tuple[float, ...] = option(
        (),
        "Strength of each --lora, paired by position: give none (every LoRA at 1.0) or one per --lora.",
        shown="1.0",
        metavar="S",
    )
    fast: bool = option(
        False,
        "Speed preset: SDPA attention, channels_last, and on CUDA TF32, fused QKV and torch.compile; DPM-Solver++ 2M "
        "with Karras sigmas (dpm++2m-karras) at 20 steps unless --scheduler/--steps say otherwise.",
    )
    low_memory: bool = option(
        False, "Memory preset: attention slicing, VAE slicing and tiling, and on an accelerator model CPU offload."
    )
    tokenizer: str | None = tokenizer_option()
    ema_weights: bool | None = ema_weights_option(None)
    save_progress: int | None = option(
        None,
        "Also write INDEX-SEED-progress.png per image: the model's estimate of the clean image (predicted x0, "
        "decoded) at K evenly spaced denoising steps. The image itself is unchanged.",
        metavar="K",
    )
    prediction_type: str | None = option(
        None,
        f"{PREDICTION_HELP} For a model that says it wrongly or not at all (a single file without ModelSpec or "
        "v_pred marker); recorded with each image.",
        shown="the model's scheduler config or file metadata, else its family's convention",
    )
    vae: str | None = option(
        None,
        "Decode (and, for image-to-image, encode) with this VAE instead of the model's: a diffusers VAE folder or a "
        "single file (.safetensors, original or diffusers keys; .pt/.ckpt with --allow-pickle), e.g. SD v1's "
        "vae-ft-mse. It must fit the model's VAE (same family and latent width). Recorded as A1111's VAE and VAE hash.",
        shown="the model's own",
        metavar="FILE|DIR",
    )
    embedding: tuple[str, ...] = option(
        (),
        "A textual-inversion embedding (A1111 .pt/.safetensors, diffusers learned_embeds, SDXL clip_l/clip_g), used "
        "in prompts by its file name without the extension (--embedding easynegative.safetensors, then "
        "--negative-prompt easynegative). Repeat for several; .pt/.bin need --allow-pickle.",
        metavar="FILE",
    )
    embeddings_dir: tuple[str, ...] = option(
        (), "Load every embedding file in this folder (as --embedding does each); repeatable.", metavar="DIR"
    )
    image_format: str | None = option(
        None,
        "png, jpeg or webp (.jpg/.webp files carry A1111's parameters in EXIF UserComment, where A1111 and civitai "
        "read them, and sdlite's record in ImageDescription; --from-image and check read all three).",
        shown="png",
        metavar="FORMAT",
    )
    quality: int | None = option(None, "JPEG/WebP quality, 1-100.", shown="80, as A1111")
    sweep: tuple[str, ...] = option(
        (),
        "A1111's X/Y/Z plot: make every prompt once per value of KEY (any per-image setting: steps, guidance, "
        "scheduler, seed, strength, clip-skip, hires-strength, lora-scale...; or S/R=find,repl1,repl2 to replace "
        "text in the prompts). Up to three times (X, Y, Z): every combination, each image with its own settings and "
        "the same seed; with --grid, one sheet per prompt labelled with the axes.",
        metavar="KEY=V1,V2,...",
    )
    resume: bool = option(
        False,
        "Continue an interrupted run of this same command in --out: images it already wrote (checked from their "
        "own metadata) are kept, only the missing ones are made, under the names an uninterrupted run gives them.",
    )


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
    if cli.get("subseed") == -1:  # A1111's "random": drawn here, so the config (and each image) says which
        cli["subseed"] = secrets.randbelow(MAX_SEED + 1)
    check(Generation, cli, COMMAND_LINE)
    given = {
        "batch_size": opts.batch_size,
        "dtype": opts.dtype,
        "device": opts.device,
        "save_progress": opts.save_progress,
    }
    check(SampleConfig, {k: v for k, v in given.items() if v is not None}, COMMAND_LINE)
    if opts.fast and opts.low_memory:
        raise UsageError("--fast and --low-memory cannot be combined: choose speed or memory")

    replay = _Replay(
        model=opts.model,
        mode="fast" if opts.fast else "low-memory" if opts.low_memory else None,
        batch_size=opts.batch_size,
        lora=_as_tuple(opts.lora),
        lora_scale=_as_tuple(opts.lora_scale),
        tokenizer=opts.tokenizer,
        ema_weights=opts.ema_weights,
        prediction_type=opts.prediction_type,
        vae=opts.vae,
        embeddings=_as_tuple(opts.embedding),
        embeddings_dirs=_as_tuple(opts.embeddings_dir),
        image_format=opts.image_format,
        quality=opts.quality,
    )
    if opts.from_image is not None:
        _replay_image(replay, opts, cli)
    model = resolve_model_source(replay.model, env)
    defaults, defaults_source = model_defaults_and_source(model)
    fast = FAST_SETTINGS if replay.mode == "fast" else {}
    base = {**defaults, **fast, **replay.recorded}
    origins = {**{k: defaults_source for k in defaults}, **{k: COMMAND_LINE for k in fast}}
    origins |= {k: replay.image for k in replay.recorded}

    rows: list[tuple[dict[str, Any], Source]] = [({"prompt": p}, COMMAND_LINE) for p in opts.prompts]
    if opts.prompts_file is not None:
        rows += prompt_rows(Path(opts.prompts_file))
    if not rows and replay.image is not None:  # its own settings, or its whole batch's images
        rows = [(member, replay.image) for member in replay.members] or [({}, replay.image)]
    hints = typing.get_type_hints(Generation, include_extras=True)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(Generation)}
    axes = tuple(parse_axis(text, fields) for text in opts.sweep)
    check_axes(axes)
    generations = _generations(rows, base, origins, cli, replay.image)
    return SampleConfig(
        model=model,
        generations=_swept(generations, axes) if axes else generations,
        sweep_axes=axes,
        out=opts.out or Path("outputs"),
        batch_size=1 if replay.batch_size is None else replay.batch_size,
        dtype=opts.dtype or "auto",
        device=opts.device or "auto",
        grid=opts.grid,
        offline=opts.offline,
        allow_pickle=opts.allow_pickle,
        keep_numbers=replay.keep_numbers,
        expected_model_hash=replay.expected_hash,
        from_a1111=replay.from_a1111,
        loras=lora_choices(replay.lora, replay.lora_scale),
        mode=replay.mode or "default",
        tokenizer=replay.tokenizer,
        ema_weights=True if replay.ema_weights is None else replay.ema_weights,
        save_progress=opts.save_progress,
        resume=opts.resume,
        prediction_type=replay.prediction_type,
        vae=replay.vae,
        embeddings=replay.embeddings,
        embeddings_dirs=replay.embeddings_dirs,
        image_format=replay.image_format or "png",
        quality=DEFAULT_QUALITY if replay.quality is None else replay.quality,
    )


@dataclass
class _Replay:
    """The run-wide settings as the command line gives them, then filled in from a `--from-image` PNG's record."""

    model: str | None
    mode: str | None
    batch_size: int | None
    lora: tuple[str, ...]
    lora_scale: tuple[float, ...]
    tokenizer: str | None
    ema_weights: bool | None
    prediction_type: str | None
    vae: str | None
    embeddings: tuple[str, ...]
    embeddings_dirs: tuple[str, ...]
    image_format: str | None
    quality: int | None
    from_a1111: bool = False  # the PNG holds only another tool's infotext
    recorded: dict[str, Any] = field(default_factory=dict)  # the PNG's generation settings
    image: Source | None = None
    expected_hash: str | None = None
    keep_numbers: tuple[int, ...] = ()
    members: list[dict[str, Any]] = field(default_factory=list)  # a mixed batch's images: prompt and seed each


def _replay_image(replay: _Replay, opts: SampleOverrides, cli: dict[str, Any]) -> None:
    """What a `--from-image` PNG records, under the command line's own choices; to remake an image that was made
    in a batch, its whole batch is recomputed (batched matmuls round differently) and only it is kept."""
    recorded, image = _read_image_settings(Path(opts.from_image))  # type: ignore[arg-type]
    replay.image, replay.recorded = image, {k: recorded[k] for k in GENERATION_KEYS if k in recorded}
    _find_inputs(replay.recorded, recorded.get("inputs"), cli, image)
    if not replay.model or _same_file(replay.model, recorded.get("model")):
        # a single file's tokenizer and weights choice belong to the recorded model (also when named again)
        replay.model = replay.model or recorded.get("model")
        replay.tokenizer = replay.tokenizer or recorded.get("tokenizer")
        replay.ema_weights = recorded.get("ema_weights") if replay.ema_weights is None else replay.ema_weights
    replay.expected_hash = recorded.get("model_hash")
    replay.mode = replay.mode or recorded.get("mode")
    replay.prediction_type = replay.prediction_type or recorded.get("prediction_type")
    replay.from_a1111 = bool(recorded.get("a1111"))
    replay.image_format = replay.image_format or recorded.get("image_format")  # written again the same way
    replay.quality = recorded.get("quality") if replay.quality is None else replay.quality
    if recorded.get("vae") and not replay.vae:  # the recorded VAE, found again unchanged
        replay.vae = _recorded_vae(recorded["vae"], image)
    if recorded.get("embeddings") and not (replay.embeddings or replay.embeddings_dirs):
        replay.embeddings = _recorded_embeddings(recorded["embeddings"], image)
    if recorded.get("ti_hashes"):  # an A1111 image: each embedding it used must be given, by name
        _check_ti_hashes(recorded["ti_hashes"], replay, image)
    if recorded.get("a1111_vae") and not replay.vae:
        vae = recorded["a1111_vae"]
        logging.getLogger("sdlite").warning(
            f"{image.where} was decoded with VAE {vae['name']} (hash {vae['hash'] or 'not written'}): pass it with "
            "--vae, else the model's own VAE decodes"
        )
    if recorded.get("lora") and not replay.lora:  # the recorded LoRAs; --lora-scale may still change their scales
        used = _recorded_loras(recorded["lora"], image)
        replay.lora = tuple(r["source"] for r in used)
        replay.lora_scale = replay.lora_scale or tuple(r["scale"] for r in used)
    own_seed = replay.recorded.get("seed")
    batch, prompts = recorded.get("batch_seeds") or [own_seed], recorded.get("batch_prompts")
    remake_batch = not (
        {"seed", "num_images"} & set(cli) or opts.prompts or opts.prompts_file or replay.batch_size is not None
    )
    if remake_batch and prompts is not None and own_seed is not None:  # prompts-file lines that filled a batch
        own_prompt = replay.recorded.get("prompt")
        mine = [i for i, member in enumerate(zip(batch, prompts, strict=False)) if member == (own_seed, own_prompt)]
        if len(prompts) != len(batch) or not mine:
            raise image.fail(f"its sdlite metadata records seed {own_seed} and its prompt outside its batch")
        replay.members = [{"prompt": p, "seed": s} for s, p in zip(batch, prompts, strict=True)]
        replay.batch_size, replay.keep_numbers = len(batch), (mine[0],)
    elif remake_batch and len(batch) > 1 and own_seed is not None:
        if own_seed not in range(batch[0], batch[0] + len(batch)):
            raise image.fail(f"its sdlite metadata records seed {own_seed} outside its batch {show(batch)}")
        replay.recorded.update(seed=batch[0], num_images=len(batch))
        replay.batch_size, replay.keep_numbers = len(batch), (own_seed - batch[0],)


def _generations(
    rows: list[tuple[dict[str, Any], Source]],
    base: dict[str, Any],
    origins: dict[str, Any],
    cli: dict[str, Any],
    image: Source | None,
) -> tuple[Generation, ...]:
    """One Generation per row, each setting from the strongest source that has it; seeds counted from --seed (or
    a random one) across the run, a row's own seed excepted."""
    first_seed = cli.get("seed", base.get("seed"))
    if first_seed is None:
        first_seed = secrets.randbelow(MAX_SEED + 1)
    generations = []
    next_seed = first_seed
    subseed: int | None = None
    for number, (row, row_source) in enumerate(rows, start=1):
        merged = {**base, **row, **{k: v for k, v in cli.items() if k != "seed"}}
        sources = {**origins, **{k: row_source for k in row}, **{k: COMMAND_LINE for k in cli}}
        if "seed" not in row:  # a line's own seed wins; --seed only starts the run's counter
            if next_seed > MAX_SEED:
                where = row_source.where or f"prompt {number}"
                raise UsageError(
                    f"the run's seeds pass {MAX_SEED} at {where} (--seed {first_seed} + 1 per image): "
                    "give a smaller --seed, or that prompt its own seed"
                )
            merged["seed"] = next_seed
        if merged.get("subseed_strength") and merged.get("subseed") is None:  # a variation seed drawn for the run
            subseed = subseed if subseed is not None else secrets.randbelow(MAX_SEED + 1)
            merged["subseed"] = subseed
        if "prompt" not in merged:
            if image is not None and row_source is image:
                raise image.fail('its sdlite metadata records no "prompt"')
            raise UsageError("no prompt given: pass PROMPT arguments, --prompts-file or --from-image")
        with origin({k: v for k, v in sources.items() if v is not None}):
            gen = Generation(**merged)
        generations.append(gen)
        next_seed = gen.seed + gen.num_images
    return tuple(generations)


def _swept(generations: tuple[Generation, ...], axes: tuple[Axis, ...]) -> tuple[Generation, ...]:
    """Each generation once per cell of the sweep, X fastest, every cell with the generation's own seed."""
    out = []
    for gen in generations:
        for combo in cells(axes):
            with origin({axis.key: Source(where=f"--sweep {axis.title}") for axis in axes}):
                out.append(Generation(**swept(as_fields(gen), axes, combo)))
    return tuple(out)


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
    from sdlite.formats.png_record import read_settings

    try:
        recorded = read_settings(path)
    except (AttributeError, TypeError, KeyError) as exc:  # a record whose parts have the wrong JSON types
        raise DataError(f"{path}: its sdlite metadata is malformed ({type(exc).__name__}: {exc})") from exc
    image = Source(where=str(path), style="json", error=DataError)
    check(Generation, {k: recorded[k] for k in GENERATION_KEYS if k in recorded}, image)
    for key, hint in (
        ("model", PathText | None),
        ("tokenizer", PathText | None),
        ("ema_weights", Flag | None),
        ("model_hash", Text | None),
        ("batch_seeds", list[Seed] | None),
        ("batch_prompts", list[Prompt] | None),
        ("mode", Mode | None),
        ("prediction_type", PredictionType | None),
        ("vae", dict[str, str] | None),
        ("embeddings", list[dict[str, str]] | None),
        ("image_format", ImageFormat | None),
        ("quality", Annotated[int, Strict(), Ge(1), Le(100)] | None),
    ):
        check_value(hint, recorded.get(key), f'its sdlite metadata field "{key}"', image)
    return recorded, image


def _find_inputs(recorded: dict[str, Any], inputs: Any, cli: dict[str, Any], image: Source) -> None:
    """Check that the init image and mask a PNG was made from are still there, unchanged, for `--from-image`.

    A file given again on the command line wins (with a warning when it is not the recorded one); a recorded
    file that is missing or changed is a data error naming it. Image-to-image settings recorded without an
    init image (an A1111 img2img PNG, which does not record it) are dropped unless one is given.
    """
    import logging

    from sdlite.filecache import sha256_uncached

    inputs = inputs if isinstance(inputs, dict) else {}
    for key, flag in INPUT_KEYS.items():
        expected = inputs.get(key, {}).get("sha256") if isinstance(inputs.get(key), dict) else None
        path = cli.get(key) or recorded.get(key)
        if path is None or expected is None:
            continue
        try:
            digest = sha256_uncached(Path(path).expanduser())
        except OSError as exc:
            if key in cli:
                raise DataError(f"cannot read {flag} {path}: {exc.strerror or exc}") from exc
            raise image.fail(
                f"it was made from {flag.removeprefix('--').replace('-', ' ')} {path}, which is missing: "
                f"pass that file with {flag}"
            ) from exc
        if digest == expected:
            continue
        if key in cli:
            logging.getLogger("sdlite").warning(
                f"{flag} {path} is not the file {image.where} was made from (sha256 {expected[:12]}...): "
                "the pixels will differ"
            )
        else:
            raise image.fail(
                f"its {flag.removeprefix('--').replace('-', ' ')} {path} has changed since (sha256 {digest[:12]}... "
                f"instead of {expected[:12]}...): pass the original with {flag}"
            )
    if recorded.get("init_image") is None and "init_image" not in cli:
        for key in ("strength", "mask", "mask_blur", "resize"):
            recorded.pop(key, None)
    if recorded.get("mask") is None and "mask" not in cli:
        recorded.pop("mask_blur", None)


def _recorded_vae(value: Any, image: Source) -> str:
    """The VAE a PNG was decoded with: its recorded path, which must still hold the same bytes."""
    if not isinstance(value, dict) or not isinstance(value.get("source"), str):
        raise image.fail("its sdlite metadata has a malformed vae record")
    path = Path(value["source"])
    _unchanged(path / "diffusion_pytorch_model.safetensors" if path.is_dir() else path, value["source"],
               value.get("sha256"), "VAE", "--vae", image)  # fmt: skip
    return value["source"]


def _recorded_embeddings(value: Any, image: Source) -> tuple[str, ...]:
    """The embeddings a PNG's run loaded: each recorded file, which must still hold the same bytes."""
    if not isinstance(value, list) or not all(isinstance(e, dict) and isinstance(e.get("source"), str) for e in value):
        raise image.fail("its sdlite metadata has a malformed embeddings record")
    for entry in value:
        _unchanged(Path(entry["source"]), entry["source"], entry.get("sha256"), "embedding", "--embedding", image)
    return tuple(entry["source"] for entry in value)


def _unchanged(file: Path, source: str, sha256: str | None, what: str, flag: str, image: Source) -> None:
    """A file a PNG records by path and sha256 (its VAE, an embedding) must still be there with the same bytes."""
    from sdlite.filecache import sha256_uncached

    try:
        digest = sha256_uncached(file)
    except OSError as exc:
        raise image.fail(f"it was made with {what} {source}, which is missing: pass that {what} with {flag}") from exc
    if sha256 and digest != sha256:
        raise image.fail(
            f"its {what} {source} has changed since (sha256 {digest[:12]}...): pass the original with {flag}"
        )


def _check_ti_hashes(hashes: dict[str, str], replay: _Replay, image: Source) -> None:
    """Every embedding an A1111 image names in `TI hashes` must be among those given (by file name); one with
    another hash is warned about."""
    from sdlite.filecache import sha256_uncached
    from sdlite.prompts.embeddings import embedding_files

    given, _ = embedding_files(replay.embeddings, replay.embeddings_dirs, allow_pickle=True)
    by_name = {path.stem.replace(":", "").replace(",", ""): path for path in given}
    missing = [f"{name} (hash {short})" for name, short in hashes.items() if name not in by_name]
    if missing:
        raise image.fail(
            f"it uses textual-inversion embedding(s) {', '.join(missing)}: pass each file with --embedding (or its "
            "folder with --embeddings-dir)"
        )
    for name, short in hashes.items():
        if not sha256_uncached(by_name[name]).startswith(short):
            logging.getLogger("sdlite").warning(
                f"embedding {by_name[name]} is not the {name} {image.where} was made with (hash {short}): the pixels "
                "will differ"
            )


def _recorded_loras(value: Any, image: Source) -> list[dict[str, Any]]:
    """The LoRAs a PNG records: a list of {source, hash, scale}, or one such dict (earlier sdlite versions)."""
    rows = [value] if isinstance(value, dict) else value
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"source", "scale"} <= set(r) for r in rows):
        raise image.fail("its sdlite metadata has a malformed lora record")
    for row in rows:
        check(LoraChoice, {"source": row["source"], "scale": row["scale"]}, image)
    return rows


def model_defaults(model: str) -> dict[str, Any]:
    """Settings a model recommends for itself (`sdlite.json`: {"defaults": {"steps": 30, ...}}, in its folder or,
    for a file `sdlite export` wrote, in the file's metadata)."""
    return model_defaults_and_source(model)[0]


def model_defaults_and_source(model: str) -> tuple[dict[str, Any], Source]:
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
