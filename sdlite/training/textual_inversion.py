"""Textual inversion (`sdlite train --embedding TOKEN --init-token WORD --num-vectors N`): only the new token's
vectors train, in every text encoder of the family (SDXL: both).

The token's vectors (TOKEN, TOKEN_1, ... as diffusers names them) start as the init word's token embeddings (cycled
to N); after each optimizer step every other row of the embedding tables is put back (kohya's way: weight decay and
fused kernels touch whole tables). OUT gets `TOKEN.safetensors` in A1111's layout (`emb_params`, or SDXL's
`clip_l`/`clip_g`), which `sdlite sample --embedding` and A1111 load by name, and `learned_embeds.safetensors` in
diffusers' (`{TOKEN: vectors}`, or the SDXL pair), which `load_textual_inversion` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdlite.errors import UsageError

DIFFUSERS_FILE = "learned_embeds.safetensors"
SDXL_KEYS = ("clip_l", "clip_g")


def tokens(token: str, count: int) -> list[str]:
    return [token] + [f"{token}_{i}" for i in range(1, count)]


def add_token(tokenizers: Sequence[Any], encoders: Sequence[Any], token: str, init: str, count: int) -> list[Any]:
    """Give each tokenizer the new tokens and each encoder their rows (the init word's vectors); returns each
    encoder's new row ids."""
    import torch

    rows = []
    for tokenizer, encoder in zip(tokenizers, encoders, strict=True):
        names = tokens(token, count)
        taken = [name for name in names if name in tokenizer.get_vocab()]
        if taken:
            raise UsageError(f"--embedding {token}: {taken[0]!r} is already a token of the tokenizer: choose another")
        init_ids = tokenizer(init, add_special_tokens=False).input_ids
        if not init_ids:
            raise UsageError(f"--init-token {init!r} has no tokens")
        tokenizer.add_tokens(names)
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        ids = torch.tensor(tokenizer.convert_tokens_to_ids(names))
        table = encoder.get_input_embeddings().weight
        with torch.no_grad():
            start = table[torch.tensor(init_ids)]
            table[ids] = torch.stack([start[i % len(init_ids)] for i in range(count)])
        rows.append(ids)
    return rows


def keep_only(encoders: Sequence[Any], originals: Sequence[Any], rows: Sequence[Any]) -> None:
    """Put back every row of each embedding table but the trained token's."""
    import torch

    for encoder, original, ids in zip(encoders, originals, rows, strict=True):
        table = encoder.get_input_embeddings().weight
        keep = torch.ones(table.shape[0], dtype=torch.bool, device=table.device)
        keep[ids.to(table.device)] = False
        with torch.no_grad():
            table[keep] = original[keep]


def vectors(encoders: Sequence[Any], rows: Sequence[Any]) -> list[Any]:
    return [
        e.get_input_embeddings().weight[ids.to(e.device)].detach().float().cpu()
        for e, ids in zip(encoders, rows, strict=True)
    ]


def save(folder: Path, token: str, encoders: Sequence[Any], rows: Sequence[Any]) -> None:
    """`TOKEN.safetensors` (A1111) and `learned_embeds.safetensors` (diffusers) in `folder`."""
    from safetensors.torch import save_file

    found = vectors(encoders, rows)
    if len(found) == 2:  # SDXL: one set per text encoder, both layouts
        pair = {key: v.contiguous() for key, v in zip(SDXL_KEYS, found, strict=True)}
        save_file(pair, folder / f"{token}.safetensors")
        save_file(pair, folder / DIFFUSERS_FILE)
        return
    save_file({"emb_params": found[0].contiguous()}, folder / f"{token}.safetensors")
    save_file({token: found[0].contiguous()}, folder / DIFFUSERS_FILE)


def load(folder: Path, token: str, encoders: Sequence[Any], rows: Sequence[Any]) -> None:
    """Set the token's rows from a checkpoint's `learned_embeds.safetensors` (exact resume)."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(folder / DIFFUSERS_FILE)
    found = [saved[key] for key in SDXL_KEYS] if len(encoders) == 2 else [saved[token]]
    for encoder, ids, values in zip(encoders, rows, found, strict=True):
        table = encoder.get_input_embeddings().weight
        with torch.no_grad():
            table[ids.to(table.device)] = values.to(table)
