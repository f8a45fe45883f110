"""`sdlite prompt`: how sdlite reads a prompt, shown and saved without loading the UNet or the VAE.

The reading is the one sampling uses (sdlite/sampling/conditioning.py): A1111's prompt-editing schedule (the
`[[last step, text], ...]` of its `get_learned_conditioning_prompt_schedules`), each variant's emphasis pieces (its
`parse_prompt_attention`), the chunks each text encoder reads (token ids as fed, with their weights) and A1111's
token count; the conditioning tensors can be saved for comparison with another tool's.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sdlite.errors import writing
from sdlite.prompts.conditioning import Conditioning, Encoder, check_clip_skip, pad_with, text_encoders
from sdlite.prompts.config import PromptConfig
from sdlite.prompts.editing import schedule
from sdlite.prompts.embeddings import add_embeddings, embedding_files
from sdlite.prompts.emphasis import parse_emphasis
from sdlite.prompts.per_step import BatchConditioning, PromptSchedule


def read_prompt(config: PromptConfig) -> dict[str, Any]:
    """The reading of `config`'s prompt and negative prompt, JSON-ready; the tensors written where it says."""
    import torch

    from sdlite.models.loading import load_text_encoders, pick_device, pick_dtype, resolve_model
    from sdlite.sampling.sources import model_defaults

    model = resolve_model(config.model, config.offline, config.allow_pickle, config.tokenizer, config.ema_weights)
    family = model.family
    steps = config.steps or model_defaults(config.model).get("steps", 50)
    device = pick_device(config.device)
    check_clip_skip(family, model.configs(), config.clip_skip)
    paths, _ = embedding_files(config.embeddings, config.embeddings_dirs, config.allow_pickle)
    parts = load_text_encoders(model, device, pick_dtype(config.dtype, device))
    embeddings = add_embeddings(paths, parts, family.text_encoders)
    plain = config.prompt_syntax == "plain"
    encoders = text_encoders(SimpleNamespace(**parts), family, config.clip_skip, plain, embeddings)
    with torch.no_grad():
        batch = BatchConditioning(
            encoders,
            [(config.prompt, config.prompt_2 or None)],
            [(config.negative_prompt, config.negative_prompt_2 or None)],
            steps,
            parts["force_zeros_for_empty_prompt"],
        )
    reading: dict[str, Any] = {
        "model": config.model,
        "family": family.key,
        "steps": steps,
        "prompt_syntax": config.prompt_syntax,
        "clip_skip": config.clip_skip,
        "embeddings": [e.record() for e in embeddings],
        "prompt": _describe(config.prompt, batch.positive[0], encoders, steps, plain),
    }
    if batch.zero_negative:
        reading["negative_prompt"] = {"text": config.negative_prompt, "zeroed": True}
    else:
        reading["negative_prompt"] = _describe(config.negative_prompt, batch.negative[0], encoders, steps, plain)
    if config.save_conditioning is not None:
        reading["conditioning"] = _save(config.save_conditioning, batch, reading)
    return reading


def _describe(
    text: str, scheduled: PromptSchedule, encoders: tuple[Encoder, ...], steps: int, plain: bool
) -> dict[str, Any]:
    """One prompt: A1111's schedule, which variant each step reads, and each variant's pieces and chunks."""
    variants = []
    for i, (end, variant) in enumerate(zip(scheduled.ends, scheduled.texts, strict=True)):
        entry: dict[str, Any] = {"text": variant, "last_step": end}
        if scheduled.texts_2 is not None:
            entry["text_2"] = scheduled.texts_2[i]
        if not plain:
            entry["attention"] = [[piece, weight] for piece, weight in parse_emphasis(variant)]
        entry["encoders"] = []
        for number, (encoder, component) in enumerate(zip(encoders, ("text_encoder", "text_encoder_2"), strict=False)):
            read = scheduled.texts_2[i] if number == 1 and scheduled.texts_2 is not None else variant
            chunks, count = encoder.chunks(read)
            _, end_id, pad = encoder.special
            entry["encoders"].append(
                {
                    "component": component,
                    "token_count": count,
                    "chunks": [
                        {
                            "tokens": chunk.ids(end_id, pad),
                            "words": encoder.tokenizer.convert_ids_to_tokens(chunk.ids(end_id, pad)),
                            "weights": chunk.weights,
                        }
                        for chunk in chunks
                    ],
                }
            )
        variants.append(entry)
    reading: dict[str, Any] = {"text": text}
    if not plain:  # A1111's parse_prompt_attention of the text as given (each variant's is below)
        reading["attention"] = [[piece, weight] for piece, weight in parse_emphasis(text)]
    return {
        **reading,
        "schedule": [[end, variant] for end, variant in ([(steps, text)] if plain else schedule(text, steps))],
        "per_step": [scheduled.index(step) for step in range(steps)],
        "variants": variants,
    }


def _save(path: Path, batch: BatchConditioning, reading: dict[str, Any]) -> dict[str, Any]:
    """Write each variant's tensors, prompt and negative evened to one length as sampling evens them."""
    import torch
    from safetensors.torch import save_file

    positive = [batch.positive[0].cond[i : i + 1] for i in range(len(batch.positive[0].ends))]
    if batch.zero_negative:
        negative = [Conditioning(torch.zeros_like(c.states), _zeros(c.pooled)) for c in positive[:1]]
    else:
        negative = [batch.negative[0].cond[i : i + 1] for i in range(len(batch.negative[0].ends))]
        length = max(c.length for c in positive + negative)
        if any(c.length != length for c in positive + negative):
            positive = [pad_with(c, batch.empty, length) for c in positive]
            negative = [pad_with(c, batch.empty, length) for c in negative]
    tensors: dict[str, Any] = {}
    for name, conds in (("prompt", positive), ("negative_prompt", negative)):
        for i, cond in enumerate(conds):
            tensors[f"{name}.{i}"] = cond.states.detach().float().cpu().contiguous()
            if cond.pooled is not None:
                tensors[f"{name}.{i}.pooled"] = cond.pooled.detach().float().cpu().contiguous()
    with writing(f"the conditioning to {path}"):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"sdlite.prompt": json.dumps(reading)})
    return {"path": str(path), "tensors": {name: list(t.shape) for name, t in tensors.items()}}


def _zeros(pooled: Any) -> Any:
    import torch

    return None if pooled is None else torch.zeros_like(pooled)
