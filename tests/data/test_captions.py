"""`--shuffle-captions` / `--keep-tokens`: tag shuffling that is deterministic and keeps the leading tags."""

from __future__ import annotations

from collections import Counter

from sdlite.data.captions import shuffle_tags

TAGS = [f"tag{i}" for i in range(20)]
LONG = ", ".join(TAGS)


def tags(caption: str) -> list[str]:
    return caption.split(", ")


def test_keep_tokens_stay_in_front() -> None:
    for keep in (1, 2, 5):
        for seed in range(10):
            assert tags(shuffle_tags(LONG, keep, seed))[:keep] == TAGS[:keep]


def test_deterministic_from_the_seed() -> None:
    assert shuffle_tags(LONG, 1, 123) == shuffle_tags(LONG, 1, 123)


def test_different_seeds_give_different_orders() -> None:
    assert len({shuffle_tags(LONG, 0, seed) for seed in range(10)}) > 1
    assert shuffle_tags(LONG, 0, 1) != LONG or shuffle_tags(LONG, 0, 2) != LONG


def test_a_permutation_of_the_same_tags() -> None:
    caption = "sks dog, red, red, grass,sunny ,  outdoors"
    shuffled = shuffle_tags(caption, 1, 7)
    assert Counter(tags(shuffled)) == Counter(["sks dog", "red", "red", "grass", "sunny", "outdoors"])


def test_keep_at_least_the_number_of_tags_changes_nothing_but_spacing() -> None:
    assert shuffle_tags("a, b,c", 3, 5) == "a, b, c"
    assert shuffle_tags("a, b,c", 10, 5) == "a, b, c"


def test_edge_cases() -> None:
    assert shuffle_tags("", 0, 0) == ""
    assert shuffle_tags("   ", 2, 0) == ""
    assert shuffle_tags("  a photo of sks dog  ", 0, 3) == "a photo of sks dog"  # no commas: not a tag list
    assert shuffle_tags(",, ,", 0, 0) == ""
    shuffled = shuffle_tags("a, b, c,", 1, 4)  # a trailing comma makes no empty tag
    assert tags(shuffled)[0] == "a" and sorted(tags(shuffled)) == ["a", "b", "c"]
