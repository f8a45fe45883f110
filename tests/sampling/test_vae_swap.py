"""`--vae`: another VAE decodes (and encodes) in place of the model's: the pixels of plain diffusers given that VAE,
from a diffusers folder or a single file with original or diffusers keys; recorded as A1111's VAE and VAE hash and
replayed; a VAE that does not fit the model is exit 4."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdlite.cli.app import app
from sdlite.filecache import sha256_uncached
from sdlite.formats.original_keys import vae_to_original
from sdlite.sampling.config import Generation, SampleConfig
from sdlite.sampling.run import sample
from sdlite.sampling.sources import SampleOverrides, build_sample_config

STEPS = 2


@pytest.fixture(scope="module")
def other_vae(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VAE of the same shapes as the tiny model's, with weights of its own, as a diffusers folder."""
    from diffusers import AutoencoderKL

    config = json.loads((tiny_model / "vae" / "config.json").read_text())
    torch.manual_seed(99)
    vae = AutoencoderKL(**{k: v for k, v in config.items() if not k.startswith("_")})
    folder = tmp_path_factory.mktemp("vae") / "other-vae"
    vae.save_pretrained(folder)
    return folder


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def made(model: Path, out: Path, vae: str | None) -> Path:
    gen = Generation("a red circle", steps=STEPS, seed=4, height=64, width=64)
    return sample(SampleConfig(model=str(model), generations=(gen,), out=out, vae=vae)).images[0].path


def test_each_vae_layout_gives_diffusers_pixels_with_that_vae(
    tiny_model: Path, other_vae: Path, tmp_path: Path
) -> None:
    import diffusers

    vae = diffusers.AutoencoderKL.from_pretrained(other_vae)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_model, vae=vae, safety_checker=None,
                                                             requires_safety_checker=False)  # fmt: skip
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe("a red circle", height=64, width=64, num_inference_steps=STEPS, output_type="np",
                  generator=torch.Generator("cpu").manual_seed(4)).images[0]  # fmt: skip
    theirs = (theirs * 255).round().astype(np.int16)
    state = vae.state_dict()
    original = tmp_path / "other.safetensors"
    save_file({f"first_stage_model.{k}": v.contiguous() for k, v in vae_to_original(state).items()}, original)
    diffusers_keys = tmp_path / "other-diffusers.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, diffusers_keys)
    for number, source in enumerate((other_vae, original, diffusers_keys)):
        assert np.array_equal(pixels(made(tiny_model, tmp_path / f"out-{number}", str(source))), theirs), source
    own = pixels(made(tiny_model, tmp_path / "own", None))
    assert np.abs(own - theirs).max() > 0


def test_recorded_as_a1111s_keys_and_replayed(tiny_model: Path, other_vae: Path, tmp_path: Path) -> None:
    first = made(tiny_model, tmp_path / "a", str(other_vae))
    digest = sha256_uncached(other_vae / "diffusion_pytorch_model.safetensors")
    assert f"VAE hash: {digest[:10]}, VAE: other-vae" in Image.open(first).text["parameters"]
    config = build_sample_config(SampleOverrides(from_image=first, out=tmp_path / "b"))
    assert config.vae == str(other_vae.resolve())
    again = sample(config).images[0].path
    assert np.array_equal(pixels(again), pixels(first))
    (other_vae / "diffusion_pytorch_model.safetensors").rename(tmp_path / "moved.safetensors")
    try:
        with pytest.raises(Exception, match="pass that VAE with --vae"):
            build_sample_config(SampleOverrides(from_image=first, out=tmp_path / "c"))
    finally:
        (tmp_path / "moved.safetensors").rename(other_vae / "diffusion_pytorch_model.safetensors")


def test_a_vae_that_does_not_fit_is_exit_4(tiny_model: Path, other_vae: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    def run(vae: Path) -> object:
        return CliRunner().invoke(app, ["sample", "a", "--model", str(tiny_model), "--steps", "1", "--height", "64",
                                        "--width", "64", "--vae", str(vae), "--out", str(tmp_path / "out")])  # fmt: skip

    xl = tmp_path / "xl-vae"
    xl.mkdir()
    config = json.loads((other_vae / "config.json").read_text())
    (xl / "config.json").write_text(json.dumps({**config, "scaling_factor": 0.13025}))
    (xl / "diffusion_pytorch_model.safetensors").write_bytes((other_vae / "diffusion_pytorch_model.safetensors")
                                                            .read_bytes())  # fmt: skip
    wrong_family = run(xl)
    assert wrong_family.exit_code == 4 and "another family's VAE" in wrong_family.stderr
    wide = tmp_path / "wide.safetensors"
    save_file({"encoder.conv_out.weight": torch.zeros(32, 8, 3, 3)}, wide)
    wider = run(wide)
    assert wider.exit_code == 4 and "16-channel latents" in wider.stderr
    missing = run(tmp_path / "nope.safetensors")
    assert missing.exit_code == 4 and "no such file" in missing.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.png"))
