"""`sdlite train` from the command line: dry-run, TOML config, JSON events, real Ctrl-C (2 processes: tests/reliability)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.testing import make_shapes_dataset

# Module-scoped fixtures below are made once: `make test` keeps this file on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("command")

runner = CliRunner()
SDLITE = [sys.executable, "-m", "sdlite"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n=8)


def test_dry_run_prints_the_plan_and_trains_nothing(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["train", "--model", str(tiny_model), "--data", str(shapes), "--out", str(out),
                                 "--epochs", "3", "--batch-size", "2", "--grad-accum", "2", "--dry-run"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert (plan["images"], plan["captioned"], plan["effective_batch"], plan["steps"], plan["epochs"]) == (
        8,
        8,
        4,
        6,
        3,
    )
    assert plan["resolution"] == 64 and plan["trains"] == ["unet"]
    assert plan["cache"] and plan["cache_note"].startswith("on: the augmentation is fixed")
    assert not out.exists()
    off = runner.invoke(app, ["train", "--model", str(tiny_model), "--data", str(shapes), "--out", str(out),
                              "--max-steps", "1", "--no-cache", "--dry-run"])  # fmt: skip
    assert off.exit_code == 0 and json.loads(off.stdout)["cache_note"] == "off: --no-cache"
    # The plan of two processes, printed once, with nothing launched (each process printed its own once).
    two = runner.invoke(app, ["train", "--model", str(tiny_model), "--data", str(shapes), "--out", str(out),
                              "--epochs", "3", "--batch-size", "2", "--dry-run", "--num-processes", "2"])  # fmt: skip
    assert two.exit_code == 0, two.stderr
    plan = json.loads(two.stdout)
    assert (plan["num_processes"], plan["effective_batch"], plan["steps"]) == (2, 4, 6) and not out.exists()


def test_toml_config_with_command_line_override(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    config = tmp_path / "train.toml"
    config.write_text(
        f'model = "{tiny_model}"\ndata = "{shapes}"\nout = "{tmp_path / "out"}"\n'
        'max-steps = 5\nbatch_size = 4\nlr = 0.001\nvalidation-prompt = ["a red circle"]\n'
    )
    result = runner.invoke(app, ["train", "--config", str(config), "--max-steps", "2", "--json-events"])
    assert result.exit_code == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    plan = events[0]
    assert plan["event"] == "plan" and plan["steps"] == 2 and plan["batch_size"] == 4
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2]
    assert any(e["event"] == "validation" for e in events)
    assert events[-1]["event"] == "done"
    bad = tmp_path / "bad.toml"
    bad.write_text("learning_rate = 1\n")
    result = runner.invoke(app, ["train", "--config", str(bad)])
    assert result.exit_code == 2 and "unknown options learning_rate" in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--max-steps", "0"], 2, "--max-steps must be at least 1"),
        (["--epochs", "1"], 2, "give exactly one of --max-steps or --epochs"),
        (["--lr-scheduler", "magic"], 2, "--lr-scheduler must be one of"),
        (["--cache", "--random-flip"], 2, "--cache needs a fixed augmentation"),
        (["--resume", "latest"], 2, "no checkpoints under"),
        # checked before any process is launched: one line and its own code, not the launcher's traceback
        (["--cache", "--random-flip", "--num-processes", "2"], 2, "--cache needs a fixed augmentation"),
    ],
)
def test_usage_errors(
    tiny_model: Path, shapes: Path, tmp_path: Path, args: list[str], code: int, fragment: str
) -> None:
    result = runner.invoke(app, ["train", "--model", str(tiny_model), "--data", str(shapes), "--out", str(tmp_path / "o"),
                                 "--max-steps", "1", *args])  # fmt: skip
    assert result.exit_code == code, result.stderr
    assert fragment in result.stderr


def test_bad_image_exits_3_before_training(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    import shutil

    data = Path(shutil.copytree(shapes, tmp_path / "data"))
    (data / "005.png").write_bytes((data / "005.png").read_bytes()[:100])  # truncated
    result = runner.invoke(app, ["train", "--model", str(tiny_model), "--data", str(data), "--out", str(tmp_path / "o"),
                                 "--max-steps", "1", "--json-events"])  # fmt: skip
    assert result.exit_code == 3
    assert "005.png" in result.stderr and result.stdout == ""
    # Found by the workers of --num-processes: still its one line and exit 3 (was 1, with the launcher's traceback).
    import subprocess
    import sys

    two = subprocess.run([sys.executable, "-m", "sdlite", "train", "--model", str(tiny_model), "--data", str(data),
                          "--out", str(tmp_path / "two"), "--max-steps", "1", "--num-processes", "2"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert two.returncode == 3 and len(two.stderr.strip().splitlines()) == 1 and "005.png" in two.stderr


@pytest.mark.slow
def test_ctrl_c_saves_exits_130_and_resume_finishes(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [*SDLITE, "train", "--model", str(tiny_model), "--data", str(shapes), "--out", str(out), "--max-steps", "400",
            "--batch-size", "2", "--json-events"]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if json.loads(line).get("step") == 3:
            process.send_signal(signal.SIGINT)
            break
    rest, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    saved = [json.loads(line) for line in rest.splitlines() if '"checkpoint"' in line]
    assert saved and saved[0]["reason"] == "interrupted"
    step = saved[0]["step"]
    assert (out / "checkpoints" / f"step-{step:06d}" / "sdlite-checkpoint.json").is_file()
    resumed = subprocess.run([*args[:-5], "--max-steps", str(step + 2), "--batch-size", "2", "--resume", "latest", "--json-events"],
                             capture_output=True, text=True, timeout=120, env={**os.environ})  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in resumed.stdout.splitlines() if '"event": "step"' in line]
    assert steps == [step + 1, step + 2]


def test_sample_with_lora_flags(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    trained = runner.invoke(app, ["train", "--model", str(tiny_model), "--data", str(shapes), "--out", str(tmp_path / "lora"),
                                  "--max-steps", "3", "--lr", "1e-2", "--lora", "--lora-rank", "2"])  # fmt: skip
    assert trained.exit_code == 0, trained.stderr
    common = ["sample", "a red circle", "--model", str(tiny_model), "--steps", "2", "--seed", "0", "--json"]
    rows = {}
    for name, extra in {"plain": [], "full": ["--lora", str(tmp_path / "lora")],
                        "half": ["--lora", str(tmp_path / "lora"), "--lora-scale", "0.5"]}.items():  # fmt: skip
        result = runner.invoke(app, [*common, "--out", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.stderr
        rows[name] = json.loads(result.stdout)
    from PIL import Image

    pixels = {k: Image.open(v["path"]).tobytes() for k, v in rows.items()}
    assert len(set(pixels.values())) == 3  # the adapter and its scale both change the image
    again = runner.invoke(
        app, ["sample", "--from-image", rows["half"]["path"], "--out", str(tmp_path / "again"), "--json"]
    )
    assert again.exit_code == 0, again.stderr
    assert Image.open(json.loads(again.stdout)["path"]).tobytes() == pixels["half"]  # LoRA and scale were recorded
    missing = runner.invoke(app, [*common, "--out", str(tmp_path / "x"), "--lora", str(tmp_path / "nope")])
    assert missing.exit_code == 4 and "LoRA" in missing.stderr
