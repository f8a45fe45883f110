"""Finding, checking and loading models: a diffusers folder, a hub id, or a single file.

Every file is judged by its content before anything loads it: safetensors load freely; a pickle
(.ckpt/.bin/.pt, whatever its name) is refused unless the user opted in, because loading one can
run code. Only diffusers/transformers classes named in `model_index.json` are accepted, and
`trust_remote_code` is never passed.
"""

from __future__ import annotations

import functools
import json
import os
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlite.errors import ModelError, UsageError
from sdlite.families import FAMILIES, family_of_unet, supported_pipelines
from sdlite.families.base import Family
from sdlite.formats.single_file import SingleFile

TRUSTED_LIBRARIES = ("diffusers", "transformers")
SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class ResolvedModel:
    """A model located on disk and checked: where it is, what the user called it, what it weighs."""

    source: str  # what the user passed: a path or a hub id
    path: Path  # the local folder (a hub id resolves to its cached snapshot), or the single file
    weight_files: tuple[Path, ...]
    uses_pickle: bool
    single_file: SingleFile | None = None  # an original-layout checkpoint, described from its shapes
    tokenizer: Path | None = None  # a single file's (first) tokenizer folder (found before any weight is read)
    use_ema: bool = True  # a single file's EMA weights, when it has them
    tokenizers: dict[str, Path] = field(default_factory=dict)  # a single file's tokenizer folder per component
    tokenizer_embedded: bool = False  # a single file's tokenizers came from its own metadata (sdlite export)

    @functools.cached_property
    def family(self) -> Family:
        """SD v1, SD 2.x or SDXL: from a single file's keys, or a folder's pipeline class and UNet config (read
        once)."""
        if self.single_file is not None:
            return next(f for f in FAMILIES if f.name == self.single_file.family)
        index = read_json(self.path / "model_index.json")
        family = family_of_unet(index.get("_class_name"), read_json(self.path / "unet" / "config.json"))
        assert family is not None  # check_folder refused the others
        return family

    def configs(self) -> dict[str, dict[str, Any]]:
        """The configs of the weights (unet, vae, each text encoder) and the scheduler: the folder's files, or
        read from a single file's shapes."""
        if self.single_file is not None:
            return {**self.single_file.configs, "scheduler": dict(self.single_file.scheduler)}
        configs = {name: read_json(self.path / name / "config.json") for name in self.family.weight_components}
        return {**configs, "scheduler": read_json(self.path / "scheduler" / "scheduler_config.json")}

    def prediction(self) -> tuple[str, str]:
        """What the model predicts ("epsilon" or "v_prediction") and where that was read, or that it was inferred
        from the family's convention because nothing said."""
        if self.single_file is not None:
            return self.single_file.prediction, self.single_file.prediction_source
        stated = self.configs()["scheduler"].get("prediction_type")
        if stated:
            return stated, "scheduler config"
        native = self.native_size()
        inferred = self.family.conventional_prediction(native)
        return inferred, f"inferred: the {self.family.name} convention at {native} px"

    def native_size(self) -> int:
        """Image side the model was made for: the UNet's sample size times the VAE's downsampling."""
        configs = self.configs()
        return (configs["unet"].get("sample_size") or 64) * vae_factor(configs["vae"])


def file_format(path: Path) -> str:
    """'safetensors' or 'pickle', judged from the bytes; ModelError when the file is neither or is damaged."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) == 8:
                (header_len,) = struct.unpack("<Q", head)
                if 2 <= header_len <= min(_MAX_HEADER, size - 8):
                    header = f.read(header_len)
                    if header[:1] == b"{":
                        _check_safetensors(path, header, size - 8 - header_len)
                        return "safetensors"
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if head[:1] == b"\x80" or (zipfile.is_zipfile(path) and _zip_holds_pickle(path)):
        return "pickle"
    raise ModelError(f"{path} is neither a safetensors nor a PyTorch file (corrupt or truncated?)")


def _check_safetensors(path: Path, header: bytes, data_size: int) -> None:
    """Parse the JSON header and check that every tensor lies inside the file (catches truncation)."""
    try:
        entries = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: corrupt safetensors header ({exc})") from exc
    try:
        end = max((e["data_offsets"][1] for k, e in entries.items() if k != "__metadata__"), default=0)
    except (AttributeError, KeyError, IndexError, TypeError) as exc:
        raise ModelError(f"{path}: corrupt safetensors header (bad tensor entry)") from exc
    if end > data_size:
        raise ModelError(f"{path} is truncated: its header needs {end} bytes of tensors, the file has {data_size}")


def _zip_holds_pickle(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith(".pkl") for name in archive.namelist())


def read_json(path: Path) -> dict[str, Any]:
    """Read a model config file; a missing or malformed one is a ModelError naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"{path} is missing: the model folder is incomplete") from exc
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path} should hold a JSON object")
    return data


def check_folder(path: Path, allow_pickle: bool) -> tuple[tuple[Path, ...], bool]:
    """Check a diffusers folder is complete, uses only trusted classes, and has loadable weights.

    Returns the weight files that will load and whether any of them is a pickle.
    """
    index = read_json(path / "model_index.json")
    family = family_of_unet(index.get("_class_name"), read_json(path / "unet" / "config.json"))
    if family is None:
        raise ModelError(
            f"{path}: pipeline {index.get('_class_name')!r} is not supported (expected {', '.join(supported_pipelines())})"
        )
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        if entry[0] not in TRUSTED_LIBRARIES:
            raise ModelError(
                f"{path}: component {name} needs code from {entry[0]!r}; sdlite runs no model-supplied code"
            )
    missing = [c for c in family.components if not isinstance(index.get(c), list) or index[c][0] is None]
    if missing:
        raise ModelError(f"{path}/model_index.json lacks components: {', '.join(missing)}")
    weights: list[Path] = []
    uses_pickle = False
    for component in family.weight_components:
        files, pickled = _component_weights(path / component, allow_pickle)
        weights += files
        uses_pickle |= pickled
    read_json(path / "scheduler" / "scheduler_config.json")
    for tokenizer in family.tokenizers:
        if not (path / tokenizer).is_dir() or not any((path / tokenizer).iterdir()):
            raise ModelError(f"{path}/{tokenizer} is missing or empty: the model folder is incomplete")
    return tuple(weights), uses_pickle


def _component_weights(folder: Path, allow_pickle: bool) -> tuple[list[Path], bool]:
    read_json(folder / "config.json")
    safe = sorted(p for p in folder.iterdir() if p.suffix in SAFE_SUFFIXES)
    pickled = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    _check_shards(folder)
    if safe:
        for file in safe:
            if file_format(file) != "safetensors":
                raise ModelError(f"{file} is named .safetensors but holds a pickle; refusing to load it")
        return safe, False
    if not pickled:
        raise ModelError(f"{folder} holds no weights (*.safetensors): the model folder is incomplete")
    for file in pickled:
        file_format(file)
    if not allow_pickle:
        raise ModelError(
            f"{folder} holds only pickle weights ({pickled[0].name}); loading a pickle can run code: "
            "pass --allow-pickle only if you trust its source"
        )
    return pickled, True


def _check_shards(folder: Path) -> None:
    """A sharded checkpoint's index must not point at shards that are absent."""
    for index_file in folder.glob("*.index.json"):
        shards = set(read_json(index_file).get("weight_map", {}).values())
        absent = sorted(s for s in shards if not (folder / s).is_file())
        if absent:
            raise ModelError(f"{folder}: shards listed in {index_file.name} are missing: {', '.join(absent)}")


def resolve_model(
    source: str,
    offline: bool = False,
    allow_pickle: bool = False,
    tokenizer: str | None = None,
    use_ema: bool = True,
    need_tokenizer: bool = True,
) -> ResolvedModel:
    """Locate `source` (folder, single file or hub id), check it, and say which files will load.

    A single file is described from its header alone and its tokenizer is found here, so a missing
    tokenizer or an unsupported family fails before gigabytes are read.
    """
    path = Path(source).expanduser()
    if not path.is_dir() and not path.is_file() and _looks_local(source):
        special = " (it exists, but is neither a folder nor a file)" if path.exists() or path.is_symlink() else ""
        raise ModelError(f"no such folder or file: {source}{special}")
    if tokenizer and not path.is_file():
        raise UsageError("--tokenizer is for single-file models; a diffusers folder or hub id carries its own")
    if path.is_dir():
        if not (path / "model_index.json").exists() and (path / "pytorch_lora_weights.safetensors").is_file():
            raise ModelError(f"{path} is a LoRA adapter, not a model: pass it with --lora (and a base --model)")
        weights, pickled = check_folder(path, allow_pickle)
        return ResolvedModel(source, path, weights, pickled)
    if path.is_file():
        return _resolve_single_file(
            source, path, offline or _env_offline(), allow_pickle, tokenizer, use_ema, need_tokenizer
        )
    if not _HUB_ID.match(source) or source.startswith((".", "/", "~")):
        raise ModelError(f"model {source!r} not found: no such folder or file, and not a hub id (ORG/NAME)")
    folder = _hub_snapshot(source, offline or _env_offline(), allow_pickle)
    weights, pickled = check_folder(folder, allow_pickle)
    return ResolvedModel(source, folder, weights, pickled)


def _resolve_single_file(
    source: str,
    path: Path,
    offline: bool,
    allow_pickle: bool,
    tokenizer: str | None,
    use_ema: bool,
    need_tokenizer: bool,
) -> ResolvedModel:
    from sdlite.formats import single_file
    from sdlite.models.tokenizer import embedded_tokenizers, find_tokenizers

    kind = file_format(path)
    if kind == "pickle" and not allow_pickle:
        raise ModelError(
            f"{path} is a pickle checkpoint; loading it can run code: pass --allow-pickle only if you trust its source"
        )
    if kind == "safetensors":
        shapes, meta, dtypes = single_file.read_header(path)
    else:
        shapes, meta = single_file.read_pickle_shapes(path), {}
        dtypes = sorted({"pickle"})
    described = single_file.describe(path, shapes, meta, dtypes)
    family = next(f for f in FAMILIES if f.name == described.family)
    carried = {} if tokenizer else embedded_tokenizers(meta, family, path)  # --tokenizer beats the file's own
    try:
        found = carried or find_tokenizers(tokenizer, offline, family)
    except ModelError:
        if need_tokenizer or tokenizer:
            raise
        found = {}
    first = found.get(family.tokenizers[0])
    return ResolvedModel(source, path, (path,), kind == "pickle", described, first, use_ema, found, bool(carried))


def _looks_local(source: str) -> bool:
    """Whether a model name that is not on disk was meant as a local path rather than a hub id (ORG/NAME):
    it starts like a path, has more than one `/` or a weights-file suffix, uses the OS's own separator,
    exists as something other than a folder or file, or its first part is a local folder (`models/tny`)."""
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        return True
    if any(sep and sep != "/" and sep in source for sep in (os.sep, os.altsep)):
        return True
    if source.lower().endswith(SAFE_SUFFIXES + PICKLE_SUFFIXES):
        return True
    path = Path(source)
    return path.exists() or path.is_symlink() or ("/" in source and Path(source.split("/")[0]).is_dir())


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_snapshot(repo_id: str, offline: bool, allow_pickle: bool) -> Path:
    """The local snapshot folder of a hub model: the cache when offline, else downloaded (no pickles unless allowed).
    An ORG/NAME that is found nowhere is named both ways: it may be a mistyped relative folder as much as a hub id."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = ["*.json", "*.txt", "*.safetensors"] + (["*.bin"] if allow_pickle else [])
    try:
        return Path(snapshot_download(repo_id, local_files_only=offline, allow_patterns=patterns))
    except LocalEntryNotFoundError as exc:
        where = "offline mode is on" if offline else "it could not be downloaded"
        raise ModelError(
            f"no folder or file {repo_id} here, and hub model {repo_id} is not in the local cache and {where}; "
            "check the path, or download the model once online, or point HF_HUB_CACHE at a cache that has it"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelError(
            f"no folder or file {repo_id} here, and hub model {repo_id} does not exist or needs a login (HF_TOKEN)"
        ) from exc
    except OSError as exc:
        raise ModelError(f"could not fetch hub model {repo_id}: {exc}") from exc


def pick_device(requested: str) -> str:
    """'auto' means the best accelerator present; an explicit one must exist."""
    import torch

    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if requested == "auto":
        return next(d for d in ("cuda", "mps", "cpu") if available[d])
    if not available[requested]:
        raise UsageError(f"--device {requested} is not available on this machine; use --device auto or cpu")
    return requested


def pick_dtype(requested: str, device: str) -> Any:
    """'auto' means fp16 on CUDA (the usual inference precision) and fp32 elsewhere."""
    import torch

    if requested == "auto":
        requested = "fp16" if device == "cuda" else "fp32"
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[requested]


def load_pipeline(model: ResolvedModel, device: str, dtype: Any, inpainting_ok: bool = False) -> Any:
    """Load the checked model as its family's text-to-image pipeline on `device` (no safety checker, no
    watermark, no remote code).

    An inpainting model (9 UNet input channels) is refused unless the caller will only give it images
    to start from (`inpainting_ok`).
    """
    silence_library_progress()
    family = model.family
    pipeline = family.pipeline_class("text-to-image")
    if is_inpainting(model) and not inpainting_ok:
        raise ModelError(
            f"{model.path} is an inpainting model (9 input channels): it does not make images from text alone; "
            "give it an image with --init-image (and what to repaint with --mask)"
        )
    if model.single_file is not None:
        parts = load_single_file(model)
        pipe = pipeline(**parts, **family.pipeline_options)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device, dtype)
    try:
        pipe = pipeline.from_pretrained(
            model.path,
            dtype=dtype,
            use_safetensors=None if model.uses_pickle else True,  # None: safetensors first, pickle as fallback
            local_files_only=True,
            **family.pipeline_options,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot load model {model.source} ({model.path}): {_first_line(exc)}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_text_encoders(model: ResolvedModel, device: str, dtype: Any) -> dict[str, Any]:
    """Each text encoder and tokenizer of the model, by component name, without its UNet or VAE (`sdlite prompt`),
    and `force_zeros_for_empty_prompt` (SDXL's rule for an empty negative prompt)."""
    import transformers

    from sdlite.models.tokenizer import load_tokenizer

    silence_library_progress()
    family = model.family
    if model.single_file is not None:
        parts = load_single_file(model, text_only=True)
        zeros = family.model_index.get("force_zeros_for_empty_prompt", False)
    else:
        index = read_json(model.path / "model_index.json")
        zeros = index.get("force_zeros_for_empty_prompt", False)
        parts = {}
        try:
            for encoder, tokenizer in zip(family.text_encoders, family.tokenizers, strict=True):
                cls = getattr(transformers, index.get(encoder, [None, "CLIPTextModel"])[1])
                parts[encoder] = cls.from_pretrained(
                    model.path / encoder, use_safetensors=None if model.uses_pickle else True, local_files_only=True
                )
                parts[tokenizer] = load_tokenizer(model.path / tokenizer)
        except (OSError, ValueError, KeyError, AttributeError, RuntimeError) as exc:
            raise ModelError(
                f"cannot load the text encoders of {model.source} ({model.path}): {_first_line(exc)}"
            ) from exc
    for encoder in family.text_encoders:
        parts[encoder] = parts[encoder].to(device, dtype).eval()
    return {**parts, "force_zeros_for_empty_prompt": bool(zeros)}


def load_single_file(model: ResolvedModel, text_only: bool = False) -> dict[str, Any]:
    """The components of a single-file model (weights in the file's dtype): unet, vae, each text encoder and
    tokenizer, scheduler (`text_only`: the text encoders and tokenizers alone).

    A tokenizer is None when none was found and the caller said it needs none (`export --format single-file`).
    """
    import diffusers

    from sdlite.formats import single_file
    from sdlite.models.tokenizer import load_tokenizer

    assert model.single_file is not None
    family = model.family
    tokenizers = {}
    for name, encoder in zip(family.tokenizers, family.text_encoders, strict=True):
        folder = model.tokenizers.get(name)
        tokenizer = load_tokenizer(folder) if folder else None  # only export can go without
        vocab = model.single_file.configs[encoder]["vocab_size"]
        if tokenizer is not None and len(tokenizer) > vocab:
            raise ModelError(
                f"tokenizer {folder} has {len(tokenizer)} tokens but {model.path}'s {encoder} only {vocab}: "
                "pass the tokenizer the model was trained with (--tokenizer)"
            )
        tokenizers[name] = tokenizer
    state = single_file.read_state(model.path, model.uses_pickle)
    try:
        parts = single_file.load_components(model.single_file, state, model.use_ema, tokenizers, text_only)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot load single file {model.path}: {_first_line(exc)}") from exc
    if text_only:
        return {**parts, **tokenizers}
    schedule = dict(model.single_file.scheduler)
    scheduler_class = getattr(diffusers, schedule.pop("_class_name", "DDIMScheduler"))
    return {**parts, **tokenizers, "scheduler": scheduler_class.from_config(schedule)}


def silence_library_progress() -> None:
    """Turn off diffusers' and transformers' own tqdm bars: sdlite's core reports through callbacks."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def is_inpainting(model: ResolvedModel) -> bool:
    """An inpainting UNet takes the noisy latents, the mask and the masked image's latents (4 + 1 + 4 channels)."""
    configs = model.configs()
    return configs["unet"].get("in_channels") == 2 * configs["vae"].get("latent_channels", 4) + 1


def vae_factor(vae_config: dict[str, Any]) -> int:
    """The VAE's spatial downsampling factor: one halving per encoder block after the first."""
    return 2 ** (len(vae_config.get("block_out_channels", (0,))) - 1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
