"""Model loading: clear errors for broken folders, the hub cache (pickle safety: tests/reliability)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sdlite.errors import ModelError
from sdlite.models.loading import file_format, resolve_model


@pytest.fixture
def model_copy(tiny_model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


def test_a_diffusers_component_file_is_not_taken_for_a_single_file_model(tiny_model: Path) -> None:
    path = tiny_model / "unet" / "diffusion_pytorch_model.safetensors"
    assert file_format(path) == "safetensors"
    with pytest.raises(ModelError, match="diffusers-layout weights file"):
        resolve_model(str(path))


def test_missing_path_names_it(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"^no such folder or file: .*nowhere$"):
        resolve_model(str(tmp_path / "nowhere"))


@pytest.mark.parametrize(
    ("breakage", "fragment"),
    [
        (lambda m: (m / "unet" / "diffusion_pytorch_model.safetensors").unlink(), "unet holds no weights"),
        (lambda m: (m / "vae" / "config.json").unlink(), r"vae/config.json is missing"),
        (lambda m: (m / "model_index.json").write_text("{not json"), "not readable JSON"),
        (lambda m: shutil.rmtree(m / "tokenizer"), "tokenizer is missing"),
        (lambda m: (m / "scheduler" / "scheduler_config.json").unlink(), "scheduler_config.json is missing"),
    ],
)
def test_incomplete_folder_names_what_is_missing(model_copy: Path, breakage: object, fragment: str) -> None:
    breakage(model_copy)  # type: ignore[operator]
    with pytest.raises(ModelError, match=fragment):
        resolve_model(str(model_copy))


def test_components_needing_foreign_code_are_refused(model_copy: Path) -> None:
    index = json.loads((model_copy / "model_index.json").read_text())
    index["unet"] = ["evil_package", "EvilUNet"]
    (model_copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match="needs code from 'evil_package'"):
        resolve_model(str(model_copy))


def test_missing_shard_is_named(model_copy: Path) -> None:
    (model_copy / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "diffusion_pytorch_model-00002-of-00002.safetensors"}})
    )
    with pytest.raises(ModelError, match=r"00002-of-00002\.safetensors"):
        resolve_model(str(model_copy))


def test_hub_id_loads_from_local_cache_offline(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    from sdlite.testing import make_hub_cache

    snapshot = make_hub_cache(tiny_model, tmp_path / "hub", "sdlite-test/tiny")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolved = resolve_model("sdlite-test/tiny")
    assert resolved.path == snapshot
    with pytest.raises(
        ModelError, match="hub model sdlite-test/absent is not in the local cache and offline mode is on"
    ):
        resolve_model("sdlite-test/absent")


def test_not_a_path_nor_hub_id(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a hub id"):
        resolve_model("not a model")
    with pytest.raises(ModelError, match=r"^no such folder or file: a/b/c$"):  # a path, not ORG/NAME
        resolve_model("a/b/c")
