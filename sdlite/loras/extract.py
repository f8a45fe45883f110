"""`sdlite lora extract TUNED BASE --rank R --out OUT`: a LoRA from the difference of a fine-tuned model and its base.

For every layer a LoRA of the family adapts (the UNet's attention projections, each text encoder's), the weight
difference is decomposed by SVD and its R largest singular directions kept (the best rank-R approximation); layers
that did not change are left out. Written in the kohya layout (alpha = R: the strength is the difference's own),
which A1111, ComfyUI and diffusers load. The energy kept is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdlite.errors import ModelError, UsageError
from sdlite.loras.resize import ResizeReport
from sdlite.schema import (
    FilePath,
    Flag,
    PathText,
    PositiveInt,
    allow_pickle_option,
    offline_option,
    option,
    tokenizer_option,
    validate_fields,
)


@dataclass(frozen=True)
class ExtractConfig:
    """`sdlite lora extract`: the fine-tuned model, its base, the rank, where the LoRA goes."""

    tuned: PathText = option(help="The fine-tuned model (folder, hub id or single file).", argument="TUNED")
    base: PathText = option(help="The model it was fine-tuned from.", argument="BASE")
    rank: PositiveInt = option(help="The LoRA's rank.", required=True)
    out: FilePath = option(help="The LoRA: a .safetensors file (kohya layout).", required=True)
    offline: Flag = offline_option()
    allow_pickle: Flag = allow_pickle_option()
    tokenizer: PathText | None = tokenizer_option()
    force: Flag = option(False, "Replace OUT if it exists.")

    def __post_init__(self) -> None:
        validate_fields(self)
        if Path(self.out).suffix != ".safetensors":
            raise UsageError(f"--out {self.out}: the LoRA is one .safetensors file")


def extract(config: ExtractConfig) -> ResizeReport:
    """Write the extracted LoRA and report the energy kept."""
    import torch

    from sdlite.formats.lora import kohya_metadata, kohya_name, save_atomically
    from sdlite.loras.resize import factors
    from sdlite.models.loading import load_pipeline, resolve_model

    out = Path(config.out)
    if out.exists() and not config.force:
        raise UsageError(f"{out} exists: pass --force to replace it")
    models = [
        resolve_model(s, config.offline, config.allow_pickle, config.tokenizer) for s in (config.tuned, config.base)
    ]
    if models[0].family != models[1].family:
        raise ModelError(f"{config.tuned} is {models[0].family.name}, {config.base} {models[1].family.name}")
    family = models[0].family
    tuned, base = (load_pipeline(m, "cpu", torch.float32) for m in models)
    two = len(family.text_encoders) > 1
    targets = [("unet", family.lora_targets)] + [(name, family.text_lora_targets) for name in family.text_encoders]
    report, tensors, total, kept = ResizeReport(out), {}, 0.0, 0.0
    for component, suffixes in targets:
        base_modules = dict(getattr(base, component).named_modules())
        for name, module in getattr(tuned, component).named_modules():
            if not isinstance(module, torch.nn.Linear) or not name.endswith(tuple(f".{s}" for s in suffixes)):
                continue
            other = base_modules.get(name)
            if other is None or other.weight.shape != module.weight.shape:
                raise ModelError(f"{config.base} has no {component}.{name} of {config.tuned}'s shape: not its base")
            diff = (module.weight - other.weight).detach().double()
            if not diff.any():
                continue
            identity = torch.eye(diff.shape[1], dtype=torch.float64)  # diff = diff @ I: up = diff, down = I
            down, up, s = factors(identity, diff, 1.0, config.rank)
            key = kohya_name(component, name, two)
            energy = float((s**2).sum())
            share = float((s[: down.shape[0]] ** 2).sum()) / energy
            report.modules[key] = share
            total, kept = total + energy, kept + share * energy
            tensors[f"{key}.lora_down.weight"] = down.float().contiguous()
            tensors[f"{key}.lora_up.weight"] = up.float().contiguous()
            tensors[f"{key}.alpha"] = torch.tensor(float(down.shape[0]))
    if not tensors:
        raise UsageError(f"{config.tuned} and {config.base} have the same weights in every layer a LoRA adapts")
    report.kept = kept / total
    report.ranks = (config.rank, max(t.shape[0] for k, t in tensors.items() if k.endswith("lora_down.weight")))
    save_atomically(tensors, {"format": "pt", **kohya_metadata(tensors)}, out)
    return report
