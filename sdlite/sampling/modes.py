"""Sampling modes: `--fast` and `--low-memory`, built only from switches diffusers and torch provide.

Each mode is deterministic on its own (same seed, same image), but not bit-equal to the other
modes: channels_last, sliced attention and tiled decoding change the float summation order.
Which mode made an image is recorded in it, so `--from-image` replays the same mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MODES = ("default", "fast", "low-memory")
# What `--fast` changes in the generation settings, unless the user or a prompts file set them.
FAST_SETTINGS = {"scheduler": "dpm++2m-karras", "steps": 20}


def load_device(mode: str, device: str) -> str:
    """Where to load the weights: with `--low-memory` on an accelerator they start on the CPU."""
    return "cpu" if mode == "low-memory" else device


def apply_mode(pipe: Any, mode: str, device: str, has_lora: bool) -> list[str]:
    """Switch `mode` on for a pipeline loaded on `load_device(mode, device)`; returns what it switched on."""
    if mode == "fast":
        return _fast(pipe, device, has_lora)
    if mode != "low-memory":
        return []
    applied = []
    if device != "cpu":  # on a CPU there is nowhere to offload to
        pipe.enable_model_cpu_offload(device=device)  # each component visits the device only while it runs
        applied.append("model CPU offload")
    pipe.enable_attention_slicing()
    pipe.vae.enable_slicing()
    pipe.vae.enable_tiling()
    return [*applied, "attention slicing", "VAE slicing", "VAE tiling"]


def _fast(pipe: Any, device: str, has_lora: bool) -> list[str]:
    """SDPA attention and channels_last everywhere; on CUDA also TF32, fused QKV and torch.compile
    of the UNet and the VAE decoder.

    torch.compile runs on CUDA only: on CPU, inductor's C++ build takes longer than a one-shot
    sampling run saves, so a command-line run would only get slower.
    """
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe.unet.set_attn_processor(AttnProcessor2_0())
    pipe.vae.set_attn_processor(AttnProcessor2_0())
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    applied = ["SDPA attention", "channels_last"]
    if device != "cuda":
        return applied
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if not has_lora:  # fused projections would bypass a LoRA's layers
        pipe.fuse_qkv_projections()
        applied.append("fused QKV projections")
    compile_cache()
    # CUDA graphs ("reduce-overhead") remove the per-kernel launch cost that dominates at batch 1;
    # max-autotune would add minutes of kernel search to every new shape, too slow for a command.
    pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True)
    pipe.vae.decode = torch.compile(pipe.vae.decode, mode="reduce-overhead", fullgraph=True)
    return [*applied, "TF32", "torch.compile (CUDA graphs)"]


def compile_cache() -> Path:
    """Keep torch.compile's caches (Inductor's FX graph and autograd caches, Triton's kernels) in sdlite's
    cache folder, so the next `--fast` command on the same model and size loads compiled code instead of
    compiling again. A folder the user already chose (TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR) is kept."""
    import os

    from sdlite.filecache import cache_dir, unusable

    root = cache_dir() / "torch-compile"
    if unusable() is not None:  # warned once: torch keeps its caches in its own default folders
        return Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR", root / "inductor"))
    if not _chosen_inductor_dir():
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def _chosen_inductor_dir() -> bool:
    """Whether TORCHINDUCTOR_CACHE_DIR holds a folder someone chose. Importing torch's libraries sets it to
    torch's own default (/tmp/torchinductor_USER) on the way, so an environment variable that is merely
    present does not say the user chose it."""
    import os

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None:
        return False
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # a torch without that helper: keep whatever is set
        return True
    return os.path.abspath(current) != os.path.abspath(default_cache_dir())
