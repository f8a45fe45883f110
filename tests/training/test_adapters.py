"""LoRA variants (`--lora-type dora|loha|lokr`, LoCon with `--lora-conv-rank`, `--lora-targets`): each loads in plain
peft (or diffusers) with sdlite's pixels, resumes exactly, and its kohya/LyCORIS export follows the readers' rules.

The readers' rules, as ComfyUI (comfy/weight_adapter/lora.py, loha.py, lokr.py) and A1111
(extensions-builtin/Lora/network_hada.py, network_lokr.py) apply a module at strength 1:
- LoRA/LoCon: W + up @ down x alpha / rank (rank = down's first dimension; conv: flattened, reshaped).
- DoRA (ComfyUI, comfy/weight_adapter/base.py weight_decompose; `dora_scale` of shape (out, 1...)): each output row
  of W + delta times dora_scale / (|that row of the UNPATCHED W| + eps). peft divides by the patched row's norm.
- LoHa: W + (w1_a @ w1_b) * (w2_a @ w2_b) x alpha / rank, rank = w1_b's first dimension.
- LoKr: W + kron(w1, w2) x alpha / rank where rank is a decomposed matrix's first dimension; scale 1 when neither
  w1 nor w2 is decomposed (w1 = w1_a @ w1_b, w2 = w2_a @ w2_b when decomposed; a 4-D w2 takes w1[:, :, None, None]).
  Without an alpha, every reader uses scale 1 (ComfyUI's newest LoKr divides an alpha of an undecomposed module by
  w2's rows over w1's, its older code and A1111 ignore it: sdlite writes none there).
These were measured against the readers' own code outside the test suite (the numbers are in the issue notes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.references import plain_pipeline
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.formats import lora
from sdlite.testing import make_shapes_dataset
from sdlite.training.config import TrainConfig
from sdlite.training.unet import train

pytestmark = pytest.mark.xdist_group("adapters")  # module fixtures: trained once, on one worker

runner = CliRunner()
PROMPT = "a red circle"
COMMON = {"lora": True, "lora_rank": 4, "lora_alpha": 8.0, "max_steps": 3, "batch_size": 2, "lr": 1e-2,
          "resolution": 64, "lora_targets": "all", "lora_conv_rank": 2, "lora_conv_alpha": 1.0}  # fmt: skip
# What each trained adapter is: the type, and whether the text encoder trains too.
KINDS = {"dora": {"lora_type": "dora", "train_text_encoder": True, "checkpoint_every": 2},
         "loha": {"lora_type": "loha"}, "lokr": {"lora_type": "lokr"}, "locon": {"lora_type": "lora"}}  # fmt: skip


@pytest.fixture(scope="module")
def trained(sd1_tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    data = make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n=4)
    root = tmp_path_factory.mktemp("adapters")
    outs = {
        kind: train(TrainConfig(model=str(sd1_tiny_model), data=data, out=root / kind, **COMMON, **extra)).out
        for kind, extra in KINDS.items()
    }
    return {**outs, "data": data}


def _sample(model: Path, source: Path | str, out: Path) -> np.ndarray:
    from PIL import Image

    args = ["sample", PROMPT, "--model", str(model), "--lora", str(source), "--steps", "4", "--seed", "0",
            "--out", str(out), "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return np.asarray(Image.open(json.loads(result.stdout)["path"]).convert("RGB")).astype(int)


def _render(pipe: Any) -> np.ndarray:
    import torch

    image = pipe(PROMPT, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    return (image * 255).round().astype(int)


def _with_plain_peft(pipe: Any, file: Path) -> Any:
    """The adapter applied by peft alone: each component's config from the file's metadata, its tensors set."""
    from peft import PeftConfig, inject_adapter_in_model, set_peft_model_state_dict

    with safe_open(file, "pt") as f:
        flat = json.loads(f.metadata()["lora_adapter_metadata"])
    tensors = load_file(file)
    for component in ("unet", "text_encoder"):
        config = {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith(component + ".")}
        if not config:
            continue
        module = getattr(pipe, component)
        inject_adapter_in_model(PeftConfig.from_peft_type(**config), module, adapter_name="x")
        state = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(component + ".")}
        result = set_peft_model_state_dict(module, state, adapter_name="x")
        assert not result.unexpected_keys
    return pipe


@pytest.mark.parametrize("kind", ["dora", "loha", "lokr"])
def test_variant_loads_in_plain_peft_with_sdlites_pixels(
    kind: str, trained: dict[str, Path], sd1_tiny_model: Path, tmp_path: Path
) -> None:
    out = trained[kind]
    assert not (out / lora.LORA_FILE).exists()  # diffusers' LoRA loader would not apply it as trained
    ours = _sample(sd1_tiny_model, out, tmp_path / "ours")
    assert np.array_equal(ours, _render(_with_plain_peft(plain_pipeline(sd1_tiny_model), out / lora.PEFT_FILE)))
    assert np.abs(ours - _render(plain_pipeline(sd1_tiny_model))).max() > 3  # the adapter matters
    # The A1111/ComfyUI copy, read back by sdlite (modules found by kohya name), gives the same pixels (DoRA: its
    # magnitudes go through ComfyUI's rule and back, a float32 rounding apart).
    copy = _sample(sd1_tiny_model, out / f"{kind}.safetensors", tmp_path / "kohya")
    assert np.abs(copy - ours).max() <= (1 if kind == "dora" else 0)


def test_locon_loads_in_plain_diffusers(trained: dict[str, Path], sd1_tiny_model: Path, tmp_path: Path) -> None:
    out = trained["locon"]
    pipe = plain_pipeline(sd1_tiny_model)
    pipe.load_lora_weights(out, adapter_name="x")
    config = pipe.unet.peft_config["x"]
    assert (config.r, config.lora_alpha, config.rank_pattern["conv1"], config.alpha_pattern["conv1"]) == (4, 8, 2, 1)
    adapted = {n for n, m in pipe.unet.named_modules() if hasattr(m, "lora_A")}
    assert "down_blocks.0.resnets.0.conv1" in adapted and "down_blocks.0.attentions.0.proj_in" in adapted
    assert "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2" in adapted
    assert np.array_equal(_sample(sd1_tiny_model, out, tmp_path / "ours"), _render(pipe))


def _reader_weight(base: Any, roles: dict[str, Any]) -> Any:
    """The weight a LyCORIS reader makes of `base` and one module's kohya tensors (this file's docstring)."""
    import torch

    alpha = float(roles["alpha"]) if "alpha" in roles else None
    if "hada_w1_a" in roles:
        delta = (roles["hada_w1_a"] @ roles["hada_w1_b"]) * (roles["hada_w2_a"] @ roles["hada_w2_b"])
        return base + delta.reshape(base.shape) * alpha / roles["hada_w1_b"].shape[0]
    if any(k.startswith("lokr_") for k in roles):
        w1 = roles["lokr_w1"] if "lokr_w1" in roles else roles["lokr_w1_a"] @ roles["lokr_w1_b"]
        w2 = roles["lokr_w2"] if "lokr_w2" in roles else roles["lokr_w2_a"] @ roles["lokr_w2_b"]
        dim = next((roles[k].shape[0] for k in ("lokr_w2_b", "lokr_w1_b") if k in roles), None)
        w1 = w1[:, :, None, None] if w2.dim() == 4 else w1
        if dim is None:  # neither matrix decomposed: scale 1, and sdlite writes no alpha that a reader could misuse
            assert alpha is None
        return base + torch.kron(w1, w2).reshape(base.shape) * (alpha / dim if dim else 1.0)
    down, up = roles["lora_down.weight"], roles["lora_up.weight"]
    merged = base + (up.flatten(1) @ down.flatten(1)).reshape(base.shape) * alpha / down.shape[0]
    if "dora_scale" in roles:  # ComfyUI's output-axis rule: the unpatched weight's row norms, plus eps
        norm = base.flatten(1).norm(dim=1).reshape(-1, *[1] * (base.dim() - 1)) + torch.finfo(base.dtype).eps
        merged = merged * roles["dora_scale"] / norm
    return merged


@pytest.mark.parametrize("kind", ["dora", "loha", "lokr", "locon"])
def test_lycoris_export_gives_the_readers_the_trained_weights(
    kind: str, trained: dict[str, Path], sd1_tiny_model: Path
) -> None:
    """Every module of OUT/NAME.safetensors, applied by the readers' rules, equals peft's own merge of the adapter."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = trained[kind]
    file = out / lora.PEFT_FILE if kind != "locon" else out / lora.LORA_FILE
    pipe = plain_pipeline(sd1_tiny_model)
    if kind == "locon":
        pipe.load_lora_weights(out, adapter_name="x")
    else:
        _with_plain_peft(pipe, file)
    modules: dict[str, dict[str, Any]] = {}
    for key, tensor in load_file(out / f"{kind}.safetensors").items():
        name, _, role = key.partition(".")
        modules.setdefault(name, {})[role] = tensor
    seen = 0
    for component in ("unet", "text_encoder"):
        for path, module in getattr(pipe, component).named_modules():
            if not isinstance(module, BaseTunerLayer) or "x" not in getattr(module, "scaling", {}):
                continue
            name = lora.kohya_name(component, path)
            base = module.get_base_layer().weight.detach().clone()
            module.merge(adapter_names=["x"])
            expected = module.get_base_layer().weight.detach()
            assert torch.allclose(_reader_weight(base, modules.pop(name)), expected, atol=2e-5, rtol=1e-4), name
            seen += 1
    assert not modules and seen > 100  # every exported module is one peft adapted, and the other way round
    if kind == "dora":  # one magnitude per output row, shaped as ComfyUI reads that axis
        scales = [t for n, t in load_file(out / "dora.safetensors").items() if n.endswith(".dora_scale")]
        assert scales and all(t.shape[1:] == (1,) * (t.dim() - 1) for t in scales)


def test_dora_with_conv_and_text_encoder_resumes_exactly(
    trained: dict[str, Path], sd1_tiny_model: Path, tmp_path: Path
) -> None:
    resumed = train(TrainConfig(model=str(sd1_tiny_model), data=trained["data"], out=tmp_path / "resumed", **COMMON,
                                **KINDS["dora"], resume=str(trained["dora"] / "checkpoints" / "step-000002"))).out  # fmt: skip
    a, b = load_file(trained["dora"] / lora.PEFT_FILE), load_file(resumed / lora.PEFT_FILE)
    assert any(k.endswith("lora_magnitude_vector") for k in a)
    bad = [(k, float((a[k] - b[k]).abs().max())) for k in a if not np.array_equal(a[k].numpy(), b[k].numpy())]
    assert a.keys() == b.keys() and not bad, bad[:5]


def test_input_axis_dora_scale_is_refused_with_one_line(
    trained: dict[str, Path], sd1_tiny_model: Path, tmp_path: Path
) -> None:
    """LyCORIS's older DoRA normalises each input column; peft's (which sdlite applies) each output row."""
    import torch

    tensors = load_file(trained["dora"] / "dora.safetensors")
    for key in [k for k in tensors if k.endswith(".dora_scale") and tensors[k].dim() == 2]:
        in_width = tensors[key.replace("dora_scale", "lora_down.weight")].shape[1]
        tensors[key] = torch.ones(1, in_width)
    save_file(tensors, tmp_path / "old.safetensors")
    result = runner.invoke(app, ["sample", PROMPT, "--model", str(sd1_tiny_model), "--lora",
                                 str(tmp_path / "old.safetensors"), "--out", str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 4
    assert "normalises each input column" in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lora-type", "loha"], "--lora-type shapes a LoRA adapter: it needs --lora"),
        (["--lora-conv-rank", "4"], "--lora-conv-rank shapes a LoRA adapter: it needs --lora"),
        (["--lora", "--lora-conv-alpha", "2"], "--lora-conv-alpha needs --lora-conv-rank"),
        (["--lora", "--lora-type", "ia3"], "--lora-type"),
    ],
)
def test_adapter_options_need_lora(args: list[str], message: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--model", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                                 "--max-steps", "1", *args])  # fmt: skip
    assert result.exit_code == 2 and message in result.output


def test_info_names_the_type_and_its_readers(trained: dict[str, Path]) -> None:
    from sdlite.formats.lora_info import describe_lora

    loha = describe_lora(trained["loha"])
    assert (
        loha["type"] == "loha"
        and Path(loha["file"]).name == lora.PEFT_FILE
        and loha["ui_copies"] == ["loha.safetensors"]
    )
    assert {t["tool"]: t["loads"] for t in loha["tools"]} == {"A1111 / Forge": False, "ComfyUI": False,
                                                              "diffusers": False, "sdlite": True}  # fmt: skip
    copy = describe_lora(trained["dora"] / "dora.safetensors")
    assert copy["type"] == "dora" and copy["layout"] == "kohya"
    assert {t["tool"]: t["loads"] for t in copy["tools"]} == {"A1111 / Forge": False, "ComfyUI": True,
                                                              "diffusers": False, "sdlite": True}  # fmt: skip
    assert describe_lora(trained["locon"])["type"] == "locon"
    assert describe_lora(trained["lokr"] / "lokr.safetensors")["type"] == "lokr"


def test_resize_refuses_what_is_no_low_rank_pair(trained: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["lora", "resize", str(trained["loha"]), "--rank", "2", "--out", str(tmp_path / "r.safetensors")]
    )
    assert result.exit_code == 2 and "is a LoHa adapter" in result.output and not (tmp_path / "r.safetensors").exists()


def test_merged_loha_samples_as_the_adapter(trained: dict[str, Path], sd1_tiny_model: Path, tmp_path: Path) -> None:
    merged = tmp_path / "merged"
    result = runner.invoke(app, ["lora", "merge", str(sd1_tiny_model), str(trained["loha"]), "--out", str(merged)])
    assert result.exit_code == 0, result.output
    ours = _sample(sd1_tiny_model, trained["loha"], tmp_path / "a")
    plain = _render(plain_pipeline(merged))
    assert np.abs(ours - plain).max() <= 1 and np.abs(ours - _render(plain_pipeline(sd1_tiny_model))).max() > 3


def test_a_dora_alone_is_not_exported_without_its_base(trained: dict[str, Path], tmp_path: Path) -> None:
    """Its ComfyUI `dora_scale` needs the base weights' norms: the copy training wrote is the one."""
    result = runner.invoke(app, ["export", str(trained["dora"]), str(tmp_path / "d.safetensors")])
    assert result.exit_code == 2 and "needs the base model's weights" in result.output
    assert not (tmp_path / "d.safetensors").exists()
