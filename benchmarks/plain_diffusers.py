"""The baseline sdlite is measured against: a plain diffusers script making the same images.

usage: python plain_diffusers.py MODEL OUT PROMPT FIRST_SEED NUM_IMAGES STEPS GUIDANCE
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(model: str, out: str, prompt: str, first_seed: int, num_images: int, steps: int, guidance: float) -> None:
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    for seed in range(first_seed, first_seed + num_images):
        image = pipe(
            prompt,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator("cpu").manual_seed(seed),
        ).images[0]
        image.save(Path(out) / f"{seed}.png")


if __name__ == "__main__":
    model, out, prompt, seed, n, steps, guidance = sys.argv[1:8]
    main(model, out, prompt, int(seed), int(n), int(steps), float(guidance))
