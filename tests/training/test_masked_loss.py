"""Masked loss: a mask moves with its image's resize, crop and flip; what it leaves out adds no loss and no
gradient (an all-black mask trains nothing); masks are found beside their images or in the alpha channel."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.training import losses, max_diff, run, unet_weights
from PIL import Image

from sdlite.data.images import preprocess
from sdlite.data.masks import latent_mask
from sdlite.errors import DataError
from sdlite.testing import make_shapes_dataset


def with_masks(folder: Path, colour: int | None = None) -> Path:
    """Give every image of `folder` a NAME_mask.png: black left half, white right half (or all `colour`)."""
    for image in sorted(folder.glob("*.png")):
        with Image.open(image) as opened:
            width, height = opened.size
        mask = Image.new("L", (width, height), 255 if colour is None else colour)
        if colour is None:
            mask.paste(0, (0, 0, width // 2, height))
        mask.save(image.with_name(f"{image.stem}_mask.png"))
    return folder


def test_a_mask_moves_with_its_image() -> None:
    """Left half red with a black mask there: after a random crop and flip, the mask is 0 exactly where red is."""
    image = Image.new("RGB", (96, 64), "blue")
    image.paste((255, 0, 0), (0, 0, 48, 64))
    mask = Image.new("L", (96, 64), 255)
    mask.paste(0, (0, 0, 48, 64))
    for seed in range(6):  # both flips come up
        pixels = preprocess(image, (64, 64), "random", True, seed)
        red = (pixels[0] > 0).float()  # (64, 64): where the red half landed
        expected = torch.nn.functional.avg_pool2d((1 - red)[None, None], 8)[0]
        assert torch.allclose(latent_mask(mask, (96, 64), (64, 64), "random", True, seed, 8), expected, atol=0.02)


def test_an_all_black_mask_trains_nothing(tiny_model: Path, tmp_path: Path) -> None:
    data = with_masks(make_shapes_dataset(tmp_path / "data", n=4), colour=0)
    _, events = run(tiny_model, data, tmp_path / "o", max_steps=2, masked_loss=True, weight_decay=0.0)
    assert losses(events) == [0.0, 0.0]
    assert max_diff(unet_weights(tmp_path / "o"), unet_weights(tiny_model)) == 0.0  # no gradient anywhere
    plan = next(e for e in events if e["event"] == "plan")
    assert plan["images"] == 4  # the mask files are not training images


def test_half_masks_train_and_weigh_the_loss(tiny_model: Path, tmp_path: Path) -> None:
    data = with_masks(make_shapes_dataset(tmp_path / "data", n=4))
    _, masked = run(tiny_model, data, tmp_path / "m", max_steps=1, masked_loss=True)
    _, plain = run(tiny_model, data, tmp_path / "p", max_steps=1)
    assert 0 < losses(masked)[0] < losses(plain)[0]
    assert max_diff(unet_weights(tmp_path / "m"), unet_weights(tmp_path / "p")) > 0


def test_alpha_masks_and_missing_masks(tiny_model: Path, tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "data", n=4)
    with pytest.raises(DataError, match=r"has no mask \(.*_mask.png beside it\); 3 more"):
        run(tiny_model, data, tmp_path / "x", masked_loss=True)
    for image in data.glob("*.png"):  # transparent everywhere: nothing counts
        rgba = Image.open(image).convert("RGBA")
        rgba.putalpha(0)
        rgba.save(image)
    _, events = run(tiny_model, data, tmp_path / "a", max_steps=1, masked_loss=True, alpha_mask=True)
    assert losses(events) == [0.0]


def test_a_metadata_mask_column(tiny_model: Path, tmp_path: Path) -> None:
    """metadata.jsonl rows may name their mask (`mask`, a path inside the folder like `file_name`)."""
    import json

    data = make_shapes_dataset(tmp_path / "data", n=4)  # a metadata.jsonl folder
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    (data / "masks").mkdir()
    for row in rows:
        Image.new("L", Image.open(data / row["file_name"]).size, 0).save(data / "masks" / Path(row["file_name"]).name)
        row["mask"] = f"masks/{Path(row['file_name']).name}"
    (data / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, events = run(tiny_model, data, tmp_path / "o", max_steps=1, masked_loss=True)
    assert losses(events) == [0.0]
    rows[0]["mask"] = "masks/nope.png"
    (data / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"metadata\.jsonl:1: mask 'masks/nope.png' is not a file"):
        run(tiny_model, data, tmp_path / "x", masked_loss=True)


def _table(data: Path, target: Path, mask: int | None, alpha: int | None = None) -> Path:
    """The folder's images as a Parquet or Arrow table (`image` bytes, `text`), with a `mask` column of all-`mask`
    PNGs (None: a null cell in row 1), or images with an alpha channel of `alpha`."""
    import io
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    def png(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    images, masks = [], []
    for n, row in enumerate(rows):
        image = Image.open(data / row["file_name"]).convert("RGBA" if alpha is not None else "RGB")
        if alpha is not None:
            image.putalpha(alpha)
        images.append(png(image))
        masks.append(None if mask is None and n == 1 else png(Image.new("L", image.size, mask or 0)))
    table = pa.table({"image": images, "text": [r["text"] for r in rows], "mask": masks})
    if target.suffix == ".parquet":
        pq.write_table(table, target)
    else:
        with pa.OSFile(str(target), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    return target


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_a_table_mask_column(tiny_model: Path, tmp_path: Path, suffix: str) -> None:
    """A Parquet or Arrow table's `mask` image column holds each row's mask; a null cell is a data error naming
    the row, before training; --alpha-mask reads a row's own alpha channel."""
    data = make_shapes_dataset(tmp_path / "data", n=4)
    black = _table(data, tmp_path / f"black{suffix}", 0)
    _, events = run(tiny_model, black, tmp_path / "o", max_steps=1, masked_loss=True)
    assert losses(events) == [0.0]
    _, events = run(tiny_model, _table(data, tmp_path / f"white{suffix}", 255), tmp_path / "w", max_steps=1,
                    masked_loss=True)  # fmt: skip
    assert losses(events)[0] > 0
    with pytest.raises(DataError, match=r"row 1 has no mask"):
        run(tiny_model, _table(data, tmp_path / f"null{suffix}", None), tmp_path / "n", masked_loss=True)
    assert not (tmp_path / "n").exists() or not any((tmp_path / "n").iterdir())
    clear = _table(data, tmp_path / f"clear{suffix}", 255, alpha=0)
    _, events = run(tiny_model, clear, tmp_path / "a", max_steps=1, masked_loss=True, alpha_mask=True)
    assert losses(events) == [0.0]


def test_masks_are_cached_with_the_latents(tiny_model: Path, tmp_path: Path) -> None:
    """With the cache the masks are stored beside the latents (keyed by the mask's bytes): the losses of masks
    computed each step, reused by the next run, made again when a mask changes."""
    data = with_masks(make_shapes_dataset(tmp_path / "data", n=4))
    for n, mask in enumerate(sorted(data.glob("*_mask.png"))):  # four masks of their own (entries are by content)
        grey = Image.open(mask)
        grey.paste(201 + n, (0, 0, 3, 3))
        grey.save(mask)
    _, cached = run(tiny_model, data, tmp_path / "c", max_steps=2, masked_loss=True, cache=True)
    _, uncached = run(tiny_model, data, tmp_path / "u", max_steps=2, masked_loss=True, cache=False)
    assert losses(cached) == pytest.approx(losses(uncached), rel=1e-5)  # the latents' cache rounds in float32
    event = next(e for e in cached if e["event"] == "cache")
    assert (event["masks_computed"], event["masks_reused"]) == (4, 0)
    _, again = run(tiny_model, data, tmp_path / "a", max_steps=1, masked_loss=True, cache=True)
    assert next(e for e in again if e["event"] == "cache")["masks_reused"] == 4
    first = sorted(data.glob("*_mask.png"))[0]
    changed = Image.open(first)
    changed.paste(222, (0, 0, 8, 8))
    changed.save(first)
    _, changed = run(tiny_model, data, tmp_path / "d", max_steps=1, masked_loss=True, cache=True)
    event = next(e for e in changed if e["event"] == "cache")
    assert (event["masks_computed"], event["masks_reused"]) == (1, 3)
