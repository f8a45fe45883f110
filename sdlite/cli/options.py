"""Options several commands declare identically (same flags, default and help), as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

import typer

from sdlite.schema import DEVICES, DTYPES

# The commands that load a model.
MODEL_HELP = (
    "Diffusers folder, hub id (ORG/NAME) or original-layout single file (.safetensors; .ckpt with --allow-pickle)."
)
Offline = Annotated[
    bool, typer.Option("--offline", help="Use only the local Hugging Face cache for hub ids (also HF_HUB_OFFLINE=1).")
]
AllowPickle = Annotated[
    bool,
    typer.Option(
        "--allow-pickle", help="Allow loading pickle weights (.ckpt/.bin/.pt). Pickles can run code: trust the source."
    ),
]
Tokenizer = Annotated[
    str | None,
    typer.Option(
        help="Single-file models: the CLIP tokenizer (folder or hub id). [default: the local Hugging Face cache's "
        "openai/clip-vit-large-patch14, then stable-diffusion-v1-5's; online, just those files]",
        show_default=False,
    ),
]
EmaWeights = Annotated[
    bool,
    typer.Option(
        "--ema-weights/--no-ema-weights",
        help="Single-file models holding an EMA copy of the UNet: use it (the usual for sampling) or the raw weights.",
    ),
]

# What a command prints.
JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]

# --dtype and --device where they default to auto (noise, check); sample's come from its other sources.
DTYPE_HELP = f"{', '.join(DTYPES)}; auto = fp16 on CUDA, else fp32."
Dtype = Annotated[str, typer.Option(help=DTYPE_HELP)]
Device = Annotated[str, typer.Option(help=f"{', '.join(DEVICES)}.")]
