"""Logs for machines: plain progress lines when stderr is not a terminal, timing fields in
`--json-events`, the grid in `sample --json`, and `--quiet` silencing progress."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sdlite.cli import progress
from sdlite.cli.app import app
from sdlite.testing import make_shapes_dataset
from sdlite.training import reporting

# Module-scoped fixtures below are made once: `make test` keeps this file on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("progress")

runner = CliRunner()
SDLITE = [sys.executable, "-m", "sdlite"]
SAMPLE_LINE = re.compile(
    r"^sample: (\d+)/(\d+) images, (\d+)/(\d+) steps, [\d.e+]+ steps/s, (ETA|done in) \d+:\d\d:\d\d$"
)
TRAIN_LINE = re.compile(
    r"^step (\d+)/(\d+), loss [\d.e+-]+, lr [\d.e+-]+, [\d.e+]+ images/s, (ETA|done in) \d+:\d\d:\d\d$"
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n=8)


def test_sampling_prints_plain_progress_lines_when_stderr_is_a_pipe(tiny_model: Path, tmp_path: Path) -> None:
    done = subprocess.run([*SDLITE, "sample", "a red circle", "--model", str(tiny_model), "--steps", "12",
                           "--num-images", "3", "--batch-size", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("sample:")]
    assert lines and all(SAMPLE_LINE.match(line) for line in lines), done.stderr
    assert lines[-1].startswith("sample: 3/3 images, 36/36 steps, ") and "done in" in lines[-1]
    assert "\r" not in done.stderr  # no terminal bar redrawn into the log
    assert len(done.stdout.splitlines()) == 3


def test_training_prints_plain_progress_lines_when_stderr_is_a_pipe(tiny_model: Path, shapes: Path,
                                                                    tmp_path: Path) -> None:  # fmt: skip
    done = subprocess.run([*SDLITE, "train", "--model", str(tiny_model), "--data", str(shapes), "--out",
                           str(tmp_path / "out"), "--max-steps", "4", "--batch-size", "2"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("step ")]
    assert lines and all(TRAIN_LINE.match(line) for line in lines), done.stderr
    assert lines[-1].startswith("step 4/4, ") and "done in" in lines[-1]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lines_every_ten_seconds_or_tenth_and_at_the_end(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    lines = progress._StepLines(images=2)
    lines(1, 1000)  # the first step starts the clock
    for done in range(2, 1001):
        clock.now += 0.5  # 2 steps/s: 10% (100 steps) takes 50 s, so the 10 s rule paces
        lines(done, 1000)
        if done in (500, 1000):
            lines.image_done()
    err = capsys.readouterr().err.splitlines()
    assert all(SAMPLE_LINE.match(line) for line in err), err
    assert 45 <= len(err) <= 52  # 500 s of sampling: a line every 10 s, and the final one
    assert err[0] == "sample: 0/2 images, 21/1000 steps, 2 steps/s, ETA 0:08:10"
    assert err[-1] == "sample: 2/2 images, 1000/1000 steps, 2 steps/s, done in 0:08:20"

    clock.now += 100
    fast = progress._StepLines(images=None)
    fast(0, 50)
    for done in range(1, 51):
        clock.now += 0.25  # 12.5 s in all: 10% (5 steps) every 1.25 s
        fast(done, 50)
    fast.close()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 10 and err[-1].startswith("sample: 50/50 steps, 4 steps/s, done in")


def train_events(tiny_model: Path, shapes: Path, out: Path, *extra: str) -> list[dict[str, Any]]:
    result = runner.invoke(app, ["train", "--model", str(tiny_model), "--data", str(shapes), "--out", str(out),
                                 "--batch-size", "2", "--json-events", *extra])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_json_step_events_carry_elapsed_eta_and_epoch(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    events = train_events(tiny_model, shapes, tmp_path / "out", "--max-steps", "5", "--checkpoint-every", "4")
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5]
    assert [e["epoch"] for e in steps] == [0.25, 0.5, 0.75, 1.0, 1.25]  # 4 steps per epoch
    elapsed = [e["elapsed"] for e in steps]
    assert all(b >= a > 0 for a, b in itertools.pairwise(elapsed))
    assert steps[-1]["eta"] == 0 and steps[0]["eta"] > 0
    for e in steps:  # seconds are rounded to the millisecond
        assert e["elapsed"] == pytest.approx(2 * e["step"] / e["images_per_s"], abs=1e-3)
        assert e["eta"] == pytest.approx(e["elapsed"] / e["step"] * (5 - e["step"]), rel=1e-2, abs=1e-2)
    # A resumed run (from step 4) counts its own elapsed time and pace from where it started.
    resumed = train_events(tiny_model, shapes, tmp_path / "out", "--max-steps", "6", "--resume", "latest")
    steps = [e for e in resumed if e["event"] == "step"]
    assert [e["step"] for e in steps] == [5, 6] and steps[0]["epoch"] == 1.25
    assert steps[0]["eta"] == pytest.approx(steps[0]["elapsed"], rel=1e-2, abs=1e-2)


def test_sample_json_reports_the_grid(tiny_model: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["sample", "a red circle", "--model", str(tiny_model), "--steps", "2", "--num-images",
                                 "2", "--grid", "--json", "--out", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [sorted(r) == ["grid"] for r in rows] == [False, False, True]
    assert Path(rows[-1]["grid"]) == tmp_path / "grid-00000.png" and Path(rows[-1]["grid"]).is_file()


def test_quiet_silences_progress(tiny_model: Path, tmp_path: Path) -> None:
    args = ["sample", "a red circle", "--model", str(tiny_model), "--steps", "2", "--out", str(tmp_path)]
    loud = runner.invoke(app, args)
    quiet = runner.invoke(app, [*args, "--quiet"])
    assert loud.exit_code == quiet.exit_code == 0
    assert "sample: 1/1 images, 2/2 steps" in loud.stderr
    assert quiet.stderr == ""


def test_images_per_s_of_step_events_is_recent_so_a_slow_first_step_fades_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A compile (or any warm-up) in the first step must not drag the step events' images/s (and their MFU and
    ETA) down for the rest of the run; the final line keeps the whole run's average."""

    now = [0.0]
    monkeypatch.setattr(reporting.time, "perf_counter", lambda: now[0])
    pace = reporting.Pace()
    now[0] = 100.0  # step 1 compiles for 100 s
    pace.add(8)
    assert pace.timing(29) == {"images_per_s": pytest.approx(0.08), "elapsed": 100.0, "eta": pytest.approx(2900.0)}
    for step in range(2, 22):  # then 1 s a step, 8 images each
        now[0] = 100.0 + step - 1
        pace.add(8)
    # the last 20 steps only: 8 images/s, so the 9 steps left take 9 s
    assert pace.timing(9) == {"images_per_s": pytest.approx(8.0), "elapsed": 120.0, "eta": pytest.approx(9.0)}
    assert pace.overall() == pytest.approx(21 * 8 / 120)
