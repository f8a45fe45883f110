"""`sdlite lora merge MODEL LORA... --scales S... --out OUT`: the LoRAs baked into the model's weights.

diffusers does the work: each LoRA is loaded as its own adapter (diffusers and kohya layouts, checked against the
model first as `sdlite sample --lora` checks them), the adapters are weighted by their scales and fused into the
weights (`fuse_lora`), then unloaded. The merge runs in fp32; OUT is a diffusers folder, or a single file (A1111,
ComfyUI) written by `sdlite export`.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sdlite.errors import UsageError, writing
from sdlite.schema import (
    MODEL_HELP,
    FilePath,
    Flag,
    Number,
    PathText,
    allow_pickle_option,
    ema_weights_option,
    offline_option,
    option,
    tokenizer_option,
    validate_fields,
)


@dataclass(frozen=True)
class MergeConfig:
    """`sdlite lora merge`: which model, which LoRAs at which scales, where the merged model goes."""

    model: PathText = option(help=MODEL_HELP, argument="MODEL")
    loras: tuple[PathText, ...] = option(
        help="LoRA files or folders (diffusers or kohya/A1111 layout), merged together.", argument="LORA..."
    )
    out: FilePath = option(help="The merged model: a .safetensors single file, or a diffusers folder.", required=True)
    scales: tuple[Number, ...] = option(
        (), "One scale per LoRA, in order (the strength each is merged at).", shown="1.0 each", flag="--scales"
    )
    format: Literal["single-file", "diffusers"] | None = option(
        None, "single-file or diffusers.", shown="single-file for a .safetensors OUT, else diffusers"
    )
    offline: Flag = offline_option()
    allow_pickle: Flag = allow_pickle_option()
    tokenizer: PathText | None = tokenizer_option()
    ema_weights: Flag = ema_weights_option()
    force: Flag = option(False, "Replace OUT if it exists.")

    def __post_init__(self) -> None:
        validate_fields(self)
        if not self.loras:
            raise UsageError("give at least one LORA to merge")
        if self.scales and len(self.scales) != len(self.loras):
            raise UsageError(f"{len(self.scales)} --scales for {len(self.loras)} LoRAs: give one per LoRA, in order")

    @property
    def out_format(self) -> str:
        return self.format or ("single-file" if Path(self.out).suffix == ".safetensors" else "diffusers")


def merge(config: MergeConfig) -> tuple[Path, list[str]]:
    """Write the merged model; returns its path and the loader's warnings."""
    import torch

    from sdlite.models.config import ExportConfig
    from sdlite.models.export import export
    from sdlite.models.loading import load_pipeline, resolve_model
    from sdlite.sampling.config import LoraChoice
    from sdlite.sampling.loras import load_loras

    out = Path(config.out)
    if out.exists() and not config.force:
        raise UsageError(f"{out} exists: pass --force to replace it")
    model = resolve_model(config.model, config.offline, config.allow_pickle, config.tokenizer, config.ema_weights)
    pipe = load_pipeline(model, "cpu", torch.float32)
    scales = config.scales or (1.0,) * len(config.loras)
    choices = tuple(LoraChoice(source, scale) for source, scale in zip(config.loras, scales, strict=True))
    warnings: list[str] = []
    load_loras(pipe, choices, warnings, model.family)  # adapters lora0, lora1, ... at their scales
    pipe.fuse_lora(adapter_names=[f"lora{i}" for i in range(len(choices))], lora_scale=1.0)
    pipe.unload_lora_weights()  # the fused weights stay; the adapters go
    with tempfile.TemporaryDirectory(prefix="sdlite-merge-") as tmp:
        folder = Path(tmp) / "merged"
        with writing(f"the merged model to {folder}"):
            pipe.save_pretrained(folder, safe_serialization=True)
        if config.force and out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        if config.out_format == "single-file":
            written = export(ExportConfig(source=str(folder), out=out, format="single-file"))
        else:
            with writing(f"the merged model to {out}"):
                shutil.copytree(folder, out)
            written = out
    return written, warnings
