"""`sdlite prompt`: the reading sampling uses, shown (A1111's schedule, pieces, chunks) and saved as the tensors the
UNet would get, computed here by A1111's rules on the same text encoder; the UNet and VAE are never loaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from sdlite.cli.app import app


def invoke(*args: str) -> Any:
    from typer.testing import CliRunner

    return CliRunner().invoke(app, list(args))


def read(*args: str) -> dict[str, Any]:
    result = invoke("prompt", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_gives_a1111s_schedule_pieces_and_chunks(tiny_model: Path) -> None:
    """A1111's documented schedule for `a [b:c:2] d` over 4 steps, the pieces of `(red:1.3)`, the ids as fed."""
    reading = read("a (red:1.3) [cat:dog:2] cat, BREAK sun", "--model", str(tiny_model), "--steps", "4")
    prompt = reading["prompt"]
    assert prompt["schedule"] == [[2, "a (red:1.3) cat cat, BREAK sun"], [4, "a (red:1.3) dog cat, BREAK sun"]]
    assert prompt["per_step"] == [0, 0, 0, 1]  # A1111 reads a variant while step <= its last step
    assert prompt["attention"] == [["a ", 1.0], ["red", 1.3], [" ", 1.0], ["cat:dog:2", 1 / 1.1], [" cat,", 1.0],
                                   ["BREAK", -1.0], ["sun", 1.0]]  # A1111's own output for the text as given  # fmt: skip
    first = prompt["variants"][0]
    assert first["attention"] == [["a ", 1.0], ["red", 1.3], [" cat cat,", 1.0], ["BREAK", -1.0], ["sun", 1.0]]
    (encoder,) = first["encoders"]
    one, two = encoder["chunks"]
    assert [w.removesuffix("</w>") for w in one["words"][:6]] == ["<|startoftext|>", "a", "red", "cat", "cat", ","]
    assert one["weights"][:4] == [1.0, 1.0, 1.3, 1.0] and len(one["tokens"]) == 77
    assert [w.removesuffix("</w>") for w in two["words"][:3]] == ["<|startoftext|>", "sun", "<|endoftext|>"]
    assert encoder["token_count"] == 76  # A1111's count: 75 per closed chunk, then the last chunk's own
    assert reading["negative_prompt"]["variants"][0]["text"] == ""


def test_saved_conditioning_is_a1111s_emphasis_on_the_same_clip(tiny_model: Path, tmp_path: Path) -> None:
    import transformers

    out = tmp_path / "cond.safetensors"
    result = invoke("prompt", "a (red:1.3) cat", "--negative-prompt", "dog " * 80, "--model", str(tiny_model),
                    "--save-conditioning", str(out), "--clip-skip", "2")  # fmt: skip
    assert result.exit_code == 0, result.output
    encoder = transformers.CLIPTextModel.from_pretrained(tiny_model / "text_encoder")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(tiny_model / "tokenizer")

    def layer(text: str) -> torch.Tensor:
        ids = tokenizer(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            return encoder.final_layer_norm(encoder(ids, output_hidden_states=True).hidden_states[-2])

    states = layer("a red cat")
    weights = torch.ones(1, 77, 1)
    weights[0, 2] = 1.3
    expected = states * weights * (states.mean() / (states * weights).mean())
    expected = torch.cat([expected, layer("")], dim=1)  # evened with the longer negative prompt by the empty prompt
    with safe_open(str(out), "pt") as saved:
        assert set(saved.keys()) == {"prompt.0", "negative_prompt.0"}
        assert torch.allclose(saved.get_tensor("prompt.0"), expected, atol=1e-5)
        assert saved.get_tensor("negative_prompt.0").shape == (1, 154, states.shape[-1])
        assert json.loads(saved.metadata()["sdlite.prompt"])["clip_skip"] == 2
    assert f"conditioning: {out} (prompt.0 1x154x" in invoke("prompt", "a (red:1.3) cat", "--negative-prompt",
        "dog " * 80, "--model", str(tiny_model), "--save-conditioning", str(out), "--clip-skip", "2").stdout  # fmt: skip


def test_the_unet_and_vae_are_never_loaded(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import diffusers

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the UNet or VAE was loaded")

    single = tmp_path / "tiny.safetensors"
    assert invoke("export", str(tiny_model), str(single)).exit_code == 0
    for cls in (diffusers.UNet2DConditionModel, diffusers.AutoencoderKL):
        monkeypatch.setattr(cls, "from_pretrained", refuse)
        monkeypatch.setattr(cls, "from_single_file", refuse)
    folder = read("a (red) cat", "--model", str(tiny_model), "--save-conditioning", str(tmp_path / "a.safetensors"))
    file = read("a (red) cat", "--model", str(single), "--save-conditioning", str(tmp_path / "b.safetensors"))
    assert folder["prompt"]["variants"] == file["prompt"]["variants"]
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as a, safe_open(str(tmp_path / "b.safetensors"), "pt") as b:
        assert torch.equal(a.get_tensor("prompt.0"), b.get_tensor("prompt.0"))


def test_sdxl_reads_each_encoder_and_zeroes_an_empty_negative(sdxl_tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "xl.safetensors"
    reading = read("a ((red)) cat", "--prompt-2", "a blue dog", "--model", str(sdxl_tiny_model),
                   "--save-conditioning", str(out))  # fmt: skip
    variant = reading["prompt"]["variants"][0]
    assert [e["component"] for e in variant["encoders"]] == ["text_encoder", "text_encoder_2"]
    second = variant["encoders"][1]["chunks"][0]
    assert [w.removesuffix("</w>") for w in second["words"][1:4]] == ["a", "blue", "dog"]
    assert set(second["weights"]) == {1.0} and variant["encoders"][0]["chunks"][0]["weights"][2] == pytest.approx(1.21)
    assert reading["negative_prompt"] == {"text": "", "zeroed": True}
    with safe_open(str(out), "pt") as saved:
        assert set(saved.keys()) == {"prompt.0", "prompt.0.pooled", "negative_prompt.0", "negative_prompt.0.pooled"}
        assert not saved.get_tensor("negative_prompt.0").any()


def test_bad_input_is_one_line_with_its_exit_code(tiny_model: Path, tmp_path: Path) -> None:
    too_deep = invoke("prompt", "a cat", "--model", str(tiny_model), "--clip-skip", "9")
    assert too_deep.exit_code == 2 and "--clip-skip 9" in too_deep.stderr and "use at most" in too_deep.stderr
    blocked = tmp_path / "file"
    blocked.write_text("x")
    unwritable = invoke(
        "prompt", "a", "--model", str(tiny_model), "--save-conditioning", str(blocked / "c.safetensors")
    )
    assert unwritable.exit_code == 5 and unwritable.stderr.count("\n") == 1
