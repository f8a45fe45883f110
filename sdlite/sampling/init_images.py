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
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlite.errors import DataError
from sdlite.sampling.config import Generation

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
    from sdlite.data.images import decode_image

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
    return UserImage(
        path=resolved, image=decode_image(io.BytesIO(data), str(path)), sha256=hashlib.sha256(data).hexdigest()
    )


def check_init_size(user: UserImage, factor: int, what: str = "init image") -> None:
    """An image with a side under one latent pixel (the VAE factor) holds nothing to start from: it would be
    blown up into a blur of one colour, so it is refused instead of silently becoming an 8x8 image."""
    width, height = user.image.size
    if min(width, height) < factor:
        raise DataError(
            f"{what} {user.path} is {width}x{height}: smaller than one latent pixel ({factor}x{factor}) of this "
            f"model's VAE; give an image at least {factor} pixels on each side"
        )


# diffusers' inpainting pipelines binarize the mask at one half: pixels from here up are repainted.
REPAINTED_FROM = 128


def mask_coverage(mask: Any) -> float:
    """The fraction of a (fitted, blurred) mask that the pipeline repaints."""
    histogram = mask.histogram()
    return sum(histogram[REPAINTED_FROM:]) / sum(histogram)


def default_size(
    image_size: tuple[int, int], factor: int, height: int | None = None, width: int | None = None
) -> tuple[int, int]:
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


@dataclass(frozen=True)
class Given:
    """A generation's own images at the output size: the init image and the (blurred) mask."""

    init: UserImage
    image: Any  # PIL RGB at the output size
    mask_file: UserImage | None
    mask: Any  # PIL L at the output size, or None

    def record(self) -> dict[str, Any]:
        inputs = {"init_image": self.init.record()}
        if self.mask_file is not None:
            inputs["mask"] = self.mask_file.record()
        return inputs


def check_mask_shape(mask: UserImage, init: UserImage) -> None:
    """A mask must have its image's shape (its size, or scaled): each is fitted to the output on its own,
    so one of another aspect ratio would be cropped differently and repaint the wrong region."""
    (mask_w, mask_h), (init_w, init_h) = mask.image.size, init.image.size
    # Scaled by some factor and rounded either way, each side lands within a pixel: the factors those allow
    # for the width and for the height must overlap.
    if max((mask_w - 1) / init_w, (mask_h - 1) / init_h) > min((mask_w + 1) / init_w, (mask_h + 1) / init_h):
        raise DataError(
            f"mask {mask.path} is {mask_w}x{mask_h} but the init image {init.path} is {init_w}x{init_h}: "
            "the mask must have the image's shape (the same size, or scaled)"
        )


_KEPT_FITTED = 16  # fitted images kept per run: a prompts file of thousands of init images must not fill memory


class UserImages:
    """Init images and masks of one run, each file read and hashed once however many prompts use it."""

    def __init__(self) -> None:
        self.read_files: dict[str, UserImage] = {}
        self.prepared: OrderedDict[tuple[Any, ...], Given] = OrderedDict()  # the latest few, not every one

    def read(self, path: str) -> UserImage:
        if path not in self.read_files:
            self.read_files[path] = read_user_image(path)
        return self.read_files[path]

    def prepare(self, gen: Generation, height: int, width: int) -> Given | None:
        """The generation's init image and mask at the output size (each combination fitted once per run)."""
        if gen.init_image is None:
            return None
        key = (gen.init_image, gen.mask, gen.resize, gen.mask_blur, height, width)
        if key not in self.prepared:
            self.prepared[key] = self._fitted(gen, height, width)
            while len(self.prepared) > _KEPT_FITTED:
                self.prepared.popitem(last=False)
        self.prepared.move_to_end(key)
        return self.prepared[key]

    def _fitted(self, gen: Generation, height: int, width: int) -> Given:
        assert gen.resize is not None
        init = self.read(gen.init_image)
        image = fit_to(init.image, height, width, gen.resize)
        if gen.mask is None:
            return Given(init, image, None, None)
        from PIL import ImageFilter

        mask_file = self.read(gen.mask)
        mask = fit_to(mask_file.image, height, width, gen.resize).convert("L")
        if gen.mask_blur:
            mask = mask.filter(ImageFilter.GaussianBlur(gen.mask_blur))
        return Given(init, image, mask_file, mask)
