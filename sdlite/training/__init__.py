"""Training: the UNet trainer (unet.py: full, LoRA, DreamBooth) and the VAE trainer (vae.py), with what both
share: the plan, the steps' seeds and guard, the OUT folder, checkpoints, reporting, the encoding cache.
"""

from __future__ import annotations

from sdlite import lazy_exports

_EXPORTS = {
    "train": "sdlite.training.unet",
    "dry_run": "sdlite.training.plan",
    "TrainConfig": "sdlite.training.config",
    "TrainPlan": "sdlite.training.plan",
    "TrainResult": "sdlite.training.reporting",
}
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
