"""A1111's emphasis syntax: which parts of a prompt are weighted, and by how much.

The rules are AUTOMATIC1111's (`modules/prompt_parser.py`, `parse_prompt_attention`, v1.10), re-implemented:
`(text)` multiplies the weight of what it encloses by 1.1, `[text]` by 1 / 1.1, `(text:1.3)` (spaces allowed around the number) by 1.3; they nest by
multiplication, and brackets left open at the end apply to everything after them (round ones first, then square
ones). `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are literal characters; a bracket that closes nothing, and a `:` outside
`(text:w)`, is plain text. `BREAK` (a whole word) ends the current 75-token chunk: it comes out as the piece
("BREAK", -1). Neighbouring pieces of equal weight are joined. The multiplications happen in A1111's order, so the
weights are the same floats (`((house:1.3))` is 1.5730000000000004).
"""

from __future__ import annotations

import re

from sdlite.errors import UsageError

ROUND = 1.1
SQUARE = 1 / 1.1
BREAK = ("BREAK", -1.0)

# One token per match, tried in this order (as A1111's scanner): escapes, openers, a weighted close, closers, a run
# of plain characters, a lone colon.
_TOKEN = re.compile(
    r"""
    \\\( | \\\) | \\\[ | \\\] | \\\\ | \\
    | \(
    | \[
    | :\s*([+-]?[.\d]+)\s*\)
    | \)
    | \]
    | [^\\()\[\]:]+
    | :
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """`text` as (piece, weight) pairs in order, by A1111's rules (see the module's docstring)."""
    pieces: list[list[str | float]] = []
    rounds: list[int] = []  # where each open `(` starts, in `pieces`
    squares: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] = float(piece[1]) * factor

    for match in _TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])
        elif token == "(":
            rounds.append(len(pieces))
        elif token == "[":
            squares.append(len(pieces))
        elif weight is not None and rounds:
            try:
                factor = float(weight)
            except ValueError:  # A1111 fails on it too
                raise UsageError(f"prompt weight {token!r} is not a number: write it like (word:1.2)") from None
            multiply(rounds.pop(), factor)
        elif token == ")" and rounds:
            multiply(rounds.pop(), ROUND)
        elif token == "]" and squares:
            multiply(squares.pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i:
                    pieces.append(list(BREAK))
                pieces.append([part, 1.0])
    for start in rounds:
        multiply(start, ROUND)
    for start in squares:
        multiply(start, SQUARE)
    if not pieces:
        return [("", 1.0)]
    joined: list[tuple[str, float]] = []
    for piece, weight in pieces:
        if joined and joined[-1][1] == weight:
            joined[-1] = (joined[-1][0] + str(piece), joined[-1][1])
        else:
            joined.append((str(piece), float(weight)))
    return joined
