"""Shared fixtures: everything offline, a tiny model built once per session, caches in temp folders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each (and in the processes they start), set before
    # torch loads. Two threads per worker would make four on two cores, and OpenMP's spinning threads then
    # slow every test down.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The same isolation for module- and session-scoped fixtures, which run before any test's own fixtures: a
    training fixture would otherwise fill (and reuse stale entries of) the user's own cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("SDLITE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sdlite-cache"))
    patch.delenv("SDLITE_MODEL", raising=False)
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hash caches and the default-model variable never leak between tests or from the user's shell."""
    monkeypatch.setenv("SDLITE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sdlite-cache"))
    monkeypatch.delenv("SDLITE_MODEL", raising=False)
    monkeypatch.delenv("SDLITE_DEBUG", raising=False)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model (seed 0), shared read-only by the whole session."""
    from sdlite.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def sd1_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random model with exactly SD v1's key layout at tiny widths (seed 0), shared read-only."""
    from sdlite.testing import make_sd1_tiny_model

    return make_sd1_tiny_model(tmp_path_factory.mktemp("models") / "sd1-tiny")


@pytest.fixture(scope="session")
def sd2_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SD 2.1's key layout at tiny widths, predicting v (seed 0), shared read-only."""
    from sdlite.testing import make_preset_model

    return make_preset_model(tmp_path_factory.mktemp("models") / "sd2-tiny", "sd2-tiny")


@pytest.fixture(scope="session")
def sdxl_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SDXL base 1.0's key layout at tiny widths (seed 0), shared read-only."""
    from sdlite.testing import make_preset_model

    return make_preset_model(tmp_path_factory.mktemp("models") / "sdxl-tiny", "sdxl-tiny")
