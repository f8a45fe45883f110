"""Outputs written under a temporary name beside their target, then renamed into place.

A rename is atomic within a file system, so an interrupted write never leaves a file or folder that
looks finished under the final name; write failures become one-line ResourceErrors (exit 5).

Everything renamed into place gets the modes plain `open()` and `mkdir` give (0666/0777 less the
umask): teammates and inference services are meant to read it. Temporary names are created with those
modes (tempfile's mkstemp/mkdtemp would make them private, 0600/0700), and `share` corrects what
libraries write privately (safetensors files are created 0600) before the rename.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sdlite.errors import writing

_ATTEMPTS = 100  # names tried before giving up (a clash needs another writer using the same random name)


def current_umask() -> int:
    """This process's umask (read from /proc on Linux; elsewhere set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share(path: Path) -> None:
    """Give `path` (a file, or a folder and everything in it) the modes `open()`/`mkdir` give under the
    umask. Hard-linked files are left alone: they are someone else's too (frozen weights linked from
    a base model), and changing their mode would change the original's."""
    mask = current_umask()
    path = Path(path)
    entries = [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]
    for entry in entries:
        info = entry.lstat()
        if stat.S_ISDIR(info.st_mode):
            wanted = 0o777 & ~mask
        elif stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
            wanted = 0o666 & ~mask | (stat.S_IMODE(info.st_mode) & 0o111 & ~mask)  # keep executable bits
        else:
            continue
        if stat.S_IMODE(info.st_mode) != wanted:
            os.chmod(entry, wanted)


def new_file(folder: Path, prefix: str) -> Path:
    """Create an empty file with a fresh name in `folder`, mode 0666 less the umask."""
    for _ in range(_ATTEMPTS):
        path = Path(folder) / f"{prefix}{secrets.token_hex(4)}"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary name in {folder}")


def new_folder(folder: Path, prefix: str) -> Path:
    """Create an empty folder with a fresh name in `folder`, mode 0777 less the umask."""
    for _ in range(_ATTEMPTS):
        path = Path(folder) / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary name in {folder}")


@contextmanager
def staged_file(target: Path, what: str) -> Iterator[Path]:
    """A temporary path to write; on success it becomes `target` (replacing an old one)."""
    target = Path(target)
    with writing(f"{what} {target}"):
        target.absolute().parent.mkdir(parents=True, exist_ok=True)
        temp = new_file(target.absolute().parent, f".{target.name}.")
        try:
            yield temp
            share(temp)
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)


@contextmanager
def staged_folder(target: Path, what: str) -> Iterator[Path]:
    """A temporary folder to fill; on success it replaces `target` (an old file or folder is removed first)."""
    target = Path(target)
    with writing(f"{what} {target}"):
        target.absolute().parent.mkdir(parents=True, exist_ok=True)
        staging = new_folder(target.absolute().parent, f".{target.name}.")
        try:
            yield staging
            share(staging)
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _what(path: Path) -> str | None:
    """What a path that is not a folder is, in words; None for a folder or nothing."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there (or a parent is no folder: said by the caller)
        return None if not path.is_symlink() else "a broken symbolic link"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if stat.S_ISDIR(mode):
        return None
    kinds = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (pipe)"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a file"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "not a folder")


def check_output_place(path: Path, flag: str, kind: str = "folder") -> None:
    """Fail at once, before any model loads, when `path` cannot become the output `kind` ("folder" or "file"):
    something other than a folder in the way (a file, device, FIFO: UsageError naming it), or a place this user
    cannot write (a parent that is a file, a read-only folder or file system: ResourceError, exit 5, as a failed
    write would say)."""
    from sdlite.errors import ResourceError, UsageError

    path = Path(path).expanduser()
    if kind == "folder":
        what = _what(path)
        if what is not None:
            raise UsageError(f"{flag} {path} is {what}, not a folder: give a folder (made if missing)")
        folder, label = path, f"to output folder {path}"
    else:
        if path.is_dir():
            raise UsageError(f"{flag} {path} is a folder; give a file name")
        what = _what(path) if path.exists() else None
        if what not in (None, "a file"):
            raise UsageError(f"{flag} {path} is {what}: give a file name")
        folder, label = path.parent, str(path)
    blocked = unwritable(folder)
    if blocked is not None:
        raise ResourceError(f"cannot write {label}: {blocked}")


def unwritable(folder: Path) -> str | None:
    """Why this user cannot make or write `folder`, in the words a failed write uses, or None: the nearest
    existing place on its path is not a folder, or is read-only (permissions, or a read-only file system)."""
    existing = Path(folder)
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is {_what(existing)}, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is read-only for this user"
    return None
