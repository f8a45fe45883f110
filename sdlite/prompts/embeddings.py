"""Textual-inversion embeddings, used in a prompt by their file's name as in A1111 (`--embedding easynegative.pt`,
then `--negative-prompt easynegative`).

A file is read by A1111's rules (`modules/textual_inversion/textual_inversion.py`): `string_to_param` (A1111's
`.pt`), `emb_params` (its `.safetensors`), a single tensor under any key (diffusers' `learned_embeds`), or SDXL's
`clip_l` and `clip_g` pair, one per text encoder. Each embedding's vectors become tokens of the tokenizers, named as
diffusers' `load_textual_inversion` names them (NAME, NAME_1, ...), so diffusers' own prompt encoding reads them too;
A1111's chunking keeps an embedding's vectors in one chunk. Images record A1111's `TI hashes` (the first 12 hex
digits of each used file's sha256).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlite.errors import DataError, ModelError

SUFFIXES = (".safetensors", ".pt", ".bin")
PICKLED = (".pt", ".bin")
COMPONENTS = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}  # SDXL's pair, by text encoder


@dataclass(frozen=True)
class Embedding:
    """One embedding file: its name in prompts, its vectors per text encoder, and its sha256."""

    name: str
    path: Path
    vectors: dict[str, Any]  # text-encoder component -> (vectors, width)
    sha256: str

    @property
    def tokens(self) -> list[str]:
        """Its tokens, one per vector, as diffusers names them."""
        count = next(iter(self.vectors.values())).shape[0]
        return [self.name] + [f"{self.name}_{i}" for i in range(1, count)]

    def record(self) -> dict[str, str]:
        return {"name": self.name, "source": str(self.path.resolve()), "sha256": self.sha256}


def embedding_files(files: Sequence[str], folders: Sequence[str], allow_pickle: bool) -> tuple[list[Path], list[str]]:
    """The files `--embedding` names and those in each `--embeddings-dir`, and notes on the pickle files a folder
    holds that were left out (without --allow-pickle). A missing file or folder is a data error naming it."""
    found: list[Path] = []
    notes: list[str] = []
    for file in files:
        path = Path(file).expanduser()
        if not path.is_file():
            raise DataError(f"--embedding {file}: no such file")
        if path.suffix.lower() in PICKLED and not allow_pickle:
            raise ModelError(f"--embedding {file} is a pickle file, which can run code when loaded: add --allow-pickle")
        found.append(path)
    for folder in folders:
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise DataError(f"--embeddings-dir {folder}: no such folder")
        inside = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
        skipped = [p.name for p in inside if p.suffix.lower() in PICKLED and not allow_pickle]
        if skipped:
            notes.append(f"--embeddings-dir {folder}: {len(skipped)} pickle file(s) left out without --allow-pickle "
                         f"({', '.join(skipped[:3])}{', ...' if len(skipped) > 3 else ''})")  # fmt: skip
        found += [p for p in inside if p.name not in skipped]
    names: dict[str, Path] = {}
    for path in found:
        if path.stem in names and names[path.stem].resolve() != path.resolve():
            raise DataError(f"two embeddings are named {path.stem!r}: {names[path.stem]} and {path}")
        names[path.stem] = path
    return list(names.values()), notes


def read_embedding(path: Path, components: Sequence[str]) -> dict[str, Any]:
    """The vectors of one file for each text encoder in `components`, by A1111's reading rules."""
    data = _load(path)
    if "clip_l" in data or "clip_g" in data:  # SDXL's pair
        if len(components) < 2:
            raise ModelError(f"embedding {path} is for SDXL (clip_l and clip_g vectors); this model is not")
        return {COMPONENTS[key]: _matrix(data[key], path) for key in ("clip_l", "clip_g") if key in data}
    if "string_to_param" in data and isinstance(data["string_to_param"], dict):
        vectors = next(iter(data["string_to_param"].values()))
    elif "emb_params" in data:
        vectors = data["emb_params"]
    else:
        tensors = [value for value in data.values() if hasattr(value, "shape")]
        if len(tensors) != 1:
            raise DataError(f"embedding {path} holds no vectors A1111 would read (string_to_param, emb_params, one "
                            "tensor, or clip_l and clip_g)")  # fmt: skip
        vectors = tensors[0]
    if len(components) > 1:
        raise ModelError(f"embedding {path} has one set of vectors; an SDXL model needs its clip_l and clip_g pair")
    return {components[0]: _matrix(vectors, path)}


def _load(path: Path) -> dict[str, Any]:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(path))
        except Exception as exc:  # safetensors raises its own error types for a damaged header
            raise DataError(f"embedding {path} cannot be read: {exc}") from exc
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or hostile pickle
        raise DataError(f"embedding {path} cannot be read as weights only: {str(exc).splitlines()[0]}") from exc
    if hasattr(data, "shape"):
        return {"vectors": data}
    if not isinstance(data, dict):
        raise DataError(f"embedding {path} holds no vectors")
    return data


def _matrix(tensor: Any, path: Path) -> Any:
    """(vectors, width), a single vector made a row."""
    tensor = tensor.detach().float()
    if tensor.ndim == 1:
        tensor = tensor[None]
    if tensor.ndim != 2 or tensor.shape[0] == 0:
        raise DataError(f"embedding {path} has vectors of shape {tuple(tensor.shape)}, not (count, width)")
    return tensor


def add_embeddings(paths: Sequence[Path], parts: dict[str, Any], text_encoders: Sequence[str]) -> list[Embedding]:
    """Read each file and give each text encoder (`parts`: component -> module, `tokenizer`s alongside) its tokens
    and vectors; a width the encoder does not have is a model error naming both."""
    import torch

    from sdlite.filecache import file_sha256

    embeddings = []
    for path in paths:
        vectors = read_embedding(path, text_encoders)
        embedding = Embedding(path.stem, path, vectors, file_sha256(path))
        for component, matrix in vectors.items():
            tokenizer = parts[component.replace("text_encoder", "tokenizer")]
            model = parts[component]
            width = model.get_input_embeddings().weight.shape[1]
            if matrix.shape[1] != width:
                raise ModelError(f"embedding {path} has {matrix.shape[1]}-wide vectors; this model's {component} "
                                 f"reads {width}-wide ones (an embedding for another family)")  # fmt: skip
            taken = [t for t in embedding.tokens if t in tokenizer.get_vocab()]
            if taken:
                raise DataError(f"embedding {path}: {taken[0]!r} is already a token of the tokenizer (a word, or an "
                                "embedding loaded twice): rename the file")  # fmt: skip
            tokenizer.add_tokens(embedding.tokens)
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the new rows are set below
            ids = tokenizer.convert_tokens_to_ids(embedding.tokens)
            with torch.no_grad():
                table = model.get_input_embeddings().weight
                table[ids] = matrix.to(table)
        embeddings.append(embedding)
    return embeddings


def ti_hashes(records: Sequence[dict[str, str]], texts: Sequence[str | None]) -> str | None:
    """A1111's `TI hashes` value for the embeddings (their records) the texts use: `name: shorthash` each, `:` and
    `,` removed from names (the tokenizer splits an embedding's name out wherever it stands in a prompt)."""
    pairs = [
        f"{r['name'].replace(':', '').replace(',', '')}: {r['sha256'][:12]}"
        for r in records
        if any(text and r["name"] in text for text in texts)
    ]
    return ", ".join(pairs) or None


def parse_ti_hashes(value: str) -> dict[str, str]:
    """A1111's `TI hashes` read back: {name: shorthash}."""
    pairs = (part.rsplit(":", 1) for part in value.split(",") if ":" in part)
    return {name.strip(): short.strip() for name, short in pairs}


def expansions(tokenizer: Any, embeddings: Sequence[Embedding]) -> dict[int, list[int]]:
    """Each multi-vector embedding's first token id -> all its ids (what the prompt's one name stands for)."""
    return {
        ids[0]: ids
        for ids in (tokenizer.convert_tokens_to_ids(e.tokens) for e in embeddings)
        if len(ids) > 1 and all(i is not None for i in ids)
    }
