"""Facts about files (sha256, checked image sizes) are remembered while the file is unchanged, one small
cache file each, so a large dataset is hashed and checked once, not at every start and not quadratically."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.imaging import noise, save

from sdlite import filecache
from sdlite.data import examples, images
from sdlite.data.examples import discover
from sdlite.data.images import check_images
from sdlite.errors import DataError


def folder_of(tmp_path: Path, n: int) -> Path:
    for i in range(n):
        save(tmp_path / "data" / f"{i:03d}.png", noise(16 + i % 3, 12, seed=i))
        (tmp_path / "data" / f"{i:03d}.txt").write_text(f"picture {i}")
    return tmp_path / "data"


def test_a_fact_lasts_while_the_file_is_unchanged(tmp_path: Path) -> None:
    file = tmp_path / "f.bin"
    file.write_bytes(b"one")
    key = filecache.file_key(file)
    filecache.remember("test-kind", key, [1, 2])
    assert filecache.recall("test-kind", key) == [1, 2]
    assert filecache.recall("other-kind", key) is None
    file.write_bytes(b"three")  # new size (and time): a new key, nothing remembered under it
    assert filecache.file_key(file) != key and filecache.recall("test-kind", filecache.file_key(file)) is None


def test_hashes_are_one_small_entry_each_and_follow_content(tmp_path: Path) -> None:
    files = [tmp_path / f"{i}.bin" for i in range(300)]
    for i, file in enumerate(files):
        file.write_bytes(str(i).encode())
    digests = [filecache.file_sha256(f) for f in files]
    entries = list((filecache.cache_dir() / "sha256").rglob("*.json"))
    assert len(entries) >= 300 and max(p.stat().st_size for p in entries) < 1024  # nothing grows with the count
    assert [filecache.cached_sha256(f) for f in files] == digests
    files[0].write_bytes(b"changed content")
    os.utime(files[0], ns=(1, 1))
    assert filecache.cached_sha256(files[0]) is None
    assert filecache.file_sha256(files[0]) == filecache.sha256_uncached(files[0]) != digests[0]


def test_a_second_check_decodes_nothing_unless_a_file_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = folder_of(tmp_path, 12)
    first = check_images(discover(folder, "text", False), False)
    assert [e.size for e in first.examples] == [(16 + i % 3, 12) for i in range(12)]  # in dataset order
    decoded: list[str] = []
    load = images.load_example

    def counting(example: examples.Example) -> object:
        decoded.append(example.path.name)
        return load(example)

    monkeypatch.setattr(images, "load_example", counting)
    again = check_images(discover(folder, "text", False), False)
    assert decoded == [] and [e.size for e in again.examples] == [e.size for e in first.examples]
    save(folder / "005.png", noise(40, 30, seed=99))  # replaced: decoded again, its new size seen
    third = check_images(discover(folder, "text", False), False)
    assert decoded == ["005.png"] and third.examples[5].size == (40, 30)


def test_bad_images_are_never_remembered(tmp_path: Path) -> None:
    folder = folder_of(tmp_path, 4)
    (folder / "002.png").write_bytes((folder / "002.png").read_bytes()[:60])  # truncated
    for _ in range(2):
        with pytest.raises(DataError, match=r"002\.png"):
            check_images(discover(folder, "text", False), False)
    kept = check_images(discover(folder, "text", False), True)
    assert [e.path.name for e in kept.examples] == ["000.png", "001.png", "003.png"]


def test_ctrl_c_during_the_check_stops_it_without_checking_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = folder_of(tmp_path, 200)
    dataset = discover(folder, "text", False)
    checked: list[str] = []
    real = images._checked_size

    def interrupted_at_the_third(example: examples.Example) -> object:
        checked.append(example.path.name)
        if example.path.name == "002.png":
            raise KeyboardInterrupt
        return real(example)

    monkeypatch.setattr(images, "_checked_size", interrupted_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        check_images(dataset, False)
    assert len(checked) <= 3 + 2 * images.CHECK_THREADS  # a bounded few past it, however slow the waiting thread
