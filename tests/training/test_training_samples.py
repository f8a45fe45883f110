"""--sample-prompts: each line sampled by `sdlite sample` itself at the start, every checkpoint and the end, with
the line's own settings and the run's seeds; a final sample replays exactly with --from-image and the final model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.training import run
from PIL import Image
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.errors import DataError
from sdlite.formats.png_record import read_record
from sdlite.testing import make_shapes_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n=8)


@pytest.mark.parametrize("lora", [False, True])
def test_samples_at_start_checkpoints_and_end_replay(
    lora: bool, tiny_model: Path, shapes: Path, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a red circle\n{"prompt": "a blue square", "seed": 77, "steps": 3, "guidance": 4}\n')
    out = tmp_path / "o"
    _, events = run(tiny_model, shapes, out, max_steps=4, checkpoint_every=2, sample_prompts=prompts,
                    sample_at_start=True, lora=lora)  # fmt: skip
    points = [e for e in events if e["event"] == "samples"]
    assert [Path(e["paths"][0]).parent.name for e in points] == ["start", "step-000002", "final"]
    final = [Path(p) for p in points[-1]["paths"]]
    second = read_record(final[1])["settings"]
    assert (second["seed"], second["steps"], second["guidance"]) == (77, 3, 4.0)  # the line's own settings
    assert read_record(final[0])["settings"]["seed"] == 0  # --seed starts the count, the same at every point
    again = CliRunner().invoke(app, ["sample", "--from-image", str(final[1]), "--json", "--out", str(tmp_path / "r")])
    assert again.exit_code == 0, again.output
    assert np.array_equal(np.asarray(Image.open(json.loads(again.stdout)["path"])), np.asarray(Image.open(final[1])))
    start = np.asarray(Image.open(points[0]["paths"][0])).astype(int)
    assert np.abs(start - np.asarray(Image.open(final[0])).astype(int)).max() > 0  # training changed the model


def test_a_bad_prompts_file_fails_before_training(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('{"prompt": "a", "steps": -1}\n')
    with pytest.raises(DataError, match=r"prompts\.txt:1"):
        run(tiny_model, shapes, tmp_path / "o", sample_prompts=prompts)
    assert not (tmp_path / "o").exists()
