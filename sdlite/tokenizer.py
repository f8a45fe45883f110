"""A CLIP-compatible BPE tokenizer built offline, for models sdlite creates itself.

The real CLIP vocabulary cannot be downloaded here, so we learn byte-pair merges on a built-in word
list and hand them to transformers' CLIPTokenizer, which applies CLIP's own normalisation, splitting
and `</w>` word ends. Every byte (and byte + `</w>`) is in the vocabulary, so no text is ever unknown;
listed words become one token each.
"""

from __future__ import annotations

import itertools
from typing import Any

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 77

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


def build_tokenizer(words: tuple[str, ...] = WORDS, max_length: int = MAX_LENGTH) -> Any:
    """A transformers CLIPTokenizer over the locally trained vocabulary (pads with EOS, like SD v1)."""
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab_and_merges(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
