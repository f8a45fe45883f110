"""What only a GPU can show: CUDA placement of resumed state, fp16's gradient scaler with the finite-loss
guard, the memory limit and MFU on a real device, sampling parity on CUDA. Skipped without CUDA (CI has
none); `bash benchmarks/gpu_run.sh --tests` runs them on a lent GPU machine."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.training import losses, run, unet_weights

from sdlite.errors import Interrupted
from sdlite.testing import make_shapes_dataset

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n=8)


def distance(a: dict[str, Any], b: dict[str, Any]) -> float:
    return sum(float((a[k].double() - b[k].double()).square().sum()) for k in a) ** 0.5


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_resume_with_ema_and_channels_last_on_cuda(tiny_model: Path, shapes: Path, tmp_path: Path,
                                                   precision: str) -> None:  # fmt: skip
    """Optimizer moments and EMA weights come back on the GPU in their parameters' layout (EMA came back on
    the CPU once, which only a GPU run shows), and the resumed run ends where an uninterrupted one does
    (up to CUDA's non-deterministic kernels)."""
    settings = {"max_steps": 6, "ema": True, "ema_decay": 0.9, "lr": 1e-3, "channels_last": True,
                "mixed_precision": precision}  # fmt: skip
    straight, _ = run(tiny_model, shapes, tmp_path / "a", **settings)

    def ctrl_c(step: int, loss: Any) -> Any:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    with pytest.raises(Interrupted, match="interrupted at step 3"):
        run(tiny_model, shapes, tmp_path / "b", hook=ctrl_c, **settings)
    resumed, events = run(tiny_model, shapes, tmp_path / "b", resume="latest", **settings)
    assert [e["step"] for e in events if e["event"] == "step"] == [4, 5, 6]
    start, a, b = unet_weights(tiny_model), unet_weights(straight.out), unet_weights(resumed.out)
    assert distance(a, b) < 0.01 * distance(a, start)


def test_fp16_scaler_and_the_finite_guard_skip_a_nan_step(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    def nan_at_step_2(step: int, loss: Any) -> Any:
        return loss * float("nan") if step == 1 else loss

    result, events = run(tiny_model, shapes, tmp_path / "o", mixed_precision="fp16", hook=nan_at_step_2)
    assert result.bad_steps == 1 and np.isfinite(losses(events)[0]) and np.isnan(losses(events)[1])
    assert all(bool(v.isfinite().all()) for v in unet_weights(result.out).values())


@pytest.mark.parametrize("cache", [True, False])
def test_training_draws_inputs_from_the_cache_and_from_the_vae(tiny_model: Path, shapes: Path, tmp_path: Path,
                                                               cache: bool) -> None:  # fmt: skip
    """Both input paths onto the GPU: cached latents come from pinned CPU memory, the VAE's already live on
    the GPU (pinning them once crashed every run without the cache, e.g. with --random-flip)."""
    result, events = run(tiny_model, shapes, tmp_path / "o", cache=cache, max_steps=2, mixed_precision="bf16")
    assert events[0]["cache"] is cache and result.steps == 2 and all(np.isfinite(losses(events)))


def test_plan_names_the_gpu_memory_and_reports_mfu_on_known_devices(tiny_model: Path, shapes: Path,
                                                                     tmp_path: Path) -> None:  # fmt: skip
    from sdlite.training.flops import peak_flops

    result, events = run(tiny_model, shapes, tmp_path / "o", mixed_precision="bf16", max_steps=3)
    plan = events[0]
    assert plan["memory_limit"].endswith(f"(free memory on {torch.cuda.get_device_name()})")
    assert plan["largest_batch"] > 1 and plan["memory_gib"] > 0
    if peak_flops(torch.cuda.get_device_name(), "bf16"):
        assert all(e["mfu"] > 0 for e in events if e["event"] == "step") and result.mfu > 0
    assert "TF32" in next(e for e in events if e["event"] == "speedups")["applied"] or (
        torch.cuda.get_device_capability() < (8, 0)
    )


def test_sampling_on_cuda_matches_plain_diffusers(tiny_model: Path, tmp_path: Path) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from PIL import Image

    from sdlite.sampling.config import Generation, SampleConfig
    from sdlite.sampling.run import sample

    gen = Generation("a red circle on a blue background", seed=3, steps=10, guidance=5.0, num_images=2)
    run_ = sample(SampleConfig(model=str(tiny_model), generations=(gen,), out=tmp_path / "s", device="cuda",
                               dtype="fp32", batch_size=2))  # fmt: skip
    ours = np.stack([np.asarray(Image.open(image.path).convert("RGB")) for image in run_.images])
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe = pipe.to("cuda")
    pipe.set_progress_bar_config(disable=True)
    reference = pipe([gen.prompt] * 2, num_inference_steps=10, guidance_scale=5.0, output_type="np",
                     generator=[torch.Generator("cpu").manual_seed(s) for s in (3, 4)]).images  # fmt: skip
    assert np.abs(ours.astype(int) - (reference * 255).round().astype(int)).max() <= 2
