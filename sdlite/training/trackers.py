"""Experiment trackers for `sdlite train --report-to`: Accelerate's own TensorBoard, W&B, MLflow and trackio.

Accelerate silently drops a tracker whose package is missing (a warning, then no logs), so `check_trackers`
refuses such a run up front with the extra to install. Only the main process starts trackers: Accelerate's
W&B and trackio trackers would otherwise open one run per process. Everything is a no-op without `--report-to`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path
from typing import Any

from sdlite.errors import UsageError
from sdlite.training.config import TrainConfig

LOGS = "logs"  # under OUT: TensorBoard writes OUT/logs/<project>/, W&B its OUT/logs/wandb/
# The plan numbers logged with the settings (the rest of the plan is in OUT/sdlite-train.json).
PLAN_KEYS = ("images", "resolution", "num_processes", "effective_batch", "steps", "epochs", "cache")


def _has(module: str, *distributions: str) -> bool:
    """Importable and installed, as Accelerate checks it (a bare folder named like the package does not count)."""
    if importlib.util.find_spec(module) is None:
        return False
    for name in distributions or (module,):
        try:
            importlib.metadata.metadata(name)
            return True
        except importlib.metadata.PackageNotFoundError:
            continue
    return False


def _installed(tracker: str) -> bool:
    """Whether Accelerate will find this tracker's package (accelerate.utils.is_*_available, without torch)."""
    if tracker == "tensorboard":  # torch.utils.tensorboard needs `tensorboard`; tensorboardX is the fallback
        return _has("tensorboard") or _has("tensorboardX")
    if tracker == "mlflow":
        return _has("mlflow", "mlflow", "mlflow-skinny")
    return _has(tracker)


def check_trackers(report_to: tuple[str, ...] | list[str]) -> None:
    """Refuse trackers whose package is missing, before any model loads, naming the extras to install."""
    missing = [name for name in dict.fromkeys(report_to) if not _installed(name)]
    if missing:
        packages = " and ".join(f"{name} package" for name in missing)
        raise UsageError(
            f"--report-to {' '.join(missing)} needs the {packages}, not installed: "
            f"pip install 'sdlite[{','.join(missing)}]'"
        )


def accelerator_kwargs(config: TrainConfig) -> dict[str, Any]:
    """`Accelerator(...)` arguments: the trackers, and the folder TensorBoard needs (it refuses to start without)."""
    if not config.report_to:
        return {}
    from accelerate.utils import ProjectConfiguration

    out = Path(config.out)
    return {
        "log_with": list(dict.fromkeys(config.report_to)),
        "project_config": ProjectConfiguration(project_dir=str(out), logging_dir=str(out / LOGS)),
    }


def hyperparameters(config: TrainConfig, plan: dict[str, Any]) -> dict[str, int | float | str | bool]:
    """The run's settings and plan numbers as flat scalars: TensorBoard's hparams refuse lists and skip None."""
    values = {**config.fingerprint(), "max_steps": config.max_steps, "epochs": config.epochs}
    values.update({f"plan/{key}": plan[key] for key in PLAN_KEYS if key in plan})
    return {
        key: value if isinstance(value, bool | int | float | str) else json.dumps(value)
        for key, value in values.items()
        if value is not None
    }


class Trackers:
    """The training loop's view of the trackers: start, one row per step, validation grids, finish."""

    def __init__(self) -> None:
        self.accelerator: Any = None  # set by start() on the main process of a run with --report-to

    def start(self, accelerator: Any, config: TrainConfig, plan: dict[str, Any], start_step: int = 0) -> None:
        """Open one run per tracker, named after OUT, with the settings as its hyperparameters. A resumed run
        hides the TensorBoard points an interrupted run wrote after its checkpoint (purge_step)."""
        if not config.report_to or not accelerator.is_main_process:
            return
        out = Path(config.out)
        (out / LOGS).mkdir(parents=True, exist_ok=True)
        name = out.resolve().name
        init_kwargs: dict[str, dict[str, Any]] = {
            "wandb": {"name": name, "dir": str(out / LOGS)},
            "mlflow": {"run_name": name},
            "trackio": {"name": name},
        }
        if start_step:
            init_kwargs["tensorboard"] = {"purge_step": start_step + 1}
        accelerator.init_trackers(config.tracker_project, config=hyperparameters(config, plan), init_kwargs=init_kwargs)
        self.accelerator = accelerator

    def log_step(self, step: int, loss: float, lr: float, images_per_s: float) -> None:
        if self.accelerator is not None:
            values = {"train/loss": loss, "train/lr": lr, "train/images_per_s": images_per_s}
            self.accelerator.log(values, step=step)

    def log_validation_loss(self, step: int, loss: float) -> None:
        if self.accelerator is not None:
            self.accelerator.log({"validation/loss": loss}, step=step)

    def log_grid(self, step: int, png_path: str | Path) -> None:
        """The validation grid to every tracker that shows images (MLflow keeps the PNG as an artifact)."""
        if self.accelerator is None:
            return
        from PIL import Image

        with Image.open(png_path) as opened:
            image = opened.convert("RGB")
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                import numpy as np

                tracker.log_images({"validation": np.asarray(image)}, step=step, dataformats="HWC")
                tracker.writer.flush()  # log_images does not flush (log does): show it now, not in 2 minutes
            elif tracker.name == "wandb":
                tracker.log_images({"validation": [image]}, step=step)
            elif tracker.name == "mlflow":
                tracker.log_artifact(str(png_path), artifact_path="validation")  # the file name holds the step
            elif tracker.name == "trackio":
                import trackio

                if hasattr(trackio, "Image"):  # only trackio versions with Image show images
                    tracker.log({"validation": trackio.Image(image)}, step=step)

    def finish(self) -> None:
        """Close every run now, so the logs are complete when training returns. Idempotent, and safe with the
        `accelerator.end_training()` that follows: the trackers it would finish again are removed."""
        if self.accelerator is None:
            return
        trackers, self.accelerator.trackers = self.accelerator.trackers, []
        self.accelerator = None
        for tracker in trackers:
            tracker.finish()
