"""`init` presets are complete, deterministic, and use a CLIP-compatible tokenizer built offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdlite.errors import UsageError
from sdlite.models.config import InitConfig
from sdlite.models.presets import init_model
from sdlite.models.tokenizer import BOS, EOS, build_tokenizer


def weights(model: Path) -> dict[str, bytes]:
    """Weight files and tokenizer files: token ids are part of what a model means."""
    files = [*model.rglob("*.safetensors"), *model.glob("tokenizer/*.json")]
    return {str(p.relative_to(model)): p.read_bytes() for p in sorted(files)}


def test_same_seed_same_weights_other_seed_other_weights(tiny_model: Path, tmp_path: Path) -> None:
    again = init_model(InitConfig(out=tmp_path / "again", seed=0))
    other = init_model(InitConfig(out=tmp_path / "other", seed=1))
    assert weights(again) == weights(tiny_model)
    assert all(weights(other)[k] != v for k, v in weights(tiny_model).items() if k.endswith(".safetensors"))


def test_folder_loads_in_plain_diffusers(tiny_model: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    assert pipe.scheduler.config.steps_offset == 1 and pipe.scheduler.config.clip_sample is False


def test_refuses_to_clobber_and_force_replaces(tmp_path: Path) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="--force"):
        init_model(InitConfig(out=out))
    assert (out / "keep.txt").read_text() == "mine"
    init_model(InitConfig(out=out, overwrite=True))
    assert (out / "model_index.json").is_file() and not (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging folder left behind


def test_tokenizer_is_clip_shaped() -> None:
    tokenizer = build_tokenizer()
    ids = tokenizer("a red circle on a blue background").input_ids
    assert len(ids) == 9  # BOS + one token per word + EOS
    assert tokenizer.convert_ids_to_tokens(ids)[0] == BOS and tokenizer.convert_ids_to_tokens(ids)[-1] == EOS
    text = "an unknown wordzz!"
    padded = tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77
    # Every byte is in the vocabulary, so nothing becomes the unknown token (which is EOS in CLIP).
    body = padded[1 : padded.index(tokenizer.eos_token_id)]
    assert tokenizer.decode(body).replace(" ", "") == text.replace(" ", "")
    assert build_tokenizer().get_vocab() == tokenizer.get_vocab()


def test_sd1_tiny_has_exactly_the_sd15_key_layout() -> None:
    """Every UNet and VAE weight name of SD v1.5 exists in `sd1-tiny` and nothing else (built on the meta
    device: no memory, no time); the text tower has SD v1.5's per-layer names, fewer layers."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from sdlite.models.presets import PRESETS

    def names(preset: str) -> dict[str, set[str]]:
        spec = PRESETS[preset]
        with torch.device("meta"):
            return {
                "unet": set(UNet2DConditionModel(**spec["unet"]).state_dict()),
                "vae": set(AutoencoderKL(**spec["vae"]).state_dict()),
            }

    tiny, full = names("sd1-tiny"), names("sd15")
    assert tiny == full
    assert (
        PRESETS["sd1-tiny"]["text_encoder"]["hidden_size"] // PRESETS["sd1-tiny"]["text_encoder"]["num_attention_heads"]
        == 64
    )  # CLIP ViT-L's head width, the convention single files are read with
