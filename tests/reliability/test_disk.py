"""Unwritable or full output locations fail with exit 5 and one clear line, and leave what was
already written (images, checkpoints) whole."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import SDLITE, events, run
from PIL import Image
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.formats import png_record
from sdlite.training import checkpoints

runner = CliRunner()


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A tiny RAM file system: a real full disk (ENOSPC) or a real read-only one (EROFS)."""
    path.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the ENOSPC-injection tests cover this case")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def sample(model: Path, out: Path, n: int) -> Any:
    return runner.invoke(app, ["sample", "a red circle", "--model", str(model), "--steps", "1", "--seed", "0",
                               "--num-images", str(n), "--out", str(out), "--json", "--quiet"])  # fmt: skip


def assert_whole_images(out: Path, expected: int) -> None:
    """Every PNG left behind decodes completely and carries its metadata; no partial file remains."""
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == expected
    for path in pngs:
        with Image.open(path) as image:
            image.load()
        assert png_record.read_record(path)["settings"]["prompt"] == "a red circle"


@pytest.mark.parametrize("blocker", ["file", "read-only"])
def test_unwritable_sample_output_exits_5(tiny_model: Path, tmp_path: Path, blocker: str) -> None:
    with contextlib.ExitStack() as stack:
        if blocker == "file":
            (tmp_path / "taken").write_text("a file where the output folder should go")
            out = tmp_path / "taken" / "images"
        elif os.geteuid() != 0:
            (tmp_path / "ro").mkdir()
            (tmp_path / "ro").chmod(0o555)
            out = tmp_path / "ro" / "images"
        else:  # root ignores permissions: use a read-only file system instead
            out = stack.enter_context(tmpfs(tmp_path / "ro", "64k", read_only=True)) / "images"
        result = sample(tiny_model, out, 1)
    assert result.exit_code == 5, result.stderr
    assert result.stderr.startswith(f"error: cannot write to output folder {out}")
    assert len(result.stderr.strip().splitlines()) == 1


def test_full_disk_while_sampling_exits_5_keeping_earlier_images(tiny_model: Path, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "48k") as out:
        result = sample(tiny_model, out, 12)
        assert result.exit_code == 5, result.stderr
        assert re.fullmatch(rf"error: cannot write {out}/\d+-\d+\.png: no space left on device\n", result.stderr)
        written = len(result.stdout.splitlines())
        assert 0 < written < 12
        assert_whole_images(out, written)


def test_enospc_while_sampling_exits_5_keeping_earlier_images(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same without root: the fourth image write fails as a full disk would, halfway through."""
    from sdlite.sampling import outputs

    real_write = Path.write_bytes
    opened = []

    def write_bytes(self: Path, data: bytes) -> int:  # images are written to a hidden file, then linked
        if self.name.endswith(".partial") and ".png." in self.name:
            opened.append(self.parent / self.name.lstrip(".").split(".png.")[0])
            if len(opened) == 4:
                real_write(self, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    monkeypatch.setattr(outputs.Path, "write_bytes", write_bytes)
    out = tmp_path / "out"
    result = sample(tiny_model, out, 6)
    assert result.exit_code == 5
    assert result.stderr.strip() == f"error: cannot write {opened[3]}.png: no space left on device"
    assert len(result.stdout.splitlines()) == 3
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]  # the half-written file was removed
    assert_whole_images(out, 3)  # the half-written fourth file was removed


def test_disk_full_during_training_exits_5_keeping_the_last_checkpoint(
    tiny_model: Path, shapes: Path, tmp_path: Path
) -> None:
    """After checkpoint 2 the process may write no file over 64 KiB (a kernel limit, as good as a full
    disk for a checkpoint): checkpoint 4 fails at its first weights file, inside safetensors."""
    out = tmp_path / "out"
    result = run("train", "--model", str(tiny_model), "--data", str(shapes), "--out", str(out), "--max-steps", "8",
                 "--batch-size", "2", "--checkpoint-every", "2", "--json-events",
                 fault=("disk-full-after-checkpoint", 2))  # fmt: skip
    assert result.returncode == 5, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write checkpoint {checkpoints.checkpoint_dir(out, 4)}: file too large")
    assert [e["step"] for e in events(result.stdout) if e["event"] == "checkpoint"] == [2]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000002"]  # no half-written staging left
    checkpoints.verify(out / "checkpoints" / "step-000002", {})


def test_unwritable_training_output_exits_5_before_loading_weights(
    tiny_model: Path, shapes: Path, tmp_path: Path
) -> None:
    (tmp_path / "taken").write_text("a file where the output folder should go")
    out = tmp_path / "taken" / "run"
    result = runner.invoke(app, ["train", "--model", str(tiny_model), "--data", str(shapes), "--out", str(out),
                                 "--max-steps", "1", "--json-events"])  # fmt: skip
    assert result.exit_code == 5
    taken = tmp_path / "taken"
    assert result.stderr.strip() == f"error: cannot write to output folder {out}: {taken} is a file, not a folder"
    assert result.stdout == ""  # OUT is checked first: before the images are read and the plan is made


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_standard_output_exits_5_keeping_the_image(tiny_model: Path, tmp_path: Path) -> None:
    """`--json > file` on a full disk: the device refuses the result lines (ENOSPC from the kernel)."""
    out = tmp_path / "out"
    with open("/dev/full", "w") as full:
        done = subprocess.run([*SDLITE, "sample", "a red circle", "--model", str(tiny_model), "--steps", "1",
                               "--out", str(out), "--json"], stdout=full, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert done.returncode == 5, done.stderr
    assert done.stderr.strip() == "error: cannot write output: no space left on device"
    assert_whole_images(out, 1)
