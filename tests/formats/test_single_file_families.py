"""SD 2.x and SDXL single files in and out: `sdlite export` writes the original layouts (SDXL's
`conditioner.embedders.*`, SD 2.x's OpenCLIP `cond_stage_model.model.*`) with ModelSpec and the `v_pred` marker, that
diffusers' `from_single_file(..., config=FOLDER)` loads bit-equal; files diffusers' own converter scripts write sample
like the folders with no config, and `info` names their family and prediction type."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.errors import ModelError
from sdlite.models.config import InfoConfig
from sdlite.models.info import describe
from sdlite.models.loading import resolve_model

pytestmark = pytest.mark.xdist_group("single_file_families")

runner = CliRunner()
SIZE = ("--height", "64", "--width", "64")
PIPELINES = {"sd2": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
# Where diffusers' converter scripts are read from: a diffusers git checkout (or bare mirror) when one is at hand.
DIFFUSERS_REPO = Path(os.environ.get("SDLITE_DIFFUSERS_REPO", "/work/.mirror/huggingface+diffusers/repo"))


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def sample_one(model: Path, out: Path, *extra: str) -> Path:
    result = runner.invoke(app, ["sample", "a red circle", "--model", str(model), "--out", str(out), "--seed", "7",
                                 "--steps", "3", "--json", *SIZE, *extra])  # fmt: skip
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.stdout.splitlines()[-1])["path"])


@pytest.fixture(scope="module")
def folders(sd2_tiny_model: Path, sdxl_tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each family's folder, its export and a sample from the folder (the reference pixels)."""
    out = tmp_path_factory.mktemp("exports")
    made: dict[str, Any] = {}
    for family, folder in (("sd2", sd2_tiny_model), ("sdxl", sdxl_tiny_model)):
        exported = out / f"{family}.safetensors"
        result = runner.invoke(app, ["export", str(folder), str(exported)])
        assert result.exit_code == 0, result.output
        made[family] = (folder, exported, sample_one(folder, out / f"{family}-folder"))
    return made


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_an_export_loads_bit_equal_in_diffusers_and_samples_the_folders_pixels(
    family: str, folders: dict[str, Any], tmp_path: Path
) -> None:
    import diffusers

    folder, exported, reference = folders[family]
    cls = getattr(diffusers, PIPELINES[family])
    options: dict[str, Any] = {"add_watermarker": False} if family == "sdxl" else {"safety_checker": None}
    theirs = cls.from_single_file(exported, config=str(folder), local_files_only=True, **options)
    ours = cls.from_pretrained(folder, **options)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(ours, name, None) is None:
            continue
        a, b = getattr(ours, name).state_dict(), getattr(theirs, name).state_dict()
        assert a.keys() == b.keys(), name
        assert all(a[k].equal(b[k]) for k in a), name
    assert np.array_equal(pixels(sample_one(exported, tmp_path / "o", "--tokenizer", str(folder))), pixels(reference))


def test_exports_carry_the_original_layouts_modelspec_and_the_v_marker(folders: dict[str, Any]) -> None:
    _, sd2, _ = folders["sd2"]
    _, sdxl, _ = folders["sdxl"]
    with safe_open(sd2, "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert "v_pred" in keys  # what ComfyUI reads as v-prediction
    assert "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight" in keys
    assert "cond_stage_model.model.positional_embedding" in keys and not any(".q_proj" in k for k in keys)
    assert (meta["modelspec.architecture"], meta["modelspec.prediction_type"]) == ("stable-diffusion-v2-64-v", "v")
    with safe_open(sdxl, "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert "v_pred" not in keys
    for key in ("conditioner.embedders.0.transformer.text_model.encoder.layers.11.self_attn.q_proj.weight",
                "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight",
                "conditioner.embedders.1.model.text_projection", "model.diffusion_model.label_emb.0.0.weight",
                "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight",
                "model.diffusion_model.middle_block.1.transformer_blocks.9.ff.net.2.weight"):  # fmt: skip
        assert key in keys, key
    assert (meta["modelspec.architecture"], meta["modelspec.prediction_type"]) == (
        "stable-diffusion-xl-v1-base",
        "epsilon",
    )


def test_the_v_marker_or_modelspec_alone_says_v_and_a_bare_file_follows_the_family_convention(
    folders: dict[str, Any], tmp_path: Path
) -> None:
    _, exported, _ = folders["sd2"]
    state = load_file(exported)
    bare = tmp_path / "bare.safetensors"
    save_file({k: v for k, v in state.items() if k != "v_pred"}, bare)
    marked = tmp_path / "marked.safetensors"
    save_file(state, marked)  # the marker, no metadata
    spec = tmp_path / "spec.safetensors"
    save_file(
        {k: v for k, v in state.items() if k != "v_pred"}, spec, metadata={"modelspec.prediction_type": "epsilon"}
    )

    def said(file: Path) -> tuple[str, str]:
        return resolve_model(str(file), need_tokenizer=False).prediction()

    assert said(marked) == ("v_prediction", "v_pred marker key")
    assert said(spec) == ("epsilon", "modelspec.prediction_type metadata")
    assert said(bare) == ("v_prediction", "inferred: the SD 2.x convention at 768 px")
    info = describe(InfoConfig(model=str(bare)))
    assert (info["family"], info["native_size"], info["single_file"]["native_size_from"]) == (
        "SD 2.x",
        [768, 768],
        "SD 2.x convention (768 px)",
    )


def test_refiner_sd3_and_flux_files_are_one_line_exit_4(tmp_path: Path) -> None:
    import torch

    for name, key in (("the SDXL refiner", "conditioner.embedders.0.model.text_projection"),
                      ("SD 3", "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"),
                      ("Flux", "double_blocks.0.img_attn.qkv.weight")):  # fmt: skip
        file = tmp_path / f"{len(name)}.safetensors"
        save_file({key: torch.zeros(2, 2), "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, file)
        with pytest.raises(ModelError, match=f"is (a )?{name}( checkpoint)?; sdlite loads SD v1, SD 2.x, SDXL single"):
            resolve_model(str(file), need_tokenizer=False)


def test_sdxl_single_file_needs_both_tokenizers(folders: dict[str, Any], tmp_path: Path) -> None:
    folder, exported, _ = folders["sdxl"]
    only_one = shutil.copytree(folder / "tokenizer", tmp_path / "tok")
    result = runner.invoke(app, ["sample", "x", "--model", str(exported), "--tokenizer", str(only_one), "--out",
                                 str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 4
    assert "is not a folder holding tokenizer/ and tokenizer_2/: SDXL has 2 tokenizers" in result.stderr


def _script(name: str, tmp: Path) -> Path:
    """A diffusers converter script, read from a diffusers checkout; the test skips when none is at hand."""
    target = tmp / name
    git = ["git", "--git-dir", str(DIFFUSERS_REPO / ".git" if (DIFFUSERS_REPO / ".git").exists() else DIFFUSERS_REPO)]
    done = subprocess.run([*git, "show", f"HEAD:scripts/{name}"], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"no diffusers checkout at {DIFFUSERS_REPO} (set SDLITE_DIFFUSERS_REPO) to read scripts/{name}")
    target.write_text(done.stdout)
    return target


@pytest.mark.parametrize(
    ("family", "script", "text_model_level"),
    [
        ("sdxl", "convert_diffusers_to_original_sdxl.py", False),
        ("sd2", "convert_diffusers_to_original_stable_diffusion.py", False),  # transformers 5: CLIP-layout SD 2.x
        ("sd2", "convert_diffusers_to_original_stable_diffusion.py", True),  # transformers 4 keys: OpenCLIP layout
    ],
)
def test_files_diffusers_converter_scripts_write_sample_like_the_folders_with_no_config(
    family: str, script: str, text_model_level: bool, folders: dict[str, Any], tmp_path: Path
) -> None:
    """The scripts run on the tiny folders as they are (transformers 5 saves CLIP without `text_model.`), and on a
    copy whose text encoder has the `text_model.` level transformers 4 wrote (the script then writes SD 2.x's
    OpenCLIP layout). Nothing but the tokenizer and the size is given: the family and v-prediction are detected."""
    folder, _, reference = folders[family]
    converter = _script(script, tmp_path)
    source = folder
    if text_model_level:
        source = shutil.copytree(folder, tmp_path / "t4")
        weights = source / "text_encoder" / "model.safetensors"
        save_file({f"text_model.{k}": v for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})
    file = tmp_path / "converted.safetensors"
    subprocess.run([sys.executable, str(converter), "--model_path", str(source), "--checkpoint_path", str(file),
                    "--use_safetensors"], check=True, capture_output=True)  # fmt: skip
    with safe_open(file, "pt") as f:
        keys = f.keys()
    openclip = any(k.startswith("cond_stage_model.model.") for k in keys)
    assert openclip == text_model_level
    info = describe(InfoConfig(model=str(file), tokenizer=str(folder)))
    want = {"sd2": ("SD 2.x", "v_prediction"), "sdxl": ("SDXL", "epsilon")}[family]
    assert (info["family"], info["prediction_type"]) == want
    assert info["prediction_type_from"].startswith("inferred")
    assert np.array_equal(pixels(sample_one(file, tmp_path / "o", "--tokenizer", str(folder))), pixels(reference))
