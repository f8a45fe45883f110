"""DreamBooth class images: generated once by sdlite's sampling (with metadata), reused, topped up by new seeds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from sdlite import filecache
from sdlite.errors import UsageError
from sdlite.formats import png_record
from sdlite.training.config import TrainConfig
from sdlite.training.dreambooth import class_images

# Module-scoped fixtures below are made once: `make test` keeps this file on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("dreambooth")

CLASS_PROMPT = "a photo of a thing"
STEPS = 2


@pytest.fixture(scope="module")
def model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model recommending 2 steps (`sdlite.json`), which class images follow: seconds, not minutes."""
    copy = Path(shutil.copytree(tiny_model, tmp_path_factory.mktemp("models") / "tiny-fast"))
    (copy / "sdlite.json").write_text(json.dumps({"defaults": {"steps": STEPS}}))
    return copy


def make_config(model: Path, tmp_path: Path, **overrides: Any) -> TrainConfig:
    settings: dict[str, Any] = {
        "model": str(model), "data": tmp_path / "data", "out": tmp_path / "out", "max_steps": 1,
        "instance_prompt": "a photo of sks thing", "class_prompt": CLASS_PROMPT,
        "class_data": tmp_path / "class", "num_class_images": 3, "resolution": 64,
    }  # fmt: skip
    return TrainConfig(**{**settings, **overrides})


class Events(list[tuple[str, dict[str, Any]]]):
    def __call__(self, kind: str, **data: Any) -> None:
        self.append((kind, data))

    def generating(self) -> int:
        return sum(data["generating"] for kind, data in self if kind == "class_images")


def test_generates_once_then_reuses_then_tops_up(model: Path, tmp_path: Path) -> None:
    config = make_config(model, tmp_path)
    events = Events()
    first = class_images(config, events)
    assert [e.caption for e in first] == [CLASS_PROMPT] * 3
    assert all(e.path.is_absolute() and e.path.parent == (tmp_path / "class").resolve() for e in first)
    assert events[0] == ("class_images", {"have": 0, "generating": 3, "needed": 3, "folder": str(tmp_path / "class")})
    assert [data["done"] for kind, data in events if kind == "class_image"] == [1, 2, 3]
    records = [png_record.read_record(e.path) for e in first]
    assert {r["settings"]["prompt"] for r in records} == {CLASS_PROMPT}
    assert {(r["settings"]["height"], r["settings"]["width"], r["settings"]["steps"]) for r in records} == {
        (64, 64, STEPS)
    }  # the configured resolution, the model's recommended steps
    seeds = [r["settings"]["seed"] for r in records]
    assert seeds == list(range(seeds[0], seeds[0] + 3))

    mtimes = [e.path.stat().st_mtime_ns for e in first]
    again = Events()
    assert class_images(config, again) == first  # same settings: nothing generated, same examples
    assert again.generating() == 0 and not [k for k, _ in again if k == "class_image"]
    assert [e.path.stat().st_mtime_ns for e in first] == mtimes

    more = class_images(make_config(model, tmp_path, num_class_images=5))
    assert more[:3] == first and len(more) == 5
    new_seeds = [png_record.read_record(e.path)["settings"]["seed"] for e in more[3:]]
    assert not set(new_seeds) & set(seeds) and new_seeds == [seeds[-1] + 1, seeds[-1] + 2]

    fewer = class_images(make_config(model, tmp_path, num_class_images=2))
    assert fewer == first[:2]


def test_the_users_own_images_count(model: Path, tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "class"
    folder.mkdir()
    for name in ("mine.jpg", "other.webp"):
        Image.new("RGB", (64, 64), "red").save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"")
    events = Events()
    examples = class_images(make_config(model, tmp_path), events)
    assert events.generating() == 1
    assert [e.path.name for e in examples][1:] == ["mine.jpg", "other.webp"]
    assert png_record.read_record(examples[0].path)["settings"]["prompt"] == CLASS_PROMPT


def test_default_folder_is_in_the_cache_per_prompt(model: Path, tmp_path: Path) -> None:
    prompt = "a photo of a default-folder thing"  # the test cache is shared by the session: a prompt of its own
    config = make_config(model, tmp_path, class_data=None, class_prompt=prompt, num_class_images=1)
    events = Events()
    examples = class_images(config, events)
    folder = Path(events[0][1]["folder"])
    assert folder.parent == filecache.cache_dir() / "class-images"
    assert [e.path.parent for e in examples] == [folder.resolve()]
    assert events.generating() == 1
    again = Events()
    assert class_images(config, again) == examples and again.generating() == 0
    other = Events()
    class_images(make_config(model, tmp_path, class_data=None, class_prompt=prompt + " 2",
                             num_class_images=1), other)  # fmt: skip
    assert Path(other[0][1]["folder"]) != folder


def test_class_data_that_is_a_file_is_refused(model: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "class"
    blocked.write_text("a file")
    with pytest.raises(UsageError, match="is a file"):
        class_images(make_config(model, tmp_path))
