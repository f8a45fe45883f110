"""The conditioning A1111's rules give, checked against the same computation written out here on the text encoders
themselves: emphasis weights and the mean restored, 75-token chunks joined, clip skip per family, positive and
negative evened, prompt editing read at A1111's steps; equal to diffusers' own encoding where A1111's is the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sdlite.errors import UsageError
from sdlite.families.sd1 import SD1
from sdlite.families.sd2 import SD2
from sdlite.families.sdxl import SDXL
from sdlite.prompts.conditioning import check_clip_skip, encode, text_encoders
from sdlite.prompts.per_step import BatchConditioning

FAMILIES = {"sd1": SD1, "sd2": SD2, "sdxl": SDXL}


@pytest.fixture(scope="module")
def pipes(tiny_model: Path, sd2_tiny_model: Path, sdxl_tiny_model: Path) -> dict[str, Any]:
    import diffusers

    loaded = {
        "sd1": diffusers.StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None),
        "sd2": diffusers.StableDiffusionPipeline.from_pretrained(sd2_tiny_model, safety_checker=None),
        "sdxl": diffusers.StableDiffusionXLPipeline.from_pretrained(sdxl_tiny_model, add_watermarker=False),
    }
    return loaded


def ids(pipe: Any, text: str, tokenizer: str = "tokenizer") -> torch.Tensor:
    return getattr(pipe, tokenizer)(text, padding="max_length", max_length=77, return_tensors="pt").input_ids


def weighted(states: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """A1111's "Original" emphasis written out: multiply, then restore the mean."""
    w = torch.tensor(weights)[None, :, None]
    out = states * w
    return out * (states.mean() / out.mean())


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_a_plain_short_prompt_gives_diffusers_own_encoding(family: str, pipes: dict[str, Any]) -> None:
    pipe = pipes[family]
    encoders = text_encoders(pipe, FAMILIES[family])
    with torch.no_grad():
        ours = encode(encoders, ["a red cat on a blue mat"])
        theirs = pipe.encode_prompt("a red cat on a blue mat", device="cpu", num_images_per_prompt=1,
                                    do_classifier_free_guidance=False)  # fmt: skip
    assert torch.equal(ours.states, theirs[0])
    if family == "sdxl":
        assert torch.equal(ours.pooled, theirs[2])


def test_weights_multiply_the_states_and_the_mean_is_restored(pipes: dict[str, Any]) -> None:
    pipe = pipes["sd1"]
    with torch.no_grad():
        ours = encode(text_encoders(pipe, SD1), ["a (red:1.5) [cat]"]).states
        states = pipe.text_encoder(ids(pipe, "a red cat")).last_hidden_state
    weights = [1.0] * 77
    weights[2], weights[3] = 1.5, 1 / 1.1  # start token, a, red, cat
    expected = weighted(states, weights)
    assert torch.allclose(ours, expected, atol=1e-6) and not torch.allclose(ours, states, atol=1e-3)


def test_a_long_prompt_is_chunks_of_75_joined_along_the_sequence(pipes: dict[str, Any]) -> None:
    pipe = pipes["sd1"]
    words = ["cat"] * 60 + ["dog"] * 40
    with torch.no_grad():
        ours = encode(text_encoders(pipe, SD1), [" ".join(words)]).states
        first = pipe.text_encoder(ids(pipe, " ".join(words[:75]))).last_hidden_state
        second = pipe.text_encoder(ids(pipe, " ".join(words[75:]))).last_hidden_state
    assert ours.shape == (1, 154, first.shape[-1])
    assert torch.equal(ours, torch.cat([first, second], dim=1))


def test_break_starts_a_new_chunk(pipes: dict[str, Any]) -> None:
    pipe = pipes["sd1"]
    with torch.no_grad():
        ours = encode(text_encoders(pipe, SD1), ["a red cat BREAK a blue dog"]).states
        first = pipe.text_encoder(ids(pipe, "a red cat")).last_hidden_state
        second = pipe.text_encoder(ids(pipe, "a blue dog")).last_hidden_state
    assert torch.equal(ours, torch.cat([first, second], dim=1))


def test_clip_skip_reads_the_layer_each_family_names(pipes: dict[str, Any]) -> None:
    """SD v1: A1111's clip skip 2 is the penultimate layer through the final layer norm. SDXL: clip skip 2 moves both
    encoders from their penultimate layer to the one before, raw (diffusers' clip_skip 1); the pooled stays."""
    pipe = pipes["sd1"]
    with torch.no_grad():
        ours = encode(text_encoders(pipe, SD1, clip_skip=2), ["a red cat"]).states
        hidden = pipe.text_encoder(ids(pipe, "a red cat"), output_hidden_states=True).hidden_states
        expected = pipe.text_encoder.final_layer_norm(hidden[-2])
    assert torch.equal(ours, expected)

    xl = pipes["sdxl"]
    with torch.no_grad():
        ours = encode(text_encoders(xl, SDXL, clip_skip=2), ["a red cat"])
        one = xl.text_encoder(ids(xl, "a red cat"), output_hidden_states=True).hidden_states[-3]
        out = xl.text_encoder_2(ids(xl, "a red cat", "tokenizer_2"), output_hidden_states=True)
    assert torch.equal(ours.states, torch.cat([one, out.hidden_states[-3]], dim=-1))
    assert torch.equal(ours.pooled, out.text_embeds)


def test_a_clip_skip_past_the_first_layer_is_a_usage_error(pipes: dict[str, Any]) -> None:
    configs = {"text_encoder": pipes["sd1"].text_encoder.config.to_dict()}
    layers = configs["text_encoder"]["num_hidden_layers"]
    check_clip_skip(SD1, configs, layers)
    with pytest.raises(UsageError, match=f"use at most {layers}"):
        check_clip_skip(SD1, configs, layers + 1)


def test_the_shorter_of_prompt_and_negative_is_padded_with_the_empty_prompt(pipes: dict[str, Any]) -> None:
    pipe = pipes["sd1"]
    long = " ".join(["cat"] * 80)
    encoders = text_encoders(pipe, SD1)
    with torch.no_grad():
        batch = BatchConditioning(encoders, [(long, None)], [("blurry", None)], 10, zero_empty_negative=False)
        positive, negative = batch.at(0)
        blurry = pipe.text_encoder(ids(pipe, "blurry")).last_hidden_state
        empty = pipe.text_encoder(ids(pipe, "")).last_hidden_state
    assert positive.states.shape == negative.states.shape == (1, 154, blurry.shape[-1])
    assert torch.equal(positive.states, encode(encoders, [long]).states)
    assert torch.equal(negative.states, torch.cat([blurry, empty], dim=1))


def test_prompt_editing_switches_at_a1111s_steps(pipes: dict[str, Any]) -> None:
    """[cat:dog:0.5] over 10 steps: A1111 reads `cat` while the step (from 0) is <= 5, then `dog`; both variants
    are encoded together (one emphasis rescale), so each equals its own encoding only without weights."""
    pipe = pipes["sd1"]
    encoders = text_encoders(pipe, SD1)
    with torch.no_grad():
        batch = BatchConditioning(encoders, [("a [cat:dog:0.5]", None)], [("", None)], 10, zero_empty_negative=False)
        cat, dog = (encode(encoders, [text]).states for text in ("a cat", "a dog"))
    assert batch.changes
    for step in range(10):
        assert torch.equal(batch.at(step)[0].states, cat if step <= 5 else dog), step
    alternating = BatchConditioning(encoders, [("a [cat|dog]", None)], [("", None)], 4, zero_empty_negative=False)
    assert [torch.equal(alternating.at(s)[0].states, cat) for s in range(4)] == [True, True, False, True]


def test_sdxl_zeroes_an_empty_negative_prompt_as_diffusers_does(pipes: dict[str, Any]) -> None:
    xl = pipes["sdxl"]
    encoders = text_encoders(xl, SDXL)
    with torch.no_grad():
        batch = BatchConditioning(encoders, [("a red cat", None)], [("", None)], 5, zero_empty_negative=True)
        theirs = xl.encode_prompt("a red cat", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    positive, negative = batch.at(0)
    assert torch.equal(positive.states, theirs[0]) and torch.equal(negative.states, theirs[1])
    assert torch.equal(positive.pooled, theirs[2]) and torch.equal(negative.pooled, theirs[3])
    assert not negative.states.any()
