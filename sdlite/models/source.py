"""Which model a command uses (the one given, $SDLITE_MODEL, or the built-in one) and the settings record it
carries (`sdlite.json`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sdlite.errors import ModelError, UsageError

MODEL_ENV = "SDLITE_MODEL"


# The model sdlite trained itself (`make default-model`), used when no model is given.
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "default_model"
MODEL_DEFAULTS_FILE = "sdlite.json"


def resolve_model_source(model: str | None, env: dict[str, str] | None = None) -> str:
    """The model to use: the one given, else $SDLITE_MODEL, else the built-in shapes model."""
    env = dict(os.environ) if env is None else env
    model = model or env.get(MODEL_ENV)
    if model:
        return model
    if (DEFAULT_MODEL / "model_index.json").is_file():
        return str(DEFAULT_MODEL)
    raise UsageError(
        f"no model given and the built-in model is missing ({DEFAULT_MODEL}): pass --model PATH_OR_HUB_ID or set "
        f"{MODEL_ENV} (make a test model with `sdlite init DIR --preset tiny`)"
    )


def model_settings_record(model: str) -> tuple[Any, str]:
    """A model's own `sdlite.json` record (None when it has none) and where it was read: the folder's file, or the
    copy `sdlite export` keeps in a single file's metadata, so the settings survive the trip through one file.

    A record that is not JSON is a corrupt model (ModelError naming it); files of other tools have no record.
    """
    path = Path(model).expanduser()
    if path.is_file():
        from sdlite.formats.single_file import SETTINGS_METADATA, read_metadata

        where = f"{path} (its {SETTINGS_METADATA} metadata)"
        text = read_metadata(path).get(SETTINGS_METADATA)
    else:
        where = str(path / MODEL_DEFAULTS_FILE)
        try:
            text = (path / MODEL_DEFAULTS_FILE).read_text(encoding="utf-8") if path.is_dir() else None
        except FileNotFoundError:
            text = None
        except (OSError, ValueError) as exc:  # ValueError: not UTF-8
            raise ModelError(f"{where} is not readable: {exc}") from exc
    if text is None:
        return None, where
    try:
        return json.loads(text), where
    except ValueError as exc:
        raise ModelError(f"{where} is not valid JSON (a corrupt model): {exc}") from exc
