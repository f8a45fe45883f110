"""Per-prompt training samples (`--sample-prompts FILE`, `--sample-at-start`): the prompts file's lines sampled by
`sdlite sample` itself from the base model (at the start), each checkpoint and the final model, so every sample is a
PNG with sdlite's full record: `sdlite sample --from-image` remakes it (with the final model, the final samples
exactly). Lines without their own seed count up from --seed, the same at every sample point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdlite.errors import UsageError


def check_sample_prompts(config: Any, num_processes: int) -> None:
    """The prompts file is read and checked before training starts (its errors name the line)."""
    if config.sample_prompts is None:
        return
    if num_processes > 1:
        raise UsageError("--sample-prompts samples on one process: run it without --num-processes (or sample after)")
    from sdlite.sampling.prompts_file import prompt_rows

    if not prompt_rows(Path(config.sample_prompts)):
        raise UsageError(f"--sample-prompts {config.sample_prompts} holds no prompt")


def sample_point(config: Any, model: str, lora: Path | None, label: str) -> list[Path]:
    """Sample every line of the prompts file with `model` (and the trained `lora`) into OUT/samples/LABEL."""
    from sdlite.sampling.run import sample
    from sdlite.sampling.sources import SampleOverrides, build_sample_config

    overrides = SampleOverrides(
        model=model,
        prompts_file=Path(config.sample_prompts),
        lora=(str(lora),) if lora is not None else (),
        out=Path(config.out) / "samples" / label,
        settings={"seed": config.seed},
        offline=config.offline,
        allow_pickle=config.allow_pickle,
        tokenizer=config.tokenizer,
    )
    return [result.path for result in sample(build_sample_config(overrides)).images]
