"""Two runs writing into one `--out` at once never share an index and never lose a file (issue 23)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from faults import SDLITE
from PIL import Image

from sdlite.formats.png_record import read_record
from sdlite.sampling.outputs import NAME, Numbering, write_png


def test_runs_that_scanned_the_same_free_indices_take_different_ones(tmp_path: Path) -> None:
    """Both runs scan the empty folder first (so each plans indices 0-3), then write in turns, each with its own
    seeds: without claims they would write 00000-100.png and 00000-200.png."""
    first, second = Numbering(tmp_path), Numbering(tmp_path)
    for numbering in (first, second):
        numbering.after(3)  # as plan_indices does: a displaced image goes past the run's own plan
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    written = []
    for k in range(4):
        written.append(write_png(tmp_path, first, 100 + k, image, None, index=k))
        written.append(write_png(tmp_path, second, 200 + k, image, None, index=k))
    indices = [index for _, index in written]
    assert sorted(indices) == list(range(8))
    assert [index for _, index in written[::2]] == [0, 1, 2, 3]  # the first to claim keeps its plan
    assert [index for _, index in written[1::2]] == [4, 5, 6, 7]
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(pngs) == 8 and len({NAME.match(name).group(1) for name in pngs}) == 8  # type: ignore[union-attr]


def test_a_claim_naming_this_image_is_this_runs_own(tmp_path: Path) -> None:
    """A resumed run (or another process of the same run) finds its own stem in the claim and keeps the index."""
    image = Image.new("RGB", (8, 8))
    path, _ = write_png(tmp_path, Numbering(tmp_path), 7, image, None, index=3)
    path.unlink()  # interrupted after claiming: the image never landed
    again, index_again = write_png(tmp_path, Numbering(tmp_path), 7, image, None, index=3)
    assert (again.name, index_again) == ("00003-7.png", 3)


def test_two_sample_commands_into_one_folder_keep_every_image(tiny_model: Path, tmp_path: Path) -> None:
    """Started together, both scan the folder before either's first image lands (20 steps a batch)."""
    out = tmp_path / "shared"
    commands = [[*SDLITE, "sample", f"a shape {seed}", "--model", str(tiny_model), "--steps", "20", "--num-images",
                 "6", "--seed", str(seed), "--out", str(out)] for seed in (100, 200)]  # fmt: skip
    running = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    for process in running:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 12
    assert len({NAME.match(p.name).group(1) for p in pngs}) == 12  # type: ignore[union-attr]
    prompts = sorted(read_record(p)["settings"]["prompt"] for p in pngs)
    assert prompts == ["a shape 100"] * 6 + ["a shape 200"] * 6
