"""Each option is declared once, on its config field: every field a user can set has an option (or argument) whose
help shows the field's real default, and every option's value reaches its field."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from sdlite.cli import models as models_cli
from sdlite.cli import noise as noise_cli
from sdlite.cli import quality as quality_cli
from sdlite.cli import sample as sample_cli
from sdlite.cli import train as train_cli
from sdlite.cli.app import app
from sdlite.models.config import ExportConfig, InfoConfig, InitConfig
from sdlite.quality.config import EvalConfig
from sdlite.sampling.config import Generation, NoiseConfig
from sdlite.sampling.sources import SampleOverrides
from sdlite.schema import default_text
from sdlite.training.config import TrainConfig

# (command words, its configs, the CLI module, the name there that receives the configs' values)
COMMANDS = [
    (("train",), (TrainConfig,), train_cli, "build_train_config"),
    (("eval", "shapes"), (EvalConfig,), quality_cli, "build_eval_config"),
    (("init",), (InitConfig,), models_cli, "build_config"),
    (("info",), (InfoConfig,), models_cli, "build_config"),
    (("export",), (ExportConfig,), models_cli, "build_config"),
    (("noise",), (NoiseConfig,), noise_cli, "build_config"),
    (("sample",), (Generation, SampleOverrides), sample_cli, "build_sample_config"),
]
# Fields a user sets some other way than by an option of their own.
NOT_OPTIONS = {
    (Generation, "prompt"): "the PROMPTS argument (SampleOverrides.prompts), a prompts-file line or a PNG's record",
    (SampleOverrides, "settings"): "the Generation options, gathered",
    (Generation, "image_lora_scale"): "--sweep lora-scale=...",
    (TrainConfig, "datasets"): "[[datasets]] tables in the --config TOML file",
}
FIELDS = [
    (words, config, f)
    for words, configs, _, _ in COMMANDS
    for config in configs
    for f in dataclasses.fields(config)
    if (config, f.name) not in NOT_OPTIONS
]


def _received(args: tuple[Any, ...]) -> dict[str, Any]:
    """The values a receiver got, by field: build_train_config(values), build_eval_config(values),
    build_config(cls, values), build_sample_config(SampleOverrides(..., settings=Generation values))."""
    if isinstance(args[0], SampleOverrides):
        overrides = {f.name: getattr(args[0], f.name) for f in dataclasses.fields(SampleOverrides)}
        return {**overrides, **overrides.pop("settings")}
    return args[1] if isinstance(args[0], type) else args[0]


def _params(words: tuple[str, ...]) -> dict[str, Any]:
    command = typer.main.get_command(app)
    for word in words:
        command = command.commands[word]  # type: ignore[attr-defined]
    return {p.name: p for p in command.params}


def _shown_default(field: dataclasses.Field[Any]) -> str | None:
    """The default as this test reads it off the field itself (not through the code under test)."""
    if field.metadata.get("shown"):
        return field.metadata["shown"]
    value = field.default
    if value in (None, (), dataclasses.MISSING) or value is False:
        return None
    if value is True:
        return field.metadata["flag"].split("/")[0]
    return f"{value:g}".replace("e-0", "e-") if isinstance(value, float) else str(value)


@pytest.mark.parametrize(("words", "config", "field"), FIELDS, ids=lambda v: getattr(v, "name", None))
def test_every_field_has_an_option_showing_its_real_default(
    words: tuple[str, ...], config: type, field: dataclasses.Field[Any]
) -> None:
    params = _params(words)
    assert field.name in params, f"{config.__name__}.{field.name} has no `sdlite {' '.join(words)}` option"
    help_text = " ".join(params[field.name].help.split())
    shown = _shown_default(field)
    if shown is None:
        assert "[default:" not in help_text, help_text
    else:
        assert f"[default: {shown}]" in help_text, (field.name, help_text)
        assert default_text(field) == shown


def _a_given_value(param: Any, field: dataclasses.Field[Any]) -> tuple[list[str], Any]:
    """Command-line words that set `param` to something other than its default, and the value the field gets
    (for an argument: the word alone)."""
    flag = max(param.opts, key=len)
    flag_words = [] if param.param_type_name == "argument" else [flag]
    if param.param_type_name != "argument" and param.is_flag:
        if not param.secondary_opts:
            return [flag], True
        if isinstance(field.default, str):  # --center-crop/--random-crop
            return [param.secondary_opts[0]], "random"
        on = field.default in (None, False)  # an on/off pair: give the one that is not the default
        return ([param.opts[0]] if on else [param.secondary_opts[0]]), on
    if param.multiple:
        if typing.get_args(param.type_descriptor.annotation) == (float,):
            return [flag, "0.25", flag, "0.5"], (0.25, 0.5)
        return [flag, "a", flag, "b"], ("a", "b")
    if param.nargs == -1:  # an argument taking several values (PROMPTS)
        return ["a", "b"], ("a", "b")
    kind = param.type_descriptor.annotation
    if kind is int:
        return [*flag_words, "7"], 7
    if kind is float:
        return [*flag_words, "0.25"], 0.25
    if kind is Path:
        return [*flag_words, "some/path"], Path("some/path")
    return [*flag_words, "given-text"], "given-text"


def _command_line(
    words: tuple[str, ...], params: dict[str, Any], fields: dict[str, Any], name: str
) -> tuple[list[str], Any]:
    """A command line giving field `name` (and placeholders for what must always be given), and its value."""
    given, expected = _a_given_value(params[name], fields[name])
    positional: list[str] = []
    options: list[str] = []
    for other, param in params.items():
        words_here = given if other == name else _a_given_value(param, fields[other])[0] if param.required else []
        if other in fields:
            (positional if param.param_type_name == "argument" else options).extend(words_here)
    return [*words, *positional, *options], expected


@pytest.mark.parametrize(
    ("words", "configs", "module", "receiver"), COMMANDS, ids=lambda v: getattr(v, "__name__", None)
)
def test_every_option_reaches_its_field(
    words: tuple[str, ...], configs: tuple[type, ...], module: Any, receiver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = _params(words)
    fields = {f.name: f for c in configs for f in dataclasses.fields(c) if (c, f.name) not in NOT_OPTIONS}
    received: list[dict[str, Any]] = []

    def captured(*args: Any) -> Any:
        received.append(_received(args))
        raise typer.Exit(0)

    monkeypatch.setattr(module, receiver, captured)
    monkeypatch.setattr("sdlite.models.source.resolve_model_source", lambda model, env=None: model)
    runner = CliRunner()
    required = {n for n, p in params.items() if n in fields and p.required}
    for name in fields:
        command_line, expected = _command_line(words, params, fields, name)
        received.clear()
        result = runner.invoke(app, command_line)
        assert result.exit_code == 0, (name, result.output)
        (given,) = received
        assert given[name] == expected, (name, command_line, given[name])
        changed = {k for k, v in given.items() if k in fields and v is not None and v != fields[k].default}
        assert changed == {name} | required, f"{command_line} set more than {name}"
