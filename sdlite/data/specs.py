"""Several datasets in one run (`[[datasets]]` in a --config TOML, kohya's dataset config as the model): each its own
folder, `repeats` (its images per epoch, times), resolution, caption options and DreamBooth prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from annotated_types import Ge, Lt
from pydantic import AllowInfNan, Strict

from sdlite.schema import CaptionExtension, FilePath, Flag, NonNegativeInt, PositiveInt, Prompt, validate_fields

KEYS = (
    "path",
    "repeats",
    "resolution",
    "bucket_min_side",
    "bucket_max_side",
    "caption_extension",
    "shuffle_captions",
    "keep_tokens",
    "caption_dropout",
    "instance_prompt",
    "class_prompt",
    "class_data",
)


@dataclass(frozen=True)
class CaptionOptions:
    """How one dataset's captions are trained (None: the run's own setting)."""

    shuffle_captions: bool | None = None
    keep_tokens: int | None = None
    caption_dropout: float | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """One `[[datasets]]` table: a folder (any --data layout), its repeats and its caption options."""

    path: FilePath
    repeats: PositiveInt = 1
    resolution: PositiveInt | None = None  # its images' training side (buckets made for it); None: the run's
    bucket_min_side: PositiveInt | None = None  # its buckets' smallest and largest sides; None: the run's
    bucket_max_side: PositiveInt | None = None
    caption_extension: CaptionExtension | None = None  # sidecar captions: NAME.EXT beside each image
    shuffle_captions: Flag | None = None
    keep_tokens: NonNegativeInt | None = None
    caption_dropout: Annotated[float, Strict(), AllowInfNan(False), Ge(0), Lt(1)] | None = None
    instance_prompt: Prompt | None = None  # DreamBooth: this one prompt for every image of the dataset
    class_prompt: Prompt | None = None  # prior preservation for this dataset: its class images' prompt
    class_data: FilePath | None = None  # and their folder (made there, or in sdlite's cache, when missing)

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.bucket_min_side and self.bucket_max_side and self.bucket_min_side > self.bucket_max_side:
            from sdlite.errors import UsageError

            raise UsageError("bucket-min-side is larger than bucket-max-side")
        if self.class_data is not None and self.class_prompt is None:
            from sdlite.errors import UsageError

            raise UsageError("class-data needs class-prompt (the prompt its images show)")

    @property
    def captions(self) -> CaptionOptions:
        return CaptionOptions(self.shuffle_captions, self.keep_tokens, self.caption_dropout)


def dataset_specs(value: Any, where: str) -> tuple[DatasetSpec, ...]:
    """The `[[datasets]]` array of a TOML file as specs; a usage error naming the table and key."""
    from sdlite.errors import SdliteError, UsageError

    if not isinstance(value, list) or not all(isinstance(table, dict) for table in value):
        raise UsageError(f"{where}: datasets must be an array of tables ([[datasets]] with path = ...)")
    specs = []
    for number, table in enumerate(value, start=1):
        table = {key.replace("-", "_"): item for key, item in table.items()}
        unknown = sorted(set(table) - set(KEYS))
        if unknown or "path" not in table:
            problem = f"unknown keys {', '.join(unknown)}" if unknown else "no path"
            raise UsageError(f"{where}: [[datasets]] {number}: {problem} (keys: {', '.join(KEYS)})")
        try:
            specs.append(DatasetSpec(**table))
        except SdliteError as exc:  # a value its field refuses: name the table
            raise UsageError(f"{where}: [[datasets]] {number}: {str(exc).splitlines()[0]}") from None
    return tuple(specs)
