"""The reverse process made visible: the model's estimate of the clean image at each denoising step.

At every step the UNet predicts the noise in x_t; from it follows the clean image it implies,
x0 = (x_t - sigma_t * eps) / alpha_t. Decoded, those estimates show the picture emerge: first its
layout, then colour, then detail. The recorder reads them at the scheduler's `step` without changing
its result, so an image made with `--save-progress` has the same pixels as one made without.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class X0Recorder:
    """While `watching`, keeps (timestep, predicted clean latents) for every call of a scheduler's `step`."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, Any]] = []

    @contextlib.contextmanager
    def watching(self, scheduler: Any) -> Iterator[X0Recorder]:
        original = scheduler.step
        self.frames = []

        def step(
            model_output: Any, timestep: Any, sample: Any, *args: Any, return_dict: bool = True, **kwargs: Any
        ) -> Any:
            output = original(model_output, timestep, sample, *args, return_dict=True, **kwargs)
            x0 = getattr(output, "pred_original_sample", None)
            if x0 is None:  # DPM-Solver, UniPC, PNDM: derive it from the noise prediction
                x0 = _clean_estimate(scheduler, model_output, timestep, sample)
            self.frames.append((int(timestep), x0.detach().clone()))
            return output if return_dict else output.to_tuple()

        scheduler.step = step  # this scheduler instance only; put back below
        try:
            yield self
        finally:
            del scheduler.step

    def strips(self, vae: Any, image_processor: Any, count: int) -> list[Any]:
        """One labelled strip per image of the batch: `count` evenly spaced steps, decoded."""
        import torch

        from sdlite.sampling.grid import contact_sheet

        total = len(self.frames)
        if not total:
            return []
        chosen = sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(count)})
        decoded = []
        with torch.inference_mode():
            for index in chosen:
                timestep, x0 = self.frames[index]
                latents = x0.to(vae.device, vae.dtype) / vae.config.scaling_factor
                if getattr(vae.config, "shift_factor", None):
                    latents = latents + vae.config.shift_factor
                pixels = vae.decode(latents, return_dict=False)[0]
                images = image_processor.postprocess(pixels.float(), output_type="pil")
                decoded.append((index + 1, timestep, images))
        batch = len(decoded[0][2])
        return [
            contact_sheet(
                [(images[b], f"step {step}/{total} t={t}") for step, t, images in decoded], columns=len(decoded)
            )
            for b in range(batch)
        ]


def _clean_estimate(scheduler: Any, model_output: Any, timestep: Any, sample: Any) -> Any:
    """x0 implied by the model output for x_t = alpha_t x0 + sigma_t eps, in the scheduler's own terms.

    Schedulers with a `sigmas` table (DPM-Solver, UniPC) use sigma = sqrt((1 - abar) / abar) at the step
    just taken (their step index has moved on by one); the others index alphas_cumprod by the timestep.
    """
    import torch

    sigmas = getattr(scheduler, "sigmas", None)
    index = getattr(scheduler, "step_index", None)
    if sigmas is not None and index is not None:
        sigma = sigmas[index - 1].to(sample.device, torch.float32)
        alpha_t = 1 / torch.sqrt(sigma**2 + 1)
        sigma_t = sigma * alpha_t
    else:
        abar = scheduler.alphas_cumprod[int(timestep)].to(sample.device, torch.float32)
        alpha_t, sigma_t = abar.sqrt(), (1 - abar).sqrt()
    x, out = sample.float(), model_output.float()
    kind = scheduler.config.prediction_type
    if kind == "v_prediction":
        x0 = alpha_t * x - sigma_t * out
    elif kind == "sample":
        x0 = out
    else:
        x0 = (x - sigma_t * out) / alpha_t
    return x0.to(sample.dtype)
