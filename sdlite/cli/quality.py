"""`sdlite eval` (measure a model's quality) and `sdlite check` (golden-image regression checks)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from sdlite.cli.failures import one_line_errors
from sdlite.cli.options import (
    AllowPickle,
    Device,
    Dtype,
    EmaWeights,
    JsonOut,
    Offline,
    Quiet,
    Tokenizer,
    config_options,
    config_values,
)
from sdlite.cli.output import quiet_libraries
from sdlite.cli.progress import progress_bar
from sdlite.quality.config import DEFAULT_MAX_CHANGED, DEFAULT_TOLERANCE, CheckConfig, EvalConfig, build_eval_config
from sdlite.schema import MODEL_HELP

eval_app = typer.Typer(help="Measure a model's quality.", no_args_is_help=True)


@eval_app.command("shapes")
@config_options(EvalConfig)
def eval_shapes(json_out: JsonOut = False, quiet: Quiet = False, **options: Any) -> None:
    """Sample shapes scenes, judge shape, shape color and background with a fixed classifier, print accuracies."""
    with one_line_errors():
        config = build_eval_config(config_values(EvalConfig, options))
        quiet_libraries(config.offline)
        from sdlite.quality.evaluation import evaluate, format_report

        with progress_bar(enabled=not quiet) as progress:
            report = evaluate(config, progress)
        typer.echo(json.dumps(report, indent=2) if json_out else format_report(report))


def check(
    goldens: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Folders of goldens (searched recursively for PNGs sdlite wrote) or single PNG files.",
            metavar="DIR",
            show_default=False,
        ),
    ] = None,
    goldens_option: Annotated[
        list[Path] | None,
        typer.Option("--goldens", help="The same as DIR (repeatable).", metavar="DIR", show_default=False),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help=f"Check every golden with this model instead of the one it records (a new model against old "
            f"goldens). {MODEL_HELP} The single file the goldens record keeps their tokenizer and EMA choice; "
            "another takes --tokenizer and --no-ema-weights. [default: each golden's own; goldens of the built-in "
            "model use this installation's]",
            show_default=False,
        ),
    ] = None,
    lora: Annotated[
        list[str] | None,
        typer.Option(
            help="Apply this LoRA instead of the ones the goldens record (repeatable, like `sample --lora`).",
            metavar="PATH",
            show_default=False,
        ),
    ] = None,
    lora_scale: Annotated[
        list[float] | None,
        typer.Option(
            help="Strength of each --lora, paired by position. [default: 1.0]", metavar="S", show_default=False
        ),
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(
            help="Gray levels (of 255) a pixel's channel may move and the pixel still count as unchanged. "
            "Float noise across batch sizes, threads, modes and CPUs moves pixels by 1-3 levels.",
            metavar="LEVELS",
        ),
    ] = DEFAULT_TOLERANCE,
    max_changed: Annotated[
        float,
        typer.Option(
            help="Share of an image's pixels (0-1) that may change by more than --tolerance; an image passes "
            "while no more have. `--tolerance 0 --max-changed 0` asks for identical pixels.",
            metavar="SHARE",
        ),
    ] = DEFAULT_MAX_CHANGED,
    junit: Annotated[
        Path | None,
        typer.Option(
            help="Write a JUnit XML report (one test case per golden, named by its file name) for CI to display.",
            metavar="FILE",
            show_default=False,
        ),
    ] = None,
    diff: Annotated[
        Path | None,
        typer.Option(
            "--diff",
            help="Write NAME-diff.png per failing golden into this folder: golden | regenerated | difference heatmap.",
            metavar="DIR",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOut = False,
    quiet: Quiet = False,
    dtype: Dtype = "auto",
    device: Device = "auto",
    offline: Offline = False,
    allow_pickle: AllowPickle = False,
    tokenizer: Tokenizer = None,
    ema_weights: EmaWeights = True,
) -> None:
    """Golden-image regression check for CI: regenerate every sdlite PNG under DIR from its own metadata and
    compare it with the stored pixels. Exit 0: all within tolerance; 7: some differ; 3: a golden unreadable."""
    with one_line_errors():
        from sdlite.sampling.config import lora_choices

        config = CheckConfig(
            paths=tuple(str(p) for p in [*(goldens or ()), *(goldens_option or ())]),
            model=model,
            loras=lora_choices(tuple(lora or ()), tuple(lora_scale or ())),
            tolerance=tolerance,
            max_changed=max_changed,
            junit=junit,
            diff_dir=diff,
            dtype=dtype,
            device=device,
            offline=offline,
            allow_pickle=allow_pickle,
            tokenizer=tokenizer,
            ema_weights=None if ema_weights else False,  # default: what each golden records
        )
        quiet_libraries(offline)
        from sdlite.quality.golden import check as run_check

        with progress_bar(enabled=not quiet) as progress:
            report = run_check(config, progress=progress, on_result=partial(_print_check_result, json_out=json_out))
        summary = report.summary()
        if json_out:
            typer.echo(json.dumps({"summary": summary}))
        else:
            typer.echo(
                f"checked {summary['checked']} images: {summary['passed']} passed, {summary['failed']} failed, "
                f"{summary['skipped']} skipped, {summary['errors']} errors (pass: at most {config.max_changed:.2%} "
                f"of pixels beyond {config.tolerance:g} gray levels); {summary['model_loads']} model load(s), "
                f"{summary['seconds']:.1f} s" + (f"; JUnit report {report.junit}" if report.junit else "")
            )
        report.raise_for_status()  # 3 when a golden could not be checked, else 7 when one differs


_CHECK_WORDS = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP", "error": "ERROR"}


def _print_check_result(result: Any, json_out: bool) -> None:
    """One line per golden: `PASS 00003-7.png  max 0  psnr inf`, the reason for the others (JSON with --json)."""
    from tqdm import tqdm

    if json_out:
        line = json.dumps(result.to_dict())
    else:
        line = f"{_CHECK_WORDS[result.status]} {result.name}"
        m = result.metrics
        if m is not None:
            psnr = "inf" if m.psnr == float("inf") else f"{m.psnr:.1f}"
            line += f"  max {m.max_diff}  psnr {psnr}  changed {m.changed:.2%}"
            if result.model_changed:
                line += f"  model changed ({result.golden_model_hash[:10]} -> {result.model_hash[:10]})"
        elif result.reason:
            line += f"  {result.reason}"
        if result.diff:
            line += f"  heatmap {result.diff}"
    with tqdm.external_write_mode():  # lift a progress bar out of the way instead of printing over it
        typer.echo(line)
