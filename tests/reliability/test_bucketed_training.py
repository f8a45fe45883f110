"""Aspect-ratio buckets keep every guarantee, and a global batch gives the same model however it is split.

Data: 12 captioned images, 4 landscape (96x64), 4 portrait (64x96), 4 square; resolution 64 with
16-pixel bucket steps gives the buckets 80x48, 48x80 and 64x64. At a global batch of 2 an epoch is
6 steps, so 8 steps cross an epoch boundary.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from faults import SPLIT_IDS, SPLITS, events, run, step_losses
from helpers.imaging import mixed_aspect_dataset
from safetensors.torch import load_file

# Module-scoped fixtures below are made once: `make test` keeps this file on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("bucketed_training")

STEPS = 8
UNET = Path("unet") / "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mixed_aspect_dataset(tmp_path_factory.mktemp("mixed"), [(96, 64)] * 4 + [(64, 96)] * 4 + [(64, 64)] * 4, 96)


def args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--data", str(data), "--out", str(out), "--max-steps", str(STEPS),
            "--lr", "1e-3", "--bucket-step", "16", "--caption-dropout", "0.2", "--checkpoint-every", "2",
            "--json-events", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def reference(tiny_model: Path, mixed: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, Path]:
    """The uninterrupted single-process run at batch 2, and the latent cache it filled."""
    out = tmp_path_factory.mktemp("reference") / "out"
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:  # module fixtures run before the per-test cache isolation
        patch.setenv("SDLITE_CACHE_DIR", str(cache))
        result = run(*args(tiny_model, mixed, out, "--batch-size", "2"))
    assert result.returncode == 0, result.stderr[-2000:]
    return out, events(result.stdout), cache


def relative_difference(a: Path, b: Path, base: Path) -> float:
    """||a - b|| / ||b - base|| over the UNet: float noise is ~1e-4 of an update, another trajectory ~1."""
    wa, wb, w0 = load_file(a / UNET), load_file(b / UNET), load_file(base / UNET)
    diff = sum(float(((wa[k] - wb[k]).double() ** 2).sum()) for k in wa) ** 0.5
    update = sum(float(((wb[k] - w0[k]).double() ** 2).sum()) for k in wb) ** 0.5
    assert update > 0
    return diff / update


def test_plan_lists_the_buckets_and_the_cache_holds_non_square_latents(
    reference: tuple[Path, list, Path], tmp_path: Path
) -> None:
    _, log, cache = reference
    plan = log[0]
    assert plan["event"] == "plan"
    assert plan["buckets"] == {"48x80": 4, "64x64": 4, "80x48": 4}
    assert plan["bucket_note"].startswith("on: the images' aspect ratios differ")
    assert plan["steps_per_epoch"] == 6
    shapes = {tuple(load_file(p)["mean"].shape) for p in (cache / "train-cache" / "latents").glob("*.safetensors")}
    assert {(4, 6, 10), (4, 10, 6), (4, 8, 8)} <= shapes  # 80x48, 48x80 and 64x64 through an 8x VAE


def test_sigkill_mid_epoch_then_resume_ends_on_the_same_weights(
    tiny_model: Path, mixed: Path, reference: tuple[Path, list, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    killed = run(*args(tiny_model, mixed, out, "--batch-size", "2"), fault=("kill-after-step", 5))
    assert killed.returncode == -signal.SIGKILL
    resumed = run(*args(tiny_model, mixed, out, "--batch-size", "2", "--resume", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [e["step"] for e in events(resumed.stdout) if e["event"] == "resume"] == [4]
    a, b = load_file(out / UNET), load_file(reference[0] / UNET)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert (out / "loss.csv").read_text() == (reference[0] / "loss.csv").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("split", SPLITS, ids=SPLIT_IDS)
def test_the_same_global_batch_split_differently_ends_on_the_same_weights(
    tiny_model: Path, mixed: Path, reference: tuple[Path, list, Path], tmp_path: Path, split: tuple[str, ...]
) -> None:
    out = tmp_path / "out"
    result = run(*args(tiny_model, mixed, out, *split))
    assert result.returncode == 0, result.stderr[-2000:]
    log = events(result.stdout)
    assert log[0]["effective_batch"] == 2 and log[0]["buckets"] == reference[1][0]["buckets"]
    assert step_losses(log) == pytest.approx(step_losses(reference[1]), rel=1e-4)
    assert relative_difference(out, reference[0], tiny_model) < 1e-3
