"""sdlite/trackers.py through a real Accelerator and TensorBoard, read back with TensorBoard's own reader."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sdlite.errors import UsageError
from sdlite.training import trackers
from sdlite.training.config import TRACKERS, TrainConfig
from sdlite.training.trackers import Trackers, accelerator_kwargs, check_trackers, hyperparameters

PLAN = {"images": 8, "resolution": 64, "num_processes": 1, "effective_batch": 2, "steps": 3, "epochs": 0.75,
        "cache": True, "skipped": ["a.png"], "trains": ["unet"]}  # fmt: skip


@pytest.fixture(autouse=True)
def _fresh_accelerate_state() -> Iterator[None]:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _config(tmp_path: Path, *report_to: str, **settings: object) -> TrainConfig:
    return TrainConfig(model="m", data=tmp_path, out=tmp_path / "run-1", max_steps=3, report_to=report_to, **settings)  # type: ignore[arg-type]


def _accelerator(config: TrainConfig) -> Any:
    from accelerate import Accelerator

    return Accelerator(cpu=True, **accelerator_kwargs(config))


def _run(config: TrainConfig, steps: range, grid: Path | None = None, start_step: int = 0, offset: float = 0.0) -> Any:
    accelerator = _accelerator(config)
    run = Trackers()
    try:
        run.start(accelerator, config, PLAN, start_step)
        for step in steps:
            run.log_step(step, 1.0 / step + offset, 1e-4 * step, 2.5)
        if grid is not None:
            run.log_grid(steps[-1], grid)
        run.finish()
    finally:
        accelerator.end_training()  # as train() does: after finish() it has nothing left to close
    return accelerator


def _events(logdir: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def _grid(path: Path, size: tuple[int, int] = (48, 32)) -> Path:
    from PIL import Image

    Image.new("RGB", size, (200, 30, 90)).save(path)
    return path


def test_tensorboard_logs_steps_hparams_and_grid(tmp_path: Path) -> None:
    config = _config(tmp_path, "tensorboard")
    _run(config, range(1, 4), grid=_grid(tmp_path / "step-000003.png"))

    logdir = config.out / "logs" / "sdlite"
    events = _events(logdir)
    assert {"train/loss", "train/lr", "train/images_per_s"} <= set(events.Tags()["scalars"])
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([1.0, 0.5, 1 / 3])
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([1e-4, 2e-4, 3e-4])

    (image,) = events.Images("validation")
    assert image.step == 3 and (image.width, image.height) == (48, 32)
    from PIL import Image

    decoded = Image.open(io.BytesIO(image.encoded_image_string))
    assert decoded.size == (48, 32) and decoded.convert("RGB").getpixel((5, 5)) == (200, 30, 90)

    # The settings went in as TensorBoard hparams (Accelerate writes them to a sibling run, with a YAML copy).
    (hparams_yaml,) = logdir.glob("*/hparams.yml")
    import yaml

    stored = yaml.safe_load(hparams_yaml.read_text())
    assert stored["lr"] == config.lr and stored["max_steps"] == 3 and stored["plan/steps"] == 3
    assert "resolution" not in stored  # None is left out: TensorBoard has no value for it


def test_resume_hides_the_points_an_interrupted_run_wrote_after_its_checkpoint(tmp_path: Path) -> None:
    config = _config(tmp_path, "tensorboard")
    _run(config, range(1, 5))  # died after step 4, last checkpoint at step 2
    _run(config, range(3, 6), start_step=2, offset=10.0)

    loss = _events(config.out / "logs" / "sdlite").Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3, 4, 5]
    assert [e.value for e in loss] == pytest.approx([1.0, 0.5, 10 + 1 / 3, 10.25, 10.2])


def test_no_report_to_is_a_no_op(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert accelerator_kwargs(config) == {}
    accelerator = _run(config, range(1, 4), grid=_grid(tmp_path / "grid.png"))
    assert accelerator.trackers == [] and not config.out.exists()
    check_trackers(())


def test_finish_is_idempotent_and_leaves_end_training_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path, "tensorboard", "tensorboard")
    assert accelerator_kwargs(config)["log_with"] == ["tensorboard"]
    accelerator = _accelerator(config)
    run = Trackers()
    run.start(accelerator, config, PLAN)
    assert [t.name for t in accelerator.trackers] == ["tensorboard"]
    run.finish()
    run.finish()
    assert accelerator.trackers == []
    run.log_step(1, 0.1, 1e-4, 1.0)  # after finish: ignored, not an error
    accelerator.end_training()


def test_missing_tensorboard_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trackers, "_installed", lambda name: False)
    with pytest.raises(
        UsageError, match=r"--report-to tensorboard needs the tensorboard package.*sdlite\[tensorboard\]"
    ):
        check_trackers(("tensorboard",))


@pytest.mark.parametrize("tracker", ["wandb", "mlflow", "trackio"])
def test_missing_tracker_package_names_the_extra(tracker: str) -> None:
    if trackers._installed(tracker):
        pytest.skip(f"{tracker} is installed here")
    with pytest.raises(UsageError, match=rf"needs the {tracker} package.*pip install 'sdlite\[{tracker}\]'"):
        check_trackers(("tensorboard", tracker))


def test_several_missing_are_named_in_one_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trackers, "_installed", lambda name: name == "tensorboard")
    with pytest.raises(UsageError) as error:
        check_trackers(("wandb", "tensorboard", "mlflow"))
    assert "wandb package and mlflow package" in str(error.value)
    assert "pip install 'sdlite[wandb,mlflow]'" in str(error.value)


def test_the_check_agrees_with_accelerate() -> None:
    """Accelerate drops an unavailable tracker with only a warning: our check must see what it sees."""
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    assert {name: trackers._installed(name) for name in TRACKERS} == {name: name in available for name in TRACKERS}


def test_hyperparameters_are_flat_scalars(tmp_path: Path) -> None:
    values = hyperparameters(_config(tmp_path, validation_prompts=("a cat",), shuffle_captions=True), PLAN)
    assert all(isinstance(v, bool | int | float | str) for v in values.values())
    assert values["plan/cache"] is True and "plan/skipped" not in values and values["shuffle_captions"] is True
