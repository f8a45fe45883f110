"""Several datasets (`[[datasets]]` in --config): each with its repeats, caption options and DreamBooth prompt;
the plan's shares and an epoch's draws follow the repeats; bad tables are usage errors naming them."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.errors import UsageError
from sdlite.testing import make_shapes_dataset
from sdlite.training.config import build_train_config
from sdlite.training.plan import make_plan


def toml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "train.toml"
    path.write_text(body)
    return path


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sets")
    return make_shapes_dataset(root / "a", n=4, seed=1), make_shapes_dataset(root / "b", n=4, seed=2)


def config_for(tiny_model: Path, tmp_path: Path, two: tuple[Path, Path], extra: str = "") -> Any:
    body = f"""
model = "{tiny_model}"
out = "{tmp_path / "out"}"
batch-size = 4
max-steps = 4
[[datasets]]
path = "{two[0]}"
repeats = 1
[[datasets]]
path = "{two[1]}"
repeats = 3
instance-prompt = "a photo of sks shape"
caption-dropout = 0.5
{extra}"""
    return build_train_config({}, toml(tmp_path, body))


def test_shares_and_an_epochs_draws_follow_the_repeats(
    tiny_model: Path, tmp_path: Path, two: tuple[Path, Path]
) -> None:
    config = config_for(tiny_model, tmp_path, two)
    plan, dataset, _, layout = make_plan(config)
    assert plan.images == 16 and plan.steps_per_epoch == 4
    assert [(d["images"], d["repeats"], d["share"]) for d in plan.datasets] == [(4, 1, 0.25), (4, 3, 0.75)]
    drawn = collections.Counter()
    for step in range(4):  # one epoch
        for index in layout.order.batch(step, config.seed):
            drawn[dataset.examples[index].dataset] += 1
    assert drawn == {0: 4, 1: 12}
    assert {e.caption for e in dataset.examples if e.dataset == 1} == {"a photo of sks shape"}
    assert all(e.captions.caption_dropout == 0.5 for e in dataset.examples if e.dataset == 1)


def test_a_run_trains_and_records_its_datasets(tiny_model: Path, tmp_path: Path, two: tuple[Path, Path]) -> None:
    config = config_for(tiny_model, tmp_path, two)
    result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "train.toml"), "--json-events"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout.splitlines()[0])
    assert plan["event"] == "plan" and len(plan["datasets"]) == 2
    record = json.loads((config.out / "sdlite-train.json").read_text())
    assert record["config"]["datasets"][1]["repeats"] == 3


def test_bad_tables_name_themselves(tiny_model: Path, tmp_path: Path, two: tuple[Path, Path]) -> None:
    with pytest.raises(UsageError, match=r"\[\[datasets\]\] 3: unknown keys colour"):
        config_for(tiny_model, tmp_path, two, f'[[datasets]]\npath = "{two[0]}"\ncolour = 1\n')
    with pytest.raises(UsageError, match=r"\[\[datasets\]\] 3: .*repeats"):
        config_for(tiny_model, tmp_path, two, f'[[datasets]]\npath = "{two[0]}"\nrepeats = 0\n')


def test_caption_extensions_per_dataset(tiny_model: Path, tmp_path: Path) -> None:
    """Sidecar captions: `.txt` by default, --caption-extension for the run, `caption-extension` per table."""
    from PIL import Image

    folder = tmp_path / "captions"
    folder.mkdir()
    for n in range(4):
        Image.new("RGB", (64, 64), (60 * n, 0, 0)).save(folder / f"{n}.png")
        (folder / f"{n}.caption").write_text(f"red {n}")
    body = f'model = "{tiny_model}"\nout = "{tmp_path / "o"}"\nbatch-size = 4\nmax-steps = 1\n'
    body += f'[[datasets]]\npath = "{folder}"\ncaption-extension = ".caption"\n'
    _, dataset, _, _ = make_plan(build_train_config({}, toml(tmp_path, body)))
    assert sorted(e.caption for e in dataset.examples) == ["red 0", "red 1", "red 2", "red 3"]
    with pytest.raises(UsageError, match="must be a file extension"):
        build_train_config({}, toml(tmp_path, body.replace('".caption"', '"caption"')))


def test_a_dataset_trains_at_its_own_resolution(tiny_model: Path, tmp_path: Path, two: tuple[Path, Path]) -> None:
    """kohya's per-dataset `resolution`: its images are trained at that side (their buckets made for it), and no
    batch mixes sizes."""
    config = config_for(tiny_model, tmp_path, two, "resolution = 32\n")
    plan, dataset, _, layout = make_plan(config)
    sizes = {dataset.examples[i].dataset: layout.sizes[i] for i in range(len(dataset.examples))}
    assert sizes == {0: (64, 64), 1: (32, 32)} and plan.resolution == 64
    assert [d.get("resolution") for d in plan.datasets] == [None, 32]
    for step in range(8):
        assert len({layout.sizes[i] for i in layout.order.batch(step, config.seed)}) == 1
    result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "train.toml")])
    assert result.exit_code == 0, result.output
    assert "images x3 (75% of the steps) at 32" in result.output
    with pytest.raises(UsageError, match=r"\[\[datasets\]\] 2 resolution"):
        make_plan(config_for(tiny_model, tmp_path, two, "resolution = 33\n"))


def test_class_images_per_dataset(tiny_model: Path, tmp_path: Path, two: tuple[Path, Path]) -> None:
    """A table's own class prompt and class images (prior preservation for that dataset only): its examples train
    beside its class images, the other dataset's beside none."""
    import shutil
    from types import SimpleNamespace

    from sdlite.training.unet import ClassSet, train

    classes = tmp_path / "dogs"
    classes.mkdir()
    for n, image in enumerate(sorted(two[0].glob("*.png"))[:3]):
        shutil.copy(image, classes / f"dog-{n}.png")  # given images: nothing to generate
    config_for(tiny_model, tmp_path, two, f'class-prompt = "a photo of a dog"\nclass-data = "{classes}"\n')
    config = build_train_config({"num_class_images": 3}, tmp_path / "train.toml")
    plan, _, _, _ = make_plan(config)
    assert plan.class_images == 3
    events: list[dict[str, Any]] = []
    train(config, on_event=events.append)
    sets = [e for e in events if e["event"] == "class_images"]
    assert [(e["have"], e["generating"], e["folder"]) for e in sets] == [(3, 0, str(classes))]
    # Each instance example draws from its own dataset's class images, or none.
    class_set = ClassSet(("d0", "d1", "d2", "x"), {1: (0, 1, 2)})
    batch = SimpleNamespace(step=0, effective_batch=4, positions=[0, 1, 2, 3])
    picked = class_set.pick(batch, 0, [0, 1, 1, 0])
    assert picked[0] is None and picked[3] is None and {picked[1], picked[2]} <= {0, 1, 2}
    with pytest.raises(UsageError, match=r"\[\[datasets\]\] 3: class-data needs class-prompt"):
        config_for(tiny_model, tmp_path, two, f'[[datasets]]\npath = "{two[0]}"\nclass-data = "{classes}"\n')
    with pytest.raises(UsageError, match=r"\[\[datasets\]\] 3: a class prompt .* needs an instance-prompt"):
        config_for(tiny_model, tmp_path, two, f'[[datasets]]\npath = "{two[0]}"\nclass-prompt = "a dog"\n')
