"""Sampling: text-to-image, image-to-image and inpainting runs, `sdlite noise`, and what they write.

The run (run.py) reads as numbered steps over diffusers' own pipelines; its settings come from config.py,
merged from their sources (sources.py, prompts_file.py); the process group (world.py), resume planning
(resume.py) and Ctrl-C handling (interrupt.py) live beside it; outputs.py names and writes the images.
"""

from __future__ import annotations

from sdlite import lazy_exports

_EXPORTS = {
    "sample": "sdlite.sampling.run",
    "Generation": "sdlite.sampling.config",
    "SampleConfig": "sdlite.sampling.config",
    "SampleResult": "sdlite.sampling.results",
    "SampleRun": "sdlite.sampling.results",
}
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
