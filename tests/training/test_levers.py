"""Training speed levers change speed, never results: channels_last trains the same weights and resumes exactly."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from helpers.training import losses, max_diff, run, unet_weights

from sdlite.errors import Interrupted
from sdlite.testing import make_shapes_dataset

# Module-scoped fixtures below are made once: `make test` keeps this file on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("levers")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n=8)


SETTINGS = {"max_steps": 6, "ema": True, "ema_decay": 0.9, "snr_gamma": 5.0, "lr": 1e-2}


def test_channels_last_trains_the_same_weights(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    plain, plain_events = run(tiny_model, shapes, tmp_path / "plain", **SETTINGS)
    nhwc, events = run(tiny_model, shapes, tmp_path / "nhwc", channels_last=True, **SETTINGS)
    speedups = next(e for e in events if e["event"] == "speedups")["applied"]
    assert (
        "channels_last" in speedups
        and "channels_last" not in next(e for e in plain_events if e["event"] == "speedups")["applied"]
    )
    weights = unet_weights(nhwc.out)
    assert all(t.is_contiguous() for t in weights.values())  # what other tools load
    # The same arithmetic in another memory order: equal up to float rounding (which Adam's normalised steps
    # magnify on weights with near-zero gradients), far below what training changed.
    start, trained = unet_weights(tiny_model), unet_weights(plain.out)
    assert distance(trained, weights) < 0.01 * distance(trained, start)
    assert losses(events) == pytest.approx(losses(plain_events), rel=1e-3)


def distance(a: dict[str, Any], b: dict[str, Any]) -> float:
    return sum(float((a[k].double() - b[k].double()).square().sum()) for k in a) ** 0.5


def test_channels_last_resumes_exactly(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    """Checkpoints hold contiguous optimizer moments and EMA weights; a channels_last run reloads them in its
    own layout (fused AdamW walks a parameter and its moments as flat memory: mismatched layouts would mix
    elements silently)."""
    settings = {**SETTINGS, "channels_last": True}
    run(tiny_model, shapes, tmp_path / "a", **settings)

    sent: list[int] = []

    def ctrl_c_at_step_3(step: int, loss: Any) -> Any:
        if step == 2 and not sent:  # once: the hook runs for each micro-batch, and a second Ctrl-C stops at once
            sent.append(step)
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    with pytest.raises(Interrupted, match="interrupted at step 3"):
        run(tiny_model, shapes, tmp_path / "b", hook=ctrl_c_at_step_3, **settings)
    run(tiny_model, shapes, tmp_path / "b", resume="latest", **settings)
    assert max_diff(unet_weights(tmp_path / "a"), unet_weights(tmp_path / "b")) == 0.0
    assert (tmp_path / "a" / "loss.csv").read_text() == (tmp_path / "b" / "loss.csv").read_text()


def test_cache_entries_are_read_when_needed_and_damaged_ones_are_recomputed(
    tiny_model: Path, shapes: Path, tmp_path: Path
) -> None:
    """The latent/text cache stays on disk (memory does not grow with the dataset). Entries damaged between
    runs are computed again at the start; one damaged during a run is named when a batch needs it (exit 3)
    and removed, so the next run computes it."""
    from sdlite.errors import DataError
    from sdlite.filecache import cache_dir

    run(tiny_model, shapes, tmp_path / "a", max_steps=2)
    entries = sorted((cache_dir() / "train-cache").rglob("*.safetensors"))
    assert len(entries) >= 9  # 8 latents, the captions' and the empty caption's embeddings

    def damage(*_: Any) -> None:
        for entry in entries:
            entry.write_bytes(entry.read_bytes()[:-8])  # truncated

    damage()
    _, events = run(tiny_model, shapes, tmp_path / "b", max_steps=2)
    cache = next(e for e in events if e["event"] == "cache")
    assert (cache["latents_computed"], cache["latents_reused"]) == (8, 0) and cache["texts_reused"] == 0

    def damage_at_first_step(step: int, loss: Any) -> Any:
        if step == 0:
            damage()
        return loss

    with pytest.raises(DataError, match=r"cache entry .* cannot be read .*removed"):
        run(tiny_model, shapes, tmp_path / "c", max_steps=2, hook=damage_at_first_step)
    assert not all(e.exists() for e in entries)
    run(tiny_model, shapes, tmp_path / "d", max_steps=2)


def test_only_cpu_tensors_are_pinned_on_the_way_to_a_gpu() -> None:
    """Pinning applies to CPU memory only: the VAE's latents (no cache) are already on the GPU, and pinning
    them raised at the first step of every GPU run without the cache. CI has no GPU, so the tensors are
    stand-ins that record what was asked of them."""
    from unittest import mock

    import torch

    from sdlite.training.unet import to_device

    on_gpu = mock.MagicMock(device=torch.device("cuda", 0))
    to_device(on_gpu, "cuda", torch.float16)
    on_gpu.pin_memory.assert_not_called()
    on_gpu.to.assert_called_once_with("cuda", dtype=torch.float16)
    on_cpu = mock.MagicMock(device=torch.device("cpu"))
    to_device(on_cpu, "cuda", torch.float16)
    on_cpu.pin_memory.return_value.to.assert_called_once_with("cuda", non_blocking=True)
    on_cpu.pin_memory.return_value.to.return_value.to.assert_called_once_with(dtype=torch.float16)
