"""A1111's emphasis rules: the expected values are the examples A1111 documents for its own parser
(`modules/prompt_parser.py`, v1.10), plus the edge cases its scanner implies."""

from __future__ import annotations

import pytest

from sdlite.prompts.emphasis import parse_emphasis


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
        ("[word]", [("word", 1 / 1.1)]),
        ("[[word]]", [("word", 1 / 1.1 / 1.1)]),
        ("(word:0.7) plain", [("word", 0.7), (" plain", 1.0)]),
        ("(a:1.3", [("a:1.3", 1.1)]),  # the weight needs its `)`: unclosed, the colon is text
        ("a) b] c:", [("a) b] c:", 1.0)]),  # closers with nothing open, and a lone colon, are text
        ("a\\\\b", [("a\\b", 1.0)]),
        ("", [("", 1.0)]),
    ],
)
def test_weights_follow_a1111(text: str, pieces: list[tuple[str, float]]) -> None:
    assert parse_emphasis(text) == pieces


def test_break_ends_a_chunk_and_takes_its_spaces() -> None:
    assert parse_emphasis("a cat BREAK (a dog)") == [("a cat", 1.0), ("BREAK", -1.0), ("", 1.0), ("a dog", 1.1)]
    assert parse_emphasis("BREAKING news") == [("BREAKING news", 1.0)]  # only the whole word


def test_spaces_around_a_weight_and_a_weight_that_is_no_number() -> None:
    from sdlite.errors import UsageError

    assert parse_emphasis("(weight:1.2 )") == [("weight", 1.2)]
    assert parse_emphasis("(weight: 0.5)") == [("weight", 0.5)]
    with pytest.raises(UsageError, match="is not a number"):
        parse_emphasis("(word:1.2.3)")
