"""Loss masks (`sdlite train --masked-loss`): which parts of a training image the loss counts, as kohya's masked
loss does. White counts fully, black not at all, grey in between.

A mask is the file a metadata table's `mask` column names, else `NAME_mask.png` beside the image `NAME.ext`, or with
`--alpha-mask` the image's own alpha channel (opaque counts). It goes through the image's own resize, crop and flip (`crop_of`, the same seed), then is averaged down to
the latent grid, where it multiplies the per-element loss (not renormalised, as kohya: a half-masked image weighs
half).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sdlite.data.examples import mask_path
from sdlite.errors import DataError


def check_masks(examples: Sequence[Any], alpha: bool) -> None:
    """Every image has its mask: a sidecar file (or, with `alpha`, any image: no alpha channel counts as opaque).
    A missing one is a data error naming the first and the count."""
    if alpha:
        return
    missing = [e for e in examples if e.mask is None and (e.row is not None or not mask_path(e.path).is_file())]
    if missing:
        first = missing[0]
        where = (
            f"{mask_path(first.path).name} beside it" if first.row is None else "a mask file (tables need --alpha-mask)"
        )
        raise DataError(
            f"--masked-loss: {first} has no mask ({where}){f'; {len(missing) - 1} more' if len(missing) > 1 else ''}"
        )


def load_mask(example: Any, alpha: bool) -> Any:
    """The example's mask as an 8-bit grey PIL image the size of the (upright) picture."""
    from PIL import Image, ImageOps

    source = example.path if alpha else example.mask or mask_path(example.path)
    try:
        with Image.open(source) as opened:
            upright = ImageOps.exif_transpose(opened)
            if alpha:
                if "A" in upright.getbands():
                    return upright.getchannel("A").copy()
                return Image.new("L", upright.size, 255)
            return upright.convert("L").copy()
    except OSError as exc:
        raise DataError(f"--masked-loss: cannot read the mask {source} ({exc})") from exc


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
