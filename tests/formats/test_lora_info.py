"""`sdlite info` on a LoRA (issue 23): its layout, family, rank and alpha, and which tools load it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from sdlite.cli.app import app
from tests.helpers.training import run

runner = CliRunner()


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def trained(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lora")
    from sdlite.testing import make_shapes_dataset

    data = make_shapes_dataset(folder / "data", n=4)
    run(tiny_model, data, folder / "run", max_steps=1, lora=True, lora_rank=4, output_name="shapes")
    return folder / "run"


def test_the_training_folder_says_its_file_is_for_diffusers_and_names_the_ui_copy(trained: Path) -> None:
    result = invoke("info", str(trained), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["layout"], info["components"], info["ranks"], info["alpha"]) == ("diffusers", ["unet"], [4], [4.0])
    assert {t["tool"]: t["loads"] for t in info["tools"]} == {
        "A1111 / Forge": False, "ComfyUI": False, "diffusers": True, "sdlite": True}  # fmt: skip
    assert info["ui_copies"] == ["shapes.safetensors"]
    text = invoke("info", str(trained)).stdout
    assert "UI copy    shapes.safetensors (kohya layout, beside it)" in text


def test_the_ui_copy_loads_everywhere_with_its_trained_alpha(trained: Path) -> None:
    info = json.loads(invoke("info", str(trained / "shapes.safetensors"), "--json").stdout)
    assert info["layout"] == "kohya" and info["family"].startswith("SD v1")
    assert info["alpha"] == [4.0] and all(t["loads"] for t in info["tools"])


@pytest.mark.parametrize(
    ("keys", "family"),
    [({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768)}, "SD v1"),
     ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 1024)}, "SD 2.x"),
     ({"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 1280)}, "SDXL")],
)  # fmt: skip
def test_the_family_is_read_from_the_shapes(keys: dict[str, tuple[int, int]], family: str, tmp_path: Path) -> None:
    tensors = {}
    for key, shape in keys.items():
        base = key.removesuffix(".lora_down.weight")
        tensors |= {key: torch.zeros(shape), f"{base}.lora_up.weight": torch.zeros(shape[::-1]),
                    f"{base}.alpha": torch.tensor(2.0)}  # fmt: skip
    save_file(tensors, tmp_path / "l.safetensors")
    info = json.loads(invoke("info", str(tmp_path / "l.safetensors"), "--json").stdout)
    assert info["family"] == family and info["alpha"] == [2.0]
