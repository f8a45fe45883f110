"""Settings are merged and validated before any model loads (no torch needed here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdlite.errors import DataError, ModelError, UsageError
from sdlite.sampling.config import Generation, SampleConfig
from sdlite.sampling.prompts_file import prompt_rows
from sdlite.sampling.sources import SampleOverrides, build_sample_config
from sdlite.schema import validate_size


def build(**kwargs: object) -> SampleConfig:
    settings = kwargs.pop("settings", {})
    return build_sample_config(SampleOverrides(model="m", settings=settings, **kwargs), env={})  # type: ignore[arg-type]


def test_seed_plus_i_across_prompts() -> None:
    config = build(prompts=("a", "b"), settings={"seed": 10, "num_images": 3})
    assert [g.seed for g in config.generations] == [10, 13]
    assert all(g.num_images == 3 for g in config.generations)


def test_random_seed_is_resolved_and_distinct_runs_differ() -> None:
    seeds = {build(prompts=("a",)).generations[0].seed for _ in range(5)}
    assert len(seeds) > 1
    assert all(0 <= s < 2**32 for s in seeds)


def test_defaults_are_the_classic_ones() -> None:
    gen = build(prompts=("a",), settings={"seed": 1}).generations[0]
    assert (gen.steps, gen.guidance, gen.scheduler, gen.eta, gen.num_images) == (50, 7.5, "ddim", 0.0, 1)


def test_prompts_file_text_and_jsonl_overrides(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    lines = [
        "# a comment",
        "plain prompt",
        "",
        json.dumps({"prompt": "json prompt", "steps": 7, "seed": 100, "num_images": 2}),
        json.dumps({"prompt": "third", "guidance": 2.0}),
    ]
    path.write_text("\n".join(lines))
    config = build(prompts_file=path, settings={"seed": 5, "steps": None})
    gens = config.generations
    assert [g.prompt for g in gens] == ["plain prompt", "json prompt", "third"]
    assert [g.steps for g in gens] == [50, 7, 50]
    # A line's own seed wins over the run counter; the counter continues after that line's images.
    assert [g.seed for g in gens] == [5, 100, 102]
    assert gens[2].guidance == 2.0


def test_command_line_beats_prompts_file(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "x", "steps": 7}) + "\n")
    assert build(prompts_file=path, settings={"steps": 3, "seed": 0}).generations[0].steps == 3


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"prompt": "x", "colour": 1}', "unknown keys"),
        ('{"prompt": "x",', "not valid JSON"),
        ('{"steps": 3}', 'needs a string "prompt"'),
        ("\n# only a comment\n", "holds no prompts"),
    ],
)
def test_bad_prompts_file_is_a_data_error(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=fragment):
        prompt_rows(path)


def test_missing_prompts_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read prompts file"):
        prompt_rows(tmp_path / "nope.txt")


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"steps": 0}, "--steps must be at least 1"),
        ({"guidance": -0.5}, "--guidance must be 0 or more"),
        ({"num_images": 0}, "--num-images must be at least 1"),
        ({"scheduler": "karras-magic"}, "--scheduler must be one of ddim, ddpm"),
        ({"scheduler": "euler", "eta": 0.5}, "--eta has no effect with --scheduler euler"),
        ({"seed": -1}, "--seed must be between"),
        ({"height": 100}, "nearest valid: 96 or 104"),
        ({"width": 4}, "--width must be at least 8"),
    ],
)
def test_bad_values_are_usage_errors(settings: dict[str, object], fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        build(prompts=("a",), settings={"seed": 0, **settings})


def test_model_precedence_env_then_built_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sdlite.models.source

    config = build_sample_config(SampleOverrides(prompts=("a",)), env={"SDLITE_MODEL": "org/model"})
    assert config.model == "org/model"
    assert (
        build_sample_config(SampleOverrides(prompts=("a",), model="x/y"), env={"SDLITE_MODEL": "org/model"}).model
        == "x/y"
    )
    assert build_sample_config(SampleOverrides(prompts=("a",)), env={}).model == str(sdlite.models.source.DEFAULT_MODEL)
    monkeypatch.setattr(sdlite.models.source, "DEFAULT_MODEL", tmp_path / "missing")
    with pytest.raises(UsageError, match="no model given and the built-in model is missing"):
        build_sample_config(SampleOverrides(prompts=("a",)), env={})


def test_model_recommended_settings(tmp_path: Path) -> None:
    (tmp_path / "sdlite.json").write_text(json.dumps({"defaults": {"steps": 30, "guidance": 3.0, "prompt": "ignored"}}))
    gen = build_sample_config(
        SampleOverrides(prompts=("a",), model=str(tmp_path), settings={"seed": 1}), env={}
    ).generations[0]
    assert (gen.steps, gen.guidance, gen.prompt) == (30, 3.0, "a")
    gen = build_sample_config(
        SampleOverrides(prompts=("a",), model=str(tmp_path), settings={"seed": 1, "steps": 7}), env={}
    ).generations[0]
    assert gen.steps == 7  # the command line wins
    (tmp_path / "sdlite.json").write_text("{broken")
    with pytest.raises(ModelError, match=r"sdlite\.json is not valid JSON"):
        build_sample_config(SampleOverrides(prompts=("a",), model=str(tmp_path)), env={})


def test_no_prompt_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no prompt given"):
        build()


def test_batch_size_and_choices() -> None:
    with pytest.raises(UsageError, match="--batch-size"):
        build(prompts=("a",), batch_size=-1)
    with pytest.raises(UsageError, match="--batch-size must be at least 1, got 0"):  # not read as "not given"
        build(prompts=("a",), batch_size=0)
    with pytest.raises(UsageError, match="--dtype must be one of"):
        build(prompts=("a",), dtype="fp8")
    with pytest.raises(UsageError, match="--device must be one of"):
        build(prompts=("a",), device="tpu")


def test_validate_size_accepts_multiples() -> None:
    validate_size(64, 512, 8)
    validate_size(None, None, 8)
    with pytest.raises(UsageError, match="nearest valid: 64 or 72"):
        validate_size(70, None, 8)


def test_config_is_frozen() -> None:
    config = SampleConfig(model="m", generations=(Generation("a"),))
    with pytest.raises(AttributeError):
        config.model = "other"  # type: ignore[misc]
