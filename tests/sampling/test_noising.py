"""`sdlite noise`: the strip follows the model's own schedule, is reproducible, and refuses bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdlite.data.shapes import Scene, render
from sdlite.errors import DataError, UsageError
from sdlite.models.loading import resolve_model
from sdlite.models.source import DEFAULT_MODEL
from sdlite.sampling.config import NoiseConfig
from sdlite.sampling.grid import PAD
from sdlite.sampling.noising import CHUNK, frame_steps, noise_strip, timestep


def scene(folder: Path, size: int = 32) -> Path:
    path = folder / "in.png"
    render(Scene("red", "circle", "blue", 0.5, 0.5, 0.5), size).save(path)
    return path


def strip(model: Path, folder: Path, **kwargs: object) -> tuple[NoiseConfig, object]:
    settings = {"image": str(scene(folder)), "out": folder / "strip.png", "model": str(model), "steps": 10,
                "frames": 4, **kwargs}  # fmt: skip
    config = NoiseConfig(**settings)  # type: ignore[arg-type]
    return config, noise_strip(config)


def tiles(path: Path, columns: int, size: int) -> list[list[np.ndarray]]:
    """The two rows of frames cut back out of a strip, at the picture's own size (the sheet enlarges them)."""
    with Image.open(path) as image:
        sheet = np.asarray(image.convert("RGB")).astype(np.float64)
    cell_w, cell_h = (sheet.shape[1] - PAD) // columns, (sheet.shape[0] - PAD) // 2
    tile, y0 = cell_w - PAD, PAD
    step = tile // size
    return [
        [sheet[y0 + r * cell_h : y0 + r * cell_h + tile : step, PAD + c * cell_w : PAD + c * cell_w + tile : step]
         for c in range(columns)]
        for r in range(2)
    ]  # fmt: skip


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_frames_follow_the_models_own_schedule(tiny_model: Path, tmp_path: Path) -> None:
    from diffusers import DDPMScheduler

    _, result = strip(tiny_model, tmp_path, steps=50, frames=11)
    abar = DDPMScheduler.from_config(resolve_model(str(tiny_model)).configs()["scheduler"]).alphas_cumprod
    frames = result.frames
    assert [f.step for f in frames] == list(range(0, 51, 5))
    assert (frames[0].t, frames[0].signal, frames[0].noise) == (None, 1.0, 0.0)
    assert [f.t for f in frames[1:]] == [20 * n - 1 for n in range(5, 51, 5)]
    assert frames[-1].t == 999  # the last, noisiest training timestep
    for f in frames[1:]:
        assert f.signal == pytest.approx(math.sqrt(float(abar[f.t])), rel=1e-6)
        assert f.signal**2 + f.noise**2 == pytest.approx(1.0)
    assert [f.signal for f in frames] == sorted((f.signal for f in frames), reverse=True)


def test_step_rule_when_steps_do_not_divide() -> None:
    assert frame_steps(4, 7) == [0, 2, 5, 7]
    assert frame_steps(8, 7) == list(range(8))
    assert [timestep(n, 7, 1000) for n in (1, 2, 7)] == [142, 285, 999]
    assert [timestep(n, 1000, 1000) for n in (1, 1000)] == [0, 999]


def test_strip_layout_and_record(tiny_model: Path, tmp_path: Path) -> None:
    sizes = {}
    for frames in (3, 5):
        folder = tmp_path / str(frames)
        folder.mkdir()
        config, result = strip(tiny_model, folder, frames=frames)
        with Image.open(config.out) as image:
            sizes[frames] = image.size
            record = json.loads(image.text[CHUNK])
        assert len(result.frames) == frames
        assert record == {k: v for k, v in result.to_dict().items() if k != "path"}
        assert record["image"]["path"] == str((folder / "in.png").resolve())
        assert (record["height"], record["width"], record["steps"]) == (32, 32, 10)
        assert sorted(p.name for p in folder.iterdir()) == ["in.png", "strip.png"]  # no temporary file left
    assert sizes[5][0] - sizes[3][0] == 2 * (sizes[5][0] - PAD) // 5  # two more columns
    assert sizes[3][1] == sizes[5][1]  # always two rows


def test_same_seed_same_bytes(tiny_model: Path, tmp_path: Path) -> None:
    made = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):  # the strip's own path is not in its record
        config, _ = strip(tiny_model, tmp_path, seed=seed, out=tmp_path / f"{name}.png")
        made[name] = Path(config.out).read_bytes()
    assert made["a"] == made["b"]
    assert made["a"] != made["c"]


def test_writes_into_a_new_folder_and_replaces_with_force(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "strip.png"
    strip(tiny_model, tmp_path, out=out)
    assert out.is_file()
    with pytest.raises(UsageError, match="--force"):
        strip(tiny_model, tmp_path, out=out, seed=1)
    before = out.read_bytes()
    strip(tiny_model, tmp_path, out=out, seed=1, overwrite=True)
    assert out.read_bytes() != before


def test_single_file_gives_the_folders_pixels(sd1_tiny_model: Path, tmp_path: Path) -> None:
    from sdlite.models.config import ExportConfig
    from sdlite.models.export import export

    single = export(ExportConfig(source=str(sd1_tiny_model), out=tmp_path / "model.safetensors"))
    folder_run, _ = strip(sd1_tiny_model, tmp_path, out=tmp_path / "folder.png")
    file_run, result = strip(single, tmp_path, out=tmp_path / "file.png")  # needs no tokenizer: only the VAE loads
    assert result.model == str(single)
    assert np.array_equal(pixels(folder_run.out), pixels(file_run.out))


@pytest.mark.skipif(not (DEFAULT_MODEL / "model_index.json").is_file(), reason="built-in model not built")
def test_last_pixel_frame_has_lost_the_picture(tmp_path: Path) -> None:
    image = tmp_path / "in.png"
    picture = render(Scene("red", "circle", "blue", 0.5, 0.5, 0.5), 64)
    picture.save(image)
    config = NoiseConfig(image=str(image), out=tmp_path / "strip.png", model=str(DEFAULT_MODEL), steps=50)
    result = noise_strip(config)
    latent, pixel = tiles(config.out, len(result.frames), 64)
    reference = np.asarray(picture).astype(np.float64)
    assert correlation(pixel[0], reference) == pytest.approx(1.0)
    assert correlation(pixel[-1], reference) < 0.05
    print(f"last frame vs image: pixels {correlation(pixel[-1], reference):.3f}, "
          f"latents decoded {correlation(latent[-1], reference):.3f}")  # fmt: skip


def test_bad_inputs(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        noise_strip(NoiseConfig(image=str(tmp_path / "nope.png"), out=tmp_path / "s.png", model=str(tiny_model)))
    with pytest.raises(UsageError, match="--frames must be at least 2, got 1"):
        NoiseConfig(image="x.png", out=tmp_path / "s.png", model=str(tiny_model), frames=1)
    with pytest.raises(UsageError, match=r"--frames 12 .*--steps 10"):
        NoiseConfig(image="x.png", out=tmp_path / "s.png", model=str(tiny_model), frames=12, steps=10)
    with pytest.raises(UsageError, match=r"--steps 1001 .*1000 training timesteps"):
        strip(tiny_model, tmp_path, steps=1001)
    with pytest.raises(UsageError, match="is a folder"):
        strip(tiny_model, tmp_path, out=tmp_path, overwrite=True)
    (tmp_path / "taken.png").write_bytes(b"keep me")
    with pytest.raises(UsageError, match="already exists; pass --force"):
        strip(tiny_model, tmp_path, out=tmp_path / "taken.png")
    assert (tmp_path / "taken.png").read_bytes() == b"keep me"


def test_size_and_resize_options_reach_the_strip(tiny_model: Path, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, square = strip(tiny_model, tmp_path / "a", height=16, width=16)
    _, wide = strip(tiny_model, tmp_path / "b", height=16, width=32, resize="stretch")
    assert (square.height, square.width) == (16, 16) and (wide.height, wide.width) == (16, 32)
