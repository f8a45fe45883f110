"""SDXL trains with every guarantee SD v1 has, shown on a LoRA of the UNet and both text encoders (rank 4, alpha
16, latents cached): it resumes exactly after SIGKILL (4 steps, killed after step 3, resumed from the checkpoint of
step 2) and loads in plain diffusers at its trained strength; bucketed training tells the model each image's
original size and crop (in the plan and the cache) and gives the same weights however a global batch is split.

Data: 12 images, 4 landscape (128x80), 4 portrait (80x128), 4 square (64x64); resolution 96 with 32-pixel bucket
steps (sdxl-tiny's grid: 8x VAE x 4x UNet) gives the buckets 128x64, 64x128 and 96x96, the first two cropping 16
pixels off the long side of the image (8 from each end).
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
from faults import SPLIT_IDS, SPLITS, events, run, step_losses
from helpers.imaging import mixed_aspect_dataset
from PIL import Image
from safetensors.torch import load_file

pytestmark = pytest.mark.xdist_group("sdxl_training")

STEPS = 4
LORA = "pytorch_lora_weights.safetensors"
PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mixed_aspect_dataset(
        tmp_path_factory.mktemp("mixed"), [(128, 80)] * 4 + [(80, 128)] * 4 + [(64, 64)] * 4, 128
    )


def args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--data", str(data), "--out", str(out), "--max-steps", str(STEPS),
            "--lr", "1e-3", "--resolution", "96", "--bucket-step", "32", "--caption-dropout", "0.2",
            "--checkpoint-every", "2", "--json-events", *extra]  # fmt: skip


LORA_ARGS = ("--lora", "--lora-rank", "4", "--lora-alpha", "16", "--train-text-encoder", "--cache")


@pytest.fixture(scope="module")
def reference(sdxl_tiny_model: Path, mixed: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, Path]:
    """The uninterrupted single-process run at batch 2 (a LoRA of the UNet and both text encoders), and the latent
    cache it filled (a cache of its own: one that runs with other thread counts filled rounds differently)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:  # module fixtures run before the per-test cache isolation
        patch.setenv("SDLITE_CACHE_DIR", str(cache))
        result = run(*args(sdxl_tiny_model, mixed, out, *LORA_ARGS, "--batch-size", "2"))
    assert result.returncode == 0, result.stderr[-2000:]
    return out, events(result.stdout), cache


def test_plan_and_cache_record_each_images_original_size_and_crop(reference: tuple[Path, list, Path]) -> None:
    _, log, cache = reference
    plan = log[0]
    assert plan["buckets"] == {"128x64": 4, "64x128": 4, "96x96": 4}
    assert plan["micro_conditioning"]["original_sizes"] == {"128x80": 4, "64x64": 4, "80x128": 4}
    assert plan["trains"] == ["unet lora", "text_encoder lora", "text_encoder_2 lora"]
    entries = [load_file(p) for p in (cache / "train-cache" / "latents").glob("*.safetensors")]
    numbers = {tuple(e["micro_conditioning"].tolist()) for e in entries}
    # (original h, w, crop top, left, target h, w): 128x80 covers 128x64 with 16 rows to spare, cut 8 off each end
    assert numbers == {(80, 128, 8, 0, 64, 128), (128, 80, 0, 8, 128, 64), (64, 64, 0, 0, 96, 96)}


@pytest.mark.slow
def test_the_same_global_batch_split_over_two_processes_ends_on_the_same_weights(
    sdxl_tiny_model: Path, mixed: Path, reference: tuple[Path, list, Path], tmp_path: Path
) -> None:
    """Compared on the LoRA's up matrices, which start at zero: their norm is the whole update. The split over
    processes (DDP, each process slicing the batch's micro-conditioning) is SDXL's own; gradient accumulation is
    family-independent and split-tested on SD v1 (test_bucketed_training.py, test_kill_resume.py)."""
    out = tmp_path / "out"
    result = run(*args(sdxl_tiny_model, mixed, out, *LORA_ARGS, *SPLITS[SPLIT_IDS.index("processes")]))
    assert result.returncode == 0, result.stderr[-2000:]
    log = events(result.stdout)
    assert log[0]["effective_batch"] == 2
    assert step_losses(log) == pytest.approx(step_losses(reference[1]), rel=1e-4)
    wa, wb = load_file(out / LORA), load_file(reference[0] / LORA)
    up = [k for k in wb if ".up." in k or "lora_B" in k]
    assert any(k.startswith("text_encoder_2.") for k in up)
    diff = sum(float(((wa[k] - wb[k]).double() ** 2).sum()) for k in up) ** 0.5
    update = sum(float((wb[k].double() ** 2).sum()) for k in up) ** 0.5
    assert update > 0 and diff / update < 1e-3


def test_lora_of_both_text_encoders_resumes_exactly_after_sigkill(
    sdxl_tiny_model: Path,
    mixed: Path,
    reference: tuple[Path, list, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reference_out, _, cache = reference
    out = tmp_path / "out"
    monkeypatch.setenv("SDLITE_CACHE_DIR", str(cache))  # the latents the reference trained on
    killed = run(*args(sdxl_tiny_model, mixed, out, *LORA_ARGS, "--batch-size", "2"), fault=("kill-after-step", 3))
    assert killed.returncode == -signal.SIGKILL
    assert (out / "checkpoints" / "step-000002" / "training" / "text_encoder_2_adapter.safetensors").is_file()
    resumed = run(*args(sdxl_tiny_model, mixed, out, *LORA_ARGS, "--batch-size", "2", "--resume", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [e["step"] for e in events(resumed.stdout) if e["event"] == "resume"] == [2]
    a, b = load_file(out / LORA), load_file(reference_out / LORA)
    assert a.keys() == b.keys() and any(k.startswith("text_encoder_2.") for k in a)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert (out / "loss.csv").read_text() == (reference_out / "loss.csv").read_text()


def test_the_trained_lora_applies_in_plain_diffusers_at_its_trained_strength(
    sdxl_tiny_model: Path, reference: tuple[Path, list, Path], tmp_path: Path
) -> None:
    import diffusers
    import torch

    from sdlite.sampling.config import Generation, LoraChoice, SampleConfig
    from sdlite.sampling.run import sample

    reference_out = reference[0]
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(sdxl_tiny_model, add_watermarker=False)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.load_lora_weights(reference_out, adapter_name="trained")
    for component in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
        config = component.peft_config["trained"]
        assert (config.r, config.lora_alpha) == (4, 16)  # alpha / rank = 4, as trained
    theirs = pipe(PROMPT, num_inference_steps=4, guidance_scale=7.5, height=64, width=64, output_type="np",
                  generator=torch.Generator().manual_seed(5)).images[0]  # fmt: skip
    gen = Generation(PROMPT, seed=5, steps=4)
    config = SampleConfig(model=str(sdxl_tiny_model), generations=(gen,), out=tmp_path / "o",
                          loras=(LoraChoice(str(reference_out)),))  # fmt: skip
    ours = np.asarray(Image.open(sample(config).images[0].path)).astype(int)
    assert np.abs(ours - (theirs * 255).round()).max() <= 1
    plain = sample(SampleConfig(model=str(sdxl_tiny_model), generations=(gen,), out=tmp_path / "p")).images[0]
    assert np.abs(np.asarray(Image.open(plain.path)).astype(int) - ours).max() > 5  # the adapter did something
