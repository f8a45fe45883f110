"""The reliability suite (issue 5): every test here is marked `reliability` and injects one fault.

Run just this suite with `pytest -m reliability`; it is part of `make test`.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 captioned 64x64 images: with batch 2, one epoch is 4 steps."""
    from sdlite.testing import make_shapes_dataset

    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n=8)
