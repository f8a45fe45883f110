"""Each option is declared once, on its config field: every field a user can set has an option whose help shows
the field's real default, and every option's value reaches its field."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from sdlite.cli import quality as quality_cli
from sdlite.cli import train as train_cli
from sdlite.cli.app import app
from sdlite.quality.config import EvalConfig
from sdlite.schema import default_text
from sdlite.training.config import TrainConfig

# (command words, its config, the CLI module, the name there that receives the config's values)
COMMANDS = [
    (("train",), TrainConfig, train_cli, "build_train_config"),
    (("eval", "shapes"), EvalConfig, quality_cli, "build_eval_config"),
]
FIELDS = [(words, config, f) for words, config, _, _ in COMMANDS for f in dataclasses.fields(config)]


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
    """Command-line words that set `param` to something other than its default, and the value the field gets."""
    flag = max(param.opts, key=len)
    if param.is_flag:
        if param.secondary_opts:  # an on/off pair: give the one that is not the default
            on = field.default in (None, False) or (isinstance(field.default, str) and field.default != "center")
            words = [param.opts[0]] if on else [param.secondary_opts[0]]
            value = on
            if isinstance(field.default, str):  # --center-crop/--random-crop
                value = "random"
                words = [param.secondary_opts[0]]
            return words, value
        return [flag], True
    if param.multiple:
        return [flag, "a", flag, "b"], ("a", "b")
    kind = param.type_descriptor.annotation
    if kind is int:
        return [flag, "7"], 7
    if kind is float:
        return [flag, "0.25"], 0.25
    if kind is Path:
        return [flag, "some/path"], Path("some/path")
    return [flag, "text"], "text"


@pytest.mark.parametrize(
    ("words", "config", "module", "receiver"), COMMANDS, ids=lambda v: getattr(v, "__name__", None)
)
def test_every_option_reaches_its_field(
    words: tuple[str, ...], config: type, module: Any, receiver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = _params(words)
    fields = {f.name: f for f in dataclasses.fields(config)}
    received: list[dict[str, Any]] = []

    def captured(*args: Any, **kwargs: Any) -> Any:
        received.append(args[0] if args else kwargs)
        raise typer.Exit(0)

    monkeypatch.setattr(module, receiver, captured)
    runner = CliRunner()
    for name, field in fields.items():
        word_list, expected = _a_given_value(params[name], field)
        received.clear()
        result = runner.invoke(app, [*words, *word_list])
        assert result.exit_code == 0, (name, result.output)
        (given,) = received
        assert given[name] == expected, (name, word_list, given[name])
        assert [k for k, v in given.items() if v is not None] == [name], f"{word_list} set more than {name}"
