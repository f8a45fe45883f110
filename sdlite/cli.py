"""The `sdlite` command line: declares the commands and turns failures into one-line errors.

Each command builds one frozen config and hands it to a core function. Heavy libraries (torch,
diffusers) are imported inside the commands, so `--help` and usage errors answer instantly.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from sdlite import __version__
from sdlite.config import DEVICES, DTYPES, PRESETS, InfoConfig, InitConfig, SampleOverrides, build_sample_config
from sdlite.errors import EXIT_CODES, SdliteError
from sdlite.schedulers import scheduler_names

# "\b" keeps click from re-wrapping the table.
EPILOG = "\b\nExit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())
DEBUG_ENV = "SDLITE_DEBUG"

app = typer.Typer(
    name="sdlite",
    help="Stable Diffusion from the command line: sample images, inspect and create models. "
    f"Set {DEBUG_ENV}=1 to see tracebacks.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Options shared by the commands that load a model.
Offline = Annotated[
    bool, typer.Option("--offline", help="Use only the local Hugging Face cache for hub ids (also HF_HUB_OFFLINE=1).")
]
AllowPickle = Annotated[
    bool,
    typer.Option(
        "--allow-pickle", help="Allow loading pickle weights (.ckpt/.bin/.pt). Pickles can run code: trust the source."
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sdlite {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Stable Diffusion from the command line."""


@app.command()
def init(
    out: Annotated[Path, typer.Argument(help="Folder to create (a standard diffusers model folder).")],
    preset: Annotated[str, typer.Option(help=f"Architecture: {', '.join(PRESETS)}.")] = "tiny",
    seed: Annotated[int, typer.Option(help="Weights are drawn from this seed: same seed, same weights.")] = 0,
    dtype: Annotated[str, typer.Option(help="Precision of the saved weights: fp32, fp16 or bf16.")] = "fp32",
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists and is not empty.")] = False,
) -> None:
    """Write a model with random weights, offline: `tiny` for tests and CI, `sd15` for the real SD v1.5 shapes."""
    with _errors():
        config = InitConfig(out=out, preset=preset, seed=seed, dtype=dtype, overwrite=force)
        _quiet_libraries()
        from sdlite.presets import init_model

        typer.echo(str(init_model(config)))


@app.command()
def sample(
    prompts: Annotated[list[str] | None, typer.Argument(help="One or more prompts.", show_default=False)] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Diffusers folder or hub id (ORG/NAME). Default: $SDLITE_MODEL.", show_default=False),
    ] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="What to steer away from. [default: none]")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps. [default: 50]", show_default=False)] = None,
    guidance: Annotated[
        float | None, typer.Option(help="Classifier-free guidance scale; 1 or less turns it off. [default: 7.5]")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help=f"Sampler: {', '.join(scheduler_names())}. [default: ddim]", show_default=False)
    ] = None,
    eta: Annotated[float | None, typer.Option(help="DDIM noise (0 = deterministic DDIM). [default: 0]")] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed of the first image; image i of the run uses seed + i. [default: random, always reported]"
        ),
    ] = None,
    num_images: Annotated[int | None, typer.Option(help="Images per prompt. [default: 1]")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Images denoised together (memory vs speed). [default: 1]")
    ] = None,
    height: Annotated[
        int | None, typer.Option(help="Image height, a multiple of 8. [default: the model's native size]")
    ] = None,
    width: Annotated[
        int | None, typer.Option(help="Image width, a multiple of 8. [default: the model's native size]")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder; existing files are never overwritten. [default: outputs]")
    ] = None,
    prompts_file: Annotated[
        Path | None,
        typer.Option(help='One prompt per line, or JSON lines like {"prompt": ..., "seed": 7, "steps": 20}.'),
    ] = None,
    from_image: Annotated[
        Path | None, typer.Option(help="Regenerate a PNG sdlite wrote, from its own metadata (options given here win).")
    ] = None,
    dtype: Annotated[str | None, typer.Option(help=f"{', '.join(DTYPES)}; auto = fp16 on CUDA, else fp32.")] = None,
    device: Annotated[str | None, typer.Option(help=f"{', '.join(DEVICES)}. [default: auto]")] = None,
    grid: Annotated[bool, typer.Option("--grid", help="Also save a labelled contact sheet of the run.")] = False,
    json_out: JsonOut = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    offline: Offline = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Generate images from text. Each PNG records how to make it again (A1111 `parameters` + full JSON)."""
    with _errors():
        config = build_sample_config(
            SampleOverrides(
                prompts=tuple(prompts or ()),
                model=model,
                prompts_file=prompts_file,
                from_image=from_image,
                settings={
                    "negative_prompt": negative_prompt,
                    "steps": steps,
                    "guidance": guidance,
                    "scheduler": scheduler,
                    "eta": eta,
                    "seed": seed,
                    "num_images": num_images,
                    "height": height,
                    "width": width,
                },
                out=out,
                batch_size=batch_size,
                dtype=dtype,
                device=device,
                grid=grid,
                offline=offline,
                allow_pickle=allow_pickle,
            )
        )
        _quiet_libraries(offline)
        from sdlite.sampling import sample as run_sample

        with _progress_bar(enabled=not quiet) as progress:
            run = run_sample(config, progress=progress, on_image=partial(_print_result, json_out=json_out))
        if run.grid and not json_out:
            typer.echo(f"{run.grid}  grid")


@app.command()
def info(
    model: Annotated[
        str | None, typer.Argument(help="Diffusers folder or hub id. Default: $SDLITE_MODEL.", show_default=False)
    ] = None,
    height: Annotated[int | None, typer.Option(help="Trace the shapes at this height. [default: native]")] = None,
    width: Annotated[int | None, typer.Option(help="Trace the shapes at this width. [default: native]")] = None,
    json_out: JsonOut = False,
    offline: Offline = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Show a model's components, parameter counts, dtypes, scheduler and the tensor shapes of its flow."""
    with _errors():
        from sdlite.config import resolve_model_source

        config = InfoConfig(
            model=resolve_model_source(model), height=height, width=width, offline=offline, allow_pickle=allow_pickle
        )
        _quiet_libraries(offline)
        from sdlite.info import describe, format_info

        details = describe(config)
        typer.echo(json.dumps(details, indent=2) if json_out else format_info(details))


def _print_result(result: Any, json_out: bool) -> None:
    """One line per written image on stdout: JSON, or the path and the seed that remakes it."""
    from tqdm import tqdm

    with tqdm.external_write_mode():  # lift a progress bar out of the way instead of printing over it
        typer.echo(json.dumps(result.to_dict()) if json_out else f"{result.path}  seed {result.seed}")


@contextmanager
def _errors() -> Iterator[None]:
    """Turn sdlite's errors into `error: ...` on stderr and their exit code; Ctrl-C exits 130."""
    _show_warnings()
    try:
        yield
    except SdliteError as exc:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        typer.echo(
            f"internal error: {type(exc).__name__}: {message} (rerun with {DEBUG_ENV}=1 for the traceback)", err=True
        )
        raise typer.Exit(1) from None


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (test runners replace it between calls)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")


def _show_warnings() -> None:
    """sdlite's own warnings (e.g. a truncated prompt) go to stderr as `warning: ...` lines."""
    logger = logging.getLogger("sdlite")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Any]:
    """A tqdm bar on stderr, only when stderr is a terminal and not --quiet."""
    if not (enabled and sys.stderr.isatty()):
        yield None
        return
    bar = _StepBar()
    try:
        yield bar.update
    finally:
        bar.close()


class _StepBar:
    """A tqdm bar created at the first report, when the total number of steps is known."""

    def __init__(self) -> None:
        self.bar: Any = None

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _quiet_libraries(offline: bool = False) -> None:
    """Keep library chatter (deprecation notes, download bars) off stderr; our own warnings still show."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"


def main() -> None:
    """Console-script entry point."""
    app()
