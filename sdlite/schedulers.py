"""Sampler names users type, mapped onto diffusers scheduler classes.

The table is plain data so that `--help` and usage errors need no diffusers import; the classes
themselves are imported only when a scheduler is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SchedulerSpec:
    """One user-facing sampler: its diffusers class, config overrides and how A1111 names it.

    `label` is A1111's sampler name and `schedule_type` its `Schedule type` (sigma spacing), both as
    written in the PNG `parameters` chunk. A1111 reads a k-diffusion sampler with no schedule type as
    its default spacing (Karras for DPM++ 2M), so one is always given for those samplers: `Karras`
    when diffusers uses Karras sigmas, `Uniform` when it spaces steps by the model's own timesteps.
    DDIM, PLMS and UniPC are A1111 timestep samplers (no schedule type); DDPM has no A1111 name.
    """

    class_name: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    accepts_eta: bool = False
    schedule_type: str | None = None

    @property
    def ancestral(self) -> bool:
        """Whether it adds fresh noise at every step (A1111's ENSD offsets that noise's seed)."""
        return "Ancestral" in self.class_name


SCHEDULERS: dict[str, SchedulerSpec] = {
    "ddim": SchedulerSpec("DDIMScheduler", "DDIM", accepts_eta=True),
    "ddpm": SchedulerSpec("DDPMScheduler", "DDPM"),
    "pndm": SchedulerSpec("PNDMScheduler", "PLMS", {"skip_prk_steps": True}),
    "euler": SchedulerSpec("EulerDiscreteScheduler", "Euler", schedule_type="Uniform"),
    "euler-a": SchedulerSpec("EulerAncestralDiscreteScheduler", "Euler a", schedule_type="Uniform"),
    "dpm++2m": SchedulerSpec(
        "DPMSolverMultistepScheduler",
        "DPM++ 2M",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
        schedule_type="Uniform",
    ),
    "dpm++2m-karras": SchedulerSpec(
        "DPMSolverMultistepScheduler",
        "DPM++ 2M",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        schedule_type="Karras",
    ),
    "unipc": SchedulerSpec("UniPCMultistepScheduler", "UniPC"),
    "lms": SchedulerSpec("LMSDiscreteScheduler", "LMS", schedule_type="Uniform"),
}

# Keys of a saved scheduler config that describe that scheduler's own algorithm; dropped when switching
# to another class (e.g. a DPM++ config saved with a model must not make DDIM do something else).
_ALGORITHM_KEYS = ("algorithm_type", "solver_order", "skip_prk_steps", "solver_type", "use_karras_sigmas")


def scheduler_names() -> list[str]:
    """The names `--scheduler` accepts, in the order `--help` lists them."""
    return list(SCHEDULERS)


def make_scheduler(name: str, base_config: Any) -> Any:
    """Build scheduler `name` from a model's saved scheduler config (its betas and timestep settings)."""
    import diffusers

    spec = SCHEDULERS[name]
    cls = getattr(diffusers, spec.class_name)
    config = dict(base_config)
    if config.get("_class_name") != spec.class_name:
        config = {k: v for k, v in config.items() if k not in _ALGORITHM_KEYS}
    return cls.from_config(config, **spec.overrides)
