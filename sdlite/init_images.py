"""The user's own pictures in a run (image-to-image, inpainting, `sdlite noise`): read, sized, hashed.

Any image the training loader reads is accepted (EXIF orientation, transparency, 16-bit, palette).
It meets the output size by one stated rule, carried out by diffusers' own image processor:
`crop` (default) scales it to cover the output and cuts the overflow evenly from both sides, `fit`
scales it to fit inside and fills the rest from its own edges (A1111's "resize and fill"), `stretch`
scales each side on its own. Without --height/--width the output takes the image's own size, each side
rounded down to the VAE factor, so nothing is cropped but a few edge pixels.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlite.errors import DataError

# sdlite's rule names -> diffusers' VaeImageProcessor.resize modes.
_DIFFUSERS_MODES = {"crop": "crop", "fit": "fill", "stretch": "default"}


@dataclass(frozen=True)
class UserImage:
    """One file as read: upright 8-bit RGB pixels and the sha256 of the file's bytes."""

    path: Path
    image: Any  # PIL.Image.Image, RGB
    sha256: str

    def record(self) -> dict[str, str]:
        """What an output records about it: where it was and which bytes it held."""
        return {"path": str(self.path), "sha256": self.sha256}


def read_user_image(path: str | Path) -> UserImage:
    """Read an image file the way training data is read; DataError (exit 3) naming it when it cannot be."""
    from sdlite.data import decode_image

    if not str(path).strip():
        raise DataError("an image path is empty")
    resolved = Path(path).expanduser().resolve()
    try:
        data = resolved.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"{path} does not exist") from exc
    except IsADirectoryError as exc:
        raise DataError(f"{path} is a folder, not an image") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    # Pixels and hash from the same bytes: the record names exactly the picture that was used.
    return UserImage(path=resolved, image=decode_image(io.BytesIO(data), str(path)),
                     sha256=hashlib.sha256(data).hexdigest())  # fmt: skip


def default_size(image_size: tuple[int, int], factor: int, height: int | None = None,
                 width: int | None = None) -> tuple[int, int]:  # fmt: skip
    """(height, width) of an output made from an image of `image_size` (width, height).

    A side given is kept; a missing one follows the image's aspect ratio (its own size when neither is
    given), rounded down to a multiple of `factor` and at least `factor`.
    """
    image_w, image_h = image_size
    if height is None and width is None:
        height, width = image_h, image_w
    elif height is None:
        assert width is not None
        height = width * image_h / image_w
    elif width is None:
        width = height * image_w / image_h
    return _on_grid(height, factor), _on_grid(width, factor)


def _on_grid(value: float, factor: int) -> int:
    return max(factor, int(value) // factor * factor)


def fit_to(image: Any, height: int, width: int, rule: str) -> Any:
    """`image` (PIL) at exactly width x height by `rule` (crop, fit or stretch), with diffusers' resizer."""
    from diffusers.image_processor import VaeImageProcessor

    if image.size == (width, height):
        return image
    return VaeImageProcessor().resize(image, height, width, resize_mode=_DIFFUSERS_MODES[rule])
