"""Training SD 2.x and SDXL: a v model trains as v and stays one, SDXL's cache changes nothing but speed, and
`--dry-run` plans each family (memory, TFLOP per image, what SDXL is told of each image)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.training import losses, run

from sdlite.models.loading import resolve_model
from sdlite.testing import make_shapes_dataset
from sdlite.training.config import TrainConfig
from sdlite.training.plan import dry_run


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n=4)


def test_sd2_v_model_trains_with_the_v_target_and_stays_a_v_model(
    sd2_tiny_model: Path, shapes: Path, tmp_path: Path
) -> None:
    import diffusers

    result, events = run(sd2_tiny_model, shapes, tmp_path / "out", max_steps=2, validation_prompts=("a red circle",))
    assert all(loss == loss for loss in losses(events))
    trained = resolve_model(str(result.out))
    assert trained.family.key == "sd2" and trained.prediction() == ("v_prediction", "scheduler config")
    assert (result.out / "validation" / "step-000002.png").is_file()
    # the loss target was the velocity: the same draw against the noise gives another loss
    _, as_epsilon = run(sd2_tiny_model, shapes, tmp_path / "eps", max_steps=1, prediction_type="epsilon")
    assert losses(as_epsilon)[0] != pytest.approx(losses(events)[0], rel=1e-3)
    assert diffusers.StableDiffusionPipeline.from_pretrained(result.out).scheduler.config.prediction_type == (
        "v_prediction"
    )


def test_sdxl_loss_is_the_same_with_and_without_the_cache(
    sdxl_tiny_model: Path, shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SDLITE_CACHE_DIR", str(tmp_path / "cache"))  # this test's entries alone
    _, cached = run(sdxl_tiny_model, shapes, tmp_path / "a", max_steps=2, cache=True)
    _, fresh = run(sdxl_tiny_model, shapes, tmp_path / "b", max_steps=2, cache=False)
    assert losses(cached) == pytest.approx(losses(fresh), rel=1e-5)
    assert next(e for e in cached if e["event"] == "cache")["texts_computed"] > 0
    from safetensors.torch import load_file

    texts = [load_file(p) for p in (Path(os.environ["SDLITE_CACHE_DIR"]) / "train-cache" / "text").glob("*")]
    # both encoders' penultimate states side by side (32 + 64 wide), and the second one's pooled projection
    assert texts and all(t["embedding"].shape == (77, 96) and t["pooled"].shape == (64,) for t in texts)


def test_dry_run_plans_sdxl_with_memory_flops_and_micro_conditioning(sdxl_tiny_model: Path, shapes: Path) -> None:
    config = TrainConfig(model=str(sdxl_tiny_model), data=shapes, out=Path("unused"), max_steps=1,
                         train_text_encoder=True, lora=True)  # fmt: skip
    plan = dry_run(config, 1)
    assert plan.trains == ("unet lora", "text_encoder lora", "text_encoder_2 lora")
    assert plan.memory_gib and plan.memory_gib > 0 and plan.tflops_per_image and plan.tflops_per_image > 0
    assert plan.micro_conditioning["original_sizes"] == {"64x64": 4}


def test_sdxl_base_at_1024_costs_what_its_architecture_does() -> None:
    """The full-size SDXL UNet (2.57B parameters) on the meta device: 6.76 TFLOP per forward at 128x128 latents,
    8.5x SD v1.5's 0.8 at 64x64 (torch's own FLOP counter); a training step counts forward + backward (3x) and
    both text encoders' forwards."""
    from sdlite.models.presets import PRESETS
    from sdlite.training.flops import train_flops_per_image

    xl = train_flops_per_image(PRESETS["sdxl"], 1024, 1024, False)
    sd15 = train_flops_per_image(PRESETS["sd15"], 512, 512, False)
    assert xl == pytest.approx(20.39e12, rel=0.01)
    assert 8 < xl / sd15 < 9


def test_prediction_type_takes_modelspecs_v_and_diffusers_v_prediction(
    tiny_model: Path, shapes: Path, tmp_path: Path
) -> None:
    import json

    for name in ("v", "v_prediction"):
        result, _ = run(tiny_model, shapes, tmp_path / name, max_steps=1, prediction_type=name)
        config = json.loads((result.out / "scheduler" / "scheduler_config.json").read_text())
        assert config["prediction_type"] == "v_prediction"


def test_lora_training_also_writes_the_kohya_file_uis_load_named_for_the_run(
    tiny_model: Path, shapes: Path, tmp_path: Path
) -> None:
    """OUT/NAME.safetensors (and each checkpoint's): kohya names, `.alpha` = the trained alpha for every module,
    ModelSpec metadata; sampling with it gives the diffusers file's pixels."""
    import numpy as np
    from PIL import Image
    from safetensors import safe_open

    from sdlite.sampling.config import Generation, LoraChoice, SampleConfig
    from sdlite.sampling.run import sample

    result, _ = run(tiny_model, shapes, tmp_path / "style", max_steps=2, lora=True, lora_rank=4, lora_alpha=16,
                    train_text_encoder=True, checkpoint_every=1, output_name="my-style")  # fmt: skip
    kohya = result.out / "my-style.safetensors"
    assert (result.out / "checkpoints" / "step-000001" / "my-style.safetensors").is_file()
    with safe_open(kohya, "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
        alphas = {float(f.get_tensor(k)) for k in keys if k.endswith(".alpha")}
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys) and alphas == {16.0}
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora" and meta["ss_network_dim"] == "4"
    gen = Generation("a red circle", seed=3, steps=3)

    def made_with(name: str, source: str) -> np.ndarray:
        config = SampleConfig(
            model=str(tiny_model), generations=(gen,), out=tmp_path / name, loras=(LoraChoice(source),)
        )
        return np.asarray(Image.open(sample(config).images[0].path))

    pixels = [made_with("d", str(result.out)), made_with("k", str(kohya))]
    assert np.abs(pixels[0].astype(int) - pixels[1].astype(int)).max() <= 1
    default, _ = run(tiny_model, shapes, tmp_path / "plain-name", max_steps=1, lora=True)
    assert (default.out / "plain-name.safetensors").is_file()


def test_output_name_without_lora_is_a_usage_error(tiny_model: Path, shapes: Path) -> None:
    from sdlite.errors import UsageError

    with pytest.raises(UsageError, match="--output-name names the A1111/ComfyUI copy of a LoRA: it needs --lora"):
        TrainConfig(model=str(tiny_model), data=shapes, out=Path("unused"), max_steps=1, output_name="x")
