"""Output places are checked before anything heavy: a device, a FIFO, a file or a place under a file given as
`--out` is named at once (exit 2), a read-only place says so (exit 5), before any model loads or image is made."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sdlite.cli.app import app

runner = CliRunner()


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args))


@pytest.fixture()
def places(tmp_path: Path) -> dict[str, Path]:
    file = tmp_path / "a-file"
    file.write_text("mine")
    fifo = tmp_path / "a-fifo"
    os.mkfifo(fifo)
    return {"file": file, "fifo": fifo, "device": Path("/dev/null"), "under-file": file / "out"}


@pytest.mark.parametrize(
    ("place", "code", "words"),
    [("device", 2, "is a character device, not a folder"), ("fifo", 2, "is a FIFO (pipe), not a folder"),
     ("file", 2, "is a file, not a folder"), ("under-file", 5, "cannot write to output folder")],
)  # fmt: skip
def test_sample_and_train_name_what_is_in_the_way(
    tiny_model: Path, places: dict[str, Path], place: str, code: int, words: str, tmp_path: Path
) -> None:
    for command in (["sample", "x", "--model", str(tiny_model)],
                    ["train", "--model", str(tiny_model), "--data", str(tmp_path), "--max-steps", "1"]):  # fmt: skip
        result = invoke(*command, "--out", str(places[place]))
        assert result.exit_code == code, result.output
        assert words in result.stderr and result.stderr.count("\n") == 1
    assert places["file"].read_text() == "mine"


def test_noise_and_export_check_their_files_first(tiny_model: Path, places: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "in.png")
    result = invoke("noise", str(tmp_path / "in.png"), "--model", str(tiny_model), "--out", str(places["fifo"]))
    assert result.exit_code == 2 and "is a FIFO (pipe): give a file name" in result.stderr
    result = invoke("noise", str(tmp_path / "in.png"), "--out", str(places["under-file"] / "n.png"))
    assert result.exit_code == 5 and f"{places['file']} is a file, not a folder" in result.stderr
    result = invoke("export", str(tiny_model), str(places["under-file"] / "m.safetensors"))
    assert result.exit_code == 5 and f"{places['file']} is a file, not a folder" in result.stderr


def test_a_read_only_place_says_so_before_the_model_loads(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the superuser the tests run as, permission bits do not stop writes: the access check is what is tested."""
    import sdlite.sampling.run as sampling_run

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == tmp_path else real_access(path, mode))
    monkeypatch.setattr(sampling_run, "resolve_model", lambda *a, **k: pytest.fail("the model was looked at"))
    result = invoke("sample", "x", "--model", str(tiny_model), "--out", str(tmp_path / "new" / "out"))
    assert result.exit_code == 5
    out = tmp_path / "new" / "out"
    assert result.stderr == f"error: cannot write to output folder {out}: {tmp_path} is read-only for this user\n"


@pytest.mark.parametrize(
    ("flag", "place", "code", "words"),
    [("--diff", "fifo", 2, "--diff {p} is a FIFO (pipe), not a folder"), ("--diff", "file", 2, "is a file, not a folder"),
     ("--junit", "device", 2, "--junit {p} is a character device: give a file name"),
     ("--junit", "under-file", 5, "cannot write {p}: {p.parent} is a file, not a folder")],
)  # fmt: skip
def test_check_reports_are_placed_before_any_golden_is_regenerated(
    tiny_model: Path, places: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    flag: str, place: str, code: int, words: str,
) -> None:  # fmt: skip
    import sdlite.quality.golden as golden

    goldens = tmp_path / "goldens"
    assert invoke("sample", "x", "--model", str(tiny_model), "--steps", "1", "--out", str(goldens)).exit_code == 0
    monkeypatch.setattr(golden, "_find_pngs", lambda paths: pytest.fail("goldens were read"))
    result = invoke("check", str(goldens), flag, str(places[place]))
    assert result.exit_code == code, result.output
    assert words.format(p=places[place]) in result.stderr
