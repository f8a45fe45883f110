"""sdlite: Stable Diffusion sampling, training and inspection as a small CLI and Python API.

The Python API mirrors the commands: build a config, call the function, get data back.

    from sdlite import SampleConfig, Generation, sample
    run = sample(SampleConfig(model="path/to/model", generations=(Generation("a red circle", seed=1),)))
    print(run.images[0].path)

Names are imported lazily so that `import sdlite` (and `sdlite --help`) stays instant.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"


def lazy_exports(package: str, exports: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module `__getattr__` that imports each exported name from its module on first use.

    Importing a submodule sets it as an attribute of its package (`sdlite.export` would become the module on
    the next access), so the exported object is pinned in the package's namespace once found.
    """

    def get(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    return get


_EXPORTS = {
    "Generation": "sdlite.sampling.config",
    "SampleConfig": "sdlite.sampling.config",
    "LoraChoice": "sdlite.sampling.config",
    "NoiseConfig": "sdlite.sampling.config",
    "InitConfig": "sdlite.models.config",
    "InfoConfig": "sdlite.models.config",
    "ExportConfig": "sdlite.models.config",
    "TrainConfig": "sdlite.training.config",
    "noise_strip": "sdlite.sampling.noising",
    "NoiseStrip": "sdlite.sampling.noising",
    "CheckConfig": "sdlite.quality.config",
    "CheckReport": "sdlite.quality.golden",
    "CheckResult": "sdlite.quality.golden",
    "ImagesDiffer": "sdlite.errors",
    "export": "sdlite.models.export",
    "sample": "sdlite.sampling.run",
    "SampleResult": "sdlite.sampling.results",
    "SampleRun": "sdlite.sampling.results",
    "train": "sdlite.training.unet",
    "dry_run": "sdlite.training.plan",
    "init_model": "sdlite.models.presets",
    "describe": "sdlite.models.info",
    "SdliteError": "sdlite.errors",
}
__all__ = ["__version__", *_EXPORTS]
__getattr__ = lazy_exports("sdlite", _EXPORTS, globals())
