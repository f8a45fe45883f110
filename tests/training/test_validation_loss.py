"""The fixed-noise validation loss: constant for an unchanged model, moving when it learns; logged to CSV, events,
the loss plot and the end-of-run report; held-out images never train; resume continues the log."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers.training import run

from sdlite.errors import UsageError
from sdlite.testing import make_shapes_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n=10)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("val") / "shapes", n=3, seed=5)


def scored(events: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in events if e["event"] == "validation_loss"]


def test_an_unchanged_model_scores_the_same_every_time(
    tiny_model: Path, shapes: Path, held_out: Path, tmp_path: Path
) -> None:
    _, events = run(tiny_model, shapes, tmp_path / "o", max_steps=4, lr=1e-30, validation_data=held_out,
                    validate_every=1)  # fmt: skip
    values = [loss for _, loss in scored(events)]
    assert len(values) == 4 and max(values) - min(values) <= 1e-6, values


def test_learning_moves_it_and_everything_reports_it(
    tiny_model: Path, shapes: Path, held_out: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    _, events = run(tiny_model, shapes, out, max_steps=12, batch_size=4, validation_data=held_out, validate_every=4)
    points = scored(events)
    assert [s for s, _ in points] == [4, 8, 12] and len({v for _, v in points}) == 3
    best_step, best_loss = min(points, key=lambda p: p[1])
    done = events[-1]
    assert (done["best_validation_step"], done["best_validation_loss"]) == (best_step, best_loss)
    rows = (out / "validation_loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss" and [int(r.split(",")[0]) for r in rows[1:]] == [4, 8, 12]
    assert next(e for e in events if e["event"] == "plan")["validation_images"] == 3
    from PIL import Image

    with Image.open(out / "loss.png") as plot:
        reds = [p for p in plot.convert("RGB").getdata() if p == (200, 40, 40)]
    assert reds  # the validation points are drawn


def test_a_split_holds_images_out_of_training(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    _, events = run(tiny_model, shapes, tmp_path / "o", max_steps=2, validation_split=0.2, validate_every=2)
    plan = next(e for e in events if e["event"] == "plan")
    assert (plan["images"], plan["validation_images"]) == (8, 2)
    assert len(scored(events)) == 1
    with pytest.raises(UsageError, match="not both"):
        run(tiny_model, shapes, tmp_path / "x", validation_split=0.2, validation_data=shapes)


def test_resume_continues_the_log(tiny_model: Path, shapes: Path, held_out: Path, tmp_path: Path) -> None:
    settings = {"max_steps": 6, "validation_data": held_out, "validate_every": 2, "checkpoint_every": 2}
    run(tiny_model, shapes, tmp_path / "a", **settings)

    class Crash(Exception):
        pass

    def crash(step: int, loss: Any) -> Any:
        if step == 4:
            raise Crash
        return loss

    with pytest.raises(Crash):
        run(tiny_model, shapes, tmp_path / "b", hook=crash, **settings)
    run(tiny_model, shapes, tmp_path / "b", resume="latest", **settings)
    assert (tmp_path / "a" / "validation_loss.csv").read_text() == (tmp_path / "b" / "validation_loss.csv").read_text()
    shutil.rmtree(tmp_path / "b")
