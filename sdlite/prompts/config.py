"""Frozen settings of `sdlite prompt`: which prompt to read, with which model's tokenizers and text encoders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sdlite.schema import (
    DEVICES,
    DTYPE_HELP,
    MODEL_HELP,
    Device,
    DType,
    FilePath,
    Flag,
    PathText,
    PositiveInt,
    Prompt,
    allow_pickle_option,
    ema_weights_option,
    offline_option,
    option,
    tokenizer_option,
    validate_fields,
)

PromptSyntax = Literal["a1111", "plain"]
PROMPT_SYNTAX_HELP = (
    "How prompts are read. a1111: AUTOMATIC1111's syntax: (word) x1.1, ((word)), [word] /1.1, (word:1.3), \\( \\) "
    "for brackets, BREAK, prompt editing [from:to:when] / [to:when] / [from::when] (when: a step number, or with a decimal "
    "point a fraction of the steps), alternation [a|b], and prompts of any length in 75-token chunks. plain: the text as CLIP "
    "reads it, cut at 77 tokens, as sdlite read every prompt before this option (images that record no syntax "
    "replay plain)."
)
CLIP_SKIP_HELP = (
    "Read the text encoder's N-th layer from the end (A1111's Clip skip). SD v1: A1111's meaning, 2 = the "
    "penultimate layer through the final layer norm (diffusers' clip_skip 1). SD 2.x: counted the same way from its "
    "encoder's own last layer, which is already OpenCLIP's penultimate (A1111 ignores clip skip for SD 2.x). SDXL: "
    "1 = both encoders' penultimate layer as trained, N moves both N - 1 layers earlier (diffusers' clip_skip N - 1)."
)


@dataclass(frozen=True)
class PromptConfig:
    """`sdlite prompt`: the prompt and negative prompt to read, and everything that changes how they are read."""

    prompt: Prompt = option(help="The prompt, as you would give it to `sdlite sample` or A1111.", argument="TEXT")
    model: PathText = option(help=MODEL_HELP, shown="$SDLITE_MODEL, else the built-in shapes model")
    negative_prompt: Prompt = option("", "The negative prompt, read the same way.")
    steps: PositiveInt | None = option(
        None, "Denoising steps: prompt editing's fractions are of these.", shown="the model's, else 50"
    )
    clip_skip: PositiveInt = option(1, CLIP_SKIP_HELP, metavar="N")
    prompt_syntax: PromptSyntax = option("a1111", PROMPT_SYNTAX_HELP)
    prompt_2: Prompt | None = option(None, "SDXL: the prompt its second text encoder reads.", shown="the prompt")
    negative_prompt_2: Prompt | None = option(
        None, "SDXL: the negative prompt its second text encoder reads.", shown="the negative prompt"
    )
    embeddings: tuple[PathText, ...] = option(
        (), "A textual-inversion embedding, read by its file name in prompts (as in `sdlite sample`).",
        flag="--embedding", metavar="FILE",
    )  # fmt: skip
    embeddings_dirs: tuple[PathText, ...] = option(
        (), "Load every embedding file in this folder.", flag="--embeddings-dir", metavar="DIR"
    )
    save_conditioning: FilePath | None = option(
        None,
        "Also write the tensors the UNet would be given to this .safetensors file: `prompt.I` and "
        "`negative_prompt.I` per prompt-editing variant I (batch 1, tokens, width; prompt and negative evened to one "
        "length as sampling evens them), SDXL's pooled projections as `prompt.I.pooled`; the reading as JSON in "
        "its metadata (`sdlite.prompt`).",
        metavar="OUT.safetensors",
    )
    device: Device = option("cpu", f"Where the text encoders run: {', '.join(DEVICES)}.")
    dtype: DType = option("auto", DTYPE_HELP)
    offline: Flag = offline_option()
    allow_pickle: Flag = allow_pickle_option()
    tokenizer: PathText | None = tokenizer_option()
    ema_weights: Flag = ema_weights_option()

    def __post_init__(self) -> None:
        validate_fields(self)
