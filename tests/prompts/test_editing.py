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


@pytest.mark.parametrize(
    ("prompt", "steps", "expected"),
    [
        # Empty alternation options (A1111's own examples).
        ("[fe|]male", 4, [(1, "female"), (2, "male"), (3, "female"), (4, "male")]),
        ("[fe|||]male", 5, [(1, "female"), (2, "male"), (3, "male"), (4, "male"), (5, "female")]),
        # A decimal point makes a fraction, whatever its size; a whole number is a step.
        ("a [dog:cat:1.0] b", 2, [(2, "a dog b")]),
        ("a [dog:cat:2.5] b", 10, [(10, "a dog b")]),
        ("a [dog:cat:1] b", 2, [(1, "a dog b"), (2, "a cat b")]),
        ("a [dog:cat:1e1] b", 20, [(10, "a dog b"), (20, "a cat b")]),
        # A switch before step 1 is dropped (the later text from the start).
        ("a [dog:cat:0.3] b", 1, [(1, "a cat b")]),
        ("[dog:cat:-1]", 5, [(5, "cat")]),
        ("[dog:cat:0]", 5, [(5, "cat")]),
        # Spaces before the closing bracket.
        ("a [dog:cat:5 ] b", 10, [(5, "a dog b"), (10, "a cat b")]),
        ("[ a : b : 0.5 ]", 10, [(5, " a "), (10, " b ")]),
    ],
)
def test_a1111_v1_10_scheduling_rules(prompt: str, steps: int, expected: list[tuple[int, str]]) -> None:
    """Cases where A1111 v1.10 differs from its older parser; each checked against v1.10's own code."""
    assert schedule(prompt, steps) == expected


def test_a_hires_pass_schedules_over_both_passes() -> None:
    """A1111's hires examples: after a 10-step first pass, 10 hires steps: fractions run from 1.0 to 2.0."""
    assert schedule("a [b:.5] c", 10, first_pass=10) == [(10, "a b c")]
    assert schedule("a [b:1.5] c", 10, first_pass=10) == [(5, "a  c"), (10, "a b c")]
    assert schedule("a [b:15] c", 10, first_pass=10) == [(5, "a  c"), (10, "a b c")]
