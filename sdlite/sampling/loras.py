"""LoRA adapters applied to a loaded pipeline: several at once, each at its own scale, never silently.

diffusers' own loader does the work (diffusers and kohya layouts); around it, sdlite checks by name
that an adapter fits the model before any weight loads, keeps the libraries' per-weight log lines off
stderr, and checks afterwards that at least one layer was adapted.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings as warnings_module
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sdlite import filecache
from sdlite.families.base import Family
from sdlite.formats import lycoris
from sdlite.sampling.config import LoraChoice

log = logging.getLogger("sdlite")


def load_loras(pipe: Any, loras: tuple[LoraChoice, ...], warnings: list[str], family: Family) -> list[dict[str, Any]]:
    """Load each LoRA as its own adapter (diffusers' loader: diffusers and kohya layouts) and activate them
    together at their scales; returns their records (source, sha256, scale) for the PNG metadata.

    A LoRA that adapts no layer of this model is a ModelError, never a silent no-op. Library log lines
    are caught during the load: the checks here say what matters in one line instead.
    """
    records, names = [], []
    for i, choice in enumerate(loras):
        name = _adapter(i)
        file = _load_one_lora(pipe, choice.source, name, warnings, family)
        records.append({"source": str(file.resolve()), "hash": filecache.file_sha256(file), "scale": choice.scale})
        names.append(name)
    if names:
        pipe.set_adapters(names, adapter_weights=[choice.scale for choice in loras])
    return records


def _load_one_lora(pipe: Any, source: str, name: str, warnings: list[str], family: Family) -> Path:
    from sdlite.errors import ModelError
    from sdlite.formats import lora as lora_format

    file = lora_format.find_lora_file(source)
    shapes, _ = lora_format.read_shapes(file)  # refuses pickles and damaged files before diffusers reads it
    keys = list(shapes)
    if not any("lora" in key for key in keys) and lora_format.layout(keys) is None:  # LoHa/LoKr keys have no "lora"
        raise ModelError(f"{file} is not a LoRA adapter (none of its weights is a LoRA weight; a model's file?)")
    mismatch = lora_format.family_mismatch(shapes, family.name, pipe.unet.config.cross_attention_dim)
    if mismatch:
        raise ModelError(f"LoRA {file} is not for this {family.name} model: {mismatch}")
    layers, ignored = lora_format.layer_names(keys), ""
    if layers is not None:  # a layout sdlite knows: check the layers by name before any weight loads
        present = lora_format.model_layer_names(
            {name: (n for n, _ in module.named_modules()) for name, module in _adaptable(pipe).items()}
        )
        found = layers & present
        if not found:
            raise ModelError(
                f"LoRA {file} matches no layer of this model (none of its {len(layers)} layers, e.g. "
                f"{min(layers)}, exists here): it was made for another model architecture"
            )
        if len(found) < len(layers):
            missing = len(layers) - len(found)
            ignored = f"LoRA {file}: {missing} of its {len(layers)} layers match no layer of this model and are ignored"
    with _library_logs():
        try:
            if lycoris.needs_peft(keys):  # LoHa, LoKr, a kohya-layout DoRA: peft applies them, as trained
                _inject(pipe, file, name)
            else:
                pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=name)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise ModelError(_lora_load_error(file, exc)) from exc
    if not _adapted_modules(pipe, name):
        raise ModelError(f"LoRA {file} matches no layer of this model: it was made for another model architecture")
    if ignored:
        _warn(warnings, ignored)
    return file


def _inject(pipe: Any, file: Path, name: str) -> None:
    """Add the adapter in `file` to the pipeline's components as peft adapter `name`: sdlite's PEFT_FILE (peft's
    names and configs) or a kohya/LyCORIS-layout file (its modules found by kohya name in this model)."""
    from peft import inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    from sdlite.formats import lora as lora_format

    components = _adaptable(pipe)
    tensors = load_file(file)
    kohya = lora_format.layout(tensors) == "kohya"
    if kohya:
        modules = {
            lora_format.kohya_name(component, path, "text_encoder_2" in components): (component, path)
            for component, module in components.items()
            for path, _ in module.named_modules()
            if path
        }
        states, arguments = lycoris.from_kohya(tensors, modules)
    else:
        arguments = lora_format.component_configs(lora_format.read_header(file)[1])
        states = {}
        for key, value in tensors.items():
            component, _, rest = key.partition(".")
            states.setdefault(component, {})[rest] = value
    for component, state in states.items():
        if component not in components or component not in arguments:
            raise ValueError(f"it adapts {component}, which this model has no config for")
        module = components[component]
        inject_adapter_in_model(lycoris.peft_config_of(arguments[component]), module, adapter_name=name)
        result = set_peft_model_state_dict(module, state, adapter_name=name)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"{len(unexpected)} of its {component} tensors fit no layer here (e.g. {unexpected[0]})")
        if kohya:
            _comfy_dora_to_peft(module, name)
        module._hf_peft_config_loaded = True  # diffusers' set_adapters and unloading treat it as its own


def _comfy_dora_to_peft(module: Any, name: str) -> None:
    """A kohya/LyCORIS file's `dora_scale` applied as ComfyUI applies it (m x (W + delta) / |W| per row): the
    magnitudes peft needs for the same weights."""
    import torch

    with torch.no_grad():
        for layer in module.modules():
            magnitudes = getattr(layer, "lora_magnitude_vector", {})
            if name in magnitudes:
                weight = layer.get_base_layer().weight.float()
                delta = layer.get_delta_weight(name).float().reshape(weight.shape)
                scale = magnitudes[name].weight
                scale.copy_(lycoris.from_comfy_magnitude(scale.float(), weight, delta).to(scale.dtype))


def _adapted_modules(pipe: Any, name: str) -> int:
    """How many layers of the UNet and text encoder adapter `name` now changes."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(
        1
        for component in _adaptable(pipe).values()
        for module in component.modules()
        if isinstance(module, BaseTunerLayer)
        and any(name in getattr(module, attr, {}) for attr in module.adapter_layer_names)
    )


def _adaptable(pipe: Any) -> dict[str, Any]:
    """The components a LoRA may adapt: the UNet and the text encoders (SDXL has two)."""
    names = ("unet", "text_encoder", "text_encoder_2")
    return {name: getattr(pipe, name) for name in names if getattr(pipe, name, None) is not None}


def _lora_load_error(file: Path, exc: Exception) -> str:
    """One line for a LoRA diffusers could not load: shape mismatches (another architecture) summarised."""
    text = str(exc)
    sizes = re.findall(
        r"size mismatch for (\S+?): copying a param with shape torch\.Size\((\[.*?\])\) from "
        r"checkpoint, the shape in current model is torch\.Size\((\[.*?\])\)",
        text,
    )
    if sizes:
        module, theirs, ours = sizes[0]
        module = re.sub(r"\.lora_[AB]\.[^.]+\.weight$", "", module)
        return (
            f"LoRA {file} does not fit this model: {len(sizes)} of its weights have other shapes than the "
            f"layers they name (e.g. {module}: {theirs} in the LoRA, {ours} here); it was made for another "
            "model architecture"
        )
    if "not found in the base model" in text:
        return f"LoRA {file} matches no layer of this model: it was made for another model architecture"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"cannot load LoRA {file}: {first}"


@contextlib.contextmanager
def _library_logs() -> Iterator[None]:
    """Keep diffusers', peft's and transformers' log lines and Python warnings off stderr while a LoRA
    loads: a mismatched LoRA otherwise prints a line per weight, and the checks around the load say
    what matters in one line."""
    quiet = logging.NullHandler()
    saved = []
    for library in ("diffusers", "peft", "transformers"):
        logger = logging.getLogger(library)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers, logger.propagate = [quiet], False
    try:
        with warnings_module.catch_warnings():
            warnings_module.simplefilter("ignore")
            yield
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate


def _warn(warnings: list[str], message: str) -> None:
    log.warning(message)
    warnings.append(message)


def _adapter(number: int) -> str:
    return f"lora{number}"


def set_scales(pipe: Any, loras: tuple[LoraChoice, ...], scale: float | None) -> None:
    """Every loaded LoRA at `scale` (a sweep's `lora-scale`), or at its own --lora-scale when None."""
    weights = [choice.scale if scale is None else scale for choice in loras]
    pipe.set_adapters([_adapter(i) for i in range(len(loras))], adapter_weights=weights)
