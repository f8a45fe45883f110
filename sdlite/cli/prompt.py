"""`sdlite prompt`: how a prompt is read (A1111's syntax, chunks, weights, prompt editing), and its conditioning."""

from __future__ import annotations

import json
from typing import Any

import typer

from sdlite.cli.failures import one_line_errors
from sdlite.cli.options import JsonOut, build_config, config_options, model_values
from sdlite.cli.output import quiet_libraries
from sdlite.prompts.config import PromptConfig


@config_options(PromptConfig)
def prompt(json_out: JsonOut = False, **options: Any) -> None:
    """Show how `sdlite sample` reads TEXT: the prompt-editing schedule (which text each step reads), each text's
    emphasis pieces and weights, the 75-token chunks each text encoder is given (BREAK, commas, padding) and the
    token count, for the prompt and the negative prompt. Only the tokenizers and text encoders are loaded.

    Example: sdlite prompt "a (red:1.3) [cat:dog:0.5], BREAK detailed" --steps 20 --save-conditioning cond.safetensors
    """
    with one_line_errors():
        config = build_config(PromptConfig, model_values(PromptConfig, options))
        quiet_libraries(config.offline)
        from sdlite.prompts.reading import read_prompt

        reading = read_prompt(config)
        typer.echo(json.dumps(reading, indent=2) if json_out else format_reading(reading))


def format_reading(reading: dict[str, Any]) -> str:
    """The reading for a person: per text, its steps, chunks and weighted words."""
    lines = [
        f"model {reading['model']} ({reading['family']}), {reading['steps']} steps, syntax {reading['prompt_syntax']}"
        f", clip skip {reading['clip_skip']}"
    ]
    for key in ("prompt", "negative_prompt"):
        part = reading[key]
        lines.append(f"{key.replace('_', ' ')}: {part['text']!r}")
        if part.get("zeroed"):
            lines.append("  empty: the model reads zeros (SDXL's rule for an empty negative prompt)")
            continue
        first = 0
        for variant in part["variants"]:
            last = min(variant["last_step"], reading["steps"] - 1)
            span = f"steps {first}-{last}" if len(part["variants"]) > 1 else "every step"
            lines.append(f"  {span}: {variant['text']!r}")
            first = last + 1
            for encoder in variant["encoders"]:
                name = f" {encoder['component']}" if len(variant["encoders"]) > 1 else ""
                lines.append(f"   {name} {encoder['token_count']} tokens, {len(encoder['chunks'])} chunk(s)".rstrip())
                for number, chunk in enumerate(encoder["chunks"], start=1):
                    lines.append(f"      chunk {number}: {_words(chunk)}")
    if "conditioning" in reading:
        saved = reading["conditioning"]
        shapes = ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in saved["tensors"].items())
        lines.append(f"conditioning: {saved['path']} ({shapes})")
    return "\n".join(lines)


def _words(chunk: dict[str, Any]) -> str:
    """A chunk's words between its start and end tokens, each weight other than 1 shown after its word."""
    shown = []
    for word, weight in list(zip(chunk["words"], chunk["weights"], strict=True))[1:]:
        if word == "<|endoftext|>":  # the chunk's end token: padding follows
            break
        text = word.removesuffix("</w>")
        shown.append(text if weight == 1 else f"{text}*{weight:.4g}")
    return " ".join(shown) or "(empty)"
