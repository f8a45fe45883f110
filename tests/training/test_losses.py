"""kohya's loss options: pseudo-Huber and smooth-L1 with their threshold schedules (formulas written out here),
input perturbation, and zero terminal SNR with the guidance rescale that samples such a model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.training import losses, max_diff, run, unet_weights

from sdlite.testing import make_shapes_dataset
from sdlite.training.losses import elementwise_loss, huber_threshold


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n=8)


def test_pseudo_huber_and_its_schedules_follow_the_formulas() -> None:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012)  # fmt: skip
    timesteps = torch.tensor([0, 500, 999])
    abar = scheduler.alphas_cumprod[timesteps].double()
    sigma = ((1 - abar) / abar).sqrt()
    snr = huber_threshold(scheduler, timesteps, 0.1, "snr").flatten().double()
    assert torch.allclose(snr, (1 - 0.1) / (1 + sigma) ** 2 + 0.1, atol=1e-6)
    assert snr[0] > 0.8 and snr[2] < 0.11  # near 1 on clean latents, near c on noise
    exponential = huber_threshold(scheduler, timesteps, 0.1, "exponential").flatten().double()
    assert torch.allclose(exponential, torch.tensor([math.exp(math.log(0.1) * t / 1000) for t in (0, 500, 999)],
                                                    dtype=torch.double), atol=1e-6)  # fmt: skip
    assert torch.equal(huber_threshold(scheduler, timesteps, 0.3, "constant").flatten(), torch.full((3,), 0.3))

    p, t, c = torch.tensor([[0.5, -2.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor(0.2)
    diff = p - t
    assert torch.allclose(elementwise_loss(p, t, "huber", c), 2 * c * (torch.sqrt(diff**2 + c**2) - c))
    assert torch.allclose(elementwise_loss(p, t, "smooth-l1", c), 2 * (torch.sqrt(diff**2 + c**2) - c))
    assert torch.equal(elementwise_loss(p, t, "l2"), diff**2)


@pytest.mark.parametrize("loss", ["huber", "smooth-l1"])
def test_training_with_each_loss_learns(loss: str, tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    _, events = run(tiny_model, shapes, tmp_path / "o", max_steps=12, batch_size=4, loss=loss)
    curve = losses(events)
    assert sum(curve[-3:]) < sum(curve[:3])
    _, l2 = run(tiny_model, shapes, tmp_path / "l2", max_steps=1, batch_size=4)
    assert curve[0] != losses(l2)[0]  # same draws, another loss


def test_input_perturbation_changes_what_is_noised_not_the_target(
    tiny_model: Path, shapes: Path, tmp_path: Path
) -> None:
    run(tiny_model, shapes, tmp_path / "a", max_steps=2)
    run(tiny_model, shapes, tmp_path / "b", max_steps=2, input_perturbation=0.1)
    run(tiny_model, shapes, tmp_path / "c", max_steps=2, input_perturbation=0.1)
    assert max_diff(unet_weights(tmp_path / "a"), unet_weights(tmp_path / "b")) > 0
    assert max_diff(unet_weights(tmp_path / "b"), unet_weights(tmp_path / "c")) == 0.0  # seeded like every draw


def test_zero_terminal_snr_is_saved_and_sampled_with_guidance_rescale(
    tiny_model: Path, shapes: Path, tmp_path: Path
) -> None:
    import diffusers

    from sdlite.sampling.config import Generation, SampleConfig
    from sdlite.sampling.run import sample

    out = tmp_path / "o"
    run(tiny_model, shapes, out, max_steps=2, zero_terminal_snr=True, prediction_type="v")
    config = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert config["rescale_betas_zero_snr"] is True and config["timestep_spacing"] == "trailing"
    rescaled = diffusers.DDPMScheduler.from_config(config)
    assert float(rescaled.alphas_cumprod[-1]) < 1e-6  # the last timestep is pure noise

    gen = Generation("a red circle", steps=3, seed=2, height=64, width=64, guidance_rescale=0.7)
    ours = sample(SampleConfig(model=str(out), generations=(gen,), out=tmp_path / "s")).images[0]
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe("a red circle", height=64, width=64, num_inference_steps=3, guidance_scale=7.5, guidance_rescale=0.7,
                  generator=torch.Generator("cpu").manual_seed(2), output_type="np").images[0]  # fmt: skip
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(ours.path)), (theirs * 255).round().astype(np.uint8))
    assert "guidance_rescale" in json.loads(Image.open(ours.path).text["sdlite"])["settings"]
