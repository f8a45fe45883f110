"""A CLIP-compatible BPE tokenizer built offline, for models sdlite creates itself.

The real CLIP vocabulary cannot be downloaded here, so we learn byte-pair merges on a built-in word
list and hand them to transformers' CLIPTokenizer, which applies CLIP's own normalisation, splitting
and `</w>` word ends. Every byte (and byte + `</w>`) is in the vocabulary, so no text is ever unknown;
listed words become one token each.
"""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path
from typing import Any

from sdlite.families.base import Family

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 77
OPENCLIP_PAD = "!"  # OpenCLIP pads with token 0, the byte "!"

# Words that become single tokens: the vocabulary of the synthetic scenes sdlite trains on, plus
# common English so ordinary prompts tokenize compactly.
_WORD_LIST = """
    a an the of on in at to and or with without by for from over
    under above below near behind beside is are this that it its very small large big
    tiny huge little medium left right top bottom center middle corner upper lower red green blue
    yellow white black orange purple pink brown gray grey cyan magenta violet gold silver dark light
    bright pale circle square triangle rectangle star hexagon diamond oval ellipse cross heart shape shapes background
    foreground scene image picture photo painting drawing sketch render portrait landscape cat dog bird horse car
    house tree flower mountain river sea ocean sky sun moon cloud city street forest beach snow
    water fire man woman person child face eyes hair hat one two three four five many
    some high quality detailed simple plain solid filled outline colorful style art digital oil watercolor pencil
"""
WORDS: tuple[str, ...] = tuple(_WORD_LIST.split())


def learn_merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """Byte-pair merges that turn each word into one `word</w>` symbol, most frequent pair first.

    Ties break alphabetically, so the result (and every token id) is the same on every run; the
    `tokenizers` trainer breaks ties by hash order and is not.
    """
    pieces = {word: [*word[:-1], word[-1] + "</w>"] for word in sorted(set(words))}
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in pieces.values():
            for pair in itertools.pairwise(symbols):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for word, symbols in pieces.items():
            pieces[word] = _merge(symbols, best)


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def build_vocab_and_merges(words: tuple[str, ...] = WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-ordered vocabulary and its merges: the 256 byte symbols, the same with `</w>`, one entry
    per merge, then BOS/EOS. Words must be lowercase ASCII (their byte symbols are the letters)."""
    from tokenizers import pre_tokenizers

    if not all(word.isascii() and word.isalpha() and word.islower() for word in words):
        raise ValueError("tokenizer words must be lowercase ASCII letters")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=ord)
    merges = learn_merges(words)
    symbols = alphabet + [s + "</w>" for s in alphabet] + [a + b for a, b in merges] + [BOS, EOS]
    vocab: dict[str, int] = {}
    for symbol in symbols:
        vocab.setdefault(symbol, len(vocab))
    return vocab, merges


def build_tokenizer(words: tuple[str, ...] = WORDS, max_length: int = MAX_LENGTH, openclip_pad: bool = False) -> Any:
    """A transformers CLIPTokenizer over the locally trained vocabulary: it pads with EOS like SD v1's, or with
    `!` like OpenCLIP's (SD 2.x's, SDXL's second)."""
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab_and_merges(words)
    pad = {"pad_token": OPENCLIP_PAD} if openclip_pad else {}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length, **pad)


_REQUIRED = (("vocab.json", "merges.txt"), ("tokenizer.json",))  # either form loads
_OPTIONAL = ("tokenizer_config.json", "special_tokens_map.json")


def find_tokenizers(source: str | None, offline: bool, family: Family) -> dict[str, Path]:
    """The folder of each tokenizer a single-file model of `family` needs (a single file holds none), by component.

    `source` (a tokenizer folder, a model folder holding `tokenizer/` (SDXL: and `tokenizer_2/`), or a hub id)
    when given; else the local Hugging Face cache (the family's usual repos, in order); else, when online, just
    those tokenizer files. Never whole models.
    """
    from sdlite.errors import ModelError

    names = family.tokenizers
    if source:
        path = Path(source).expanduser()
        if path.is_dir():
            if all(_holds_tokenizer(path / name) for name in names):  # a model folder
                return {name: path / name for name in names}
            if len(names) == 1 and _holds_tokenizer(path):
                return {names[0]: path}
            wanted = " and ".join(f"{name}/" for name in names)
            what = (
                "holds no tokenizer (vocab.json + merges.txt, or tokenizer.json)"
                if len(names) == 1
                else (f"is not a folder holding {wanted}: {family.name} has {len(names)} tokenizers")
            )
            raise ModelError(f"--tokenizer {path} {what}")
        if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
            raise ModelError(f"--tokenizer {source}: no such folder, and not a hub id (ORG/NAME)")
        if len(names) == 1:
            return {names[0]: _hub_tokenizer(source, "", offline)}
        return {name: _hub_tokenizer(source, name, offline) for name in names}
    return {name: _usual_tokenizer(family, name, offline) for name in names}


def _holds_tokenizer(path: Path) -> bool:
    return path.is_dir() and any(all((path / f).is_file() for f in files) for files in _REQUIRED)


def _usual_tokenizer(family: Family, name: str, offline: bool) -> Path:
    """The tokenizer `name` of `family` from the local cache (its usual repos in order), or fetched when online."""
    from sdlite.errors import ModelError

    sources = family.tokenizer_sources[name]
    for repo, subfolder in sources:
        try:
            return _hub_tokenizer(repo, subfolder, offline=True)
        except ModelError:
            continue
    if not offline:
        repo, subfolder = sources[0]
        return _hub_tokenizer(repo, subfolder, offline=False)
    repo, subfolder = sources[0]
    which = "" if len(family.tokenizers) == 1 else f" {name}"
    files = "vocab.json merges.txt tokenizer_config.json special_tokens_map.json"
    if subfolder:
        files = " ".join(f"{subfolder}/{f}" for f in files.split())
    raise ModelError(
        f"a single-file model holds no tokenizer, and {family.name}'s{which} is not in the local Hugging Face cache "
        f"(offline): pass --tokenizer DIR, or fetch it once online: hf download {repo} {files}"
    )


def _hub_tokenizer(repo_id: str, subfolder: str, offline: bool) -> Path:
    """The cached (or, online, downloaded) tokenizer files of a hub repo; ModelError when absent."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    from sdlite.errors import ModelError

    def fetch(name: str) -> Path:
        return Path(hf_hub_download(repo_id, name, subfolder=subfolder or None, local_files_only=offline))

    where = f"{repo_id}{'/' + subfolder if subfolder else ''}"
    for files in _REQUIRED:
        try:
            fetched = [fetch(name) for name in files]
        except (LocalEntryNotFoundError, EntryNotFoundError):
            continue
        except (HfHubHTTPError, OSError) as exc:
            raise ModelError(f"could not fetch the tokenizer {where}: {str(exc).splitlines()[0]}") from exc
        for name in _OPTIONAL:
            with contextlib.suppress(LocalEntryNotFoundError, EntryNotFoundError, HfHubHTTPError, OSError):
                fetch(name)
        return fetched[0].parent
    state = "not in the local cache (offline)" if offline else "not found on the hub"
    raise ModelError(f"tokenizer {where} is {state}")


def load_tokenizer(folder: Path) -> Any:
    """A CLIPTokenizer from a tokenizer folder, with a one-line ModelError when it does not load."""
    from transformers import CLIPTokenizer

    from sdlite.errors import ModelError

    try:
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"cannot load the tokenizer in {folder}: {str(exc).splitlines()[0]}") from exc


# A single file sdlite exports carries its tokenizers in its metadata, so it samples offline on its own (other tools
# ignore unknown metadata keys). One key per tokenizer component: a base64 gzip of {file name: text}.
EMBEDDED_PREFIX = "sdlite."
_EMBEDDED_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def embed_tokenizers(folders: dict[str, Path]) -> dict[str, str]:
    """Metadata entries (`sdlite.tokenizer`, `sdlite.tokenizer_2`) holding each tokenizer folder's files: its
    vocabulary and merges (or, lacking them, its tokenizer.json) and small configs. About 0.5 MB per real CLIP."""
    import base64
    import gzip
    import json

    entries: dict[str, str] = {}
    if not all(_holds_tokenizer(folder) for folder in folders.values()):
        return entries  # all of a family's tokenizers or none: half a set would not load
    for name, folder in folders.items():
        names = [f for f in _EMBEDDED_FILES if (folder / f).is_file()]
        if not {"vocab.json", "merges.txt"} <= set(names):
            names.append("tokenizer.json")
        files = {f: (folder / f).read_text(encoding="utf-8") for f in names}
        packed = gzip.compress(json.dumps(files, sort_keys=True).encode(), mtime=0)  # same files, same bytes
        entries[EMBEDDED_PREFIX + name] = base64.b64encode(packed).decode("ascii")
    return entries


def embedded_tokenizers(meta: dict[str, str], family: Family, path: Path) -> dict[str, Path]:
    """The tokenizers a single file carries (all of its family's, or none), unpacked once into sdlite's cache
    (a folder named by their content) or, when the cache cannot be written, a temporary folder."""
    import base64
    import binascii
    import gzip
    import hashlib
    import json
    import zlib

    from sdlite.errors import ModelError

    keys = [EMBEDDED_PREFIX + name for name in family.tokenizers]
    if not all(key in meta for key in keys):
        return {}
    digest = hashlib.sha256("".join(meta[key] for key in keys).encode()).hexdigest()[:16]
    root = _unpack_root(digest)
    found = {}
    for name, key in zip(family.tokenizers, keys, strict=True):
        folder = root / name
        if not _holds_tokenizer(folder):
            try:
                files = json.loads(gzip.decompress(base64.b64decode(meta[key], validate=True)))
                if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
                    raise ValueError("not a table of files")
            except (binascii.Error, OSError, EOFError, zlib.error, ValueError) as exc:
                raise ModelError(f"{path}: its embedded {name} ({key}) is damaged ({exc}); pass --tokenizer") from exc
            _unpack(folder, {Path(f).name: text for f, text in files.items()})
        found[name] = folder
    return found


def _unpack_root(digest: str) -> Path:
    import atexit
    import shutil
    import tempfile

    from sdlite import filecache

    if filecache.unusable() is None:
        return filecache.cache_dir() / "tokenizers" / digest
    folder = Path(tempfile.mkdtemp(prefix="sdlite-tokenizer-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _unpack(folder: Path, files: dict[str, str]) -> None:
    """Write the files into `folder` atomically: a concurrent reader sees all of them or none, and of two processes
    unpacking the same tokenizer at once the first rename wins (the other's equal copy is dropped)."""
    import os
    import shutil

    from sdlite.errors import writing
    from sdlite.staging import new_folder

    with writing(f"tokenizer {folder}"):
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = new_folder(folder.parent, f".{folder.name}.")
        try:
            for name, text in files.items():
                (staging / name).write_text(text, encoding="utf-8")
            try:
                os.rename(staging, folder)
            except OSError:
                if not _holds_tokenizer(folder):  # not another process's copy in the way: a real failure
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
