"""`--vae`: another VAE in place of the model's own, as A1111 swaps one in (vae-ft-mse for SD v1, a fixed fp16
SDXL VAE...).

A VAE is a diffusers folder (its `config.json` and weights, or a whole model folder's `vae/`) or a single file
(`.safetensors`; `.pt`/`.ckpt` with --allow-pickle) with the original (CompVis) keys, with or without the
`first_stage_model.` prefix, or diffusers' keys. It is built with the model's own VAE config (a file says nothing
else) and must fit it exactly: another latent width (SD3/Flux's 16 channels) or other block widths is exit 4, as is
a folder whose scaling factor names another family. Images record A1111's `VAE` (the file's name) and `VAE hash`
(the first 10 hex digits of its sha256), and sdlite's record keeps the path to replay it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlite.errors import ModelError
from sdlite.families.base import Family

WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
PICKLE_SUFFIXES = (".pt", ".ckpt", ".bin", ".pth")
PREFIX = "first_stage_model."


@dataclass(frozen=True)
class VaeFile:
    """The VAE a run uses instead of the model's: where it is, its weights file, and A1111's name for it."""

    source: str
    weights: Path
    folder: Path | None  # a diffusers VAE folder (None: a single file)

    @property
    def name(self) -> str:
        """A1111's `VAE` value: the file's name (a folder's own name)."""
        return (self.folder or self.weights).name

    def sha256(self) -> str:
        from sdlite.filecache import file_sha256

        return file_sha256(self.weights)

    def record(self) -> dict[str, str]:
        return {"source": str(Path(self.source).expanduser().resolve()), "name": self.name, "sha256": self.sha256()}


def find_vae(source: str, allow_pickle: bool) -> VaeFile:
    """The VAE `source` names, checked before any model weight is read."""
    path = Path(source).expanduser()
    if path.is_dir():
        folder = path / "vae" if (path / "model_index.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise ModelError(f"--vae {source}: no config.json in {folder} (a diffusers VAE folder, or a VAE file)")
        for name in WEIGHTS:
            if (folder / name).is_file() and (allow_pickle or name.endswith(".safetensors")):
                return VaeFile(source, folder / name, folder)
        raise ModelError(f"--vae {source}: no diffusion_pytorch_model.safetensors in {folder}")
    if not path.is_file():
        raise ModelError(f"--vae {source}: no such file or folder")
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise ModelError(f"--vae {source} is a pickle file, which can run code when loaded: add --allow-pickle")
    return VaeFile(source, path, None)


def load_vae(vae: VaeFile, model_config: dict[str, Any], family: Family) -> Any:
    """The VAE built with the model's own VAE config and `vae`'s weights (in fp32; the caller moves it)."""
    from diffusers import AutoencoderKL

    config = {k: v for k, v in model_config.items() if not k.startswith("_")}
    if vae.folder is not None:
        own = json.loads((vae.folder / "config.json").read_text(encoding="utf-8"))
        _check_config(vae, own, config, family)
        config = {**config, **{k: v for k, v in own.items() if not k.startswith("_")}}
    state = _state(vae)
    channels = _latent_channels(state)
    if channels is not None and channels != config.get("latent_channels", 4):
        raise ModelError(
            f"--vae {vae.source} makes {channels}-channel latents; this {family.name} model's VAE makes "
            f"{config.get('latent_channels', 4)} (a VAE of another family, such as SD3 or Flux)"
        )
    if any(".down.0." in key or key.startswith("down.0.") for key in state):  # original keys
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        state = convert_ldm_vae_checkpoint(state, config)
    model = AutoencoderKL(**config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise ModelError(f"--vae {vae.source} does not fit this {family.name} model's VAE: {first}") from exc
    return model.eval()


def _check_config(vae: VaeFile, own: dict[str, Any], config: dict[str, Any], family: Family) -> None:
    """A folder says its latent width and scaling factor: both must be the model's."""
    channels = own.get("latent_channels", 4)
    if channels != config.get("latent_channels", 4):
        raise ModelError(
            f"--vae {vae.source} makes {channels}-channel latents; this {family.name} model's VAE makes "
            f"{config.get('latent_channels', 4)}"
        )
    scaling = own.get("scaling_factor")
    if scaling is not None and abs(scaling - family.vae_scaling_factor) > 1e-6:
        raise ModelError(
            f"--vae {vae.source} scales latents by {scaling}, the {family.name} family by "
            f"{family.vae_scaling_factor}: it is another family's VAE"
        )


def _state(vae: VaeFile) -> dict[str, Any]:
    """The VAE's tensors, without the `first_stage_model.` prefix of a VAE cut from a checkpoint."""
    from sdlite.formats.single_file import load_pickle

    if vae.weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(vae.weights)
        except Exception as exc:  # safetensors raises its own error types for a damaged header
            raise ModelError(f"--vae {vae.source}: cannot read {vae.weights} ({exc})") from exc
    else:
        state = load_pickle(vae.weights)
        state = state.get("state_dict", state)
    return {key.removeprefix(PREFIX): value for key, value in state.items() if not key.startswith("model_ema.")}


def _latent_channels(state: dict[str, Any]) -> int | None:
    """Latent channels from the weights: the encoder's last conv makes mean and log-variance of each."""
    for key in ("encoder.conv_out.weight", "quant_conv.weight"):
        if key in state:
            return int(state[key].shape[0]) // 2
    return None
