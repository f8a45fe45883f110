"""SIGTERM (Slurm before preemption, `timeout`, `docker stop`) and SIGHUP (a closing terminal) stop a run as Ctrl-C
does: training finishes the step, checkpoints, exits 143/129 with one line saying how to resume, and resuming ends
bit-equal to an uninterrupted run; sampling writes what is finished and exits with one line. A second signal ends
at once; `--num-processes` passes the signal to every worker, which all checkpoint once."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from faults import SDLITE
from PIL import Image
from safetensors.torch import load_file

pytestmark = pytest.mark.xdist_group("signals")

UNET = Path("unet") / "diffusion_pytorch_model.safetensors"
STEPS = 8


def train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [*SDLITE, "train", "--model", str(model), "--data", str(data), "--out", str(out), "--max-steps",
            str(STEPS), "--batch-size", "2", "--lr", "1e-3", "--checkpoint-every", "100", "--json-events", *extra]  # fmt: skip


def signal_at_step(args: list[str], signum: int, step: int, twice: bool = False) -> tuple[int, list[dict], str]:
    """Start `args`, send `signum` once step `step` is reported (again at once with `twice`); the exit status, the
    JSON events and stderr."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(json.loads(line))
        if seen[-1].get("event") == "step" and seen[-1]["step"] == step:
            process.send_signal(signum)
            if twice:
                time.sleep(0.05)
                process.send_signal(signum)
            break
    rest, err = process.communicate(timeout=120)
    return process.returncode, seen + [json.loads(line) for line in rest.splitlines()], err


@pytest.fixture(scope="module")
def reference(tiny_model: Path, shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    done = subprocess.run(train_args(tiny_model, shapes, out), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["TERM", "HUP"])
def test_a_stop_signal_checkpoints_and_resume_ends_bit_equal(
    tiny_model: Path, shapes: Path, reference: Path, tmp_path: Path, signum: int, code: int
) -> None:
    out = tmp_path / "out"
    status, log, err = signal_at_step(train_args(tiny_model, shapes, out), signum, 3)
    assert status == code, err[-2000:]
    saved = [e for e in log if e.get("event") == "checkpoint"]
    assert len(saved) == 1 and saved[0]["reason"] == "signal"
    step = saved[0]["step"]
    name = signal.Signals(signum).name
    assert err.strip().splitlines()[-1] == (
        f"error: stopped by {name} at step {step}; resume with --resume latest (checkpoint {saved[0]['path']})"
    )
    if signum != signal.SIGTERM:  # the same path from here: SIGTERM's resume stands for both
        return
    resumed = subprocess.run(train_args(tiny_model, shapes, out, "--resume", "latest"), capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load_file(out / UNET), load_file(reference / UNET)
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0
    assert (out / "loss.csv").read_text() == (reference / "loss.csv").read_text()


def test_a_second_signal_ends_at_once_and_checkpoints_can_be_switched_off(
    tiny_model: Path, shapes: Path, tmp_path: Path
) -> None:
    status, log, err = signal_at_step(train_args(tiny_model, shapes, tmp_path / "a"), signal.SIGTERM, 2, twice=True)
    assert status == 143 and err.strip().splitlines()[-1] == (
        "error: SIGTERM again: stopped at once; resume from the last checkpoint"
    ), err[-3000:]
    status, log, err = signal_at_step(
        train_args(tiny_model, shapes, tmp_path / "b", "--no-checkpoint-on-signal"), signal.SIGTERM, 2
    )
    assert status == -signal.SIGTERM  # the signal's own meaning: an end at once, nothing saved
    assert not any(e.get("event") == "checkpoint" for e in log) and not (tmp_path / "b" / "checkpoints").exists()


@pytest.mark.slow
def test_two_processes_both_stop_and_checkpoint_once(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    status, log, err = signal_at_step(train_args(tiny_model, shapes, out, "--num-processes", "2"), signal.SIGTERM, 2)
    assert status == 143, err[-2000:]
    saved = [e for e in log if e.get("event") == "checkpoint"]
    assert len(saved) == 1  # the first process reports; one checkpoint folder
    assert [p.name for p in (out / "checkpoints").iterdir()] == [Path(saved[0]["path"]).name]
    assert err.strip().splitlines()[-1].startswith("error: stopped by SIGTERM at step")


def test_sample_writes_what_is_finished_and_exits_143(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [*SDLITE, "sample", "a red circle", "--model", str(tiny_model), "--steps", "20", "--num-images", "24",
            "--out", str(out), "--json", "--seed", "1"]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    first = json.loads(process.stdout.readline())
    process.send_signal(signal.SIGTERM)
    rest, err = process.communicate(timeout=60)
    assert process.returncode == 143, err[-2000:]
    assert (
        err.strip().splitlines()[-1].startswith("error: stopped by SIGTERM: the images finished before it are written")
    )
    written = sorted(out.glob("*.png"))
    assert Path(first["path"]) in written and len(written) == 1 + len(rest.splitlines()) < 24
    for path in written:
        Image.open(path).load()  # whole files
    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert len(list(out.glob("*.png"))) == 24
