"""`sdlite lora resize`: the same rank is lossless; a lower rank keeps the largest singular directions (the best
approximation, its error the dropped singular values) and reports the energy kept; the result loads in diffusers."""

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


def updates(path: Path) -> dict[str, torch.Tensor]:
    """Each kohya module's full update up @ down x alpha / rank (convs flattened)."""
    tensors = load_file(path)
    out = {}
    for key in (k for k in tensors if k.endswith(".lora_down.weight")):
        name = key.removesuffix(".lora_down.weight")
        down, up = tensors[key].double(), tensors[f"{name}.lora_up.weight"].double()
        rank = down.shape[0]
        alpha = float(tensors[f"{name}.alpha"])
        out[name] = up.reshape(up.shape[0], -1) @ down.reshape(rank, -1) * alpha / rank
    return out


@pytest.fixture(scope="module")
def kohya_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-8 kohya LoRA with two modules (one linear, one conv) and alpha 4."""
    g = torch.Generator().manual_seed(0)
    tensors = {
        "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.randn(8, 32, generator=g),
        "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.randn(32, 8, generator=g),
        "lora_unet_mid_block_attentions_0_proj_in.alpha": torch.tensor(4.0),
        "lora_unet_conv_in.lora_down.weight": torch.randn(8, 4, 3, 3, generator=g),
        "lora_unet_conv_in.lora_up.weight": torch.randn(32, 8, 1, 1, generator=g),
        "lora_unet_conv_in.alpha": torch.tensor(4.0),
    }
    path = tmp_path_factory.mktemp("lora") / "big.safetensors"
    save_file(tensors, path)
    return path


def test_the_same_rank_is_lossless(kohya_lora: Path, tmp_path: Path) -> None:
    result = invoke("lora", "resize", str(kohya_lora), "--rank", "8", "--out", str(tmp_path / "same.safetensors"))
    assert result.exit_code == 0, result.output
    assert "kept 100.00% of the energy" in result.stderr
    before, after = updates(kohya_lora), updates(tmp_path / "same.safetensors")
    assert all(torch.allclose(before[k], after[k], atol=1e-5) for k in before)


def test_a_lower_rank_is_the_best_approximation(kohya_lora: Path, tmp_path: Path) -> None:
    out = tmp_path / "small.safetensors"
    result = invoke("lora", "resize", str(kohya_lora), "--rank", "3", "--out", str(out))
    assert result.exit_code == 0, result.output
    tensors = load_file(out)
    assert {t.shape[0] for k, t in tensors.items() if k.endswith("lora_down.weight")} == {3}
    before, after = updates(kohya_lora), updates(out)
    energy = kept = 0.0
    for name in before:
        s = torch.linalg.svdvals(before[name])
        error = torch.linalg.matrix_norm(before[name] - after[name])  # Eckart-Young: the dropped values' norm
        assert torch.isclose(error, (s[3:] ** 2).sum().sqrt(), rtol=1e-6)
        energy, kept = energy + float((s**2).sum()), kept + float((s[:3] ** 2).sum())
    assert f"kept {kept / energy:.2%} of the energy" in result.stderr


def test_a_diffusers_lora_resizes_and_loads_in_diffusers(tiny_model: Path, tmp_path: Path) -> None:
    import diffusers
    from helpers.references import random_lora_of_every_target

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None)
    save_file(random_lora_of_every_target(pipe, alpha=2), tmp_path / "d.safetensors")
    out = tmp_path / "r.safetensors"
    assert invoke("lora", "resize", str(tmp_path / "d.safetensors"), "--rank", "1", "--out", str(out)).exit_code == 0
    fresh = diffusers.StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None)
    fresh.load_lora_weights(str(out))  # the kohya layout diffusers reads
    assert fresh.get_active_adapters()  # it adapted the model
    again = invoke("lora", "resize", str(tmp_path / "d.safetensors"), "--rank", "1", "--out", str(out))
    assert again.exit_code == 2 and "--force" in again.stderr
