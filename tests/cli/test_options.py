"""Each option is declared once, on its config field: every field a user can set has an option whose help shows
the field's real default, and every option's value reaches its field."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from sdlite.cli import train as train_cli
from sdlite.cli.app import app
from sdlite.schema import default_text
from sdlite.training.config import TrainConfig


def _params(command: str) -> dict[str, Any]:
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return {p.name: p for p in click_command.params}


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


@pytest.mark.parametrize("field", dataclasses.fields(TrainConfig), ids=lambda f: f.name)
def test_every_train_field_has_an_option_showing_its_real_default(field: dataclasses.Field[Any]) -> None:
    params = _params("train")
    assert field.name in params, f"TrainConfig.{field.name} has no `sdlite train` option"
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


def test_every_train_option_reaches_its_field(monkeypatch: pytest.MonkeyPatch) -> None:
    params = _params("train")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    received: list[dict[str, Any]] = []

    def captured(cli: dict[str, Any], config_file: Any = None, env: Any = None) -> Any:
        received.append(cli)
        raise typer.Exit(0)

    monkeypatch.setattr(train_cli, "build_train_config", captured)
    runner = CliRunner()
    for name, field in fields.items():
        words, expected = _a_given_value(params[name], field)
        received.clear()
        result = runner.invoke(app, ["train", *words])
        assert result.exit_code == 0, (name, result.output)
        (cli,) = received
        assert cli[name] == expected, (name, words, cli[name])
        assert [k for k, v in cli.items() if v is not None] == [name], f"{words} set more than {name}"
    assert set(received[0]) == set(fields), "the command line passes a value (or None) for every field"
