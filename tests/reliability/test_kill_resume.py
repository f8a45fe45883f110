"""SIGKILL at several points, then `--resume latest`: the run ends on the uninterrupted run's weights.

Setup: 8 images, batch 2 -> 4 steps per epoch; 10 steps; a checkpoint every 2 steps, 2 kept; EMA,
warm-up + cosine LR and caption dropout, so optimizer, schedule, EMA and random draws must all resume.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from faults import SDLITE, events, run
from safetensors.torch import load_file

from sdlite.training import checkpoints

# Module-scoped fixtures below are made once: `make test` keeps this file on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("kill_resume")

STEPS = 10
UNET = Path("unet") / "diffusion_pytorch_model.safetensors"


def train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--data", str(data), "--out", str(out), "--max-steps", str(STEPS),
            "--batch-size", "2", "--lr", "1e-3", "--lr-scheduler", "cosine", "--warmup-steps", "2", "--ema",
            "--caption-dropout", "0.2", "--checkpoint-every", "2", "--keep-checkpoints", "2", "--json-events", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def reference(tiny_model: Path, shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "out"
    result = run(*train_args(tiny_model, shapes, out))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def assert_same_weights(out: Path, reference: Path) -> None:
    a, b = load_file(out / UNET), load_file(reference / UNET)
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, f"weights differ from the uninterrupted run by {worst}"
    # The log continues where the checkpoint was, so it equals the uninterrupted log line for line.
    assert (out / "loss.csv").read_text() == (reference / "loss.csv").read_text()


def assert_kept(out: Path, steps: list[int]) -> None:
    """Exactly these complete, verifiable checkpoints, and nothing half-written beside them."""
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == [f"step-{s:06d}" for s in steps]
    for folder in root.iterdir():
        manifest = checkpoints.verify(folder, {})
        assert manifest["step"] == int(folder.name[5:])


def resume(model: Path, data: Path, out: Path, fault: tuple[str, int] | None = None) -> list[dict[str, object]]:
    result = run(*train_args(model, data, out, "--resume", "latest"), fault=fault)
    if fault is None:
        assert result.returncode == 0, result.stderr[-2000:]
    else:
        assert result.returncode == -signal.SIGKILL
    return events(result.stdout)


def test_external_sigkill_mid_epoch(tiny_model: Path, shapes: Path, tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "out"
    process = subprocess.Popen([*SDLITE, *train_args(tiny_model, shapes, out)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if '"step": 5,' in line and '"event": "step"' in line:  # step 5 is the middle of epoch 2
            process.send_signal(signal.SIGKILL)
            break
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (out / "unet").exists()  # it really died before the end
    resumed = resume(tiny_model, shapes, out)
    first = next(e for e in resumed if e["event"] == "resume")
    assert first["step"] in (4, 6, 8)
    assert [e["step"] for e in resumed if e["event"] == "step"][-1] == STEPS
    assert_same_weights(out, reference)
    assert_kept(out, [6, 8])


def test_sigkill_at_an_epoch_boundary(tiny_model: Path, shapes: Path, tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "out"
    killed = run(*train_args(tiny_model, shapes, out), fault=("kill-after-step", 8))  # 8 = end of epoch 2
    assert killed.returncode == -signal.SIGKILL
    assert_kept(out, [4, 6])  # checkpoint 8 was due but not yet written
    resumed = resume(tiny_model, shapes, out)
    assert [e["step"] for e in resumed if e["event"] == "resume"] == [6]
    assert [e["step"] for e in resumed if e["event"] == "step"] == [7, 8, 9, 10]
    assert_same_weights(out, reference)
    assert_kept(out, [6, 8])


def test_sigkill_during_a_checkpoint_write(tiny_model: Path, shapes: Path, tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "out"
    killed = run(*train_args(tiny_model, shapes, out), fault=("kill-in-checkpoint", 6))
    assert killed.returncode == -signal.SIGKILL
    partial = [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".step-000006")]
    assert partial and (partial[0] / UNET).is_file()  # killed mid-write: weights on disk, no manifest
    assert checkpoints.list_checkpoints(out) == [
        out / "checkpoints" / "step-000002",
        out / "checkpoints" / "step-000004",
    ]
    resumed = resume(tiny_model, shapes, out)
    assert [e["step"] for e in resumed if e["event"] == "resume"] == [4]  # never the half-written one
    assert_same_weights(out, reference)
    assert_kept(out, [6, 8])  # the leftover staging folder is gone


def test_resuming_a_resumed_run_ends_at_max_steps(
    tiny_model: Path, shapes: Path, tmp_path: Path, reference: Path
) -> None:
    out = tmp_path / "out"
    assert run(*train_args(tiny_model, shapes, out), fault=("kill-after-step", 3)).returncode == -signal.SIGKILL
    second = resume(tiny_model, shapes, out, fault=("kill-after-step", 7))
    assert [e["step"] for e in second if e["event"] == "resume"] == [2]
    third = resume(tiny_model, shapes, out)
    assert [e["step"] for e in third if e["event"] == "resume"] == [6]
    assert [e["step"] for e in third if e["event"] == "step"] == [7, 8, 9, 10]
    assert third[-1]["event"] == "done" and third[-1]["steps"] == STEPS
    lines = (out / "loss.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in lines] == list(range(1, STEPS + 1))
    assert_same_weights(out, reference)


def test_keep_checkpoints_never_deletes_the_resume_source(tmp_path: Path) -> None:
    """Pruning after checkpoint N keeps the newest K up to N; a later one (from a run that went
    further before this one resumed from an earlier point) is left alone, and the resume source
    goes only once K newer checkpoints are complete."""
    out = tmp_path / "out"
    for step in (2, 4, 6, 8):
        folder = checkpoints.checkpoint_dir(out, step)
        folder.mkdir(parents=True)
        checkpoints.write_manifest(folder, step, {})
    (out / "checkpoints" / "step-000010").mkdir()  # no manifest: never counted, never chosen
    assert checkpoints.find_resume(out, "latest").name == "step-000008"
    # Resumed from step 4 (with --keep-checkpoints 1), the run writes checkpoint 5:
    folder = checkpoints.checkpoint_dir(out, 5)
    folder.mkdir()
    checkpoints.write_manifest(folder, 5, {})
    removed = checkpoints.prune(out, 1, 5)
    assert [p.name for p in removed] == ["step-000002", "step-000004"]
    assert [p.name for p in checkpoints.list_checkpoints(out)] == ["step-000005", "step-000006", "step-000008"]
    assert checkpoints.prune(out, 1, 4) == []  # nothing newer than the source yet: it stays
