"""`sdlite export`: a model or LoRA in the layout another tool loads.

Models become one original-layout `.safetensors` (A1111, ComfyUI, Forge; diffusers' `from_single_file`)
or a diffusers folder; LoRAs become the kohya layout (A1111, ComfyUI) or diffusers'. Every output is
written under a temporary name and renamed into place, so an interrupted export leaves nothing that
looks finished.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from sdlite.errors import ModelError, UsageError
from sdlite.formats import lora, original_keys, single_file
from sdlite.models.config import ExportConfig
from sdlite.models.loading import ResolvedModel, load_single_file, resolve_model, silence_library_progress
from sdlite.models.source import MODEL_DEFAULTS_FILE, model_settings_record
from sdlite.models.tokenizer import embed_tokenizers
from sdlite.sampling.sources import model_defaults
from sdlite.staging import check_output_place, staged_file, staged_folder

MODEL_FORMATS = ("single-file", "diffusers")
LORA_FORMATS = ("kohya", "diffusers")
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def export(config: ExportConfig) -> Path:
    """Write `config.source` to `config.out` in `config.format` (the natural default when None)."""
    source = Path(config.source).expanduser()
    if source.exists() and lora.is_lora_source(source):
        fmt = config.format or "kohya"
        if fmt not in LORA_FORMATS:
            raise UsageError(f"{source} is a LoRA adapter: --format must be one of {', '.join(LORA_FORMATS)}")
        if config.dtype:
            raise UsageError("--dtype applies to models; a LoRA keeps the precision it was trained in")
        _check_out(config, fmt)
        return lora.export_lora(source, config.out, fmt)
    fmt = config.format or "single-file"
    if fmt not in MODEL_FORMATS:
        raise UsageError(f"{config.source} is a model: --format must be one of {', '.join(MODEL_FORMATS)}")
    _check_out(config, fmt)
    model = resolve_model(
        config.source,
        config.offline,
        config.allow_pickle,
        config.tokenizer,
        config.ema_weights,
        need_tokenizer=fmt == "diffusers",
    )
    silence_library_progress()
    if fmt == "single-file":
        return _write_single_file(model, config)
    return _write_diffusers(model, config)


def _check_out(config: ExportConfig, fmt: str) -> None:
    out = Path(config.out)
    is_file = fmt in ("single-file", "kohya")
    if is_file and out.suffix != ".safetensors":
        raise UsageError(f"--format {fmt} writes one file: OUT must end in .safetensors, got {out}")
    check_output_place(out, "OUT", "file" if is_file else "folder")  # before any weights are read
    if out.exists() and not config.force:
        raise UsageError(f"{out} already exists; pass --force to replace it")


def original_state(model: ResolvedModel, dtype: str | None) -> dict[str, Any]:
    """The model's UNet, VAE and text encoders under original-layout key names, in `dtype` (None: as stored); a v
    model also gets the `v_pred` marker key (and a zero-terminal-SNR one `ztsnr`) that ComfyUI and others read."""
    import torch

    family = model.family
    names = family.weight_components
    if model.single_file is not None:
        parts = load_single_file(model)
        states = {name: parts[name].state_dict() for name in names}
    else:
        states = {name: _folder_state(model.path / name, model.uses_pickle) for name in names}
    unet_config = model.configs()["unet"]
    state = {
        **original_keys.unet_to_original(states["unet"], unet_config),
        **original_keys.vae_to_original(states["vae"]),
    }
    for name in family.text_encoders:
        prefix = family.original_prefixes[name]
        if prefix.endswith(".model."):  # an OpenCLIP tower: SD 2.x's, SDXL's second
            state.update(original_keys.openclip_to_original(states[name], prefix))
        else:
            state.update(original_keys.text_to_original(states[name], prefix))
    target = getattr(torch, _DTYPES[dtype]) if dtype else None
    state = {
        k: (v.to(target) if target is not None and v.is_floating_point() else v).contiguous() for k, v in state.items()
    }
    if model.prediction()[0] == "v_prediction":
        state["v_pred"] = torch.tensor([])
    if model.configs()["scheduler"].get("rescale_betas_zero_snr"):
        state["ztsnr"] = torch.tensor([])
    return state


def modelspec_architecture(model: ResolvedModel) -> str:
    """ModelSpec's name for the model's family (and, for SD 2.x, its size and prediction)."""
    family = model.family
    if family.key == "sdxl":
        return "stable-diffusion-xl-v1-base"
    if family.key == "sd2":
        v = model.prediction()[0] == "v_prediction"
        return f"stable-diffusion-v2-{model.native_size()}" + ("-v" if v else "")
    return "stable-diffusion-v1"


def _folder_state(folder: Path, pickled: bool) -> dict[str, Any]:
    """Every tensor of a diffusers/transformers component folder (sharded or not)."""
    from safetensors.torch import load_file

    state: dict[str, Any] = {}
    files = sorted(folder.glob("*.safetensors"))
    if files:
        for file in files:
            state.update(load_file(file))
        return state
    if not pickled:
        raise ModelError(f"{folder} holds no safetensors weights")
    import torch

    for file in sorted(p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")):
        state.update(torch.load(file, map_location="cpu", weights_only=True))
    return state


def single_file_metadata(model: ResolvedModel, title: str) -> dict[str, str]:
    """ModelSpec fields (as kohya's and Stability's tools write them) so loaders know the family and size, plus
    what sdlite needs to load the model exactly as the source: configs shapes cannot tell, and its `sdlite.json`
    (recommended sampling settings), which other tools ignore."""
    size = model.native_size()
    meta = {
        "format": "pt",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": modelspec_architecture(model),
        "modelspec.implementation": "diffusers",
        "modelspec.prediction_type": "v" if model.prediction()[0] == "v_prediction" else "epsilon",
        "modelspec.title": title,
        "modelspec.resolution": f"{size}x{size}",
        single_file.CONFIG_METADATA: single_file.configs_to_store(model.configs()),
    }
    record = settings_record(model)
    if record is not None:
        meta[single_file.SETTINGS_METADATA] = json.dumps(record)
    meta.update(embed_tokenizers(_tokenizer_folders(model)))
    return meta


def _tokenizer_folders(model: ResolvedModel) -> dict[str, Path]:
    """The source's tokenizer folders, to travel inside the file: a folder's own, or those a single file was given
    (or carried); none when a single file's are not all at hand."""
    names = model.family.tokenizers
    if model.single_file is None:
        return {name: model.path / name for name in names}
    return dict(model.tokenizers) if set(model.tokenizers) == set(names) else {}


def settings_record(model: ResolvedModel) -> Any:
    """The source's `sdlite.json` record (None when it has none), checked first: a bad one fails the export
    instead of travelling into a file that would then fail to sample."""
    record, _ = model_settings_record(str(model.path))
    if record is not None:
        model_defaults(str(model.path))  # the same checks sampling makes: a bad record fails here, naming it
    return record


def _write_single_file(model: ResolvedModel, config: ExportConfig) -> Path:
    from safetensors.torch import save_file

    out = Path(config.out)
    metadata = single_file_metadata(model, out.stem)  # first: a bad sdlite.json fails before the weights load
    state = original_state(model, config.dtype)
    with staged_file(out, "single file") as temp:
        save_file(state, temp, metadata=metadata)
    return out


def _write_diffusers(model: ResolvedModel, config: ExportConfig) -> Path:
    """A diffusers folder: the single file's parts converted by diffusers, or a folder's re-saved; either way with
    the source's `sdlite.json` (a single file keeps it in its metadata)."""
    import torch

    from sdlite.models.loading import load_pipeline

    dtype = getattr(torch, _DTYPES[config.dtype]) if config.dtype else None
    if model.single_file is None and dtype is None:  # a folder in its own precision: a copy (hard links)
        return _copy_folder(model.path, Path(config.out))
    settings = settings_record(model)  # first: a bad one fails before the weights load
    if model.single_file is not None:
        parts = load_single_file(model)
        family = model.family
        pipe = family.pipeline_class("text-to-image")(**parts, **family.pipeline_options)
    else:
        pipe = load_pipeline(model, "cpu", dtype)
    if dtype is not None:
        pipe = pipe.to(dtype=dtype)
    out = Path(config.out)
    with staged_folder(out, "diffusers folder") as staging:
        pipe.save_pretrained(staging, safe_serialization=True)
        if settings is not None:
            (staging / MODEL_DEFAULTS_FILE).write_text(json.dumps(settings) + "\n", encoding="utf-8")
        if model.single_file is not None:
            record = {"source": str(model.path), "ema_weights": model.use_ema and model.single_file.has_ema}
            (staging / "sdlite-export.json").write_text(json.dumps(record))
    return out


def _copy_folder(source: Path, out: Path) -> Path:
    from sdlite.training.checkpoints import link_or_copy_tree

    with staged_folder(out, "diffusers folder") as staging:
        names = ("model_index.json", "unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
        for name in (*names, "scheduler", MODEL_DEFAULTS_FILE):
            if (source / name).is_dir():
                link_or_copy_tree(source / name, staging / name)
            elif (source / name).is_file():
                shutil.copy2(source / name, staging / name)
    return out
