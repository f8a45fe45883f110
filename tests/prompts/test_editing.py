"""A1111's prompt editing and alternation: the expected schedules are the examples A1111 documents for its own
parser (`modules/prompt_parser.py`, v1.10), 10 steps."""

from __future__ import annotations

import pytest

from sdlite.prompts.editing import schedule


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("test", [(10, "test")]),
        ("a [b:3]", [(3, "a "), (10, "a b")]),
        ("a [b: 3]", [(3, "a "), (10, "a b")]),
        ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
        ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
        ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
        ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
        ("a [unbalanced", [(10, "a [unbalanced")]),
        ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
        ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
        ("[a|(b:1.1)]", [(s, "a" if s % 2 else "(b:1.1)") for s in range(1, 11)]),
        ("a [cat:dog::0.25]", [(10, "a [cat:dog::0.25]")]),  # two colons before the number: not an edit
        ("a [cat::0.4] b", [(4, "a cat b"), (10, "a  b")]),
        ("x | y", [(10, "x | y")]),  # a `|` outside an alternation: the prompt is plain
        ("[a:b:20]", [(10, "a")]),  # an edit past the last step never happens
    ],
)
def test_schedules_follow_a1111(prompt: str, expected: list[tuple[int, str]]) -> None:
    assert schedule(prompt, 10) == expected
