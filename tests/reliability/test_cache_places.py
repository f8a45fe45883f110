"""The cache is never a reason to fail (issue 23): a cache folder that is a file, read-only or on a full disk is
one warning and the run goes on uncached, with the results a cached run gives; where nothing can stand in for
it (DreamBooth's class images), one line names the cause and the fix before OUT is made."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sdlite import filecache
from sdlite.cli.app import app
from tests.helpers.training import losses, run

runner = CliRunner()
WARNING = "warning: sdlite's cache folder"


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args))


@pytest.fixture()
def cache_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    file = tmp_path / "cache"
    file.write_text("not a folder")
    monkeypatch.setenv("SDLITE_CACHE_DIR", str(file))
    return file


def test_sample_and_check_run_uncached_with_one_warning(
    tiny_model: Path, cache_is_a_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = invoke(
        "sample", "a cat", "--model", str(tiny_model), "--steps", "2", "--num-images", "2", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    assert result.stderr.count(WARNING) == 1
    assert f"{cache_is_a_file} cannot be used ({cache_is_a_file} is a file, not a folder)" in result.stderr
    assert "SDLITE_CACHE_DIR" in result.stderr
    assert len(list(out.glob("*.png"))) == 2
    result = invoke("check", str(out))
    assert result.exit_code == 0, result.output
    assert "2 passed" in result.stdout
    assert cache_is_a_file.read_text() == "not a folder"


def test_remember_under_a_file_is_a_warning_not_an_error(
    cache_is_a_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    filecache._problems.clear()
    filecache.remember("sha256", "some key", "value")
    assert filecache.recall("sha256", "some key") is None
    assert [r.message.count("cannot be used") for r in caplog.records] == [1]


def test_training_with_a_read_only_cache_runs_as_no_cache_does(
    tiny_model: Path, shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan says the cache is off and why; the losses are those of `--no-cache` (a cached run's match its
    first step exactly, later ones to float rounding: the cache stores the VAE's statistics per image)."""
    _, reference = run(tiny_model, shapes, tmp_path / "reference", cache=False)
    read_only = tmp_path / "read-only-cache"
    read_only.mkdir()
    monkeypatch.setenv("SDLITE_CACHE_DIR", str(read_only))
    real_access = os.access  # the tests run as the superuser, whom permission bits do not stop
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == read_only else real_access(p, mode))
    _, uncached = run(tiny_model, shapes, tmp_path / "uncached")
    plan = next(e for e in uncached if e["event"] == "plan")
    assert plan["cache"] is False
    assert plan["cache_note"] == f"off: sdlite's cache folder cannot be used ({read_only} is read-only for this user)"
    assert not any(e["event"] == "cache" for e in uncached)
    assert losses(uncached) == losses(reference)
    assert list(read_only.iterdir()) == []


def test_a_disk_that_fills_during_the_cache_fill_goes_on_uncached(
    tiny_model: Path, shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import safetensors.torch

    cache = tmp_path / "filling-cache"
    monkeypatch.setenv("SDLITE_CACHE_DIR", str(cache))
    _, reference = run(tiny_model, shapes, tmp_path / "reference", cache=False)
    real_save = safetensors.torch.save_file

    def full(tensors: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        if cache in Path(path).parents:  # the disk with the cache is full; OUT is elsewhere
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    result, events = run(tiny_model, shapes, tmp_path / "full")
    assert not any(e["event"] == "cache" for e in events)
    assert losses(events) == losses(reference)
    assert result.steps == 4
    warnings = [r.message for r in caplog.records if "cannot be used" in r.message]
    assert len(warnings) == 1 and "(no space left on device)" in warnings[0]


def test_dreambooth_without_class_data_names_the_fix_before_out_is_made(
    tiny_model: Path, shapes: Path, cache_is_a_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = invoke("train", "--model", str(tiny_model), "--data", str(shapes), "--out", str(out), "--max-steps", "1",
                    "--instance-prompt", "a sks shape", "--class-prompt", "a shape")  # fmt: skip
    assert result.exit_code == 5, result.output
    assert result.stderr.splitlines()[-1] == (
        f"error: prior preservation keeps its class images in sdlite's cache folder, which cannot be used "
        f"({cache_is_a_file} is a file, not a folder): give --class-data DIR (a folder for them), or set "
        "SDLITE_CACHE_DIR to a writable folder"
    )
    assert not out.exists()


def test_a_nearly_full_disk_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    monkeypatch.setenv("SDLITE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100 << 30, 100 << 30, 3 << 20))
    assert filecache.unusable() == "the disk is full (3 MiB free)"
    filecache.remember("sha256", "key", "value")
    assert not (tmp_path / "cache").exists()
