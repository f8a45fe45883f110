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

from sdlite.formats.png_record import read_record
from sdlite.sampling.config import Generation, SampleConfig
from sdlite.sampling.run import sample

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


def test_resume_keeps_only_images_made_alike_and_completes_their_strips(tiny_model: Path, tmp_path: Path) -> None:
    """Another precision or other bytes in the same init image make other pixels: nothing is kept. A kept image
    whose progress strip is missing (a kill between the two files) gets it again, the same bytes."""
    import dataclasses

    from PIL import ImageDraw

    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), "blue").save(init)
    gens = (Generation(PROMPT, seed=3, steps=4, num_images=2, init_image=str(init), strength=0.8, resize="crop"),)
    base = SampleConfig(model=str(tiny_model), generations=gens, out=tmp_path / "o", batch_size=1, save_progress=2)
    first = sample(base).images
    expected = folder_state(base.out)
    first[1].progress.unlink()
    again = sample(dataclasses.replace(base, resume=True)).images
    assert [(r.path, r.progress) for r in again] == [(r.path, r.progress) for r in first]
    assert folder_state(base.out) == expected

    bf16 = sample(dataclasses.replace(base, resume=True, dtype="bf16")).images
    assert [r.index for r in bf16] == [2, 3]  # made again, after the fp32 ones
    with Image.open(init) as image:
        ImageDraw.Draw(image).ellipse((8, 8, 40, 40), fill="red")
        image.save(init)  # the same path, other pixels
    changed = sample(dataclasses.replace(base, resume=True)).images
    assert [r.index for r in changed] == [4, 5]


def test_a_resumed_grid_is_not_doubled(tiny_model: Path, tmp_path: Path) -> None:
    import dataclasses

    base = dataclasses.replace(config(tiny_model, tmp_path / "o"), grid=True)
    grid = sample(base).grid
    assert grid is not None and sample(dataclasses.replace(base, resume=True)).grid == grid
    assert [p.name for p in (tmp_path / "o").glob("grid-*.png")] == [grid.name]


@pytest.mark.slow
def test_two_processes_name_around_foreign_files_draw_one_seed_and_fail_in_one_line(tiny_model: Path,
                                                                                   tmp_path: Path) -> None:  # fmt: skip
    """Resuming over files of another run that hold the run's names: both process counts name and report alike
    (the second process once wrote elsewhere while the first reported the stale file). A random seed is drawn
    once for every process (each drew its own, and the first waited forever for images never made). A user's
    mistake is its one line and exit code, not the launcher's traceback."""
    import hashlib
    import shutil

    first = tmp_path / "first.jsonl"
    first.write_text('{"prompt": "red", "num_images": 3}\n{"prompt": "blue", "num_images": 2, "guidance": 3}\n')
    second = tmp_path / "second.jsonl"
    second.write_text('{"prompt": "red", "num_images": 3}\n{"prompt": "blue", "num_images": 2, "guidance": 5}\n')
    args = [sys.executable, "-m", "sdlite", "sample", "--model", str(tiny_model), "--seed", "1", "--steps", "2",
            "--batch-size", "2", "-q", "--json"]  # fmt: skip
    from typer.testing import CliRunner

    from sdlite.cli.app import app

    in_process = CliRunner()  # one process: no interpreter to start
    assert (
        in_process.invoke(app, [*args[3:], "--prompts-file", str(first), "--out", str(tmp_path / "one")]).exit_code == 0
    )
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    resume = [*args, "--prompts-file", str(second), "--resume", "--grid"]
    one = in_process.invoke(app, [*resume[3:], "--out", str(tmp_path / "one")])
    two = subprocess.run([*resume, "--out", str(tmp_path / "two"), "--num-processes", "2"], capture_output=True,
                         text=True)  # fmt: skip
    assert one.exit_code == 0 and two.returncode == 0, two.stderr[-2000:]
    reported = lambda out: [Path(r.get("path") or r["grid"]).name for r in map(json.loads, out.splitlines())]  # noqa: E731
    assert reported(two.stdout) == reported(one.stdout)
    assert reported(one.stdout) == [
        "00000-1.png", "00001-2.png", "00002-3.png", "00005-4.png", "00006-5.png", "grid-00000.png"
    ]  # fmt: skip
    digest = lambda folder: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.png")}  # noqa: E731
    assert digest(tmp_path / "two") == digest(tmp_path / "one")

    at = args.index("--seed")
    no_seed = args[:at] + args[at + 2 :]  # a random seed
    drawn = subprocess.run([*no_seed, "--num-images", "3", "--batch-size", "1", "red", "--out", str(tmp_path / "random"),
                            "--num-processes", "2"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    seeds = [json.loads(line)["seed"] for line in drawn.stdout.splitlines()]
    assert len(seeds) == 3 and seeds == list(range(seeds[0], seeds[0] + 3))
    assert sorted(p.name for p in (tmp_path / "random").glob("*.png")) == [f"{i:05d}-{s}.png" for i, s in
                                                                            enumerate(seeds)]  # fmt: skip
    missing = subprocess.run([*args, "red", "--init-image", str(tmp_path / "nope.png"), "--out", str(tmp_path / "x"),
                              "--num-processes", "2"], capture_output=True, text=True)  # fmt: skip
    assert missing.returncode == 3 and missing.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope.png'} does not exist"
    ]


def test_an_image_moved_by_a_foreign_file_goes_past_every_planned_index(tiny_model: Path, tmp_path: Path) -> None:
    """It once took the next index past the folder, which a later image of the run was planned at: two
    images shared an index (and two processes then wrote and reported different files)."""
    import dataclasses

    base = SampleConfig(model=str(tiny_model), generations=(Generation(PROMPT, seed=1, steps=2, num_images=6),),
                        out=tmp_path / "o", batch_size=1)  # fmt: skip
    sample(base)
    for path in sorted(base.out.glob("0000[2-5]-*.png")):  # interrupted after two images
        path.unlink()
    Image.new("RGB", (8, 8)).save(base.out / "00002-100.png")  # meanwhile another run took index 2
    again = sample(dataclasses.replace(base, resume=True)).images
    assert [r.index for r in again] == [0, 1, 6, 3, 4, 5]
