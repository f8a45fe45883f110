"""`make mutants` breaks sdlite one edit at a time; an edit whose text no longer occurs exactly once in its
file would only be found when someone runs it (20 minutes). Checked here in milliseconds instead (outside
tests/reliability: mutants.py expects every test there to fail under some mutant)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "reliability"))  # mutants.py is a script there, not a package
from mutants import MUTANTS, ROOT


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_every_mutant_edit_finds_its_text_exactly_once(mutant: object) -> None:
    text = (ROOT / mutant.file).read_text()  # type: ignore[attr-defined]
    assert text.count(mutant.old) == 1, f"{mutant.name}: update its text to break in {mutant.file}"  # type: ignore[attr-defined]
    assert (ROOT / mutant.suite).exists()  # type: ignore[attr-defined]


def test_mutant_names_are_unique() -> None:
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names))
