"""LoRA adapters: alpha travels with the adapter, text-encoder LoRAs, several LoRAs at once, kohya export.

Reference rules (checked against the real clients' code): AUTOMATIC1111 and ComfyUI name an SD v1 LoRA
layer `lora_unet_` + the diffusers UNet module path with `.` -> `_`, and `lora_te_` + the CLIPTextModel
module path (with its `text_model.` level) with `.` -> `_`; strength = `.alpha` / rank.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.references import plain_pipeline as pipeline
from helpers.references import random_lora_of_every_target
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.errors import ModelError, UsageError
from sdlite.formats import lora
from sdlite.sampling.config import Generation, LoraChoice, SampleConfig
from sdlite.sampling.run import sample
from sdlite.sampling.sources import SampleOverrides, build_sample_config
from sdlite.testing import make_shapes_dataset
from sdlite.training.unet import VALIDATION_STEPS, train

# Module-scoped fixtures below are made once: `make test` keeps this file on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("lora")

runner = CliRunner()
PROMPT = "a red circle"
LORA_SETTINGS = {"lora": True, "lora_rank": 4, "lora_alpha": 16.0, "max_steps": 4, "batch_size": 2, "lr": 1e-2,
                 "checkpoint_every": 2, "validation_prompts": (PROMPT,)}  # fmt: skip


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n=8)


def _train(model: Path, data: Path, out: Path, **settings: Any) -> Path:
    from sdlite.training.config import TrainConfig

    return train(TrainConfig(model=str(model), data=data, out=out, **{**LORA_SETTINGS, **settings})).out


@pytest.fixture(scope="module")
def unet_lora(tiny_model: Path, shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A UNet LoRA, rank 4 alpha 16 (strength 4), with a checkpoint at step 2 and a validation grid at step 4."""
    return _train(tiny_model, shapes, tmp_path_factory.mktemp("lora") / "unet")


@pytest.fixture(scope="module")
def both_lora(tiny_model: Path, shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """UNet + text-encoder LoRA (--lora --train-text-encoder), rank 4 alpha 16."""
    return _train(tiny_model, shapes, tmp_path_factory.mktemp("lora") / "both", train_text_encoder=True)


def render(pipe: Any, seed: int = 0, steps: int = 4) -> Any:
    import torch

    generator = torch.Generator().manual_seed(seed)
    image = pipe(PROMPT, num_inference_steps=steps, generator=generator, output_type="np").images[0]
    return (image * 255).round().astype(np.uint8)


def validation_image(out: Path, step: int) -> Any:
    """The first image of a validation grid: tiles of 64 px images are enlarged 2x (nearest) at offset 4."""
    grid = np.asarray(Image.open(out / "validation" / f"step-{step:06d}.png").convert("RGB"))
    return grid[4:132, 4:132][::2, ::2]


def pixels(path: Path | str) -> Any:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


# 1. Alpha is part of the adapter.


@pytest.mark.parametrize("folder", ["final", "checkpoint"])
def test_alpha_is_saved_and_plain_diffusers_applies_it(tiny_model: Path, unet_lora: Path, folder: str) -> None:
    source = unet_lora if folder == "final" else unet_lora / "checkpoints" / "step-000002"
    pipe = pipeline(tiny_model)
    pipe.load_lora_weights(source, adapter_name="x")
    config = pipe.unet.peft_config["x"]
    assert (config.r, config.lora_alpha) == (4, 16)
    to_q = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert to_q.scaling["x"] == 4.0  # effective strength alpha / rank, not 1


@pytest.mark.parametrize("fixture", ["unet_lora", "both_lora"])
def test_sample_reproduces_the_final_validation_image(
    tiny_model: Path, fixture: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    out = request.getfixturevalue(fixture)
    result = runner.invoke(app, ["sample", PROMPT, "--model", str(tiny_model), "--lora", str(out), "--seed", "0",
                                 "--steps", str(VALIDATION_STEPS), "--out", str(tmp_path), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    ours = pixels(json.loads(result.stdout)["path"])
    assert np.array_equal(ours, validation_image(out, 4))  # pixel-exact
    plain = sample(SampleConfig(model=str(tiny_model), generations=(Generation(PROMPT, steps=VALIDATION_STEPS),),
                                out=tmp_path / "plain"))  # fmt: skip
    assert np.abs(pixels(plain.images[0].path) - ours).max() > 10  # the adapter matters


# 2. Text-encoder LoRA.


def test_text_encoder_lora_is_saved_and_applied(tiny_model: Path, both_lora: Path) -> None:
    keys = list(load_file(both_lora / lora.LORA_FILE))
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("unet.") for k in keys)
    checkpoint = both_lora / "checkpoints" / "step-000002"
    assert (checkpoint / "training" / "text_encoder_adapter.safetensors").is_file()
    assert any(k.startswith("text_encoder.") for k in load_file(checkpoint / lora.LORA_FILE))
    import torch

    pipe = pipeline(tiny_model)
    ids = pipe.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        before = pipe.text_encoder(ids)[0]
        pipe.load_lora_weights(both_lora, adapter_name="x")
        after = pipe.text_encoder(ids)[0]
    assert pipe.text_encoder.peft_config["x"].lora_alpha == 16 and pipe.unet.peft_config["x"].lora_alpha == 16
    assert (after - before).abs().max() > 1e-3


def test_resume_restores_both_adapters_exactly(tiny_model: Path, shapes: Path, both_lora: Path, tmp_path: Path) -> None:
    resumed = _train(tiny_model, shapes, tmp_path / "resumed", train_text_encoder=True, validation_prompts=(),
                     resume=str(both_lora / "checkpoints" / "step-000002"))  # fmt: skip
    a, b = load_file(both_lora / lora.LORA_FILE), load_file(resumed / lora.LORA_FILE)
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_plan_and_settings(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    from sdlite.training.config import TrainConfig
    from sdlite.training.plan import dry_run

    plan = dry_run(TrainConfig(model=str(tiny_model), data=shapes, out=tmp_path, max_steps=1, lora=True,
                               train_text_encoder=True))  # fmt: skip
    assert plan.trains == ("unet lora", "text_encoder lora")
    with pytest.raises(UsageError, match="--lora-alpha must be positive"):
        TrainConfig(model="m", data=shapes, out=tmp_path, max_steps=1, lora=True, lora_alpha=0)


# 3. Several LoRAs, kohya files, records, mismatches.


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")  # plain diffusers' second adapter
def test_several_loras_with_scales_match_diffusers_and_replay(
    tiny_model: Path, unet_lora: Path, both_lora: Path, tmp_path: Path
) -> None:
    kohya = lora.export_lora(both_lora, tmp_path / "both-kohya.safetensors", "kohya")
    result = runner.invoke(app, ["sample", PROMPT, "--model", str(tiny_model), "--steps", "4", "--seed", "0",
                                 "--out", str(tmp_path / "a"), "--json", "--lora", str(unet_lora), "--lora-scale", "0.5",
                                 "--lora", str(kohya), "--lora-scale", "-0.25"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    pipe = pipeline(tiny_model)
    pipe.load_lora_weights(unet_lora, adapter_name="a")
    pipe.load_lora_weights(kohya, adapter_name="b")
    pipe.set_adapters(["a", "b"], adapter_weights=[0.5, -0.25])
    assert np.array_equal(pixels(row["path"]), render(pipe))
    record = json.loads(Image.open(row["path"]).text["sdlite"])["lora"]
    assert [(r["source"], r["scale"]) for r in record] == [(str(unet_lora / lora.LORA_FILE), 0.5), (str(kohya), -0.25)]
    assert all(len(r["hash"]) == 64 for r in record)
    again = runner.invoke(app, ["sample", "--from-image", row["path"], "--out", str(tmp_path / "b"), "--json"])
    assert again.exit_code == 0, again.stderr
    assert np.array_equal(pixels(json.loads(again.stdout)["path"]), pixels(row["path"]))


def test_lora_scale_pairing_rule(tmp_path: Path) -> None:
    def loras(sources: tuple[str, ...], scales: tuple[float, ...]) -> Any:
        opts = SampleOverrides(prompts=("p",), model="m", lora=sources, lora_scale=scales)
        return build_sample_config(opts).loras

    assert loras(("a", "b"), ()) == (LoraChoice("a", 1.0), LoraChoice("b", 1.0))
    assert loras(("a", "b"), (0.5, 2.0)) == (LoraChoice("a", 0.5), LoraChoice("b", 2.0))
    with pytest.raises(UsageError, match="one --lora-scale per --lora"):
        loras(("a", "b"), (0.5,))
    with pytest.raises(UsageError, match="--lora-scale needs a --lora"):
        loras((), (0.5,))
    result = runner.invoke(
        app, ["sample", "p", "--model", str(tmp_path), "--lora", "a", "--lora", "b", "--lora-scale", "1"]
    )
    assert result.exit_code == 2 and "one --lora-scale per --lora" in result.stderr


def test_from_image_reads_one_lora_dict_of_older_images(tmp_path: Path) -> None:
    from PIL.PngImagePlugin import PngInfo

    old = {"format": 1, "settings": {"prompt": "p", "seed": 3, "steps": 2}, "model": {"source": "m"},
           "lora": {"source": "/x/a.safetensors", "hash": "0" * 64, "scale": 0.7}}  # fmt: skip
    info = PngInfo()
    info.add_text("sdlite", json.dumps(old))
    Image.new("RGB", (8, 8)).save(tmp_path / "old.png", pnginfo=info)
    config = build_sample_config(SampleOverrides(from_image=tmp_path / "old.png"))
    assert config.loras == (LoraChoice("/x/a.safetensors", 0.7),)
    rescaled = build_sample_config(SampleOverrides(from_image=tmp_path / "old.png", lora_scale=(0.2,)))
    assert rescaled.loras == (LoraChoice("/x/a.safetensors", 0.2),)


def test_lora_for_another_architecture_exits_4_with_one_line(
    sd1_tiny_model: Path, tiny_model: Path, unet_lora: Path, tmp_path: Path
) -> None:
    # Made on `tiny`, applied to `sd1-tiny`: the same module names, other widths.
    done = subprocess.run([sys.executable, "-m", "sdlite", "sample", PROMPT, "--model", str(sd1_tiny_model), "--steps", "2",
                           "--out", str(tmp_path / "x"), "--lora", str(unet_lora)], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 4, done.stderr
    assert done.stderr.count("\n") == 1 and "made for another model architecture" in done.stderr
    # Keys for modules this UNet does not have: refused before diffusers loads anything.
    renamed = {k.replace("down_blocks.0.", "down_blocks.7.").replace("up_blocks.1.", "up_blocks.9.")
                .replace("mid_block.", "middle_block."): v for k, v in load_file(unet_lora / lora.LORA_FILE).items()}  # fmt: skip
    save_file(renamed, tmp_path / "other.safetensors")
    common = ["sample", PROMPT, "--model", str(tiny_model), "--steps", "2", "--out", str(tmp_path / "y")]
    result = runner.invoke(app, [*common, "--lora", str(tmp_path / "other.safetensors")])
    assert result.exit_code == 4 and "matches no layer of this model" in result.stderr
    # A model's weights are not a LoRA.
    result = runner.invoke(app, [*common, "--lora", str(tiny_model / "unet" / "diffusion_pytorch_model.safetensors")])
    assert result.exit_code == 4 and "is not a LoRA adapter" in result.stderr
    # Some layers missing: applied, with one warning line.
    partial = load_file(unet_lora / lora.LORA_FILE)
    partial.update(
        {k.replace("down_blocks.0.", "down_blocks.7."): v.clone() for k, v in partial.items() if "down_blocks.0." in k}
    )
    save_file(partial, tmp_path / "partial.safetensors")
    result = runner.invoke(app, [*common, "--lora", str(tmp_path / "partial.safetensors")])
    assert result.exit_code == 0, result.stderr
    assert "8 of its 40 layers match no layer of this model and are ignored" in result.stderr


# 4. Export to the kohya layout.


def test_kohya_export_keeps_alpha_and_pixels(tiny_model: Path, both_lora: Path, tmp_path: Path) -> None:
    out = lora.export_lora(both_lora / "checkpoints" / "step-000002", tmp_path / "k.safetensors", "kohya")
    kohya = load_file(out)
    assert lora.layout(kohya) == "kohya"
    alphas = {k: float(v) for k, v in kohya.items() if k.endswith(".alpha")}
    assert len(alphas) == 40 and set(alphas.values()) == {16.0}  # 32 UNet + 8 text-encoder modules
    with safe_open(out, "pt") as f:
        meta = f.metadata()
    assert (meta["ss_network_dim"], meta["ss_network_alpha"], meta["ss_network_module"]) == ("4", "16", "networks.lora")
    source, exported = pipeline(tiny_model), pipeline(tiny_model)
    source.load_lora_weights(both_lora / "checkpoints" / "step-000002")
    exported.load_lora_weights(out)
    a, b = render(source).astype(int), render(exported).astype(int)
    assert np.abs(a - b).max() <= 2
    assert np.abs(a - render(pipeline(tiny_model)).astype(int)).max() > 10


def test_kohya_names_follow_the_a1111_comfyui_rule(sd1_tiny_model: Path) -> None:
    """On SD v1's exact layout: every kohya name is a real module by the clients' rule, and diffusers maps each back."""
    pipe = pipeline(sd1_tiny_model)
    state = random_lora_of_every_target(pipe, alpha=6)
    kohya = lora.to_kohya(state, {"unet": {"lora_alpha": 6}, "text_encoder": {"lora_alpha": 6}})
    unet_names = {"lora_unet_" + n.replace(".", "_") for n, _ in pipeline(sd1_tiny_model).unet.named_modules()}
    # A1111 names text-encoder layers from `text_model.`-rooted paths (transformers 4 layout).
    te_names = {"lora_te_" + f"text_model.{n}".replace(".", "_") for n, _ in pipe.text_encoder.named_modules()}
    layers = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in kohya}
    assert len(layers) == 16 * 8 + 2 * 4  # 16 transformer blocks x (attn1, attn2) x 4, 2 CLIP layers x 4
    assert layers <= unet_names | te_names
    for known in ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                  "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0",
                  "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_k",
                  "lora_te_text_model_encoder_layers_1_self_attn_out_proj"):  # fmt: skip
        assert known in layers
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {6.0}
    fresh = pipeline(sd1_tiny_model)
    fresh.load_lora_weights(kohya, adapter_name="k")
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = [m for c in (fresh.unet, fresh.text_encoder) for m in c.modules() if isinstance(m, BaseTunerLayer)]
    assert len(adapted) == len(layers)


def test_export_diffusers_and_source_detection(tiny_model: Path, unet_lora: Path, tmp_path: Path) -> None:
    checkpoint = unet_lora / "checkpoints" / "step-000002"
    out = lora.export_lora(checkpoint, tmp_path / "d", "diffusers")
    assert (out / lora.LORA_FILE).read_bytes() != b""
    assert load_file(out / lora.LORA_FILE).keys() == load_file(checkpoint / lora.LORA_FILE).keys()
    with safe_open(out / lora.LORA_FILE, "pt") as f:
        assert json.loads(f.metadata()[lora.METADATA_KEY])["unet.lora_alpha"] == 16
    kohya = lora.export_lora(unet_lora / lora.LORA_FILE, tmp_path / "k.safetensors", "kohya")
    for source in (unet_lora, checkpoint, out, kohya):
        assert lora.is_lora_source(source)
    for other in (tiny_model, tiny_model / "unet" / "diffusion_pytorch_model.safetensors", tmp_path / "missing"):
        assert not lora.is_lora_source(other)
    with pytest.raises(UsageError, match="already a kohya-layout LoRA"):
        lora.export_lora(kohya, tmp_path / "again", "diffusers")
    with pytest.raises(UsageError, match=r"one \.safetensors file"):
        lora.export_lora(unet_lora, tmp_path / "k2", "kohya")
    with pytest.raises(ModelError, match="no such file"):
        lora.export_lora(tmp_path / "missing", tmp_path / "k3.safetensors", "kohya")


def _a1111_compvis_name(kohya: str) -> str:
    """AUTOMATIC1111 v1.x `extensions-builtin/Lora/networks.py` `convert_diffusers_name_to_compvis`, for the
    names an SD v1 LoRA of attention layers uses (its rule: 3 input/output blocks per level, attentions at
    index 1, text layers under `transformer_text_model_`); unmatched names come back unchanged, as there."""
    import re

    for pattern, build in (
        (r"lora_unet_down_blocks_(\d+)_attentions_(\d+)_(.+)",
         lambda m: f"diffusion_model_input_blocks_{1 + int(m[1]) * 3 + int(m[2])}_1_{m[3]}"),
        (r"lora_unet_mid_block_attentions_(\d+)_(.+)", lambda m: f"diffusion_model_middle_block_1_{m[2]}"),
        (r"lora_unet_up_blocks_(\d+)_attentions_(\d+)_(.+)",
         lambda m: f"diffusion_model_output_blocks_{int(m[1]) * 3 + int(m[2])}_1_{m[3]}"),
        (r"lora_te_text_model_encoder_layers_(\d+)_(.+)", lambda m: f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"),
    ):  # fmt: skip
        match = re.match(pattern, kohya)
        if match:
            return build(match)
    return kohya


def test_every_kohya_layer_is_a_module_of_the_original_layout_model_a1111_loads(
    sd1_tiny_model: Path, tmp_path: Path
) -> None:
    """A1111 maps kohya names onto the original-layout (CompVis) modules of the checkpoint it runs: every
    layer of our kohya export must land on a module of the same model exported as an original single file."""
    from safetensors.torch import load_file as load

    from sdlite.formats import lora

    model_file = tmp_path / "model.safetensors"
    assert runner.invoke(app, ["export", str(sd1_tiny_model), str(model_file)]).exit_code == 0
    compvis_modules = set()
    for key in load(model_file):
        module = key.rsplit(".", 1)[0]
        if module.startswith("model.diffusion_model."):
            compvis_modules.add(module.removeprefix("model.").replace(".", "_"))
        elif module.startswith("cond_stage_model."):
            compvis_modules.add(module.removeprefix("cond_stage_model.").replace(".", "_"))
    # A LoRA of every attention projection of this SD v1-layout model, exported to kohya by sdlite.
    state = random_lora_of_every_target(pipeline(sd1_tiny_model), alpha=2)
    layers = {k.split(".")[0] for k in lora.to_kohya(state, {})}
    unmapped = sorted(n for n in layers if _a1111_compvis_name(n) not in compvis_modules)
    assert layers and not unmapped, unmapped[:5]
