"""Loss masks (`sdlite train --masked-loss`): which parts of a training image the loss counts, as kohya's masked
loss does. White counts fully, black not at all, grey in between.

A mask is the file a metadata table's `mask` column names, else `NAME_mask.png` beside the image `NAME.ext`, or with
`--alpha-mask` the image's own alpha channel (opaque counts). It goes through the image's own resize, crop and flip (`crop_of`, the same seed), then is averaged down to
the latent grid, where it multiplies the per-element loss (not renormalised, as kohya: a half-masked image weighs
half).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdlite.data.examples import mask_path
from sdlite.errors import DataError


def check_masks(examples: Sequence[Any], alpha: bool) -> None:
    """Every image has its mask: a sidecar file, a table row's non-null `mask` cell (or, with `alpha`, any image: no
    alpha channel counts as opaque). A missing one is a data error naming the first and the count."""
    if alpha:
        return
    from sdlite.data import tables

    nulls = {
        path: set(tables.null_rows(path, column))
        for path, column in {(e.path, e.mask_column) for e in examples if e.mask_column}
    }
    missing = [
        e
        for e in examples
        if e.mask is None
        and (
            (e.row is None and not mask_path(e.path).is_file())
            or (e.row is not None and (e.mask_column is None or e.row in nulls[e.path]))
        )
    ]
    if missing:
        first = missing[0]
        where = (
            f"{mask_path(first.path).name} beside it" if first.row is None else "a `mask` image column, or --alpha-mask"
        )
        raise DataError(
            f"--masked-loss: {first} has no mask ({where}){f'; {len(missing) - 1} more' if len(missing) > 1 else ''}"
        )


def load_mask(example: Any, alpha: bool) -> Any:
    """The example's mask as an 8-bit grey PIL image the size of the (upright) picture."""
    from PIL import Image, ImageOps

    source = _mask_source(example, alpha)
    try:
        with Image.open(source) as opened:
            upright = ImageOps.exif_transpose(opened)
            return _alpha_of(upright) if alpha else upright.convert("L").copy()
    except OSError as exc:
        raise DataError(f"--masked-loss: cannot read the mask of {example} ({exc})") from exc


def _mask_source(example: Any, alpha: bool) -> Any:
    """What holds the mask: the image itself (`alpha`), its sidecar or metadata-named file, or its row's cell."""
    import io

    from sdlite.data import tables
    from sdlite.data.images import image_source

    if alpha:
        return image_source(example)
    if example.row is None:
        return example.mask or mask_path(example.path)
    value = tables.image_value(example.path, example.row, example.mask_column)
    if value is None:
        raise DataError(f"--masked-loss: {example} has no mask (its `mask` cell is null)")
    return value if isinstance(value, Path) else io.BytesIO(value)


def mask_sha256(example: Any, alpha: bool) -> str:
    """What a cached mask is keyed by: the sha256 of the bytes it is read from (the image itself for `alpha`)."""
    import hashlib

    from sdlite.data.images import example_sha256
    from sdlite.filecache import file_sha256

    if alpha:
        return "alpha:" + example_sha256(example)
    source = _mask_source(example, alpha)
    if isinstance(source, Path):
        return file_sha256(source)
    return hashlib.sha256(source.getvalue()).hexdigest()


def _alpha_of(image: Any) -> Any:
    from PIL import Image

    if "A" in image.getbands():
        return image.getchannel("A").copy()
    return Image.new("L", image.size, 255)


def latent_mask(mask: Any, image_size: tuple[int, int], size: tuple[int, int], crop: str, flip: bool, seed: int,
                factor: int) -> Any:  # fmt: skip
    """The mask cut as `preprocess` cuts its image (same seed), averaged down to the latent grid: (1, h, w) floats
    in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    from sdlite.data.images import crop_of

    if mask.size != image_size:
        raise DataError(f"--masked-loss: a mask is {mask.size[0]}x{mask.size[1]}, its image {image_size[0]}x"
                        f"{image_size[1]}: give masks the size of their images")  # fmt: skip
    cut = crop_of(image_size, size, crop, flip, seed)
    if cut.resized != mask.size:
        mask = mask.resize(cut.resized, Image.Resampling.BILINEAR)
    mask = mask.crop((cut.left, cut.top, cut.left + cut.width, cut.top + cut.height))
    if cut.flipped:
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    values = torch.from_numpy(np.array(mask, dtype=np.float32) / 255.0)[None, None]
    return torch.nn.functional.avg_pool2d(values, factor)[0]
