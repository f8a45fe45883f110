"""`--fast` and `--low-memory`: each keeps seeds meaningful (same seed, same image), stays finite, and
computes the same picture as the default up to float rounding; the mode is recorded and replayed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.formats.png_record import read_record
from sdlite.models.loading import load_pipeline, resolve_model
from sdlite.sampling.config import Generation, SampleConfig
from sdlite.sampling.modes import apply_mode
from sdlite.sampling.run import sample

runner = CliRunner()


def make(model: Path, out: Path, mode: str, size: int = 64, **settings: object) -> list[np.ndarray]:
    gen = Generation("a red circle", seed=5, num_images=2, height=size, width=size, **settings)  # type: ignore[arg-type]
    run = sample(SampleConfig(model=str(model), generations=(gen,), out=out, batch_size=2, mode=mode))
    return [np.asarray(Image.open(r.path)).astype(int) for r in run.images]


@pytest.mark.parametrize(("mode", "size"), [("fast", 64), ("low-memory", 64), ("low-memory", 128)])
def test_same_seed_same_image_and_close_to_default(tiny_model: Path, tmp_path: Path, mode: str, size: int) -> None:
    settings = {"steps": 3, "scheduler": "ddim"}
    first = make(tiny_model, tmp_path / "a", mode, size, **settings)
    again = make(tiny_model, tmp_path / "b", mode, size, **settings)
    default = make(tiny_model, tmp_path / "c", "default", size, **settings)
    for x, y, z in zip(first, again, default, strict=True):
        assert np.array_equal(x, y)  # deterministic within the mode
        if size == 64:
            assert np.abs(x - z).max() <= 3  # the same computation as the default, up to summation order
        else:  # above the 64-pixel tile: tiles are decoded (and group-normed) apart, then blended
            assert 0 < np.abs(x - z).mean() <= 16, np.abs(x - z).mean()  # seeds 5 vs 6: ~47
    assert not np.array_equal(first[0], first[1])  # and the seeds still differ


def test_fast_defaults_to_dpm_solver_20_steps_and_yields_to_explicit_options(tiny_model: Path, tmp_path: Path) -> None:
    def run(*extra: str) -> dict[str, object]:
        result = runner.invoke(app, ["sample", "a red circle", "--model", str(tiny_model), "--seed", "1",
                                     "--out", str(tmp_path), "--json", *extra])  # fmt: skip
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    fast = run("--fast")
    assert (fast["scheduler"], fast["steps"]) == ("dpm++2m-karras", 20)
    assert read_record(Path(str(fast["path"])))["run"]["mode"] == "fast"
    assert (
        "fast: SDPA attention, channels_last"
        in runner.invoke(
            app, ["sample", "a", "--model", str(tiny_model), "--steps", "1", "--out", str(tmp_path), "--fast"]
        ).stderr
    )
    custom = run("--fast", "--steps", "4", "--scheduler", "euler")
    assert (custom["scheduler"], custom["steps"]) == ("euler", 4)
    replay = runner.invoke(app, ["sample", "--from-image", str(fast["path"]), "--out", str(tmp_path / "r"), "--json"])
    assert replay.exit_code == 0, replay.stderr
    again = json.loads(replay.stdout)
    assert read_record(Path(again["path"]))["run"]["mode"] == "fast"  # the mode is replayed with the image
    assert Image.open(again["path"]).tobytes() == Image.open(str(fast["path"])).tobytes()
    low = run("--low-memory")
    assert (low["scheduler"], low["steps"]) == ("ddim", 50)  # --low-memory leaves the sampler alone


def test_fast_and_low_memory_exclude_each_other(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sample", "a", "--model", "m", "--fast", "--low-memory"])
    assert result.exit_code == 2 and "cannot be combined" in result.stderr


def test_what_each_mode_switches_on(tiny_model: Path) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0, SlicedAttnProcessor

    model = resolve_model(str(tiny_model))
    fast = load_pipeline(model, "cpu", torch.float32)
    assert apply_mode(fast, "fast", "cpu", False) == ["SDPA attention", "channels_last"]
    assert all(isinstance(p, AttnProcessor2_0) for p in fast.unet.attn_processors.values())
    conv = fast.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    low = load_pipeline(model, "cpu", torch.float32)
    assert apply_mode(low, "low-memory", "cpu", False) == ["attention slicing", "VAE slicing", "VAE tiling"]
    assert all(isinstance(p, SlicedAttnProcessor) for p in low.unet.attn_processors.values())
    assert low.vae.use_slicing and low.vae.use_tiling


def test_fast_keeps_torch_compile_caches_in_sdlites_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from sdlite.sampling.modes import compile_cache

    monkeypatch.setenv("SDLITE_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    assert compile_cache() == tmp_path / "cache" / "torch-compile" / "inductor"
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "cache" / "torch-compile" / "triton")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache() == tmp_path / "mine"  # the user's own choice stays


def test_compile_caches_move_to_sdlites_cache_even_after_torch_set_its_default(tmp_path: Path) -> None:
    """Importing diffusers and accelerate makes torch set TORCHINDUCTOR_CACHE_DIR to its /tmp default; the
    caches still belong in sdlite's cache folder, where a second `--fast` command finds them."""
    script = (
        "import os, diffusers, accelerate, torch\n"
        "from diffusers import StableDiffusionPipeline\n"
        "from accelerate import Accelerator\n"
        "import torch._inductor.config\n"
        "from torch._inductor.runtime.cache_dir_utils import cache_dir\n"
        "from sdlite.sampling.modes import compile_cache\n"
        "before = os.environ.get('TORCHINDUCTOR_CACHE_DIR')\n"
        "print(before, compile_cache(), cache_dir(), sep='\\n')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env["SDLITE_CACHE_DIR"] = str(tmp_path / "cache")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    before, ours, torchs = done.stdout.split()[-3:]
    assert before != ours  # torch had set its default: the case this test is about
    assert ours == torchs == str(tmp_path / "cache" / "torch-compile" / "inductor")
