"""Tiny offline models and hub caches, shared by tests, examples and benchmarks."""

from __future__ import annotations

import shutil
from pathlib import Path

from sdlite.models.config import InitConfig
from sdlite.models.presets import init_model


def make_tiny_model(out: Path, seed: int = 0) -> Path:
    """A complete diffusers folder with the `tiny` preset's random weights (a second to build)."""
    return init_model(InitConfig(out=Path(out), preset="tiny", seed=seed, overwrite=True))


def make_sd1_tiny_model(out: Path, seed: int = 0) -> Path:
    """A diffusers folder with exactly SD v1's key layout at tiny widths (`sd1-tiny`), for format tests."""
    return init_model(InitConfig(out=Path(out), preset="sd1-tiny", seed=seed, overwrite=True))


def make_preset_model(out: Path, preset: str, seed: int = 0) -> Path:
    """A diffusers folder of any `init` preset with random weights (`sd2-tiny`, `sdxl-tiny`: a few seconds)."""
    return init_model(InitConfig(out=Path(out), preset=preset, seed=seed, overwrite=True))  # type: ignore[arg-type]


def make_shapes_dataset(out: Path, n: int = 8, size: int = 64, seed: int = 0) -> Path:
    """A small captioned imagefolder of colored circles and squares (metadata.jsonl), for training tests."""
    import json
    import random

    from PIL import Image, ImageDraw

    colors = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
    rng = random.Random(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        fg, bg = rng.sample(sorted(colors), 2)
        shape = rng.choice(["circle", "square"])
        image = Image.new("RGB", (size, size), colors[bg])
        shift = i % (size // 4)  # every image differs, even when colors and shape repeat
        box = (size // 4 - shift, size // 4, 3 * size // 4 - shift, 3 * size // 4)
        draw = ImageDraw.Draw(image)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colors[fg])
        image.save(out / f"{i:03d}.png")
        rows.append({"file_name": f"{i:03d}.png", "text": f"a {fg} {shape} on a {bg} background"})
    (out / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return out


def make_hub_cache(model: Path, cache: Path, repo_id: str, revision: str = "0" * 40) -> Path:
    """Lay `model` out as the Hugging Face cache would hold a downloaded `repo_id`; returns the snapshot.

    With HF_HUB_CACHE=cache and HF_HUB_OFFLINE=1, `from_pretrained(repo_id)` then loads it offline.
    """
    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    shutil.copytree(model, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
