"""`train` and the OUT folder: no accidental mixing of runs, `--overwrite`, `--resume auto`, long captions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.testing import make_shapes_dataset

# Module-scoped fixtures below are made once: `make test` keeps this file on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("out_folder")

runner = CliRunner()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n=4, size=32)


def train(model: Path, data: Path, out: Path, *extra: str) -> Any:
    return runner.invoke(app, ["train", "--model", str(model), "--data", str(data), "--out", str(out),
                               "--max-steps", "2", "--lr", "1e-3", "--json-events", *extra])  # fmt: skip


def events(result: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_a_fresh_run_refuses_a_non_empty_out(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    first = train(tiny_model, shapes, tmp_path / "out", "--checkpoint-every", "1")
    assert first.exit_code == 0, first.output
    again = train(tiny_model, shapes, tmp_path / "out")
    assert again.exit_code == 2
    assert "--out" in again.stderr and "not empty" in again.stderr and "--resume latest" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert not [e for e in events(again) if e["event"] == "plan"]  # refused before any planning or loading
    # --overwrite starts over: the earlier run's checkpoints go, so `--resume latest` can never pick them up.
    (tmp_path / "out" / "notes.txt").write_text("mine")
    replaced = train(tiny_model, shapes, tmp_path / "out", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert not (tmp_path / "out" / "checkpoints").exists()
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"  # only what sdlite writes is removed
    assert (tmp_path / "out" / "unet").is_dir()


def test_resume_auto_starts_fresh_then_continues(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "job"
    fresh = train(tiny_model, shapes, out, "--resume", "auto", "--checkpoint-every", "1")
    assert fresh.exit_code == 0, fresh.output
    assert not [e for e in events(fresh) if e["event"] == "resume"]
    longer = runner.invoke(app, ["train", "--model", str(tiny_model), "--data", str(shapes), "--out", str(out),
                                 "--max-steps", "3", "--lr", "1e-3", "--json-events", "--resume", "auto",
                                 "--checkpoint-every", "1"])  # fmt: skip
    assert longer.exit_code == 0, longer.output
    resumed = [e for e in events(longer) if e["event"] == "resume"]
    assert resumed and resumed[0]["step"] == 1  # the newest checkpoint (the last step writes the model instead)
    assert [e["step"] for e in events(longer) if e["event"] == "step"] == [2, 3]

    # No checkpoint: auto starts fresh over what an unfinished run leaves (its loss log), never over a finished
    # run's model (it once silently replaced a finished run's LoRA and mixed one into a full model).
    from sdlite.training.config import TrainConfig
    from sdlite.training.out_folder import check_out

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "loss.csv").write_text("step,loss,lr\n1,0.5,0.001\n")
    check_out(TrainConfig(model=str(tiny_model), data=shapes, out=unfinished, max_steps=2, resume="auto"))  # allowed
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "checkpoints" not in p.parts}
    shutil.rmtree(out / "checkpoints")
    refused = train(tiny_model, shapes, out, "--resume", "auto", "--lora")
    assert refused.exit_code == 2 and "holds a finished run" in refused.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_captions_past_the_text_encoder_are_warned_once(tiny_model: Path, tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "data", n=2, size=32)
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    rows[0]["text"] = " ".join(["a red circle on a blue background"] * 20)  # 140 words
    (data / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = train(tiny_model, data, tmp_path / "out")
    assert result.exit_code == 0, result.output
    warnings = [e["message"] for e in events(result) if e["event"] == "warning"]
    assert len(warnings) == 1 and "1 of 2 captions are longer than the text encoder's 77 tokens" in warnings[0]
