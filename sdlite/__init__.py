"""sdlite: Stable Diffusion sampling, training and inspection as a small CLI and Python API.

The Python API mirrors the commands: build a config, call the function, get data back.

    from sdlite import SampleConfig, Generation, sample
    run = sample(SampleConfig(model="path/to/model", generations=(Generation("a red circle", seed=1),)))
    print(run.images[0].path)

Names are imported lazily so that `import sdlite` (and `sdlite --help`) stays instant.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Generation": "sdlite.config",
    "SampleConfig": "sdlite.config",
    "InitConfig": "sdlite.config",
    "InfoConfig": "sdlite.config",
    "ExportConfig": "sdlite.config",
    "LoraChoice": "sdlite.config",
    "NoiseConfig": "sdlite.config",
    "noise_strip": "sdlite.noising",
    "NoiseStrip": "sdlite.noising",
    "CheckConfig": "sdlite.config",
    "CheckReport": "sdlite.check",
    "CheckResult": "sdlite.check",
    "ImagesDiffer": "sdlite.errors",
    "export": "sdlite.export",
    "sample": "sdlite.sampling",
    "SampleResult": "sdlite.sampling",
    "SampleRun": "sdlite.sampling",
    "init_model": "sdlite.presets",
    "describe": "sdlite.info",
    "SdliteError": "sdlite.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        # Importing a submodule sets it as an attribute of this package: `sdlite.export` would then be the
        # module on the next access. Pin the exported object instead.
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sdlite' has no attribute {name!r}")
