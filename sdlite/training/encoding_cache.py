"""Precomputed VAE latent statistics and text embeddings for `train --cache`, kept on disk.

A latent entry also keeps the image's micro-conditioning (original size, crop top-left, target size: what SDXL
is told), a text entry SDXL's pooled embedding beside both encoders' hidden states.

Entries are keyed by content and settings (image bytes, VAE weights, resolution, precision; caption,
text-encoder weights), so a second run reuses them and any change makes new ones. The latent
*distribution* (mean, std) is cached, not a sample, so training still draws fresh latents from
exactly the generator the uncached path uses: same first-step loss with or without the cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sdlite import filecache
from sdlite.errors import DataError, ResourceError
from sdlite.filecache import cache_dir, file_sha256
from sdlite.models.loading import ResolvedModel
from sdlite.staging import staged_file


class EncodingCache:
    """Latent stats per image and embeddings per caption, filled once by the main process.

    Entries stay on disk and are read when a batch needs them (the next batch's are read while the device
    runs the current one): memory does not grow with the dataset (100,000 captions of 77 x 768 floats
    would be 23 GB), and a run starts without loading every entry first.
    """

    def __init__(self, parts: Any, model: ResolvedModel, with_text: bool, masks: str | None = None) -> None:
        self.parts, self.has_text, self.masks = parts, with_text, masks  # masks: None, "files" or "alpha"
        self.root = cache_dir() / "train-cache"
        dtype, family = str(parts.weight_dtype), parts.family
        self.vae_key = _digest([_component_hash(model, "vae"), dtype, "center-crop"])
        pairs = zip(family.text_encoders, family.tokenizers, strict=True)
        self.text_key = _digest([*(_component_hash(model, name) for pair in pairs for name in pair), dtype])
        self.latents: dict[tuple[str, tuple[int, int]], Path] = {}
        self.texts: dict[str, Path] = {}
        self.mask_entries: dict[tuple[str, tuple[int, int]], Path] = {}

    def fill(
        self, examples: tuple[Any, ...], sizes: tuple[tuple[int, int], ...], compute: bool, masked: bool = True
    ) -> dict[str, int]:
        """Find every entry (each example at its (width, height) bucket; its loss mask too when the cache keeps masks
        and `masked`), computing and storing the missing ones when `compute`; returns counts."""
        import torch

        from sdlite.data.images import crop_of, load_example, preprocess
        from sdlite.training.conditioning import encode, token_ids

        counts = {"latents_reused": 0, "latents_computed": 0, "texts_reused": 0, "texts_computed": 0}
        if self.masks and masked:
            counts |= {"masks_reused": 0, "masks_computed": 0}
        for example, size in zip(examples, sizes, strict=True):
            path = self._latent_path(example, size)
            if compute and not _intact(path, ("mean", "std", "micro_conditioning")):
                image = load_example(example)
                pixels = preprocess(image, size, "center", False, 0)[None]
                numbers = crop_of(image.size, size, "center", False, 0).micro_conditioning()
                with torch.no_grad():
                    dist = self.parts.vae.encode(pixels.to(self.parts.vae.device, self.parts.weight_dtype)).latent_dist
                micro = torch.tensor(numbers, dtype=torch.int64)
                _save(path, {"mean": dist.mean[0].float(), "std": dist.std[0].float(), "micro_conditioning": micro})
                counts["latents_computed"] += 1
            else:
                counts["latents_reused"] += 1
            self.latents[(str(example), tuple(size))] = path
            if self.masks and masked:
                self._fill_mask(example, size, compute, counts)
        if self.has_text:
            for caption in sorted({e.caption for e in examples} | {""}):  # "" serves caption dropout
                path = self._text_path(caption)
                names = ("embedding", "pooled") if self.parts.family.micro_conditioning else ("embedding",)
                if compute and not _intact(path, names):
                    with torch.no_grad():
                        ids = token_ids(self.parts.tokenizers, [caption])
                        hidden, pooled = encode(self.parts.family, self.parts.text_encoders, ids)
                    entry = {
                        "embedding": hidden[0].float(),
                        **({"pooled": pooled[0].float()} if pooled is not None else {}),
                    }
                    _save(path, entry)
                    counts["texts_computed"] += 1
                else:
                    counts["texts_reused"] += 1
                self.texts[caption] = path
        return counts

    def _fill_mask(self, example: Any, size: tuple[int, int], compute: bool, counts: dict[str, int]) -> None:
        """--masked-loss: the example's mask on the latent grid, cut as its cached latents are (centre, no flip)."""
        from sdlite.data.images import load_example
        from sdlite.data.masks import latent_mask, load_mask

        alpha = self.masks == "alpha"
        path = self._mask_path(example, size, alpha)
        if compute and not _intact(path, ("mask",)):
            image_size = example.size or load_example(example).size
            factor = 2 ** (len(self.parts.vae.config.block_out_channels) - 1)
            mask = latent_mask(load_mask(example, alpha), image_size, size, "center", False, 0, factor)
            _save(path, {"mask": mask})
            counts["masks_computed"] += 1
        else:
            counts["masks_reused"] += 1
        self.mask_entries[(str(example), tuple(size))] = path

    def loss_masks(self, examples: list[Any], sizes: list[tuple[int, int]]) -> Any:
        """The examples' cached loss masks at their sizes, (batch, 1, h, w)."""
        import torch

        return torch.stack(
            [_load(self.mask_entries[(str(e), tuple(size))])["mask"] for e, size in zip(examples, sizes, strict=True)]
        )

    def latent_stats(self, examples: list[Any], sizes: list[tuple[int, int]]) -> tuple[Any, Any, list[tuple[int, ...]]]:
        """The latent means and stds of the examples at their sizes, and each one's micro-conditioning numbers."""
        import torch

        entries = [_load(self.latents[(str(e), tuple(size))]) for e, size in zip(examples, sizes, strict=True)]
        numbers = [tuple(int(n) for n in e["micro_conditioning"].tolist()) for e in entries]
        return torch.stack([e["mean"] for e in entries]), torch.stack([e["std"] for e in entries]), numbers

    def text_embeddings(self, captions: list[str]) -> tuple[Any, Any]:
        """The captions' hidden states and (SDXL) pooled embeddings, None for a family without them."""
        import torch

        entries = [_load(self.texts[c]) for c in captions]
        hidden = torch.stack([e["embedding"] for e in entries]).to(self.parts.weight_dtype)
        if "pooled" not in entries[0]:
            return hidden, None
        return hidden, torch.stack([e["pooled"] for e in entries]).to(self.parts.weight_dtype)

    def _latent_path(self, example: Any, size: tuple[int, int]) -> Path:
        from sdlite.data.images import example_sha256

        return self.root / "latents" / f"{_digest([example_sha256(example), self.vae_key, list(size)])}.safetensors"

    def _mask_path(self, example: Any, size: tuple[int, int], alpha: bool) -> Path:
        from sdlite.data.masks import mask_sha256

        return self.root / "masks" / f"{_digest([mask_sha256(example, alpha), list(size), self.vae_key])}.safetensors"

    def _text_path(self, caption: str) -> Path:
        return self.root / "text" / f"{_digest([caption, self.text_key])}.safetensors"


def _component_hash(model: ResolvedModel, component: str) -> str:
    if model.single_file is not None:  # the file's hash stands for each of its parts
        return _digest([component, file_sha256(model.path), model.use_ema, str(model.tokenizer)])
    files = sorted(p for p in (model.path / component).iterdir() if p.is_file())
    return _digest([[p.name, file_sha256(p)] for p in files])


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()


def _intact(path: Path, names: tuple[str, ...]) -> bool:
    """Whether the entry exists with these tensors and its data is all there (the header is read, not the data)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, "pt") as entry:
            return set(names) <= set(entry.keys())
    except (OSError, SafetensorError):  # missing, truncated, not safetensors at all: compute it again
        return False


def _load(path: Path) -> dict[str, Any]:
    """An entry's tensors; one deleted or damaged since the run began is a DataError naming it (and removed)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (OSError, SafetensorError) as exc:
        path.unlink(missing_ok=True)  # the next run computes it afresh
        raise DataError(
            f"cache entry {path} cannot be read ({exc}); removed: run again (--resume latest continues) to recompute it"
        ) from exc


class CacheUnwritable(Exception):
    """An entry could not be stored (a full disk, a folder turned read-only): the run goes on uncached."""


def _save(path: Path, tensors: dict[str, Any]) -> None:
    """Write atomically, so an interrupted fill never leaves a half entry that later runs trust."""
    from safetensors.torch import save_file

    try:
        with staged_file(path, "cache entry") as temp:  # given the umask's mode: safetensors writes its files 0600
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, temp)
    except ResourceError as exc:
        reason = str(exc).rsplit(": ", 1)[-1]
        filecache.unusable(reason)
        raise CacheUnwritable(reason) from exc
