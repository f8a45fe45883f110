"""Original-layout single files in (any SD v1-layout model, no config) and out (`sdlite export`)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from sdlite import filecache
from sdlite.cli.app import app
from sdlite.errors import ModelError
from sdlite.formats import single_file

# Module-scoped fixtures below are made once: `make test` keeps this file on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("single_file")

runner = CliRunner()
SIZE = ["--height", "64", "--width", "64"]


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args))


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def sample_one(model: Path, out: Path, *extra: str) -> Path:
    result = invoke("sample", "a red circle", "--model", str(model), "--out", str(out), "--seed", "7", "--steps", "4",
                    "--json", *extra)  # fmt: skip
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.stdout.splitlines()[-1])["path"])


def export(source: Path, out: Path, *extra: str) -> Path:
    result = invoke("export", str(source), str(out), *extra)
    assert result.exit_code == 0, result.output
    return out


def without_tokenizer(file: Path) -> Path:
    """The file without the tokenizer sdlite's export embeds in its metadata."""
    with safe_open(file, "pt") as opened:
        meta = {k: v for k, v in opened.metadata().items() if not k.startswith("sdlite.tokenizer")}
    save_file(load_file(file), file, metadata=meta)
    return file


@pytest.fixture(scope="module")
def independent_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SD v1-layout model built with plain diffusers/transformers (not an sdlite preset): 3 UNet levels of
    one layer, a 3-level VAE, a 3-layer CLIP text tower with heads of width 64, SD v1's other conventions."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdlite.models.tokenizer import build_tokenizer

    torch.manual_seed(11)
    tokenizer = build_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16, block_out_channels=(32, 64, 64), layers_per_block=1, cross_attention_dim=128,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8,
    )  # fmt: skip
    vae = AutoencoderKL(block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)  # fmt: skip
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
                                        num_hidden_layers=3, num_attention_heads=2, hidden_act="quick_gelu",
                                        max_position_embeddings=77))  # fmt: skip
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)  # fmt: skip
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    folder = tmp_path_factory.mktemp("independent") / "model"
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def folder_state(folder: Path, component: str) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in sorted((folder / component).glob("*.safetensors")):
        state.update(load_file(file))
    return state


def test_export_loads_in_diffusers_bit_equal_with_sd_v1_key_names(sd1_tiny_model: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    out = export(sd1_tiny_model, tmp_path / "model.safetensors")
    pipe = StableDiffusionPipeline.from_single_file(str(out), config=str(sd1_tiny_model), local_files_only=True)
    written = load_file(out)
    total = 0
    for name in ("unet", "vae", "text_encoder"):
        source, loaded = folder_state(sd1_tiny_model, name), getattr(pipe, name).state_dict()
        total += len(source)
        for key, tensor in source.items():
            assert torch.equal(loaded[key], tensor), (name, key)
    assert len(written) == total  # nothing extra, nothing dropped
    # Real SD v1 names that A1111/ComfyUI look up (upsamplers after attention, 1x1-conv VAE attention, CLIP prefix).
    for key in ("model.diffusion_model.output_blocks.2.1.conv.weight", "model.diffusion_model.output_blocks.5.2.conv.weight",
                "model.diffusion_model.input_blocks.3.0.op.weight", "model.diffusion_model.middle_block.1.proj_in.weight",
                "first_stage_model.decoder.up.3.upsample.conv.weight", "first_stage_model.encoder.down.0.downsample.conv.weight",
                "cond_stage_model.transformer.text_model.final_layer_norm.weight",
                "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"):  # fmt: skip
        assert key in written, key
    assert written["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    with safe_open(out, "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.architecture"] == "stable-diffusion-v1" and meta["modelspec.resolution"] == "64x64"


def test_single_file_samples_the_folders_pixels_without_a_config(independent_model: Path, tmp_path: Path) -> None:
    exported = export(independent_model, tmp_path / "exported.safetensors")
    file = tmp_path / "m.safetensors"  # as other converters write it: no metadata, SD v1's conventions apply
    save_file(load_file(exported), file)
    tokenizer = str(independent_model / "tokenizer")
    described = single_file.describe(file, *single_file.read_header(file))
    assert described.configs["unet"]["block_out_channels"] == [32, 64, 64]
    assert described.configs["unet"]["down_block_types"] == ["CrossAttnDownBlock2D"] * 2 + ["DownBlock2D"]
    assert described.configs["text_encoder"]["num_attention_heads"] == 2
    assert described.configs["vae"]["block_out_channels"] == [32, 64, 64]
    from_folder = sample_one(independent_model, tmp_path / "a", *SIZE)
    from_file = sample_one(file, tmp_path / "b", "--tokenizer", tokenizer, *SIZE)
    assert np.abs(pixels(from_folder) - pixels(from_file)).max() <= 1
    with_metadata = sample_one(exported, tmp_path / "e", "--tokenizer", tokenizer, *SIZE)
    assert np.array_equal(pixels(with_metadata), pixels(from_file))
    # A file written by a transformers-5-based converter lacks `text_model.` in the CLIP keys: same pixels.
    state = load_file(file)
    flat = {k.replace("transformer.text_model.", "transformer."): v for k, v in state.items()}
    save_file(flat, tmp_path / "flat.safetensors")
    again = sample_one(tmp_path / "flat.safetensors", tmp_path / "c", "--tokenizer", tokenizer, *SIZE)
    assert np.array_equal(pixels(again), pixels(from_file))
    # The PNG records the tokenizer, so the image replays from its metadata alone.
    replay = invoke("sample", "--from-image", str(from_file), "--out", str(tmp_path / "d"), "--json")
    assert replay.exit_code == 0, replay.output
    assert np.array_equal(pixels(Path(json.loads(replay.stdout)["path"])), pixels(from_file))


def test_ema_weights_used_when_present_and_raw_on_request(sd1_tiny_model: Path, tmp_path: Path) -> None:
    file = export(sd1_tiny_model, tmp_path / "m.safetensors")
    state = load_file(file)
    generator = torch.Generator().manual_seed(0)
    for key in [k for k in state if k.startswith(single_file.UNET)]:
        state[single_file.ema_key(key)] = state[key] + 0.05 * torch.randn(state[key].shape, generator=generator)
    save_file(state, tmp_path / "ema.safetensors")
    tokenizer = ["--tokenizer", str(sd1_tiny_model / "tokenizer")]
    info = invoke("info", str(tmp_path / "ema.safetensors"), *tokenizer)
    assert "EMA present: using the EMA weights" in info.stdout
    raw = sample_one(tmp_path / "ema.safetensors", tmp_path / "raw", *tokenizer, *SIZE, "--no-ema-weights")
    plain = sample_one(file, tmp_path / "plain", *tokenizer, *SIZE)
    assert np.array_equal(pixels(raw), pixels(plain))
    ema = sample_one(tmp_path / "ema.safetensors", tmp_path / "ema", *tokenizer, *SIZE)
    ema_only = {k: v for k, v in state.items() if not k.startswith(single_file.UNET)}
    for key in [k for k in state if k.startswith(single_file.UNET)]:
        ema_only[key] = ema_only.pop(single_file.ema_key(key))
    save_file(ema_only, tmp_path / "ema_only.safetensors")
    expected = sample_one(tmp_path / "ema_only.safetensors", tmp_path / "ema_only", *tokenizer, *SIZE)
    assert np.array_equal(pixels(ema), pixels(expected)) and not np.array_equal(pixels(ema), pixels(raw))
    # Re-exported (no tokenizer needed): the EMA weights become the UNet, with no `model_ema.*` left.
    flattened = load_file(export(tmp_path / "ema.safetensors", tmp_path / "flattened.safetensors"))
    assert flattened.keys() == ema_only.keys() and all(torch.equal(flattened[k], ema_only[k]) for k in ema_only)


def test_pickle_needs_opt_in_then_loads_the_same(sd1_tiny_model: Path, tmp_path: Path) -> None:
    file = export(sd1_tiny_model, tmp_path / "m.safetensors")
    torch.save({"state_dict": load_file(file)}, tmp_path / "m.ckpt")
    tokenizer = ["--tokenizer", str(sd1_tiny_model / "tokenizer")]
    refused = invoke("sample", "x", "--model", str(tmp_path / "m.ckpt"), "--out", str(tmp_path / "o"), *tokenizer)
    assert refused.exit_code == 4 and "--allow-pickle" in refused.output
    a = sample_one(tmp_path / "m.ckpt", tmp_path / "a", *tokenizer, *SIZE, "--allow-pickle")
    b = sample_one(file, tmp_path / "b", *tokenizer, *SIZE)
    assert np.array_equal(pixels(a), pixels(b))


def test_fp16_export_and_reexport_to_diffusers(sd1_tiny_model: Path, tmp_path: Path) -> None:
    half = export(sd1_tiny_model, tmp_path / "half.safetensors", "--dtype", "fp16")
    with safe_open(half, "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict) == {"F16"}
    folder = export(
        half, tmp_path / "folder", "--format", "diffusers", "--tokenizer", str(sd1_tiny_model / "tokenizer")
    )
    unet = folder_state(folder, "unet")
    expected = {k: v.half() for k, v in folder_state(sd1_tiny_model, "unet").items()}
    assert all(torch.equal(unet[k], expected[k]) for k in expected)
    assert json.loads((folder / "unet" / "config.json").read_text())["sample_size"] == 8  # from modelspec.resolution
    assert sample_one(folder, tmp_path / "o").is_file()


def test_inpainting_model_is_detected_and_reported(sd1_tiny_model: Path, tmp_path: Path) -> None:
    state = load_file(export(sd1_tiny_model, tmp_path / "m.safetensors"))
    conv = state["model.diffusion_model.input_blocks.0.0.weight"]
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.cat([conv, torch.zeros(conv.shape[0], 5, 3, 3)], 1)
    save_file(state, tmp_path / "inpaint.safetensors")
    info = invoke("info", str(tmp_path / "inpaint.safetensors"), "--json")
    assert info.exit_code == 0 and json.loads(info.stdout)["single_file"]["inpainting"] is True
    described = json.loads(info.stdout)
    assert described["inpainting"] and described["problems"] == []  # 9 channels are right for inpainting
    assert described["scheduler"]["class"] == "DDIMScheduler"  # the one sampling builds (was None)
    result = invoke("sample", "x", "--model", str(tmp_path / "inpaint.safetensors"), "--out", str(tmp_path / "o"),
                    "--tokenizer", str(sd1_tiny_model / "tokenizer"))  # fmt: skip
    assert result.exit_code == 4 and "inpainting model (9 input channels)" in result.output


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        (["cond_stage_model.model.transformer.resblocks.0.ln_1.weight", "model.diffusion_model.input_blocks.0.0.weight"],
         "an incomplete SD 2.x checkpoint"),
        (["conditioner.embedders.1.model.ln_final.weight", "model.diffusion_model.input_blocks.0.0.weight"],
         "an incomplete SDXL checkpoint"),
        (["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"], "is a SD 3 checkpoint; sdlite loads"),
    ],
)  # fmt: skip
def test_other_families_are_named(keys: list[str], named: str, tmp_path: Path) -> None:
    """SD 2.x and SDXL fragments are named as such (their whole files load: test_single_file_families.py)."""
    save_file({k: torch.zeros(2) for k in keys}, tmp_path / "other.safetensors")
    result = invoke("info", str(tmp_path / "other.safetensors"))
    assert result.exit_code == 4
    assert named in result.output and len(result.output.strip().splitlines()) == 1


def test_tokenizer_comes_from_the_hub_cache_or_a_one_line_error(
    sd1_tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    file = without_tokenizer(export(sd1_tiny_model, tmp_path / "m.safetensors"))  # as other tools write them
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    missing = invoke("sample", "x", "--model", str(file), "--out", str(tmp_path / "o"))
    assert missing.exit_code == 4
    assert "hf download openai/clip-vit-large-patch14" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    from sdlite.testing import make_hub_cache

    make_hub_cache(sd1_tiny_model / "tokenizer", tmp_path / "hub", "openai/clip-vit-large-patch14")
    found = sample_one(file, tmp_path / "cached", *SIZE)
    given = sample_one(file, tmp_path / "given", "--tokenizer", str(sd1_tiny_model / "tokenizer"), *SIZE)
    assert np.array_equal(pixels(found), pixels(given))


def test_a_file_is_read_once_and_its_hash_cached(
    sd1_tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    file = export(sd1_tiny_model, tmp_path / "m.safetensors")
    reads: list[Path] = []
    real_read_bytes = Path.read_bytes

    def counting(self: Path) -> bytes:
        reads.append(self)
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", counting)
    monkeypatch.setattr(filecache, "sha256_uncached", lambda path: pytest.fail(f"{path} hashed by a second read"))
    state = single_file.read_state(file, pickled=False)
    assert reads == [file] and len(state) == len(load_file(file))
    assert filecache.cached_sha256(file) == hashlib.sha256(real_read_bytes(file)).hexdigest()
    single_file.read_state(file, pickled=False)  # hash cached: memory-mapped, no whole-file read
    assert reads == [file]


def test_training_checkpoint_exports_to_a_single_file(tiny_model: Path, tmp_path: Path) -> None:
    from sdlite.testing import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "data", n=2, size=32)
    trained = invoke("train", "--model", str(tiny_model), "--data", str(data), "--out", str(tmp_path / "run"),
                     "--max-steps", "2", "--checkpoint-every", "1", "--resolution", "32", "-q")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000001"
    out = export(checkpoint, tmp_path / "step1.safetensors")
    unet = folder_state(checkpoint, "unet")
    written = load_file(out)
    assert written["model.diffusion_model.input_blocks.0.0.weight"].equal(unet["conv_in.weight"])
    assert not any(k.startswith(("training", "optimizer")) for k in written)


def test_export_refuses_what_it_cannot_write(sd1_tiny_model: Path, tmp_path: Path) -> None:
    bad_suffix = invoke("export", str(sd1_tiny_model), str(tmp_path / "model.ckpt"))
    assert bad_suffix.exit_code == 2 and ".safetensors" in bad_suffix.output
    wrong_format = invoke("export", str(sd1_tiny_model), str(tmp_path / "m.safetensors"), "--format", "kohya")
    assert wrong_format.exit_code == 2 and "single-file, diffusers" in wrong_format.output
    with pytest.raises(ModelError, match="diffusers-layout weights file"):
        single_file.describe(Path("x"), *single_file.read_header(next((sd1_tiny_model / "unet").glob("*.safetensors"))))
    shutil.copy(sd1_tiny_model / "model_index.json", tmp_path / "taken.safetensors")
    taken = invoke("export", str(sd1_tiny_model), str(tmp_path / "taken.safetensors"))
    assert taken.exit_code == 2 and "--force" in taken.output


def test_train_from_a_single_file_writes_a_complete_folder(sd1_tiny_model: Path, tmp_path: Path) -> None:
    from sdlite.testing import make_shapes_dataset

    file = export(sd1_tiny_model, tmp_path / "m.safetensors")
    data = make_shapes_dataset(tmp_path / "data", n=2, size=64)
    common = ["--data", str(data), "--max-steps", "1", "--lr", "1e-3", "-q"]
    from_file = invoke("train", "--model", str(file), "--tokenizer", str(sd1_tiny_model / "tokenizer"),
                       "--out", str(tmp_path / "a"), *common)  # fmt: skip
    from_folder = invoke("train", "--model", str(sd1_tiny_model), "--out", str(tmp_path / "b"), *common)
    assert from_file.exit_code == 0 and from_folder.exit_code == 0, from_file.output + from_folder.output
    for name in ("vae", "text_encoder"):  # frozen: saved bit-equal to the base
        a, b = folder_state(tmp_path / "a", name), folder_state(tmp_path / "b", name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # The trained UNet: the same update up to float-order noise (compared as ../shared/reference.md says:
    # L2 of the difference over L2 of the update; a different update would be near 1).
    a, b, base = (folder_state(p, "unet") for p in (tmp_path / "a", tmp_path / "b", sd1_tiny_model))
    difference = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a) ** 0.5
    update = sum(float(((b[k] - base[k]) ** 2).sum()) for k in b) ** 0.5
    assert a.keys() == b.keys() and update > 0 and difference / update < 1e-2
    assert sample_one(tmp_path / "a", tmp_path / "o").is_file()  # a complete diffusers folder


def test_the_built_in_model_round_trips_through_a_single_file(tmp_path: Path) -> None:
    """It breaks SD v1's conventions (4 text heads of 16, its own VAE scaling factor, 64 px): the settings
    shapes cannot tell travel in the file's `sdlite.configs` metadata, so the pixels come back exactly."""
    from sdlite.models.source import DEFAULT_MODEL

    file = export(DEFAULT_MODEL, tmp_path / "shapes.safetensors")
    settings = ["--steps", "8", "--guidance", "5"]
    a = sample_one(DEFAULT_MODEL, tmp_path / "a", *settings)
    b = sample_one(file, tmp_path / "b", "--tokenizer", str(DEFAULT_MODEL / "tokenizer"), *settings)
    assert pixels(a).shape == (64, 64, 3) and np.array_equal(pixels(a), pixels(b))


def test_recommended_settings_travel_in_the_single_file(tmp_path: Path) -> None:
    """The built-in model recommends guidance 5 (its `sdlite.json`): the exported file keeps the record in its
    metadata, so the same command samples the same pixels from folder and file, and a diffusers export of the
    file writes `sdlite.json` again. A file without the record (other tools') keeps the built-in defaults."""
    from sdlite.formats.png_record import read_settings
    from sdlite.models.source import DEFAULT_MODEL

    file = export(DEFAULT_MODEL, tmp_path / "shapes.safetensors")
    tokenizer = ["--tokenizer", str(DEFAULT_MODEL / "tokenizer")]
    from_folder = sample_one(DEFAULT_MODEL, tmp_path / "a")  # no --guidance or --scheduler: the model's
    from_file = sample_one(file, tmp_path / "b", *tokenizer)
    assert read_settings(from_file)["guidance"] == 5.0  # was 7.5
    assert np.array_equal(pixels(from_folder), pixels(from_file))
    folder = export(file, tmp_path / "folder", "--format", "diffusers", *tokenizer)
    recorded = json.loads((DEFAULT_MODEL / "sdlite.json").read_text())
    assert json.loads((folder / "sdlite.json").read_text()) == recorded
    with safe_open(file, "pt") as f:
        meta = f.metadata()
    assert json.loads(meta.pop("sdlite.json")) == recorded
    save_file(load_file(file), tmp_path / "other.safetensors", metadata=meta)
    assert read_settings(sample_one(tmp_path / "other.safetensors", tmp_path / "c", *tokenizer))["guidance"] == 7.5


def test_a_corrupt_settings_record_is_a_model_error_naming_it(tiny_model: Path, tmp_path: Path) -> None:
    """An `sdlite.json` that is not JSON is a corrupt model (exit 4), in a folder or in a file's metadata."""
    folder = Path(shutil.copytree(tiny_model, tmp_path / "model"))
    (folder / "sdlite.json").write_text("{broken")
    result = invoke("sample", "x", "--model", str(folder), "--out", str(tmp_path / "o"))
    assert result.exit_code == 4 and f"{folder / 'sdlite.json'} is not valid JSON" in result.output  # was exit 2
    (folder / "sdlite.json").unlink()
    file = export(folder, tmp_path / "m.safetensors")
    with safe_open(file, "pt") as f:
        meta = f.metadata()
    assert "sdlite.json" not in meta  # no record, no key
    save_file(load_file(file), tmp_path / "bad.safetensors", metadata={**meta, "sdlite.json": "{"})
    result = invoke("sample", "x", "--model", str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "o"),
                    "--tokenizer", str(folder / "tokenizer"))  # fmt: skip
    assert result.exit_code == 4 and "bad.safetensors (its sdlite.json metadata) is not valid JSON" in result.output
