"""A CLIP-compatible BPE tokenizer built offline, for models sdlite creates itself.

The real CLIP vocabulary cannot be downloaded here, so we train a byte-level BPE with CLIP's own
normalisation, splitting and `</w>` word ends on a built-in word list. Every byte (and byte + `</w>`)
is in the vocabulary, so no text is ever unknown; listed words become one token each.
"""

from __future__ import annotations

import json
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

# CLIP's pre-tokenizer pattern: special tokens, contractions, letter runs, single digits, punctuation.
_SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def build_vocab_and_merges(words: tuple[str, ...] = WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train byte-level BPE merges on `words`; return a CLIP-ordered vocabulary and the merges.

    Order as in CLIP: the 256 byte symbols, the same with `</w>`, one entry per merge, then BOS/EOS.
    Deterministic: the same words give the same ids.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=EOS))
    bpe.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=ord)
    trainer = trainers.BpeTrainer(
        vocab_size=10**6,
        min_frequency=0,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(words, trainer)
    merges = [_as_pair(m) for m in json.loads(bpe.to_str())["model"]["merges"]]

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


def _as_pair(merge: str | list[str]) -> tuple[str, str]:
    first, second = merge.split(" ") if isinstance(merge, str) else merge
    return first, second
