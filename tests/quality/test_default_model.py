"""The built-in model sdlite trained itself: used without --model, small, fast, and it follows prompts."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.models.source import DEFAULT_MODEL
from sdlite.quality.config import EvalConfig
from sdlite.quality.evaluation import classify, evaluate

runner = CliRunner()


def test_shipped_model_is_complete_small_and_safetensors() -> None:
    files = [p for p in DEFAULT_MODEL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 30 * 1024 * 1024
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    defaults = json.loads((DEFAULT_MODEL / "sdlite.json").read_text())["defaults"]
    assert defaults["steps"] >= 1 and defaults["guidance"] >= 0


def test_sample_without_model_draws_what_it_is_told(tmp_path: Path) -> None:
    prompts = [
        "a red circle on a blue background",
        "a yellow triangle on a black background",
        "a white square on a green background",
    ]
    result = runner.invoke(app, ["sample", *prompts, "--seed", "5", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(Path(r["model"]) == DEFAULT_MODEL for r in rows)
    defaults = json.loads((DEFAULT_MODEL / "sdlite.json").read_text())["defaults"]
    assert rows[0]["steps"] == defaults["steps"] and rows[0]["guidance"] == defaults["guidance"]
    for row, (color, shape, background) in zip(
        rows, [("red", "circle", "blue"), ("yellow", "triangle", "black"), ("white", "square", "green")], strict=True
    ):
        with Image.open(row["path"]) as image:
            assert classify(image) == {"color": color, "shape": shape, "background": background}, row["prompt"]


def test_info_without_model_describes_it() -> None:
    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.stderr
    details = json.loads(result.stdout)
    assert Path(details["path"]) == DEFAULT_MODEL
    flow = {stage["stage"]: stage["output"] for stage in details["flow"]}
    assert flow["vae encoder"] == [4, 16, 16] and flow["tokenizer"] == [16]


def test_eval_sample_meets_the_targets() -> None:
    """A 24-image slice of the evaluation (the full 240-image run is in the README): the suite's slowest test, one
    batch per split."""
    report = evaluate(EvalConfig(model=str(DEFAULT_MODEL), n=24, seed=1000, batch_size=12))
    for key in ("color", "shape", "background"):
        assert report["seen"][key] >= 0.9, report
        assert report["held_out"][key] >= 0.8, report
