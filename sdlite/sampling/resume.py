"""`--resume` and several processes: the images already in OUT that a run keeps, and every image's index
planned before any is made.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from pathlib import Path
from typing import Any

from sdlite.sampling.config import SampleConfig
from sdlite.sampling.init_images import UserImages
from sdlite.sampling.outputs import NAME, Numbering, claimed_stem, find_existing
from sdlite.sampling.plan import Batch, Job, image_settings
from sdlite.sampling.results import ModelFacts, SampleResult


def await_remote(
    out: Path, index: int, job: Job, facts: ModelFacts, with_strip: bool, extension: str = ".png", poll: float = 0.05
) -> SampleResult:
    """Wait until another process has linked this image (and its strip) into place, whole, then describe it. When
    another run took its planned index (the claim names another image), the process wrote it at the next free
    one: it is found by its seed, its place in the run and its settings."""
    settings = job.remote or {}
    path = out / f"{index:05d}-{settings['seed']}{extension}"
    for waited in itertools.count(1):
        strip = path.with_name(f"{path.stem}-progress.png")
        if path.exists() and (not with_strip or strip.exists()):
            return on_disk(path, index, settings, facts)
        time.sleep(poll)
        claimed = claimed_stem(out, index) if waited % 20 == 0 else None  # looked at about once a second
        if claimed is not None and claimed != path.stem:
            moved = _moved(out, job.number, settings)
            if moved is not None:
                path, index = moved


def _moved(out: Path, number: int, settings: dict[str, Any]) -> tuple[Path, int] | None:
    """The image of this run's `number` with these settings, written past its planned index."""
    from sdlite.formats.png_record import read_record

    for candidate in out.glob(f"*-{settings['seed']}.*"):
        match = NAME.match(candidate.name)
        if match is None:
            continue
        with contextlib.suppress(Exception):  # a foreign or half-visible PNG is not it
            record = read_record(candidate)
            if record["run"]["number"] == number and record["settings"] == settings:
                return candidate, int(match.group(1))
    return None


def plan_indices(batches: list[Batch], existing: dict[int, SampleResult], numbering: Numbering) -> dict[int, int]:
    """Every image's index in the folder, fixed before any is made, so each process names images alike.

    A kept image (--resume) keeps its own; a new one continues the run's numbering (an interrupted run's, so
    the folder ends as an uninterrupted run leaves it), unless a file of another run holds that index, when
    it takes the next index past everything in the folder."""
    first = numbering.first
    if existing:
        number = min(existing)
        first = existing[number].index - number
    kept = {result.index for result in existing.values()}
    taken = {int(m.group(1)) for name in numbering.names if (m := NAME.match(name))} - kept
    if batches:  # a moved image goes past the indices the run's other images are planned at, too
        numbering.after(first + batches[-1].first_number + len(batches[-1].seeds) - 1)
    indices = {}
    for batch in batches:
        for number in range(batch.first_number, batch.first_number + len(batch.seeds)):
            if number in existing:
                indices[number] = existing[number].index
                continue
            index = first + number
            if index in taken:
                index = numbering.take()
            numbering.after(index)
            indices[number] = index
    return indices


def is_whole(kept: SampleResult, config: SampleConfig) -> bool:
    """Whether a kept image has everything this run writes for it: its progress strip, when one is asked for."""
    return kept.progress is not None or not config.save_progress


def on_disk(path: Path, index: int, settings: dict[str, Any], facts: ModelFacts) -> SampleResult:
    """An image already written (by an earlier run or another process), with its progress strip if there is one."""
    strip = path.with_name(f"{path.stem}-progress.png")
    return SampleResult(
        path=path,
        index=index,
        model=facts.ref,
        model_hash=facts.model_hash,
        progress=strip if strip.is_file() else None,
        **settings,
    )


def kept_images(
    config: SampleConfig,
    out: Path,
    numbering: Numbering,
    batches: list[Batch],
    facts: ModelFacts,
    user_images: UserImages,
) -> dict[int, SampleResult]:
    """The images an interrupted run of this same command already wrote into `out`, by number in the run: made
    with the same settings, place in the run, model, LoRAs, mode, device, precision and input files' bytes."""
    expected = []
    for batch in batches:
        gen = batch.gen  # inputs and every setting but prompt and seed are the batch's
        inputs = {
            key: user_images.read(path).sha256
            for key, path in (("init_image", gen.init_image), ("mask", gen.mask))
            if path
        }
        for i, seed in enumerate(batch.seeds):
            wanted = {
                "settings": image_settings(batch.gens[i], seed, batch.height, batch.width, facts.micro_conditioning),
                "batch": batch.record(),
                "number": batch.first_number + i,
                "inputs": inputs,
            }
            expected.append((batch.first_number + i, seed, wanted))

    def same(record: dict[str, Any], wanted: dict[str, Any]) -> bool:
        run, made_by = record.get("run", {}), record.get("model", {})
        inputs = {key: item.get("sha256") for key, item in record.get("inputs", {}).items()}
        return (
            record.get("settings") == wanted["settings"]
            and {k: v for k, v in run.items() if k in ("batch_seeds", "batch_prompts")} == wanted["batch"]
            and run.get("number") == wanted["number"]
            and run.get("mode") == facts.mode
            and run.get("device") == facts.device
            and run.get("dtype") == facts.dtype
            and made_by.get("hash") == facts.model_hash
            and record.get("lora") == facts.lora
            and all(made_by.get(k) == v for k, v in facts.single_file.items())
            and inputs == wanted["inputs"]
        )

    found = find_existing(out, numbering, expected, same)
    settings = {number: wanted["settings"] for number, _, wanted in expected}
    return {number: on_disk(path, index, settings[number], facts) for number, (path, index) in found.items()}
