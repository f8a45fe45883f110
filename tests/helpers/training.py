"""Helpers for tests that train: a short run of the UNet trainer and ways to read its results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from sdlite.training.config import TrainConfig
from sdlite.training.unet import train


def run(tiny_model: Path, data: Path, out: Path, hook: Any = None, **settings: Any) -> tuple[Any, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    options = {"max_steps": 4, "batch_size": 2, "lr": 1e-3, **settings}
    result = train(
        TrainConfig(model=str(tiny_model), data=data, out=out, **options), on_event=events.append, loss_hook=hook
    )
    return result, events


def losses(events: list[dict[str, Any]]) -> list[float]:
    return [e["loss"] for e in events if e["event"] == "step"]


def unet_weights(folder: Path) -> dict[str, Any]:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def max_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)
