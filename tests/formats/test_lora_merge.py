"""`sdlite lora merge`: the merged weights equal diffusers' own fuse_lora at the same scale; several LoRAs merge
at their own scales; the single file it writes loads and samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from sdlite.cli.app import app


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def loras(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    import diffusers
    from helpers.references import random_lora_of_every_target

    folder = tmp_path_factory.mktemp("loras")
    paths = []
    for n in range(2):
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None)
        torch.manual_seed(n)
        state = {k: v * 0.3 for k, v in random_lora_of_every_target(pipe, alpha=2).items()}
        save_file(state, folder / f"lora{n}.safetensors")
        paths.append(folder / f"lora{n}.safetensors")
    return paths


def fused(model: Path, loras: list[Path], scales: list[float]) -> Any:
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    names = [f"a{i}" for i in range(len(loras))]
    for lora, name in zip(loras, names, strict=True):
        pipe.load_lora_weights(str(lora), adapter_name=name)
    if len(loras) == 1:
        pipe.fuse_lora(lora_scale=scales[0])
    else:
        pipe.set_adapters(names, adapter_weights=scales)
        pipe.fuse_lora(adapter_names=names)
    pipe.unload_lora_weights()
    return pipe


def biggest_difference(folder: Path, pipe: Any) -> float:
    worst = 0.0
    for component in ("unet", "text_encoder"):
        ours = load_file(folder / component / next(p.name for p in (folder / component).glob("*.safetensors")))
        theirs = getattr(pipe, component).state_dict()
        assert set(ours) == set(theirs)
        worst = max(worst, max((ours[k] - theirs[k]).abs().max().item() for k in ours))
    return worst


def test_a_merge_equals_diffusers_fuse_lora(tiny_model: Path, loras: list[Path], tmp_path: Path) -> None:
    result = invoke("lora", "merge", str(tiny_model), str(loras[0]), "--scales", "0.7", "--out", str(tmp_path / "m"))
    assert result.exit_code == 0, result.output
    assert biggest_difference(tmp_path / "m", fused(tiny_model, loras[:1], [0.7])) <= 1e-6
    base = load_file(tiny_model / "unet" / "diffusion_pytorch_model.safetensors")
    merged = load_file(tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors")
    assert max((base[k] - merged[k]).abs().max().item() for k in base) > 1e-3  # the LoRA is in the weights


def test_several_loras_and_a_single_file(tiny_model: Path, loras: list[Path], tmp_path: Path) -> None:
    args = [str(tiny_model), *map(str, loras), "--scales", "0.5", "--scales", "1.2"]
    assert invoke("lora", "merge", *args, "--out", str(tmp_path / "m")).exit_code == 0
    assert biggest_difference(tmp_path / "m", fused(tiny_model, loras, [0.5, 1.2])) <= 1e-6
    single = tmp_path / "merged.safetensors"
    made = invoke("lora", "merge", *args, "--out", str(single))
    assert made.exit_code == 0, made.output
    sampled = invoke("sample", "a red circle", "--model", str(single), "--steps", "1", "--out", str(tmp_path / "s"))
    assert sampled.exit_code == 0, sampled.output
    again = invoke("lora", "merge", *args, "--out", str(single))
    assert again.exit_code == 2 and "--force" in again.stderr
    wrong = invoke("lora", "merge", str(tiny_model), str(loras[0]), "--scales", "1", "--scales", "2", "--out",
                   str(tmp_path / "x"))  # fmt: skip
    assert wrong.exit_code == 2 and "one per LoRA" in wrong.stderr
