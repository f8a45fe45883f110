"""`sdlite info` on a LoRA adapter: its layout, what it adapts, its rank and alpha, and which tools load it.

Which tools load which layout is a fact about their loaders, measured with their own code (../shared/reference.md):
A1111, Forge and ComfyUI map kohya names (`lora_unet_*`, `lora_te_*`/`lora_te1_*`/`lora_te2_*` with `.alpha`
tensors) and leave a diffusers-layout file's keys unmapped without an error; diffusers and sdlite load both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdlite.formats import lora, lycoris

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


# What changes for the variants diffusers' LoRA loader does not apply as trained, and for DoRA in A1111 (its DoRA
# normalises each input column, LyCORIS's older rule; peft's, which sdlite trains, each output row).
PEFT_LOAD = "peft: inject_adapter_in_model + set_peft_model_state_dict (configs in the file's metadata)"
NOT_IN_DIFFUSERS = "its LoRA loader does not apply this type as trained (DoRA scales dropped, LoHa/LoKr unread)"
A1111_DORA = "loads without an error but normalises each input column, not each output row: another effect"


def _tools(kind: str, adapter: str) -> list[tuple[str, bool, str]]:
    """(tool, loads it, how or why not) for a file of layout `kind` holding an adapter of type `adapter`."""
    rows = list(TOOLS[kind])
    if adapter in ("dora", "loha", "lokr"):
        how = f"sample --lora {'FILE' if kind == 'kohya' else 'FOLDER'}"
        rows = [row for row in rows if row[0] not in ("diffusers", "sdlite")]
        rows += [("diffusers", False, NOT_IN_DIFFUSERS if kind == "kohya" else PEFT_LOAD), ("sdlite", True, how)]
        if kind == "kohya" and adapter == "dora":
            rows[0] = ("A1111 / Forge", False, A1111_DORA)
    return rows


def describe_lora(source: Path | str) -> dict[str, Any]:
    """Facts of a LoRA file or folder, from its header alone."""
    file = lora.find_lora_file(source)
    shapes, metadata = lora.read_shapes(file)
    kind = lora.layout(list(shapes))
    assert kind is not None  # is_lora_source said it is one
    ranks = sorted({shape[0] for key, shape in shapes.items() if _rank_key(key) and shape})
    info: dict[str, Any] = {
        "kind": "lora",
        "file": str(file),
        "layout": kind,
        "type": lycoris.adapter_type(shapes),
        "family": _family(shapes, metadata.get("modelspec.architecture") or ""),
        "components": _components(shapes, kind),
        "layers": len(lora.layer_names(shapes) or ()),
        "ranks": ranks,
        "alpha": _alphas(shapes, metadata, file, kind),
        "architecture": metadata.get("modelspec.architecture"),
        "tools": [{"tool": t, "loads": ok, "how": how} for t, ok, how in _tools(kind, lycoris.adapter_type(shapes))],
    }
    folder = Path(source).expanduser()
    if folder.is_dir():  # a training OUT: the copy named for the run is the one UIs load
        copies = sorted(p.name for p in folder.glob("*.safetensors") if p.name not in lora.ADAPTER_FILES)
        info["ui_copies"] = [name for name in copies if lora.layout(lora.read_header(folder / name)[0]) == "kohya"]
    return info


def _rank_key(key: str) -> bool:
    """A tensor whose first dimension is its module's rank: LoRA's down matrix, LoHa's w1_b, LoKr's w2_b."""
    return lora.is_down_key(key) or key.endswith((".hada_w1_b", ".lokr_w2_b"))


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
    alphas = {float(c.get("lora_alpha", c.get("alpha", 0))) for c in configs.values()}
    alphas |= {float(a) for c in configs.values() for a in (c.get("alpha_pattern") or {}).values()}
    return sorted(alphas - {0.0})


TYPE_NAMES = {
    "lora": "LoRA",
    "locon": "LoRA on 3x3 convolutions too (LoCon)",
    "dora": "DoRA (LoRA + a magnitude per output row)",
    "loha": "LoHa (LyCORIS: Hadamard product of two low-rank pairs)",
    "lokr": "LoKr (LyCORIS: Kronecker product)",
}


def format_lora_info(info: dict[str, Any]) -> str:
    """The human-readable form of `describe_lora`."""
    ranks = ", ".join(map(str, info["ranks"])) or "?"
    alphas = ", ".join(f"{a:g}" for a in info["alpha"]) or "not stored (1 per rank: scale 1)"
    lines = [
        f"lora       {info['file']}",
        f"layout     {info['layout']}" + (f"  ({info['architecture']})" if info["architecture"] else ""),
        f"type       {TYPE_NAMES[info['type']]}",
        f"family     {info['family']}",
        f"adapts     {', '.join(info['components'])}: {info['layers']} layers, rank {ranks}, alpha {alphas}",
        "loads in",
    ]
    lines += [f"  {'yes' if t['loads'] else 'no ':<4}{t['tool']:<15}{t['how']}" for t in info["tools"]]
    readers = (
        "ComfyUI loads that one (A1111's DoRA differs)"
        if info["type"] == "dora"
        else ("A1111, Forge and ComfyUI load that one")
    )
    for name in info.get("ui_copies", []):
        lines.append(f"UI copy    {name} (kohya layout, beside it): {readers}")
    return "\n".join(lines)
