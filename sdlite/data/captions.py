"""Caption augmentation for tag-style captions (`--shuffle-captions`, `--keep-tokens N`).

Captions written as comma-separated tags ("sks dog, sitting, grass, sunny") carry no meaning in their
order, yet the text encoder sees the order; shuffling the tags per example and epoch keeps the model
from tying a concept to a position. The first `keep` tags (usually the trigger word) stay in front, as
in kohya sd-scripts, whose convention this follows: split on ",", strip each tag, drop empty ones.
"""

from __future__ import annotations

import random


def shuffle_tags(caption: str, keep: int, seed: int) -> str:
    """The caption's tags with all but the first `keep` shuffled by `random.Random(seed)`, joined by ", ".

    Deterministic in `seed` (the caller derives it from the run seed, the epoch and the example), so a
    resumed run sees the same captions. A caption without a comma is not a tag list: it is returned as is
    (stripped). Empty tags (trailing or doubled commas) are dropped.
    """
    if "," not in caption:
        return caption.strip()
    tags = [tag.strip() for tag in caption.split(",")]
    tags = [tag for tag in tags if tag]
    kept, rest = tags[:keep], tags[keep:]
    random.Random(seed).shuffle(rest)
    return ", ".join(kept + rest)
