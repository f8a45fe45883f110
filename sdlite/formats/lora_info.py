"""`sdlite info` on a LoRA adapter: its layout, what it adapts, its rank and alpha, and which tools load it.

Which tools load which layout is a fact about their loaders, measured with their own code (../shared/reference.md):
A1111, Forge and ComfyUI map kohya names (`lora_unet_*`, `lora_te_*`/`lora_te1_*`/`lora_te2_*` with `.alpha`
tensors) and leave a diffusers-layout file's keys unmapped without an error; diffusers and sdlite load both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdlite.formats import lora

# Per layout: (tool, loads it, how or why not).
TOOLS: dict[str, tuple[tuple[str, bool, str], ...]] = {
    "kohya": (
        ("A1111 / Forge", True, "models/Lora, <lora:NAME:1> in the prompt"),
        ("ComfyUI", True, "models/loras, LoraLoader"),
        ("diffusers", True, "pipe.load_lora_weights(FILE)"),
        ("sdlite", True, "sample --lora FILE"),
    ),
    "diffusers": (
        ("A1111 / Forge", False, "its keys are not mapped (silently): use the kohya copy or `sdlite export`"),
        ("ComfyUI", False, "its keys are not mapped (silently): use the kohya copy or `sdlite export`"),
        ("diffusers", True, "pipe.load_lora_weights(FOLDER)"),
        ("sdlite", True, "sample --lora FOLDER"),
    ),
}


def describe_lora(source: Path | str) -> dict[str, Any]:
    """Facts of a LoRA file or folder, from its header alone."""
    file = lora.find_lora_file(source)
    shapes, metadata = lora.read_shapes(file)
    kind = lora.layout(list(shapes))
    assert kind is not None  # is_lora_source said it is one
    ranks = sorted({shape[0] for key, shape in shapes.items() if lora.is_down_key(key) and shape})
    info: dict[str, Any] = {
        "kind": "lora",
        "file": str(file),
        "layout": kind,
        "family": _family(shapes, metadata.get("modelspec.architecture") or ""),
        "components": _components(shapes, kind),
        "layers": len(lora.layer_names(shapes) or ()),
        "ranks": ranks,
        "alpha": _alphas(shapes, metadata, file, kind),
        "architecture": metadata.get("modelspec.architecture"),
        "tools": [{"tool": t, "loads": ok, "how": how} for t, ok, how in TOOLS[kind]],
    }
    folder = Path(source).expanduser()
    if folder.is_dir():  # a training OUT: the copy named for the run is the one UIs load
        copies = sorted(p.name for p in folder.glob("*.safetensors") if p.name != lora.LORA_FILE)
        info["ui_copies"] = [name for name in copies if lora.layout(lora.read_header(folder / name)[0]) == "kohya"]
    return info


_ARCHITECTURES = {"stable-diffusion-v1": "SD v1", "stable-diffusion-v2": "SD 2.x", "stable-diffusion-xl": "SDXL"}


def _family(shapes: dict[str, tuple[int, ...]], architecture: str) -> str:
    """The family it was made for: SDXL when it adapts a second text encoder, else by the width its
    cross-attention key/value projections read, else as its ModelSpec architecture says."""
    if lora.adapts_second_text_encoder(shapes):
        return "SDXL"
    stated = next((name for prefix, name in _ARCHITECTURES.items() if architecture.startswith(prefix)), None)
    widths = lora.cross_attention_widths(shapes)
    if not widths:
        return stated or "unknown (no cross-attention layer adapted)"
    note = f"cross-attention {widths[0]} wide: not a full-size model's"
    return lora.CONTEXT_WIDTHS.get(widths[0]) or (f"{stated} ({note})" if stated else f"unknown ({note})")


def _components(shapes: dict[str, tuple[int, ...]], kind: str) -> list[str]:
    if kind == "kohya":
        names = {
            "lora_unet_": "unet",
            "lora_te_": "text_encoder",
            "lora_te1_": "text_encoder",
            "lora_te2_": "text_encoder_2",
        }
        return sorted({name for key in shapes for prefix, name in names.items() if key.startswith(prefix)})
    return sorted({key.split(".", 1)[0] for key in shapes})


def _alphas(shapes: dict[str, tuple[int, ...]], metadata: dict[str, str], file: Path, kind: str) -> list[float]:
    """The distinct alphas: kohya's `.alpha` tensors (read), or the PEFT configs diffusers stores in metadata."""
    if kind == "kohya":
        from safetensors import safe_open

        with safe_open(file, "pt") as opened:
            return sorted({float(opened.get_tensor(k)) for k in shapes if k.endswith(".alpha")})
    configs = lora.component_configs(metadata)
    return sorted({float(c["lora_alpha"]) for c in configs.values() if "lora_alpha" in c})


def format_lora_info(info: dict[str, Any]) -> str:
    """The human-readable form of `describe_lora`."""
    ranks = ", ".join(map(str, info["ranks"])) or "?"
    alphas = ", ".join(f"{a:g}" for a in info["alpha"]) or "not stored (1 per rank: scale 1)"
    lines = [
        f"lora       {info['file']}",
        f"layout     {info['layout']}" + (f"  ({info['architecture']})" if info["architecture"] else ""),
        f"family     {info['family']}",
        f"adapts     {', '.join(info['components'])}: {info['layers']} layers, rank {ranks}, alpha {alphas}",
        "loads in",
    ]
    lines += [f"  {'yes' if t['loads'] else 'no ':<4}{t['tool']:<15}{t['how']}" for t in info["tools"]]
    for name in info.get("ui_copies", []):
        lines.append(f"UI copy    {name} (kohya layout, beside it): A1111, Forge and ComfyUI load that one")
    return "\n".join(lines)
