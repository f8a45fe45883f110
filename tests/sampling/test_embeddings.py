"""Textual-inversion embeddings used by name: the pixels of plain diffusers after its own `load_textual_inversion`
of the same file, in every layout A1111 reads; A1111's `TI hashes`, replay, and the errors a user can hit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.torch import save_file
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.filecache import sha256_uncached

STEPS = 2
PROMPT = "a zqxv circle"  # zqxv: the embedding, by its file name


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def pixels(path: Path | str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def sample(model: Path, out: Path, *extra: str) -> Path:
    result = invoke("sample", PROMPT, "--model", str(model), "--steps", str(STEPS), "--seed", "6", "--height", "64",
                    "--width", "64", "--negative-prompt", "blue", "--json", "--out", str(out), *extra)  # fmt: skip
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.stdout)["path"])


def diffusers_pixels(model: Path, load: Any, xl: bool = False) -> np.ndarray:
    import diffusers

    cls = diffusers.StableDiffusionXLPipeline if xl else diffusers.StableDiffusionPipeline
    options = {"add_watermarker": False} if xl else {"safety_checker": None, "requires_safety_checker": False}
    pipe = cls.from_pretrained(model, **options)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load(pipe)
    image = pipe(PROMPT, negative_prompt="blue", height=64, width=64, num_inference_steps=STEPS, output_type="np",
                 guidance_scale=7.5,
                 generator=torch.Generator("cpu").manual_seed(6)).images[0]  # fmt: skip
    return (image * 255).round().astype(np.int16)


def test_a1111_pt_and_safetensors_and_diffusers_layouts_give_diffusers_pixels(tiny_model: Path, tmp_path: Path) -> None:
    width = json.loads((tiny_model / "text_encoder" / "config.json").read_text())["hidden_size"]
    vectors = torch.randn(3, width, generator=torch.Generator().manual_seed(1))
    folder = tmp_path / "pt"
    folder.mkdir()
    pt = folder / "zqxv.pt"
    torch.save({"string_to_param": {"*": vectors}, "name": "zqxv", "step": 100}, pt)
    theirs = diffusers_pixels(tiny_model, lambda pipe: pipe.load_textual_inversion(str(pt), token="zqxv"))
    assert np.array_equal(pixels(sample(tiny_model, tmp_path / "a", "--embedding", str(pt), "--allow-pickle")), theirs)
    plain = sample(tiny_model, tmp_path / "p", "--embedding", str(pt), "--allow-pickle", "--prompt-syntax", "plain")
    assert np.array_equal(pixels(plain), theirs)  # diffusers' own prompt encoding reads the same tokens
    a1111 = tmp_path / "st" / "zqxv.safetensors"
    a1111.parent.mkdir()
    save_file({"emb_params": vectors}, a1111)
    assert np.array_equal(pixels(sample(tiny_model, tmp_path / "b", "--embeddings-dir", str(a1111.parent))), theirs)
    learned = tmp_path / "zqxv.bin"
    torch.save({"<zqxv>": vectors}, learned)
    assert np.array_equal(pixels(sample(tiny_model, tmp_path / "c", "--embedding", str(learned), "--allow-pickle")),
                          theirs)  # fmt: skip
    without = pixels(sample(tiny_model, tmp_path / "none"))
    assert np.abs(without - theirs).max() > 0


def test_sdxl_reads_the_clip_l_and_clip_g_pair(sdxl_tiny_model: Path, tmp_path: Path) -> None:
    widths = [json.loads((sdxl_tiny_model / c / "config.json").read_text())["hidden_size"]
              for c in ("text_encoder", "text_encoder_2")]  # fmt: skip
    g = torch.Generator().manual_seed(2)
    pair = {"clip_l": torch.randn(2, widths[0], generator=g), "clip_g": torch.randn(2, widths[1], generator=g)}
    path = tmp_path / "zqxv.safetensors"
    save_file(pair, path)

    def load(pipe: Any) -> None:
        pipe.load_textual_inversion(pair["clip_l"], token="zqxv", text_encoder=pipe.text_encoder,
                                    tokenizer=pipe.tokenizer)  # fmt: skip
        pipe.load_textual_inversion(pair["clip_g"], token="zqxv", text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)  # fmt: skip

    theirs = diffusers_pixels(sdxl_tiny_model, load, xl=True)
    assert np.array_equal(pixels(sample(sdxl_tiny_model, tmp_path / "a", "--embedding", str(path))), theirs)
    one = tmp_path / "one" / "zqxv.safetensors"
    one.parent.mkdir()
    save_file({"emb_params": torch.zeros(1, widths[0])}, one)
    wrong = invoke("sample", "a", "--model", str(sdxl_tiny_model), "--embedding", str(one), "--out", str(tmp_path))
    assert wrong.exit_code == 4 and "clip_l and clip_g" in wrong.stderr


def test_ti_hashes_are_written_and_an_a1111_image_needs_its_embeddings(tiny_model: Path, tmp_path: Path) -> None:
    width = json.loads((tiny_model / "text_encoder" / "config.json").read_text())["hidden_size"]
    folder = tmp_path / "embeddings"
    folder.mkdir()
    path = folder / "zqxv.safetensors"
    save_file({"emb_params": torch.randn(1, width, generator=torch.Generator().manual_seed(3))}, path)
    unused = folder / "other.safetensors"
    save_file({"emb_params": torch.randn(1, width)}, unused)
    made = sample(tiny_model, tmp_path / "a", "--embeddings-dir", str(folder))
    text = Image.open(made).text["parameters"]
    assert f'TI hashes: "zqxv: {sha256_uncached(path)[:12]}"' in text and "other" not in text  # only the used one
    again = invoke("sample", "--from-image", str(made), "--json", "--out", str(tmp_path / "b"))  # the sdlite record
    assert again.exit_code == 0, again.output
    assert np.array_equal(pixels(json.loads(again.stdout)["path"]), pixels(made))

    a1111 = tmp_path / "a1111.png"
    info = PngInfo()
    info.add_text("parameters", text)
    Image.open(made).save(a1111, pnginfo=info)
    common = ["sample", "--from-image", str(a1111), "--model", str(tiny_model), "--json"]
    missing = invoke(*common, "--out", str(tmp_path / "c"))
    assert missing.exit_code == 3 and "zqxv (hash" in missing.stderr and "--embedding" in missing.stderr
    given = invoke(*common, "--embedding", str(path), "--out", str(tmp_path / "d"))
    assert given.exit_code == 0, given.output
    assert not [line for line in given.stderr.splitlines() if line.startswith("warning:")]
    assert np.array_equal(pixels(json.loads(given.stdout)["path"]), pixels(made))


def test_a_multi_vector_embedding_stays_in_one_chunk(tiny_model: Path, tmp_path: Path) -> None:
    """A1111 moves an embedding that does not fit in the chunk's remaining tokens to the next chunk."""
    width = json.loads((tiny_model / "text_encoder" / "config.json").read_text())["hidden_size"]
    path = tmp_path / "zqxv.safetensors"
    save_file({"emb_params": torch.randn(4, width)}, path)
    result = invoke("prompt", " ".join(["cat"] * 73) + " zqxv", "--model", str(tiny_model), "--embedding", str(path),
                    "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    first, second = json.loads(result.stdout)["prompt"]["variants"][0]["encoders"][0]["chunks"]
    assert first["words"][74] == "<|endoftext|>"  # 73 cats, then padding: 4 vectors do not fit in 2
    assert second["words"][1:6] == ["zqxv", "zqxv_1", "zqxv_2", "zqxv_3", "<|endoftext|>"]


@pytest.mark.parametrize("case", ["width", "pickle", "missing"])
def test_errors_name_the_file(case: str, tiny_model: Path, tmp_path: Path) -> None:
    path = tmp_path / ("zqxv.pt" if case == "pickle" else "zqxv.safetensors")
    if case == "width":
        save_file({"emb_params": torch.zeros(1, 4096)}, path)
    elif case == "pickle":
        torch.save({"string_to_param": {"*": torch.zeros(1, 8)}}, path)
    result = invoke("sample", "a", "--model", str(tiny_model), "--steps", "1", "--embedding", str(path),
                    "--out", str(tmp_path / "out"))  # fmt: skip
    code, words = {"width": (4, "4096-wide"), "pickle": (4, "--allow-pickle"), "missing": (3, "no such file")}[case]
    assert result.exit_code == code and words in result.stderr and str(path) in result.stderr
