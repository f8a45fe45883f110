"""Tiny offline models and hub caches, shared by tests, examples and benchmarks."""

from __future__ import annotations

import shutil
from pathlib import Path

from sdlite.config import InitConfig
from sdlite.presets import init_model


def make_tiny_model(out: Path, seed: int = 0) -> Path:
    """A complete diffusers folder with the `tiny` preset's random weights (a second to build)."""
    return init_model(InitConfig(out=Path(out), preset="tiny", seed=seed, overwrite=True))


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
