"""A training run's OUT folder: what may be there before a run, how a fresh run clears it, the run record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from sdlite.errors import UsageError, writing
from sdlite.formats.lora import LORA_FILE, PEFT_FILE
from sdlite.models.source import MODEL_DEFAULTS_FILE
from sdlite.staging import check_output_place
from sdlite.training import checkpoints
from sdlite.training.config import TrainConfig
from sdlite.training.plan import TrainPlan

# What only a finished run leaves in OUT (its model), and with what a run writes as it goes, everything it
# writes there: `--overwrite` removes these (and nothing else) before it starts.
FINISHED_ENTRIES = (
    "model_index.json",
    "unet",
    "vae",
    "text_encoder",
    "tokenizer",
    "scheduler",
    LORA_FILE,
    PEFT_FILE,
    MODEL_DEFAULTS_FILE,
)


OUT_ENTRIES = ("checkpoints", "validation", "logs", "loss.csv", "loss.png", "sdlite-train.json", *FINISHED_ENTRIES)


def check_out(config: TrainConfig) -> None:
    """A fresh run refuses an OUT that already holds files, so an earlier run's model and checkpoints
    are never mixed with or replaced by a new one by accident (`--resume` continues, `--overwrite` replaces).

    `--resume auto` with no checkpoint yet starts fresh (a preemptible job's first start, or a restart
    before its first checkpoint): it may replace the files an unfinished run writes as it goes, never a
    finished run's model or anything a run does not write."""
    check_output_place(Path(config.out), "--out")  # a device, a file or a read-only place: before any image is read
    if config.overwrite:
        return
    out = Path(config.out)
    held = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
    shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
    if config.resume == "auto" and not checkpoints.list_checkpoints(out):
        if any(name in FINISHED_ENTRIES or name not in OUT_ENTRIES for name in held):
            raise UsageError(
                f"--out {out} holds a finished run or other files ({shown}) and no checkpoint: --resume auto would "
                "start fresh over them; pass --overwrite to replace that run, or another --out"
            )
        return
    if config.resume:
        return
    if held:
        raise UsageError(
            f"--out {out} is not empty ({shown}): pass --resume latest (or auto) to continue that run, "
            "--overwrite to replace it, or another --out"
        )


def prepare_out(config: TrainConfig, accelerator: Any, fresh: bool) -> None:
    """Create OUT before any weights load (an unwritable location fails in seconds, not after a
    model load) and clear what a killed run may have left half-written there; a fresh run with
    `--overwrite` first removes an earlier run's outputs."""
    if accelerator.is_main_process:
        out = Path(config.out)
        with writing(f"to output folder {out}"):
            out.mkdir(parents=True, exist_ok=True)
            if fresh and config.overwrite:
                for name in OUT_ENTRIES:
                    target = out / name
                    shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        checkpoints.clean_staging(config.out)
    accelerator.wait_for_everyone()


def write_run_record(out: Path, config: TrainConfig, plan: TrainPlan, **extra: Any) -> None:
    """OUT/sdlite-train.json: the resolved settings and plan that produced this model."""
    record = {
        "config": config.fingerprint() | {"max_steps": config.max_steps, "epochs": config.epochs},
        "plan": plan.to_dict(),
        **extra,
    }
    (Path(out) / "sdlite-train.json").write_text(json.dumps(record, indent=2, default=str))
