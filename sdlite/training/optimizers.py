"""The optimizers and learning-rate schedules `sdlite train` offers, as kohya and OneTrainer users know them.

`adamw` and `sgd` are torch's; `adafactor` is transformers' (a fixed learning rate: no relative step, no parameter
scaling, as kohya sets it for a given --lr); `adamw8bit` is bitsandbytes' (CUDA only); `prodigy` and `lion` come
from their maintained packages (`prodigyopt`, `lion-pytorch`), installed with sdlite's extras of the same names.
`--optimizer-args k=v` passes any other keyword the optimizer takes (betas=0.9,0.99, d_coef=2, ...). Everything is
checked before any weight loads: a missing package or an argument the optimizer does not take is a usage error.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

from sdlite.errors import UsageError

OPTIMIZERS = ("adamw", "adamw8bit", "adafactor", "prodigy", "lion", "sgd")
# Optimizers from packages sdlite does not require: (module, extra, class).
_PACKAGES = {
    "prodigy": ("prodigyopt", "prodigy", "Prodigy"),
    "lion": ("lion_pytorch", "lion", "Lion"),
    "adamw8bit": ("bitsandbytes.optim", "adamw8bit", "AdamW8bit"),
}
# Learning-rate schedules (diffusers' own), written as kohya writes them; the underscore spellings are accepted too.
SCHEDULES = ("constant", "constant-with-warmup", "linear", "cosine", "cosine-with-restarts", "polynomial")


def parse_args(items: Sequence[str]) -> dict[str, Any]:
    """`k=v` pairs as keyword arguments: numbers, True/False/None, comma lists as tuples (betas=0.9,0.99), else
    text."""
    args: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UsageError(f"--optimizer-args {item!r}: write NAME=VALUE (betas=0.9,0.99, eps=1e-8, ...)")
        args[key.strip()] = _value(text.strip())
    return args


def _value(text: str) -> Any:
    if "," in text:
        return tuple(_value(part.strip()) for part in text.split(","))
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _class(name: str, torch: Any) -> Any:
    """The optimizer class, or a usage error naming the package (and the extra that installs it)."""
    if name == "adamw":
        return torch.optim.AdamW
    if name == "sgd":
        return torch.optim.SGD
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor
    module, extra, cls = _PACKAGES[name]
    try:
        return getattr(__import__(module, fromlist=[cls]), cls)
    except ImportError:
        raise UsageError(
            f"--optimizer {name} needs the {module.split('.')[0]} package: pip install 'sdlite[{extra}]'"
        ) from None


def _keywords(name: str, lr: float, weight_decay: float, args: dict[str, Any]) -> dict[str, Any]:
    keywords: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if name == "adafactor":  # a fixed learning rate (kohya's setting when --lr is given)
        keywords |= {"scale_parameter": False, "relative_step": False, "warmup_init": False}
    return keywords | args


def check_optimizer(name: str, lr: float, weight_decay: float, items: Sequence[str], device: str) -> None:
    """Fail before any weight loads: a missing package, adamw8bit off CUDA, an argument the optimizer refuses (each
    tried on a one-element parameter)."""
    import torch

    if name == "adamw8bit" and not device.startswith("cuda"):
        raise UsageError("--optimizer adamw8bit runs on CUDA only (bitsandbytes' 8-bit kernels): use adamw here")
    cls = _class(name, torch)
    try:
        _quietly(cls, [torch.nn.Parameter(torch.zeros(1))], _keywords(name, lr, weight_decay, parse_args(items)))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--optimizer {name} does not take these arguments: {exc}") from None


def _quietly(cls: Any, params: list[Any], keywords: dict[str, Any]) -> Any:
    """`cls(params, **keywords)` with what it prints kept off sdlite's stdout (Prodigy announces its weight decay;
    stdout carries `--json-events`)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return cls(params, **keywords)


def make_optimizer(
    params: list[Any], name: str, lr: float, weight_decay: float, items: Sequence[str], torch: Any
) -> tuple[Any, str]:
    """The optimizer over `params` and how the plan names it. AdamW uses the fused kernel (all tensors in one pass)
    where torch has it for these tensors, else the foreach one; the per-tensor loop is never used."""
    args = parse_args(items)
    keywords = _keywords(name, lr, weight_decay, args)
    if name == "adamw" and not {"fused", "foreach"} & set(args):
        try:
            return torch.optim.AdamW(params, **keywords, fused=True), "fused AdamW"
        except (RuntimeError, ValueError):
            return torch.optim.AdamW(params, **keywords, foreach=True), "foreach AdamW"
    cls = _class(name, torch)
    return _quietly(cls, params, keywords), cls.__name__


def describe(name: str, lr: float, weight_decay: float, items: Sequence[str], schedule: str, warmup: int) -> str:
    """The plan's optimizer line: `adamw, lr 1e-05, weight decay 0.01, cosine schedule, 100 warm-up steps`."""
    extra = "".join(f", {item}" for item in items)
    warm = f", {warmup} warm-up steps" if warmup else ""
    return f"{name}, lr {lr:g}, weight decay {weight_decay:g}{extra}, {schedule} schedule{warm}"


def make_schedule(name: str, optimizer: Any, warmup: int, steps: int, cycles: int | None) -> Any:
    """diffusers' learning-rate schedule `name` (either spelling) over `steps`."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        name.replace("-", "_"),
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=steps,
        num_cycles=cycles or 1,
    )
