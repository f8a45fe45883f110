"""Non-finite numbers: a NaN loss is skipped and reported, repeated ones stop the run (exit 6) with the
last good checkpoint intact; NaN latents or pixels fail the sample (exit 6) and nothing is saved."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.training import checkpoints, unet

runner = CliRunner()
UNET = Path("unet") / "diffusion_pytorch_model.safetensors"


def poison_losses(monkeypatch: pytest.MonkeyPatch, bad: Any, grad_accum: int = 2) -> None:
    """Make the loss of optimizer steps for which bad(step) holds non-finite (test-only fault); the runs here
    start at step 1 and compute `grad_accum` micro-batch losses per step."""
    micro_loss, calls = unet._micro_loss, []

    def faulty(*args: Any) -> Any:
        loss = micro_loss(*args)
        calls.append(None)
        return loss * float("nan") if bad((len(calls) - 1) // grad_accum + 1) else loss

    monkeypatch.setattr(unet, "_micro_loss", faulty)


def train(model: Path, data: Path, out: Path, steps: int) -> Any:
    return runner.invoke(app, ["train", "--model", str(model), "--data", str(data), "--out", str(out),
                               "--max-steps", str(steps), "--batch-size", "2", "--grad-accum", "2", "--lr", "1e-3",
                               "--checkpoint-every", "2", "--json-events"])  # fmt: skip


def test_one_nan_loss_is_skipped_and_reported(
    tiny_model: Path, shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_losses(monkeypatch, lambda step: step == 3)
    result = train(tiny_model, shapes, tmp_path / "out", 3)
    assert result.exit_code == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["message"] for e in events if e["event"] == "warning"] == ["non-finite loss at step 3; step skipped"]
    assert events[-1]["bad_steps"] == 1
    weights = load_file(tmp_path / "out" / UNET)
    assert all(v.isfinite().all() for v in weights.values())  # the NaN never reached the weights
    # The skipped step left no trace: the model equals a run that stopped after step 2 (constant LR).
    monkeypatch.undo()
    reference = train(tiny_model, shapes, tmp_path / "ref", 2)
    assert reference.exit_code == 0
    after_2 = load_file(tmp_path / "ref" / UNET)
    assert all(torch.equal(after_2[k], weights[k]) for k in after_2)


def test_repeated_nan_losses_stop_with_exit_6_keeping_the_last_good_checkpoint(
    tiny_model: Path, shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_losses(monkeypatch, lambda step: step >= 3)
    out = tmp_path / "out"
    result = train(tiny_model, shapes, out, 20)
    assert result.exit_code == 6
    assert "5 non-finite losses in a row (last at step 7)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # Checkpoints 4 and 6 were due after bad steps and were not written; checkpoint 2 is whole.
    assert [p.name for p in checkpoints.list_checkpoints(out)] == ["step-000002"]
    folder = out / "checkpoints" / "step-000002"
    checkpoints.verify(folder, {})
    assert all(v.isfinite().all() for v in load_file(folder / UNET).values())
    assert not (out / "unet").exists()  # no "finished" model from a failed run


def poisoned(model: Path, tmp_path: Path, component: str, prefix: str) -> Path:
    broken = Path(shutil.copytree(model, tmp_path / f"nan-{component}"))
    weights = broken / component / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    key = next(k for k in state if k.startswith(prefix))
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, weights)
    return broken


@pytest.mark.parametrize(
    ("component", "prefix", "fragment"),
    [("unet", "conv_out.weight", "latents became NaN/inf at denoising step 1"),
     ("vae", "decoder.conv_out.weight", "NaN/inf pixels")],
    ids=["unet", "vae"],
)  # fmt: skip
def test_nan_latents_or_pixels_fail_with_exit_6_and_save_nothing(
    tiny_model: Path, tmp_path: Path, component: str, prefix: str, fragment: str
) -> None:
    broken = poisoned(tiny_model, tmp_path, component, prefix)
    out = tmp_path / "out"
    result = runner.invoke(app, ["sample", "a red circle", "--model", str(broken), "--steps", "3", "--num-images", "2",
                                 "--grid", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 6
    assert fragment in result.stderr and "nothing was saved" in result.stderr
    assert result.stdout == "" and list(out.glob("*.png")) == []
