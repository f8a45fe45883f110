"""`sdlite lora resize LORA --rank R --out OUT`: a LoRA brought to another rank by its singular values.

Each module's update `up @ down x alpha / rank` is decomposed exactly (QR of both factors, then the SVD of the small
rank x rank core) and its R largest singular directions kept: the best rank-R approximation (Eckart-Young). The
kept share of the energy (sum of kept squared singular values / all) is reported per module and overall. Output is
the kohya layout (alpha = R, so the strength is the update's own), which A1111, ComfyUI and diffusers load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlite.errors import UsageError
from sdlite.schema import FilePath, Flag, PathText, PositiveInt, option, validate_fields


@dataclass(frozen=True)
class ResizeConfig:
    """`sdlite lora resize`: which LoRA, the rank to bring it to, where it goes."""

    lora: PathText = option(help="A LoRA file or folder (diffusers or kohya/A1111 layout).", argument="LORA")
    rank: PositiveInt = option(help="The new rank of every module (a module of lower rank keeps its own).",
                               required=True)  # fmt: skip
    out: FilePath = option(help="The resized LoRA: a .safetensors file (kohya layout).", required=True)
    force: Flag = option(False, "Replace OUT if it exists.")

    def __post_init__(self) -> None:
        validate_fields(self)
        if Path(self.out).suffix != ".safetensors":
            raise UsageError(f"--out {self.out}: the resized LoRA is one .safetensors file")


@dataclass
class ResizeReport:
    """What the resize kept: the overall energy share, and each module's (kohya name -> share)."""

    path: Path
    modules: dict[str, float] = field(default_factory=dict)
    kept: float = 1.0
    ranks: tuple[int, int] = (0, 0)  # the largest rank before and after


def factors(down: Any, up: Any, scale: float, rank: int) -> tuple[Any, Any, Any]:
    """(new down, new up, singular values) of `up @ down * scale` at `rank`, in float64, the scale folded in."""
    import torch

    shape = down.shape
    down2 = down.reshape(shape[0], -1).double()  # a conv's (r, in, k, k) as (r, in*k*k)
    up2 = up.reshape(up.shape[0], -1).double() * scale
    q_up, r_up = torch.linalg.qr(up2)
    q_down, r_down = torch.linalg.qr(down2.T)
    u, s, vh = torch.linalg.svd(r_up @ r_down.T)
    keep = min(rank, s.numel())
    new_up = (q_up @ u[:, :keep]) * s[:keep]
    new_down = vh[:keep] @ q_down.T
    return new_down.reshape(keep, *shape[1:]), new_up.reshape(up.shape[0], keep, *up.shape[2:]), s


def resize(config: ResizeConfig) -> ResizeReport:
    """Write the resized LoRA and report what it kept."""
    import torch

    from sdlite.formats import lycoris
    from sdlite.formats.lora import (
        adapts_second_text_encoder,
        component_configs,
        kohya_metadata,
        layout,
        read_lora,
        save_atomically,
        to_kohya,
    )

    out = Path(config.out)
    if out.exists() and not config.force:
        raise UsageError(f"{out} exists: pass --force to replace it")
    file, tensors, metadata = read_lora(config.lora)
    kind = lycoris.adapter_type(tensors)
    if kind not in ("lora", "locon"):
        raise UsageError(
            f"{file} is a {lycoris.TYPE_LABELS[kind]} adapter: resize truncates a LoRA's low-rank pair, which it has not; merge "
            "it (`sdlite lora merge`) and extract a LoRA of the merge at the rank you want (`sdlite lora extract`)"
        )
    if layout(tensors) == "diffusers":
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        tensors = to_kohya(tensors, component_configs(metadata), adapts_second_text_encoder(shapes))
    report = ResizeReport(out)
    resized: dict[str, Any] = {}
    total = kept = 0.0
    before = after = 0
    for key in sorted(k for k in tensors if k.endswith(".lora_down.weight")):
        name = key.removesuffix(".lora_down.weight")
        down, up = tensors[key], tensors[f"{name}.lora_up.weight"]
        rank = down.shape[0]
        alpha = float(tensors.get(f"{name}.alpha", torch.tensor(float(rank))))
        new_down, new_up, s = factors(down, up, alpha / rank, config.rank)
        energy = float((s**2).sum())
        share = float((s[: new_down.shape[0]] ** 2).sum()) / energy if energy > 0 else 1.0
        report.modules[name] = share
        total, kept = total + energy, kept + share * energy
        before, after = max(before, rank), max(after, new_down.shape[0])
        resized[f"{name}.lora_down.weight"] = new_down.to(down.dtype).contiguous()
        resized[f"{name}.lora_up.weight"] = new_up.to(up.dtype).contiguous()
        resized[f"{name}.alpha"] = torch.tensor(float(new_down.shape[0]))  # strength 1: the update's own
    report.kept = kept / total if total > 0 else 1.0
    report.ranks = (before, after)
    save_atomically(resized, {"format": "pt", **kohya_metadata(resized)}, out)
    return report
