"""Outputs written under a temporary name beside their target, then renamed into place.

A rename is atomic within a file system, so an interrupted write never leaves a file or folder that
looks finished under the final name; write failures become one-line ResourceErrors (exit 5).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sdlite.errors import writing


@contextmanager
def staged_file(target: Path, what: str) -> Iterator[Path]:
    """A temporary path to write; on success it becomes `target` (replacing an old one)."""
    target = Path(target)
    with writing(f"{what} {target}"):
        target.absolute().parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.absolute().parent)
        os.close(handle)
        try:
            yield Path(temp)
            os.replace(temp, target)
        finally:
            Path(temp).unlink(missing_ok=True)


@contextmanager
def staged_folder(target: Path, what: str) -> Iterator[Path]:
    """A temporary folder to fill; on success it replaces `target` (an old file or folder is removed first)."""
    target = Path(target)
    with writing(f"{what} {target}"):
        target.absolute().parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.absolute().parent))
        try:
            yield staging
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
