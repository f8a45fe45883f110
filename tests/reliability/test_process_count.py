"""The number of processes does not change the result: 2 processes at batch B end on the weights of
1 process at batch 2B, and only rank 0 writes anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from faults import events, run
from safetensors.torch import load_file

from sdlite.training import checkpoints

UNET = Path("unet") / "diffusion_pytorch_model.safetensors"
STEPS = 6  # 8 images at a global batch of 4: two epochs, so the epoch permutation is covered too


@pytest.mark.slow
def test_two_processes_end_on_the_weights_of_one(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    common = ["train", "--model", str(tiny_model), "--data", str(shapes), "--max-steps", str(STEPS), "--lr", "2e-5",
              "--caption-dropout", "0.2", "--checkpoint-every", "2", "--json-events"]  # fmt: skip
    two = run(*common, "--out", str(tmp_path / "two"), "--batch-size", "2", "--num-processes", "2")
    assert two.returncode == 0, two.stderr[-2000:]
    one = run(*common, "--out", str(tmp_path / "one"), "--batch-size", "4")
    assert one.returncode == 0, one.stderr[-2000:]

    two_events, one_events = events(two.stdout), events(one.stdout)
    assert two_events[0]["num_processes"] == 2 and two_events[0]["effective_batch"] == 4
    two_losses = [e["loss"] for e in two_events if e["event"] == "step"]
    assert two_losses == pytest.approx([e["loss"] for e in one_events if e["event"] == "step"], rel=1e-5)

    a, b = load_file(tmp_path / "two" / UNET), load_file(tmp_path / "one" / UNET)
    base = load_file(tiny_model / UNET)
    # Adam's normalised steps magnify rounding on near-zero gradients, so the whole-model distance is
    # compared with how far training moved (measured: 2.5e-4 of it; 0.89 when each process trained alone).
    assert distance(a, b) < 0.01 * distance(b, base)

    # Only rank 0 writes: one report, one log line per step, one set of complete checkpoints.
    assert sum(e["event"] == "done" for e in two_events) == 1
    log = (tmp_path / "two" / "loss.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in log] == list(range(1, STEPS + 1))
    kept = checkpoints.list_checkpoints(tmp_path / "two")
    assert [p.name for p in kept] == ["step-000002", "step-000004"]
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == [p.name for p in kept]
    for folder in kept:
        checkpoints.verify(folder, {})


@pytest.mark.slow
def test_two_processes_train_the_vae_like_one(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    """The VAE trainer once called the model outside DDP's wrapper: no gradient was averaged and each process
    trained its own copy (step 2's loss already differed)."""
    common = ["train", "--model", str(tiny_model), "--data", str(shapes), "--component", "vae", "--max-steps", "3",
              "--resolution", "32", "--lr", "1e-4", "--json-events"]  # fmt: skip
    two = run(*common, "--out", str(tmp_path / "two"), "--batch-size", "2", "--num-processes", "2")
    assert two.returncode == 0, two.stderr[-2000:]
    from sdlite.training.config import TrainConfig
    from sdlite.training.unet import train

    one: list[dict[str, Any]] = []  # one process: in this one (no interpreter to start)
    train(TrainConfig(model=str(tiny_model), data=shapes, out=tmp_path / "one", component="vae", max_steps=3,
                      resolution=32, lr=1e-4, batch_size=4), on_event=one.append)  # fmt: skip
    two_losses = [e["loss"] for e in events(two.stdout) if e["event"] == "step"]
    assert two_losses == pytest.approx([e["loss"] for e in one if e["event"] == "step"], rel=1e-5)
    vae = Path("vae") / "diffusion_pytorch_model.safetensors"
    a, b, base = load_file(tmp_path / "two" / vae), load_file(tmp_path / "one" / vae), load_file(tiny_model / vae)
    # Adam's normalised steps magnify rounding on near-zero gradients, so the whole-model distance is
    # compared with how far training moved (measured: 2.5e-4 of it; 0.89 when each process trained alone).
    assert distance(a, b) < 0.01 * distance(b, base)


def distance(a: dict[str, Any], b: dict[str, Any]) -> float:
    return sum(float((a[k].double() - b[k].double()).square().sum()) for k in a) ** 0.5
