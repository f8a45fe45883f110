"""Outputs that scale and share: numbering past 99,999 without rescanning, and the user's umask on
everything sdlite creates (images, grids, exports, models, checkpoints), written atomically as before."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sdlite.models.config import ExportConfig, InitConfig
from sdlite.models.export import export
from sdlite.models.presets import init_model
from sdlite.sampling.config import Generation, SampleConfig
from sdlite.sampling.run import sample
from sdlite.staging import staged_file, staged_folder
from sdlite.testing import make_shapes_dataset
from sdlite.training.config import TrainConfig
from sdlite.training.unet import train


def run(model: Path, out: Path, num_images: int = 2, **kwargs: object) -> list[Path]:
    config = SampleConfig(model=str(model), generations=(Generation("a red circle", seed=7, steps=1,
                                                                    num_images=num_images),), out=out, **kwargs)  # type: ignore[arg-type]  # fmt: skip
    return [r.path for r in sample(config).images]


def natural(name: str) -> list[object]:
    """The order of `ls -v`, `sort -V` and file managers: digit runs compared as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def test_numbering_keeps_increasing_past_99999(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "00007-3.png").write_bytes(b"")
    (out / "99999-1.png").write_bytes(b"")
    first = run(tiny_model, out, grid=True)
    second = run(tiny_model, out)
    assert [p.name for p in first + second] == ["100000-7.png", "100001-8.png", "100002-7.png", "100003-8.png"]
    assert (out / "grid-100000.png").is_file()
    names = sorted((p.name for p in out.glob("[0-9]*.png")), key=natural)
    assert names == ["00007-3.png", "99999-1.png", *[p.name for p in first + second]]  # creation order


def test_next_index_comes_from_one_scan_per_run(tiny_model: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    scans = []
    iterdir = Path.iterdir

    def counted(self: Path) -> Iterator[Path]:
        if self == out:
            scans.append(self)
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", counted)
    paths = run(tiny_model, out, num_images=5, batch_size=2, grid=True)
    assert [p.name.split("-")[0] for p in paths] == ["00000", "00001", "00002", "00003", "00004"]
    assert len(scans) == 1


def test_a_name_taken_meanwhile_is_skipped_not_overwritten(tiny_model: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import sdlite.sampling.run

    out = tmp_path / "out"
    out.mkdir()
    numbering = sdlite.sampling.run.Numbering

    class Racing(numbering):  # type: ignore[misc, valid-type]
        def __init__(self, folder: Path) -> None:
            super().__init__(folder)
            (folder / "00000-7.png").write_bytes(b"another run's image")  # written after the scan

    monkeypatch.setattr(sdlite.sampling.run, "Numbering", Racing)
    paths = run(tiny_model, out, num_images=1)
    assert [p.name for p in paths] == ["00001-7.png"]
    assert (out / "00000-7.png").read_bytes() == b"another run's image"


@pytest.fixture
def umask() -> Iterator[Any]:
    previous = os.umask(0o022)

    def set_umask(value: int) -> None:
        os.umask(value)

    yield set_umask
    os.umask(previous)


def modes(root: Path) -> tuple[set[int], set[int]]:
    """The permission bits of every file and of every folder under `root` (itself included)."""
    files, folders = set(), {stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        (folders if path.is_dir() else files).add(stat.S_IMODE(path.stat().st_mode))
    return files, folders


@pytest.mark.parametrize(("mask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_staged_outputs_get_the_umask(umask: Any, tmp_path: Path, mask: int, file_mode: int, folder_mode: int) -> None:
    umask(mask)
    with staged_file(tmp_path / "a" / "file.bin", "test file") as temp:
        temp.write_bytes(b"x")
    with staged_folder(tmp_path / "folder", "test folder") as staging:
        (staging / "inner").mkdir()
        (staging / "inner" / "w.bin").write_bytes(b"y")
    assert stat.S_IMODE((tmp_path / "a" / "file.bin").stat().st_mode) == file_mode
    assert modes(tmp_path / "folder") == ({file_mode}, {folder_mode})
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary names left behind


@pytest.mark.parametrize(("mask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_images_grids_models_and_exports_get_the_umask(umask: Any, tmp_path: Path, mask: int, file_mode: int,
                                                       folder_mode: int) -> None:  # fmt: skip
    umask(mask)
    model = init_model(InitConfig(out=tmp_path / "model", preset="tiny"))
    out = tmp_path / "images"
    run(model, out, grid=True)
    single = export(ExportConfig(source=str(model), out=tmp_path / "single.safetensors"))
    folder = export(ExportConfig(source=str(model), out=tmp_path / "diffusers", format="diffusers", dtype="fp16"))
    for root in (model, out, folder):
        assert modes(root) == ({file_mode}, {folder_mode}), root
    assert stat.S_IMODE(single.stat().st_mode) == file_mode


def test_checkpoints_trained_models_and_cache_get_the_umask(umask: Any, tiny_model: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    umask(0o022)
    monkeypatch.setenv("SDLITE_CACHE_DIR", str(tmp_path / "cache"))
    data = make_shapes_dataset(tmp_path / "data", n=4)
    out = tmp_path / "run"
    train(TrainConfig(model=str(tiny_model), data=data, out=out, max_steps=2, batch_size=2, checkpoint_every=1))
    checkpoint = out / "checkpoints" / "step-000001"
    assert (checkpoint / "sdlite-checkpoint.json").is_file()
    files, folders = modes(out)
    # Frozen components are hard links to the base model's files, which keep the base model's modes.
    assert folders == {0o755} and files <= {0o644, stat.S_IMODE((tiny_model / "vae" / "config.json").stat().st_mode)}
    assert stat.S_IMODE((out / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((checkpoint / "training" / "optimizer.safetensors").stat().st_mode) == 0o644
    assert modes(tmp_path / "cache") == ({0o644}, {0o755})  # the latent and text-embedding cache


def test_a_read_only_folder_is_a_disk_error_not_an_internal_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a read-only file system even removing a temporary file that was never made fails (EROFS): that
    cleanup error once replaced the one-line disk error (exit 5) with an internal error (exit 1)."""
    import errno

    from PIL import Image

    from sdlite.errors import ResourceError
    from sdlite.sampling.outputs import Numbering, write_png

    def read_only(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "write_bytes", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(ResourceError, match="Read-only file system"):
        write_png(tmp_path, Numbering(tmp_path), 1, Image.new("RGB", (8, 8)), None)


def test_a_reader_that_leaves_early_stops_the_run_quietly(tiny_model: Path, tmp_path: Path) -> None:
    """`sample --json | head -1`: exit 141 like any pipe writer, not an internal error (exit 1)."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "sdlite", "sample", "a red circle", "--model", str(tiny_model),
                                "--num-images", "6", "--batch-size", "1", "--steps", "2", "--json", "-q", "--out",
                                str(tmp_path / "o")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    assert b'"path"' in process.stdout.readline()
    process.stdout.close()  # the reader leaves
    assert process.wait(timeout=120) == 141 and process.stderr.read() == b""
