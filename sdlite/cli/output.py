"""What the commands write besides their results: result lines, sdlite's warnings, quieter libraries."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import typer


def print_result(result: Any, json_out: bool, progress: Any = None) -> None:
    """One line per written image on stdout: JSON, or the path and the seed that remakes it."""
    from tqdm import tqdm

    with tqdm.external_write_mode():  # lift a progress bar out of the way instead of printing over it
        variation = f"  subseed {result.subseed} x{result.subseed_strength:g}" if result.subseed_strength else ""
        typer.echo(json.dumps(result.to_dict()) if json_out else f"{result.path}  seed {result.seed}{variation}")
    if progress is not None:
        progress.image_done()


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (test runners replace it between calls)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")


def show_warnings() -> None:
    """sdlite's own warnings (e.g. a truncated prompt) go to stderr as `warning: ...` lines."""
    logger = logging.getLogger("sdlite")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def quiet_libraries(offline: bool = False) -> None:
    """Keep library chatter (deprecation notes, download bars) off stderr; our own warnings still show."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
