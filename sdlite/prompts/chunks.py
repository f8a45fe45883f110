"""A1111's long prompts: a weighted prompt cut into 75-token chunks, each encoded on its own as 77 tokens.

The rules are AUTOMATIC1111's (`modules/sd_hijack_clip.py`, `tokenize_line`, v1.10), re-implemented: the pieces of
`parse_emphasis` are tokenized without special tokens, every token keeps its piece's weight; a chunk is full at 75
tokens, and when it fills within `backtrack` (20) tokens after a comma, what follows the comma moves to the next
chunk; `BREAK` closes the chunk at once. A chunk is padded to 75 with the end token (weight 1) and framed by the
start and end tokens. `token_count` is what A1111 reports: 75 per closed chunk plus the last chunk's own tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sdlite.prompts.emphasis import BREAK

CHUNK = 75  # prompt tokens per chunk; with the start and end tokens, the text encoder's 77
BACKTRACK = 20  # A1111's comma_padding_backtrack default


@dataclass
class Chunk:
    """77 token ids and the weight of each."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)

    def ids(self, end: int, pad: int) -> list[int]:
        """The ids to encode: after the first end token, the padding token (OpenCLIP's `!`, where it differs)."""
        first_end = self.tokens.index(end, 1)
        return self.tokens[: first_end + 1] + [pad] * (len(self.tokens) - first_end - 1)


def chunk_prompt(
    pieces: Sequence[tuple[str, float]],
    tokenize: Callable[[list[str]], list[list[int]]],
    start: int,
    end: int,
    comma: int | None,
    backtrack: int = BACKTRACK,
    size: int = CHUNK,
    units: dict[int, list[int]] | None = None,
) -> tuple[list[Chunk], int]:
    """The chunks of a prompt's (text, weight) pieces, and its token count as A1111 reports it. `size` is the
    prompt tokens per chunk: 75 for every CLIP of SD (77 positions), fewer for a text encoder with fewer positions
    (sdlite's small built-in model). `units` maps a multi-vector embedding's first token to all of its tokens: they
    go into one chunk together (A1111 starts a new chunk for an embedding that does not fit)."""
    chunks: list[Chunk] = []
    chunk = Chunk()
    count = 0
    last_comma = -1

    def close(is_last: bool = False) -> None:
        nonlocal chunk, count, last_comma
        count += len(chunk.tokens) if is_last else size
        missing = size - len(chunk.tokens)
        chunk.tokens += [end] * missing
        chunk.weights += [1.0] * missing
        chunk.tokens = [start, *chunk.tokens, end]
        chunk.weights = [1.0, *chunk.weights, 1.0]
        chunks.append(chunk)
        chunk, last_comma = Chunk(), -1

    for tokens, (text, weight) in zip(tokenize([text for text, _ in pieces]), pieces, strict=True):
        if (text, weight) == BREAK:
            close()
            continue
        for token in tokens:
            if token == comma:
                last_comma = len(chunk.tokens)
            elif backtrack and len(chunk.tokens) == size and last_comma != -1 and size - last_comma <= backtrack:
                moved = Chunk(chunk.tokens[last_comma + 1 :], chunk.weights[last_comma + 1 :])
                chunk.tokens, chunk.weights = chunk.tokens[: last_comma + 1], chunk.weights[: last_comma + 1]
                close()
                chunk = moved
            if len(chunk.tokens) == size:
                close()
            unit = units.get(token, [token]) if units else [token]
            if len(chunk.tokens) + len(unit) > size:
                close()
            chunk.tokens += unit
            chunk.weights += [weight] * len(unit)
    if chunk.tokens or not chunks:
        close(is_last=True)
    return chunks, count


def empty_chunk(start: int, end: int, size: int = CHUNK) -> Chunk:
    """What a prompt with fewer chunks than another in its batch is padded with (A1111's empty chunk)."""
    return Chunk([start] + [end] * (size + 1), [1.0] * (size + 2))


def encode_chunks(texts: Sequence[list[Chunk]], encode: Callable[[Any], Any], start: int, end: int, pad: int) -> Any:
    """The hidden states of texts given as chunks, (texts, 77 x chunks, width): chunk i of every text is encoded
    together by `encode` (token ids -> hidden states), weighted by A1111's "Original" emphasis, and the chunks are
    joined along the sequence. A text with fewer chunks is padded with empty ones.

    "Original" emphasis multiplies each token's hidden state by its weight, then rescales the whole batch's chunk
    so its mean is what it was (over every text encoded together: A1111 encodes a prompt's edit variants as one
    batch). Where the weighted mean is 0 (a text encoder whose final norm has no bias gives mean-0 states) the
    rescale would divide by zero: the weighted states are kept as they are.
    """
    import torch

    count = max(len(chunks) for chunks in texts)
    joined = []
    for i in range(count):
        size = len(next(chunks[i] for chunks in texts if i < len(chunks)).tokens) - 2
        batch = [chunks[i] if i < len(chunks) else empty_chunk(start, end, size) for chunks in texts]
        ids = torch.tensor([chunk.ids(end, pad) for chunk in batch])
        states = encode(ids)
        weights = torch.tensor([chunk.weights for chunk in batch], dtype=states.dtype, device=states.device)
        original_mean = states.mean()
        weighted = states * weights[..., None]
        new_mean = weighted.mean()
        joined.append(weighted if new_mean == 0 else weighted * (original_mean / new_mean))
    return torch.cat(joined, dim=1)
