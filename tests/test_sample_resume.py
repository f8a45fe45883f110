"""`sample --resume`: an interrupted run completes to exactly the folder an uninterrupted run leaves."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdlite.config import Generation, SampleConfig
from sdlite.metadata import read_record
from sdlite.sampling import sample

PROMPT = "a red circle on a blue background"


def folder_state(out: Path) -> dict[str, tuple[bytes, str]]:
    """Every image's name -> (pixels, metadata): what must match between the two folders."""
    state = {}
    for path in sorted(out.glob("*.png")):
        with Image.open(path) as image:
            record = json.dumps(read_record(path)["settings"]) if "sdlite" in image.text else ""
            state[path.name] = (np.asarray(image.convert("RGB")).tobytes(), record)
    return state


def config(model: Path, out: Path, resume: bool = False) -> SampleConfig:
    gens = (Generation(PROMPT, seed=3, steps=4, num_images=5), Generation("a green square", seed=40, steps=3))
    return SampleConfig(model=str(model), generations=gens, out=out, batch_size=2, resume=resume)


def test_resume_remakes_only_the_missing_images_under_their_own_names(tiny_model: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    sample(config(tiny_model, reference))
    out = tmp_path / "out"
    (out).mkdir()
    Image.new("RGB", (8, 8)).save(out / "00000-99.png")  # another tool's image, already there
    first = sample(config(tiny_model, out)).images  # numbered after the foreign file: 00001..
    assert [r.path.name for r in first][:2] == ["00001-3.png", "00002-4.png"]
    expected = folder_state(out)
    for name in ("00002-4.png", "00004-6.png", "00006-40.png"):  # lost mid-batch, a whole batch, the last one
        (out / name).unlink()
    done: list[tuple[int, int]] = []
    again = sample(config(tiny_model, out, resume=True), progress=lambda d, t: done.append((d, t)))
    assert [r.path.name for r in again.images] == [r.path.name for r in first]
    assert folder_state(out) == expected
    assert done[-1] == (5 * 4 + 3, 5 * 4 + 3)
    # Nothing missing: nothing is made, every image is reported in order.
    calls = sample(config(tiny_model, out, resume=True)).images
    assert [r.index for r in calls] == [1, 2, 3, 4, 5, 6]


def test_resume_after_sigkill_never_sees_a_partial_png(tiny_model: Path, tmp_path: Path) -> None:
    args = [sys.executable, "-m", "sdlite", "sample", PROMPT, "--model", str(tiny_model), "--num-images", "8",
            "--batch-size", "2", "--seed", "5", "--steps", "6", "-q"]  # fmt: skip
    reference = tmp_path / "reference"
    assert subprocess.run([*args, "--out", str(reference)], capture_output=True).returncode == 0
    out = tmp_path / "out"
    process = subprocess.Popen([*args, "--out", str(out)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(str(out / "00002-7.png")):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    written = sorted(out.glob("*.png"))
    assert 3 <= len(written) < 8
    for path in written:  # every PNG under an image's name is whole
        with Image.open(path) as image:
            image.load()
    time.sleep(0.1)
    resumed = subprocess.run([*args, "--out", str(out), "--resume", "--json"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(line)["path"] for line in resumed.stdout.splitlines()] == [
        str(out / f"{i:05d}-{5 + i}.png") for i in range(8)
    ]
    assert folder_state(out) == folder_state(reference)


@pytest.mark.slow
def test_two_processes_write_the_files_of_one_and_report_them_in_order(tiny_model: Path, tmp_path: Path) -> None:
    import hashlib

    args = [sys.executable, "-m", "sdlite", "sample", PROMPT, "a green square", "--model", str(tiny_model),
            "--num-images", "3", "--batch-size", "2", "--seed", "11", "--steps", "4", "--json", "-q"]  # fmt: skip
    one = subprocess.run([*args, "--out", str(tmp_path / "one")], capture_output=True, text=True)
    two = subprocess.run(
        [*args, "--out", str(tmp_path / "two"), "--num-processes", "2"], capture_output=True, text=True
    )
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    names = lambda out: [Path(json.loads(line)["path"]).name for line in out.splitlines()]  # noqa: E731
    assert names(two.stdout) == names(one.stdout) == [f"{i:05d}-{11 + i}.png" for i in range(6)]
    digest = lambda folder: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.png")}  # noqa: E731
    assert digest(tmp_path / "two") == digest(tmp_path / "one")  # pixels and metadata, byte for byte
