"""A1111's 75-token chunks, on sdlite's offline tokenizer (each listed word is one token, a comma another)."""

from __future__ import annotations

from typing import Any

import pytest

from sdlite.models.tokenizer import build_tokenizer
from sdlite.prompts.chunks import CHUNK, chunk_prompt
from sdlite.prompts.emphasis import parse_emphasis


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tokenizer()


def chunks_of(tokenizer: Any, prompt: str, backtrack: int = 20) -> tuple[list[Any], int]:
    def tokenize(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

    comma = tokenizer.get_vocab()[",</w>"]
    return chunk_prompt(parse_emphasis(prompt), tokenize, tokenizer.bos_token_id, tokenizer.eos_token_id, comma,
                        backtrack)  # fmt: skip


def words(tokenizer: Any, chunk: Any) -> list[str]:
    return [tokenizer.convert_ids_to_tokens(t).removesuffix("</w>") for t in chunk.tokens]


def test_a_short_prompt_is_one_chunk_of_77_with_its_weights(tokenizer: Any) -> None:
    chunks, count = chunks_of(tokenizer, "a (red:1.5) cat")
    (chunk,) = chunks
    assert count == 3 and len(chunk.tokens) == len(chunk.weights) == CHUNK + 2
    assert words(tokenizer, chunk)[:5] == ["<|startoftext|>", "a", "red", "cat", "<|endoftext|>"]
    assert chunk.weights[:5] == [1.0, 1.0, 1.5, 1.0, 1.0] and set(chunk.weights[4:]) == {1.0}
    assert chunks_of(tokenizer, "")[0][0].tokens == [tokenizer.bos_token_id] + [tokenizer.eos_token_id] * 76


def test_a_long_prompt_breaks_after_the_last_comma_within_20_tokens(tokenizer: Any) -> None:
    prompt = " ".join(["cat"] * 60) + ", " + " ".join(["dog"] * 30)  # the comma is token 61
    chunks, count = chunks_of(tokenizer, prompt)
    first, second = (words(tokenizer, c) for c in chunks)
    assert first[1:62] == ["cat"] * 60 + [","] and first[62:] == ["<|endoftext|>"] * 15  # padded after the comma
    assert second[1:31] == ["dog"] * 30 and second[31] == "<|endoftext|>"
    assert count == CHUNK + 30
    plain = [words(tokenizer, c) for c in chunks_of(tokenizer, prompt, backtrack=0)[0]]
    assert plain[0][1:76] == ["cat"] * 60 + [","] + ["dog"] * 14 and plain[1][1:17] == ["dog"] * 16


def test_a_comma_too_far_back_does_not_move_anything(tokenizer: Any) -> None:
    prompt = " ".join(["cat"] * 10) + ", " + " ".join(["dog"] * 80)  # the comma is 64 tokens before the end
    first, second = (words(tokenizer, c) for c in chunks_of(tokenizer, prompt)[0])
    assert first[1:76] == ["cat"] * 10 + [","] + ["dog"] * 64 and second[1:17] == ["dog"] * 16


def test_break_closes_the_chunk(tokenizer: Any) -> None:
    chunks, count = chunks_of(tokenizer, "a red cat BREAK a blue dog")
    assert [words(tokenizer, c)[1:5] for c in chunks] == [["a", "red", "cat", "<|endoftext|>"],
                                                          ["a", "blue", "dog", "<|endoftext|>"]]  # fmt: skip
    assert count == CHUNK + 3


def test_padding_after_the_end_token_for_openclip(tokenizer: Any) -> None:
    (chunk,), _ = chunks_of(tokenizer, "a cat")
    ids = chunk.ids(tokenizer.eos_token_id, pad=0)
    assert ids[:4] == chunk.tokens[:4] and ids[4:] == [0] * 73


def test_unweighted_chunks_encode_as_the_plain_text_encoder_does(tiny_model: Any) -> None:
    """One chunk of weight 1 everywhere is exactly what diffusers feeds the UNet for a short prompt."""
    import torch
    from transformers import CLIPTextModel

    from sdlite.models.tokenizer import load_tokenizer
    from sdlite.prompts.chunks import encode_chunks

    tokenizer, encoder = (
        load_tokenizer(tiny_model / "tokenizer"),
        CLIPTextModel.from_pretrained(tiny_model / "text_encoder"),
    )
    chunks, _ = chunks_of(tokenizer, "a red circle")
    with torch.no_grad():
        ours = encode_chunks([chunks], lambda ids: encoder(ids)[0], tokenizer.bos_token_id, tokenizer.eos_token_id,
                             tokenizer.pad_token_id)  # fmt: skip
        ids = tokenizer("a red circle", padding="max_length", max_length=77, return_tensors="pt").input_ids
        plain = encoder(ids)[0]
    assert ours.shape == (1, 77, encoder.config.hidden_size) and torch.equal(ours, plain)


def test_original_emphasis_weights_then_restores_the_mean_over_the_batch() -> None:
    import torch

    from sdlite.prompts.chunks import Chunk, empty_chunk, encode_chunks

    states = torch.arange(1, 2 * 77 * 3 + 1, dtype=torch.float64).reshape(2, 77, 3)
    weighted = Chunk(list(empty_chunk(0, 1).tokens), [1.0, 1.5] + [1.0] * 75)
    two = [[weighted, weighted], [empty_chunk(0, 1)]]  # the second text gets an empty second chunk
    out = encode_chunks(two, lambda ids: states[: len(ids)], 0, 1, 1)
    expected = states.clone()
    expected[0, 1] *= 1.5
    expected *= states.mean() / expected.mean()  # over both texts of the chunk
    assert out.shape == (2, 154, 3) and torch.allclose(out[:, :77], expected) and torch.allclose(out[:, 77:], expected)
    zero = encode_chunks([[weighted]], lambda ids: torch.zeros(1, 77, 3), 0, 1, 1)  # a mean-0 encoder: no 0/0
    assert torch.isfinite(zero).all()
