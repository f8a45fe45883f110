"""A dataset with ~5% broken files: by default nothing trains and the first bad file is named (exit 3);
with --skip-bad-images the run completes and its report lists exactly the injected files."""

from __future__ import annotations

import json
import struct
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.data.images import load_image
from sdlite.errors import DataError
from sdlite.testing import make_shapes_dataset

# Module-scoped fixtures below are made once: `make test` keeps this file on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("data_faults")

runner = CliRunner()


def bomb_png(path: Path, side: int = 50_000) -> Path:
    """A real decompression bomb: a tiny PNG whose header declares side x side pixels (2.5 gigapixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    body = zlib.compress(bytes(side + 1) * 4)  # four rows of the billions promised
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def inject_faults(data: Path) -> list[str]:
    """Add 5 broken files among 95 good ones, listed in metadata.jsonl like the rest; returns their names."""
    from PIL import Image

    jpg = data / "tmp.jpg"
    Image.open(data / "000.png").save(jpg, quality=95)
    broken = {
        "010-corrupt.png": bytes(range(256)) * 4,  # random-looking bytes
        "030-truncated.jpg": jpg.read_bytes()[: jpg.stat().st_size // 2],
        "050-empty.png": b"",
        "070-notes.png": b"shopping list: eggs, milk\n",  # not an image at all
    }
    jpg.unlink()
    for name, content in broken.items():
        (data / name).write_bytes(content)
    bomb_png(data / "090-bomb.png")
    names = [*broken, "090-bomb.png"]
    with (data / "metadata.jsonl").open("a") as f:
        for name in names:
            f.write(json.dumps({"file_name": name, "text": "a red circle on a blue background"}) + "\n")
    return names


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    data = make_shapes_dataset(tmp_path_factory.mktemp("faulty") / "data", n=95)
    return data, inject_faults(data)


def train(model: Path, data: Path, out: Path, *extra: str) -> Any:
    """Two steps of `sdlite train` with JSON events, in this process."""
    return runner.invoke(app, ["train", "--model", str(model), "--data", str(data), "--out", str(out),
                               "--max-steps", "2", "--json-events", *extra])  # fmt: skip


def test_default_stops_before_any_step_naming_the_first_bad_file(
    tiny_model: Path, faulty: tuple[Path, list[str]], tmp_path: Path
) -> None:
    data, names = faulty
    out = tmp_path / "out"
    result = train(tiny_model, data, out)
    assert result.exit_code == 3
    assert result.stdout == ""  # not even the plan: nothing ran
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and names[0] in lines[0] and "(and 4 more)" in lines[0] and "--skip-bad-images" in lines[0]
    assert not out.exists()


def test_skip_bad_images_completes_and_reports_exactly_the_injected_files(
    tiny_model: Path, faulty: tuple[Path, list[str]], tmp_path: Path
) -> None:
    data, names = faulty
    out = tmp_path / "out"
    result = train(tiny_model, data, out, "--batch-size", "4", "--skip-bad-images")
    assert result.exit_code == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[0]["images"] == 95
    skipped = events[-1]["skipped"]
    assert sorted(Path(s.split(":")[0]).name for s in skipped) == sorted(names)
    record = json.loads((out / "sdlite-train.json").read_text())
    assert record["plan"]["skipped"] == skipped  # the saved report says the same
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert warnings == skipped
    assert "too large" in next(s for s in skipped if "090-bomb.png" in s)


def test_a_decompression_bomb_is_refused_without_decoding_it(tmp_path: Path) -> None:
    path = bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 1000
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(DataError, match=r"bomb\.png: cannot read image \(too large"):
        load_image(path)
    elapsed, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 16 * 2**20
