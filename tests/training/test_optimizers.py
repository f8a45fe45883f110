"""Optimizers and learning-rate schedules: each optimizer trains (the loss falls) and resumes bit-equal from a
checkpoint after a crash (its state saved without pickle); each schedule's rates in the events follow its formula;
what cannot work is a usage error before any weight loads."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from helpers.training import losses, max_diff, run, unet_weights

from sdlite.errors import UsageError
from sdlite.testing import make_shapes_dataset

RATES = {"adamw": 1e-3, "sgd": 0.05, "adafactor": 1e-3, "prodigy": 1.0, "lion": 1e-4}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n=8)


class Crash(Exception):
    """What a SIGKILL leaves: the run stops with no checkpoint of its own, only the periodic ones."""


@pytest.mark.parametrize("optimizer", list(RATES))
def test_each_optimizer_trains_and_resumes_bit_equal_after_a_crash(
    optimizer: str, tiny_model: Path, shapes: Path, tmp_path: Path
) -> None:
    settings = {"max_steps": 6, "batch_size": 4, "lr": RATES[optimizer], "optimizer": optimizer,
                "checkpoint_every": 2, "lr_scheduler": "cosine", "warmup_steps": 1}  # fmt: skip
    _, events = run(tiny_model, shapes, tmp_path / "a", **settings)
    curve = losses(events)
    assert sum(curve[-2:]) < sum(curve[:2]), curve  # it learns

    def crash_at_step_5(step: int, loss: Any) -> Any:
        if step == 5:
            raise Crash
        return loss

    with pytest.raises(Crash):
        run(tiny_model, shapes, tmp_path / "b", hook=crash_at_step_5, **settings)
    _, resumed = run(tiny_model, shapes, tmp_path / "b", resume="latest", **settings)
    assert [e["step"] for e in resumed if e["event"] == "step"] == [5, 6]  # from the step-4 checkpoint
    assert max_diff(unet_weights(tmp_path / "a"), unet_weights(tmp_path / "b")) == 0.0
    plan = next(e for e in events if e["event"] == "plan")
    assert plan["optimizer"].startswith(f"{optimizer}, lr {RATES[optimizer]:g}, weight decay 0.01")


def _expected(schedule: str, step: int, warmup: int, total: int, cycles: int = 1) -> float:
    """The multiplier of the rate at 0-based step `step`, by each schedule's formula (diffusers' definitions)."""
    if schedule == "constant":
        return 1.0
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant-with-warmup":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    if schedule == "cosine-with-restarts":
        return 0.0 if progress >= 1 else max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0))))
    assert schedule == "polynomial"  # power 1, down to diffusers' lr_end 1e-7
    end, base = 1e-7, 1e-3
    return ((base - end) * (1 - progress) + end) / base


@pytest.mark.parametrize(
    "schedule", ["constant", "constant-with-warmup", "linear", "cosine", "cosine-with-restarts", "polynomial"]
)
def test_each_schedule_follows_its_formula(schedule: str, tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    cycles = {"lr_cycles": 2} if schedule == "cosine-with-restarts" else {}
    _, events = run(tiny_model, shapes, tmp_path / "o", max_steps=8, lr=1e-3, lr_scheduler=schedule,
                    warmup_steps=2, **cycles)  # fmt: skip
    rates = [e["lr"] for e in events if e["event"] == "step"]  # the rate each step used
    expected = [1e-3 * _expected(schedule, s, 2, 8, cycles.get("lr_cycles", 1)) for s in range(8)]
    assert rates == pytest.approx(expected, abs=1e-12), (rates, expected)


def test_what_cannot_work_is_refused_before_training(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    for settings, words in (
        ({"optimizer": "adamw8bit"}, "CUDA only"),
        ({"optimizer": "sgd", "optimizer_args": ("colour=3",)}, "does not take these arguments"),
        ({"optimizer_args": ("betas",)}, "write NAME=VALUE"),
        ({"lr_cycles": 2}, "is for --lr-scheduler cosine-with-restarts"),
    ):
        with pytest.raises(UsageError, match=words):
            run(tiny_model, shapes, tmp_path / "x", **settings)
        assert not (tmp_path / "x").exists()
    _, events = run(tiny_model, shapes, tmp_path / "ok", max_steps=2, optimizer="sgd",
                    optimizer_args=("momentum=0.9", "nesterov=True"))  # fmt: skip
    assert "momentum=0.9, nesterov=True" in next(e for e in events if e["event"] == "plan")["optimizer"]


def test_a_missing_package_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def no_prodigy(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "prodigyopt":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_prodigy)
    from sdlite.training.optimizers import check_optimizer

    with pytest.raises(UsageError, match=r"pip install 'sdlite\[prodigy\]'"):
        check_optimizer("prodigy", 1.0, 0.01, (), "cpu")
