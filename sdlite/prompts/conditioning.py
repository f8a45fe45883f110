"""The text conditioning A1111 gives the UNet for a prompt: emphasis, 75-token chunks, clip skip, per encoder.

Every text encoder of the model (SDXL: CLIP ViT-L, then OpenCLIP bigG) reads the prompt in A1111's chunks
(`chunks.py`), from the hidden layer the family and `--clip-skip` choose; SDXL's are joined along the width and
bigG's pooled projection of the first chunk goes with them. Texts encoded together (one prompt's prompt-editing
variants, as A1111 encodes them) share the emphasis rescale. A prompt without weights, BREAK or editing that fits
in 75 tokens gives exactly the tensors diffusers' own `encode_prompt` gives.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sdlite.prompts.chunks import Chunk, chunk_prompt, encode_chunks
from sdlite.prompts.embeddings import Embedding, expansions
from sdlite.prompts.emphasis import parse_emphasis


@dataclass(frozen=True)
class Conditioning:
    """Hidden states (texts, 77 x chunks, width) and, for SDXL, the pooled projection (texts, width 2)."""

    states: Any
    pooled: Any = None

    @property
    def length(self) -> int:
        return int(self.states.shape[1])

    def __getitem__(self, rows: Any) -> Conditioning:
        return Conditioning(self.states[rows], None if self.pooled is None else self.pooled[rows])


@dataclass(frozen=True)
class Encoder:
    """One text encoder with its tokenizer, and which of its hidden layers the UNet reads."""

    tokenizer: Any
    model: Any
    layer: int  # counted from the last: 1 = the last layer's output (through the final layer norm)
    final_norm: bool  # whether an earlier layer goes through the final layer norm too
    pooled: bool  # SDXL's second encoder: its pooled projection conditions the UNet too
    plain: bool = False  # `--prompt-syntax plain`: the text as it is, cut after 75 tokens as diffusers cuts it
    units: dict[int, list[int]] = field(default_factory=dict)  # a multi-vector embedding's tokens, by its first

    @property
    def special(self) -> tuple[int, int, int]:
        """The start, end and padding token ids (OpenCLIP pads with `!` after the end token)."""
        tokenizer = self.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return tokenizer.bos_token_id, tokenizer.eos_token_id, pad

    @functools.cached_property
    def comma(self) -> int | None:
        return self.tokenizer.get_vocab().get(",</w>")

    @functools.cached_property
    def size(self) -> int:
        """Prompt tokens per chunk: 75 for SD's CLIPs (77 positions with the start and end tokens)."""
        return min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings) - 2

    def chunks(self, text: str) -> tuple[list[Chunk], int]:
        """A1111's chunks of `text` and its token count (plain: the first chunk of the text as it is)."""
        start, end, _ = self.special
        if self.plain:
            chunks, count = chunk_prompt([(text, 1.0)], self._tokenize, start, end, None, 0, self.size, self.units)
            return chunks[:1], count
        return chunk_prompt(parse_emphasis(text), self._tokenize, start, end, self.comma, size=self.size,
                            units=self.units)  # fmt: skip

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"] if texts else []

    def encode(self, texts: Sequence[str]) -> Conditioning:
        """The texts encoded together: chunked, weighted and rescaled as A1111 does."""
        start, end, pad = self.special
        pooled: list[Any] = []

        def hidden(ids: Any) -> Any:
            outputs = self.model(ids.to(self.model.device), output_hidden_states=self.layer > 1)
            if not pooled and self.pooled:  # the first chunk's pooled projection, as A1111 takes it
                pooled.append(outputs.text_embeds)
            if self.layer == 1:
                return outputs.last_hidden_state
            states = outputs.hidden_states[-self.layer]
            return _final_norm(self.model)(states) if self.final_norm else states

        states = encode_chunks([self.chunks(text)[0] for text in texts], hidden, start, end, pad)
        return Conditioning(states, pooled[0] if pooled else None)


def _final_norm(model: Any) -> Any:
    norm = getattr(model, "final_layer_norm", None)
    return norm if norm is not None else model.text_model.final_layer_norm


def text_encoders(
    pipe: Any, family: Any, clip_skip: int = 1, plain: bool = False, embeddings: Sequence[Embedding] = ()
) -> tuple[Encoder, ...]:
    """The pipeline's text encoders, each reading the layer `clip_skip` chooses by its family's rule (`plain`: the
    prompt's text as it is, without A1111's syntax), with the tokens of the `embeddings` loaded into them."""
    count = len(family.text_encoders)
    return tuple(
        Encoder(
            getattr(pipe, tokenizer),
            getattr(pipe, encoder),
            family.text_layer + clip_skip - 1,
            family.text_final_norm,
            pooled=family.micro_conditioning and number == count - 1,
            plain=plain,
            units=expansions(getattr(pipe, tokenizer), embeddings),
        )
        for number, (encoder, tokenizer) in enumerate(zip(family.text_encoders, family.tokenizers, strict=True))
    )


def check_clip_skip(family: Any, configs: dict[str, dict[str, Any]], clip_skip: int) -> None:
    """A clip skip past an encoder's first layer (by the model's configs, before any weight loads) is a usage error
    naming how many layers it has."""
    from sdlite.errors import UsageError

    for name in family.text_encoders:
        layers = configs[name]["num_hidden_layers"]
        layer = family.text_layer + clip_skip - 1
        if layer > layers:
            raise UsageError(
                f"--clip-skip {clip_skip} reads layer {layers - layer + 1} of a text encoder with {layers} layers: "
                f"use at most {clip_skip - (layer - layers)}"
            )


def encode(encoders: Sequence[Encoder], texts: Sequence[str], texts_2: Sequence[str] | None = None) -> Conditioning:
    """The conditioning of texts encoded together by every encoder (the second encoder reads `texts_2` if given);
    encoders that chunk differently are evened with their own empty chunks, as A1111 pads a shorter text."""
    import torch

    parts = [enc.encode(texts_2 if texts_2 is not None and i == 1 else texts) for i, enc in enumerate(encoders)]
    if len(parts) == 1:
        return parts[0]
    length = max(part.length for part in parts)
    states = [
        part.states if part.length == length else pad_with(part, encoder.encode([""]), length).states
        for part, encoder in zip(parts, encoders, strict=True)
    ]
    return Conditioning(torch.cat(states, dim=-1), parts[-1].pooled)


def empty(encoders: Sequence[Encoder]) -> Conditioning:
    """The conditioning of the empty prompt: what A1111 pads the shorter of prompt and negative prompt with."""
    return encode(encoders, [""])


def pad_with(cond: Conditioning, filler: Conditioning, length: int) -> Conditioning:
    """`cond` lengthened to `length` tokens with `filler`'s (77) repeated."""
    import torch

    missing = (length - cond.length) // filler.length
    if missing <= 0:
        return cond
    extra = filler.states.to(cond.states).repeat(cond.states.shape[0], missing, 1)
    return Conditioning(torch.cat([cond.states, extra], dim=1), cond.pooled)


def stack(conds: Sequence[Conditioning]) -> Conditioning:
    """One row per conditioning, the shorter lengthened with their own last vector (A1111's `stack_conds`, for
    prompts of different lengths in one batch)."""
    import torch

    length = max(cond.length for cond in conds)
    rows = []
    for cond in conds:
        states = cond.states
        if cond.length < length:
            states = torch.cat([states, states[:, -1:].repeat(1, length - cond.length, 1)], dim=1)
        rows.append(states)
    pooled = None if conds[0].pooled is None else torch.cat([cond.pooled for cond in conds])
    return Conditioning(torch.cat(rows), pooled)
