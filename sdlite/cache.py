"""Precomputed VAE latent statistics and text embeddings for `train --cache`, kept on disk.

Entries are keyed by content and settings (image bytes, VAE weights, resolution, precision; caption,
text-encoder weights), so a second run reuses them and any change makes new ones. The latent
*distribution* (mean, std) is cached, not a sample, so training still draws fresh latents from
exactly the generator the uncached path uses: same first-step loss with or without the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from sdlite.errors import writing
from sdlite.metadata import cache_dir, file_sha256
from sdlite.models import ResolvedModel
from sdlite.staging import share


class EncodingCache:
    """Latent stats per image and embeddings per caption, filled once by the main process."""

    def __init__(self, parts: Any, model: ResolvedModel, with_text: bool) -> None:
        self.parts, self.has_text = parts, with_text
        self.root = cache_dir() / "train-cache"
        dtype = str(parts.weight_dtype)
        self.vae_key = _digest([_component_hash(model, "vae"), dtype, "center-crop"])
        self.text_key = _digest([_component_hash(model, "text_encoder"), _component_hash(model, "tokenizer"), dtype])
        self.latents: dict[tuple[str, tuple[int, int]], tuple[Any, Any]] = {}
        self.texts: dict[str, Any] = {}

    def fill(self, examples: tuple[Any, ...], sizes: tuple[tuple[int, int], ...], compute: bool) -> dict[str, int]:
        """Load every entry (each example at its (width, height) bucket), computing and storing the missing ones
        when `compute`; returns counts."""
        import torch
        from safetensors.torch import load_file

        from sdlite.data import load_example, preprocess

        counts = {"latents_reused": 0, "latents_computed": 0, "texts_reused": 0, "texts_computed": 0}
        for example, size in zip(examples, sizes, strict=True):
            path = self._latent_path(example, size)
            if not path.exists() and compute:
                pixels = preprocess(load_example(example), size, "center", False, 0)[None]
                with torch.no_grad():
                    dist = self.parts.vae.encode(pixels.to(self.parts.vae.device, self.parts.weight_dtype)).latent_dist
                _save(path, {"mean": dist.mean[0].float(), "std": dist.std[0].float()})
                counts["latents_computed"] += 1
            else:
                counts["latents_reused"] += 1
            entry = load_file(path)
            self.latents[(str(example), tuple(size))] = (entry["mean"], entry["std"])
        if self.has_text:
            for caption in sorted({e.caption for e in examples} | {""}):  # "" serves caption dropout
                path = self._text_path(caption)
                if not path.exists() and compute:
                    ids = self.parts.tokenizer(
                        caption, padding="max_length", truncation=True, return_tensors="pt"
                    ).input_ids
                    with torch.no_grad():
                        embedding = self.parts.text_encoder(ids.to(self.parts.text_encoder.device))[0][0]
                    _save(path, {"embedding": embedding.float()})
                    counts["texts_computed"] += 1
                else:
                    counts["texts_reused"] += 1
                self.texts[caption] = load_file(path)["embedding"]
        return counts

    def latent_stats(self, examples: list[Any], sizes: list[tuple[int, int]]) -> tuple[Any, Any]:
        import torch

        pairs = [self.latents[(str(e), tuple(size))] for e, size in zip(examples, sizes, strict=True)]
        return torch.stack([m for m, _ in pairs]), torch.stack([s for _, s in pairs])

    def text_embeddings(self, captions: list[str]) -> Any:
        import torch

        return torch.stack([self.texts[c] for c in captions]).to(self.parts.weight_dtype)

    def _latent_path(self, example: Any, size: tuple[int, int]) -> Path:
        from sdlite.data import example_sha256

        return self.root / "latents" / f"{_digest([example_sha256(example), self.vae_key, list(size)])}.safetensors"

    def _text_path(self, caption: str) -> Path:
        return self.root / "text" / f"{_digest([caption, self.text_key])}.safetensors"


def _component_hash(model: ResolvedModel, component: str) -> str:
    if model.single_file is not None:  # the file's hash stands for each of its parts
        return _digest([component, file_sha256(model.path), model.use_ema, str(model.tokenizer)])
    files = sorted(p for p in (model.path / component).iterdir() if p.is_file())
    return _digest([[p.name, file_sha256(p)] for p in files])


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()


def _save(path: Path, tensors: dict[str, Any]) -> None:
    """Write atomically, so an interrupted fill never leaves a half entry that later runs trust."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        with writing(f"cache entry {path}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
            share(tmp)  # the umask's mode: safetensors writes its files 0600
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
