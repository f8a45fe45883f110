"""The denoising loss between the UNet's prediction and its target, element by element, as kohya's options define
it: `l2` (squared error), `huber` and `smooth-l1` (pseudo-Huber, Khrapov et al. 2024, as kohya computes them) with a
threshold `c` that can follow the timestep (`--huber-schedule`):

    huber:      2c (sqrt((p - t)^2 + c^2) - c)
    smooth-l1:  2  (sqrt((p - t)^2 + c^2) - c)
    schedules:  constant c;  exponential exp(t ln(c) / T);  snr (1 - c) / (1 + sigma_t)^2 + c, sigma_t = sqrt((1 - abar_t) / abar_t)
"""

from __future__ import annotations

import math
from typing import Any

LOSSES = ("l2", "huber", "smooth-l1")
HUBER_SCHEDULES = ("snr", "exponential", "constant")


def huber_threshold(noise_scheduler: Any, timesteps: Any, c: float, schedule: str) -> Any:
    """Each example's pseudo-Huber threshold at its timestep (a (batch, 1, 1, 1) tensor)."""
    import torch

    if schedule == "constant":
        values = torch.full(timesteps.shape, c, dtype=torch.float32)
    elif schedule == "exponential":
        alpha = -math.log(c) / noise_scheduler.config.num_train_timesteps
        values = torch.exp(-alpha * timesteps.float().cpu())
    else:
        abar = noise_scheduler.alphas_cumprod[timesteps.cpu()].float()
        sigmas = ((1.0 - abar) / abar) ** 0.5
        values = (1 - c) / (1 + sigmas) ** 2 + c
    return values.to(timesteps.device).view(-1, 1, 1, 1)


def elementwise_loss(prediction: Any, target: Any, kind: str, threshold: Any = None) -> Any:
    """The loss of every element (no reduction), in fp32."""
    import torch

    prediction, target = prediction.float(), target.float()
    if kind == "l2":
        return torch.nn.functional.mse_loss(prediction, target, reduction="none")
    root = torch.sqrt((prediction - target) ** 2 + threshold**2) - threshold
    return 2 * threshold * root if kind == "huber" else 2 * root
