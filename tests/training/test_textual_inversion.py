"""Textual-inversion training: only the new token's vectors train; the embedding it writes is read by diffusers'
load_textual_inversion with the same effect as `sdlite sample --embedding`; resume is exact; SDXL gets its pair."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.training import run
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.errors import UsageError
from sdlite.testing import make_shapes_dataset

SETTINGS = {"max_steps": 4, "batch_size": 4, "lr": 5e-3, "embedding": "zqxv", "init_token": "circle",
            "num_vectors": 2, "instance_prompt": "a zqxv shape"}  # fmt: skip


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n=8)


def test_the_embedding_trains_and_diffusers_reads_it_as_sdlite_does(
    tiny_model: Path, shapes: Path, tmp_path: Path
) -> None:
    import diffusers

    out = tmp_path / "o"
    run(tiny_model, shapes, out, **SETTINGS)
    a1111, learned = load_file(out / "zqxv.safetensors"), load_file(out / "learned_embeds.safetensors")
    assert a1111["emb_params"].shape[0] == 2 and torch.equal(a1111["emb_params"], learned["zqxv"])
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None,
                                                             requires_safety_checker=False)  # fmt: skip
    circle = pipe.tokenizer("circle", add_special_tokens=False).input_ids
    start = pipe.text_encoder.get_input_embeddings().weight[circle[0]]
    assert (learned["zqxv"][0] - start).abs().max() > 0  # it moved from the init word's vector

    made = CliRunner().invoke(app, ["sample", "a zqxv shape", "--model", str(tiny_model), "--embedding",
                                    str(out / "zqxv.safetensors"), "--steps", "2", "--seed", "3", "--height", "64",
                                    "--width", "64", "--json", "--out", str(tmp_path / "s")])  # fmt: skip
    assert made.exit_code == 0, made.output
    ours = np.asarray(Image.open(json.loads(made.stdout)["path"])).astype(int)
    pipe.load_textual_inversion(str(out / "learned_embeds.safetensors"))
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe("a zqxv shape", height=64, width=64, num_inference_steps=2, guidance_scale=7.5, output_type="np",
                  generator=torch.Generator("cpu").manual_seed(3)).images[0]  # fmt: skip
    assert np.array_equal(ours, (theirs * 255).round().astype(int))


def test_resume_is_exact(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    settings = {**SETTINGS, "max_steps": 6, "checkpoint_every": 2}
    run(tiny_model, shapes, tmp_path / "a", **settings)

    class Crash(Exception):
        pass

    def crash(step: int, loss: Any) -> Any:
        if step == 3:
            raise Crash
        return loss

    with pytest.raises(Crash):
        run(tiny_model, shapes, tmp_path / "b", hook=crash, **settings)
    run(tiny_model, shapes, tmp_path / "b", resume="latest", **settings)
    a, b = (load_file(tmp_path / x / "learned_embeds.safetensors")["zqxv"] for x in "ab")
    assert torch.equal(a, b)


def test_sdxl_trains_both_encoders(sdxl_tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    run(sdxl_tiny_model, shapes, tmp_path / "o", **{**SETTINGS, "max_steps": 2})
    pair = load_file(tmp_path / "o" / "zqxv.safetensors")
    assert set(pair) == {"clip_l", "clip_g"} and pair["clip_l"].shape[0] == pair["clip_g"].shape[0] == 2


def test_what_does_not_go_with_it(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    from sdlite.errors import DataError

    with pytest.raises(DataError, match="no caption holds 'zqxv'"):
        run(tiny_model, shapes, tmp_path / "x", **{**SETTINGS, "instance_prompt": None})
    for settings, words in (({"embedding": "zqxv"}, "needs --init-token"),
                            ({**SETTINGS, "lora": True}, "does not go with --embedding"),
                            ({"init_token": "dog"}, "is for --embedding")):  # fmt: skip
        with pytest.raises(UsageError, match=words):
            run(tiny_model, shapes, tmp_path / "x", **settings)
