"""A1111's prompt editing and alternation: which text the model is given at each denoising step.

The grammar is AUTOMATIC1111's (`modules/prompt_parser.py`, v1.10), parsed here by recursive descent:

    [to:when]  [from:to:when]  [from::when]   the text changes after step `when`: a whole number is a step, a
                                             number with a decimal point a fraction of the steps (rounded down;
                                             1.0 = never); a switch before step 1 is dropped
                                             (A1111 v1.10 without its "old scheduling" option)
    [a|b|c]                                   alternation: a at step 1, b at 2, c at 3, a at 4, ...
    (x)  (x:w)  [x]                           emphasis, kept as written (sdlite/prompts/emphasis.py weighs it)

At the top level a bracket or colon that opens or closes nothing is plain text; a `|` outside an alternation
makes the whole prompt plain (A1111's parse fails and it uses the text as it is).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
_SPACE = re.compile(r"\s+")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


@dataclass(frozen=True)
class _Scheduled:
    before: list[_Node]
    after: list[_Node]
    when: str  # the number as written: a decimal point makes it a fraction


@dataclass(frozen=True)
class _Alternate:
    options: list[list[_Node]]


@dataclass(frozen=True)
class _Emphasized:
    opener: str
    parts: list[list[_Node]]  # one, or two for (x:w)
    closer: str


_Node = Union[str, _Scheduled, _Alternate, _Emphasized]  # noqa: UP007 (a recursive alias needs the old form)


def schedule(prompt: str, steps: int, first_pass: int | None = None) -> list[tuple[int, str]]:
    """(last step, text) pairs: the text the model is given up to and including that step, as A1111's
    `get_learned_conditioning_prompt_schedules` gives them (the last pair ends at `steps`).

    For a hires fix's second pass of `steps` steps after a first pass of `first_pass`, a step number counts from
    the first pass's start and a fraction runs from 1.0 (the first pass's end) to 2.0, as A1111 schedules it.
    """
    nodes = _Parser(prompt).top()
    if nodes is None:
        return [(steps, prompt)]
    offsets = (0, 0.0) if first_pass is None else (first_pass, 1.0)
    ends = {steps}
    _collect(nodes, steps, offsets, ends)
    return [(end, _render(nodes, end, steps, offsets)) for end in sorted(ends)]


def _when(node: _Scheduled, steps: int, offsets: tuple[int, float]) -> int:
    value = float(node.when)
    value = (value - offsets[1]) * steps if "." in node.when else value - offsets[0]
    return min(steps, int(value))


def _collect(nodes: list[_Node], steps: int, offsets: tuple[int, float], ends: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Scheduled):
            when = _when(node, steps, offsets)
            if when >= 1:  # a switch before the first step is no switch
                ends.add(when)
            _collect(node.before, steps, offsets, ends)
            _collect(node.after, steps, offsets, ends)
        elif isinstance(node, _Alternate):
            ends.update(range(1, steps + 1))
            for option in node.options:
                _collect(option, steps, offsets, ends)
        elif isinstance(node, _Emphasized):
            for part in node.parts:
                _collect(part, steps, offsets, ends)


def _render(nodes: list[_Node], step: int, steps: int, offsets: tuple[int, float]) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            chosen = node.before if step <= _when(node, steps, offsets) else node.after
            out.append(_render(chosen, step, steps, offsets))
        elif isinstance(node, _Alternate):
            out.append(_render(node.options[(step - 1) % len(node.options)], step, steps, offsets))
        else:
            inner = ":".join(_render(part, step, steps, offsets) for part in node.parts)
            out.append(node.opener + inner + node.closer)
    return "".join(out)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.at = text, 0

    def top(self) -> list[_Node] | None:
        """The whole prompt; None when A1111's grammar rejects it (a stray `|`)."""
        nodes: list[_Node] = []
        while self.at < len(self.text):
            start = self.at
            node = self._construct()
            if node is not None:
                nodes.append(node)
                continue
            self.at = start
            char = self.text[start]
            if char in "[]():":  # opens or closes nothing: plain text at the top level
                nodes.append(char)
                self.at += 1
            elif (run := self._plain()) is not None:
                nodes.append(run)
            else:
                return None  # a `|` outside an alternation
        return nodes

    def _construct(self) -> _Node | None:
        char = self.text[self.at] if self.at < len(self.text) else ""
        if char == "[":
            return self._bracket()
        if char == "(":
            return self._round()
        return None

    def _plain(self) -> str | None:
        for pattern in (_PLAIN, _SPACE):
            match = pattern.match(self.text, self.at)
            if match:
                self.at = match.end()
                return match.group()
        return None

    def _prompt(self) -> list[_Node] | None:
        """A nested prompt: plain text, spaces and constructs, up to a `:`, `|` or closer; None if a construct in
        it is malformed."""
        nodes: list[_Node] = []
        while self.at < len(self.text) and self.text[self.at] not in ":|)]":
            if self.text[self.at] in "[(":
                node = self._construct()
                if node is None:
                    return None
                nodes.append(node)
            else:
                run = self._plain()
                if run is None:
                    return None
                nodes.append(run)
        return nodes

    def _eat(self, char: str) -> bool:
        if self.text.startswith(char, self.at):
            self.at += 1
            return True
        return False

    def _when(self) -> str | None:
        """`[WHITESPACE] NUMBER [WHITESPACE] ]` at the cursor, consumed, the number as written; else None with the
        cursor unmoved."""
        start = self.at
        if space := _SPACE.match(self.text, self.at):
            self.at = space.end()
        number = _NUMBER.match(self.text, self.at)
        if number:
            end = number.end()
            if space := _SPACE.match(self.text, end):
                end = space.end()
            if self.text.startswith("]", end):
                self.at = end + 1
                return number.group()
        self.at = start
        return None

    def _bracket(self) -> _Node | None:
        """`[to:when]`, `[from:to:when]`, `[a|b|...]` or `[x]` at the cursor."""
        self.at += 1
        first = self._prompt()
        if first is None:
            return None
        if self._eat("]"):
            return _Emphasized("[", [first], "]")
        if self._eat("|"):
            options = [first]
            while True:
                option = self._prompt()
                if option is None:
                    return None
                options.append(option)
                if self._eat("]"):
                    return _Alternate(options)
                if not self._eat("|"):
                    return None
        if not self._eat(":"):
            return None
        when = self._when()
        if when is not None:
            return _Scheduled([], first, when)
        second = self._prompt()
        if second is None or not self._eat(":"):
            return None
        when = self._when()
        return None if when is None else _Scheduled(first, second, when)

    def _round(self) -> _Node | None:
        """`(x)` or `(x:w)` at the cursor."""
        self.at += 1
        first = self._prompt()
        if first is None:
            return None
        if self._eat(")"):
            return _Emphasized("(", [first], ")")
        if not self._eat(":"):
            return None
        second = self._prompt()
        if second is None or not self._eat(")"):
            return None
        return _Emphasized("(", [first, second], ")")
