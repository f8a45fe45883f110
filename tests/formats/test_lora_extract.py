"""`sdlite lora extract`: the LoRA taken from a model merged with a LoRA gives the merged model's pixels when
applied to the base (<= 2/255), keeps all the energy at the LoRA's rank, and refuses two unrelated models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from sdlite.cli.app import app


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def sample(model: Path, out: Path, *extra: str) -> np.ndarray:
    result = invoke("sample", "a red circle", "--model", str(model), "--steps", "3", "--seed", "1", "--height", "64",
                    "--width", "64", "--json", "--out", str(out), *extra)  # fmt: skip
    assert result.exit_code == 0, result.output
    return np.asarray(Image.open(json.loads(result.stdout)["path"])).astype(int)


def test_extracting_a_merge_recovers_its_effect(tiny_model: Path, tmp_path: Path) -> None:
    import diffusers
    from helpers.references import random_lora_of_every_target

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None)
    torch.manual_seed(3)
    save_file({k: v * 0.3 for k, v in random_lora_of_every_target(pipe, alpha=2).items()}, tmp_path / "l.safetensors")
    merged = tmp_path / "merged"
    assert (
        invoke("lora", "merge", str(tiny_model), str(tmp_path / "l.safetensors"), "--out", str(merged)).exit_code == 0
    )
    out = tmp_path / "extracted.safetensors"
    result = invoke("lora", "extract", str(merged), str(tiny_model), "--rank", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "kept 100.00% of the energy" in result.stderr
    with_lora = sample(tiny_model, tmp_path / "a", "--lora", str(out))
    target = sample(merged, tmp_path / "b")
    assert np.abs(with_lora - target).max() <= 2
    assert np.abs(sample(tiny_model, tmp_path / "c") - target).max() > 2  # the LoRA matters


def test_identical_or_unrelated_models_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    same = invoke(
        "lora", "extract", str(tiny_model), str(tiny_model), "--rank", "2", "--out", str(tmp_path / "x.safetensors")
    )
    assert same.exit_code == 2 and "same weights" in same.stderr
    other = tmp_path / "xl"
    assert invoke("init", str(other), "--preset", "sdxl-tiny").exit_code == 0
    unrelated = invoke(
        "lora", "extract", str(other), str(tiny_model), "--rank", "2", "--out", str(tmp_path / "y.safetensors")
    )
    assert unrelated.exit_code == 4
