"""Where sampled images go: names, whole-file writes, a background writer, and finding a run's images again.

Names are `INDEX-SEED.png`; the index has at least 5 digits and simply grows wider past 99999, so
numbering never stops (`ls -v`, `sort -V` and file managers list 99999 before 100000). A run scans its
folder once, and image k of the run gets index first + k: the cost of a name does not grow with the folder.
Every file is written under a hidden temporary name and linked into place only when complete, so a crash,
a full disk or SIGKILL never leaves a partial PNG under an image's name.

An index is claimed before its image is written: exclusive creation of `.sdlite-claims/INDEX` holding the
image's `INDEX-SEED` stem. Two runs writing into one folder at once (whose scans saw the same free indices) thus
never give two images one index, even with different seeds (`00000-100.png` and `00000-200.png`); a run that
finds its own stem in a claim (a resumed run, another process of the same run) goes on with it.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdlite.errors import writing

NAME = re.compile(r"^(\d{5,})-(\d+)\.(?:png|jpg|webp)$")
CLAIMS = ".sdlite-claims"  # hidden folder of index claims inside an output folder
GRID = re.compile(r"^grid-(\d{5,})(?:-\d+)?\.png$")


class Numbering:
    """Image indices for one run: the folder is scanned once; `first` is one past the highest index there.

    A name taken meanwhile (another run writing into the same folder) is skipped by exclusive creation:
    the image then takes the next index past everything this run has seen or written.
    """

    def __init__(self, out: Path) -> None:
        with writing(f"to output folder {out}"):
            self.names = [p.name for p in out.iterdir()]
        taken = [int(m.group(1)) for name in self.names if (m := NAME.match(name) or GRID.match(name))]
        self.first = self.next = max(taken, default=-1) + 1

    def take(self) -> int:
        index, self.next = self.next, self.next + 1
        return index

    def after(self, index: int) -> None:
        """Note that `index` is used, so later fallbacks go past it."""
        self.next = max(self.next, index + 1)


def write_png(
    out: Path, numbering: Numbering, seed: int, image: Any, info: Any, index: int | None = None, suffix: str = ""
) -> tuple[Path, int]:
    """Write `INDEX-SEED{suffix}.png` at `index` (or the next free one), whole or not at all; never overwrite."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return write_image(out, numbering, seed, buffer.getvalue(), ".png", index, suffix)


def write_image(
    out: Path, numbering: Numbering, seed: int, data: bytes, extension: str, index: int | None = None, suffix: str = ""
) -> tuple[Path, int]:
    """Write the encoded image `data` as `INDEX-SEED{suffix}{extension}` at `index` (or the next free one), whole or
    not at all; never overwrite."""
    while True:
        if index is None:
            index = numbering.take()
        numbering.after(index)
        stem = f"{index:05d}-{seed}"
        if not claim(out, index, stem):  # another run's image has (or will have) this index
            index = None
            continue
        path = out / f"{stem}{suffix}{extension}"
        try:
            _create(path, data)
            return path, index
        except FileExistsError:
            index = None


def claim(out: Path, index: int, stem: str) -> bool:
    """Claim `index` for the image named `stem` (exclusive creation of its claim file); True also when the claim
    already names `stem` (this run's own, made before an interruption or by another of its processes)."""
    marker = out / CLAIMS / f"{index:05d}"
    with writing(f"to output folder {out}"):
        marker.parent.mkdir(exist_ok=True)
    try:
        # whole or not at all: a claim never reads half-written; a failure names the image it was for
        _create(marker, stem.encode(), str(out / f"{stem}.png"))
    except FileExistsError:
        return claimed_stem(out, index) == stem
    return True


def claimed_stem(out: Path, index: int) -> str | None:
    """The image stem that claimed `index` in `out`, or None when there is no readable claim."""
    try:
        return (out / CLAIMS / f"{index:05d}").read_text()
    except OSError:
        return None


def _create(path: Path, data: bytes, what: str | None = None) -> None:
    """Create `path` holding `data`: written to a hidden temporary file, then hard-linked into place (which
    fails with FileExistsError if the name exists). Where hard links are not supported, exclusive creation
    and a direct write, removed again if the write fails."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        with writing(what or str(path)):
            temp.write_bytes(data)
        try:
            os.link(temp, path)
            return
        except FileExistsError:
            raise
        except OSError:  # no hard links here (FAT, some network file systems)
            pass
        try:
            file = path.open("xb")
        except FileExistsError:
            raise  # the caller takes another name
        except OSError:
            with writing(what or str(path)):
                raise
        with file, writing(what or str(path)):
            try:
                file.write(data)
            except OSError:
                path.unlink(missing_ok=True)  # never leave a partial image behind
                raise
    finally:
        with contextlib.suppress(OSError):  # a read-only folder refuses even this; the real error is on its way
            temp.unlink(missing_ok=True)


def write_grid_png(out: Path, index: int, image: Any) -> Path:
    """`grid-INDEX.png` (or `grid-INDEX-N.png` past names taken), whole or not at all. A grid already holding
    these very bytes is the one a resumed run would write again: it is kept, not doubled."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data, n = buffer.getvalue(), 0
    while True:
        path = out / (f"grid-{index:05d}.png" if n == 0 else f"grid-{index:05d}-{n}.png")
        try:
            _create(path, data)
            return path
        except FileExistsError:
            with contextlib.suppress(OSError):
                if path.read_bytes() == data:
                    return path
            n += 1


class BackgroundWriter:
    """Runs `write(job)` for each job on one thread, in order, while the caller computes the next batch.

    At most `limit` jobs holding pixels wait (so memory stays bounded: `put` blocks when they do); light
    jobs (reports of images another process writes) do not count. The first failure is kept and raised in
    the caller's thread at the next `put` or at `close`; jobs after it are dropped.
    """

    def __init__(self, write: Callable[[Any], None], limit: int) -> None:
        self.write, self.error = write, None
        self.jobs: queue.Queue[Any] = queue.Queue()
        self.slots = threading.Semaphore(max(1, limit))
        self.thread = threading.Thread(target=self._run, name="sdlite-writer", daemon=True)
        self.thread.start()

    def put(self, job: Any, heavy: bool = True) -> None:
        self.check()
        if heavy:
            self.slots.acquire()
        self.jobs.put((job, heavy))

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self, raise_error: bool = True) -> None:
        """Wait for every queued job (images finished before an interruption are still written)."""
        if self.thread.is_alive():
            self.jobs.put(None)
            self.thread.join()
        if raise_error:
            self.check()

    def _run(self) -> None:
        while (item := self.jobs.get()) is not None:
            job, heavy = item
            try:
                if self.error is None:
                    self.write(job)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                self.error = exc
            finally:
                if heavy:
                    self.slots.release()


def find_existing(
    out: Path,
    numbering: Numbering,
    expected: list[tuple[int, int, dict[str, Any]]],
    same: Callable[[dict[str, Any], dict[str, Any]], bool],
) -> dict[int, tuple[Path, int]]:
    """Images of an earlier, interrupted run of the same command in `out`, for `sample --resume`.

    `expected` lists (number in the run, seed, what the image's record must say); `same(record, expected)`
    decides. Only files named for the right seed are opened. Returns {number: (path, index)}.
    """
    from sdlite.formats.png_record import read_record

    by_seed: dict[str, list[str]] = {}
    for name in numbering.names:
        if m := NAME.match(name):
            by_seed.setdefault(m.group(2), []).append(name)
    found: dict[int, tuple[Path, int]] = {}
    for number, seed, wanted in expected:
        for name in by_seed.get(str(seed), []):
            with contextlib.suppress(Exception):  # an unreadable or foreign PNG is simply not this run's
                record = read_record(out / name)
                if same(record, wanted):
                    found[number] = (out / name, int(NAME.match(name).group(1)))  # type: ignore[union-attr]
                    break
    return found
