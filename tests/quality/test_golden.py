"""`check` passes untouched goldens (also batch- and --fast-made ones) with one model load per group, fails exactly
the edited image or every image of another model, skips foreign PNGs, and writes reports CI systems read."""

from __future__ import annotations

import json
import math
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdlite.cli.app import app
from sdlite.errors import DataError, ModelError, UsageError
from sdlite.models.source import DEFAULT_MODEL
from sdlite.quality.golden import (
    DEFAULT_MAX_CHANGED,
    DEFAULT_TOLERANCE,
    CheckConfig,
    CheckReport,
    ImagesDiffer,
    check,
    compare,
    passes,
)
from sdlite.sampling import run
from sdlite.sampling.config import Generation, SampleConfig

# Module-scoped fixtures below are made once: `make test` keeps this file on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("golden")

STEPS = 4


@pytest.fixture(scope="module")
def goldens(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """default/: a batch of 2 plus the batch's remainder (batch size 2) and a single image; fast/: --fast images."""
    root = tmp_path_factory.mktemp("goldens")
    gens = (
        Generation("a red circle", seed=1, steps=STEPS, num_images=3),
        Generation("a blue square", seed=9, steps=STEPS),
    )
    run.sample(SampleConfig(model=str(tiny_model), generations=gens, out=root / "default", batch_size=2))
    fast = (Generation("a green triangle", seed=20, steps=STEPS, num_images=2),)
    run.sample(SampleConfig(model=str(tiny_model), generations=fast, out=root / "fast", mode="fast"))
    return root


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every pipeline load sampling makes, by model path."""
    calls: list[str] = []
    real = run.load_pipeline

    def counting(model: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(str(model.path))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(run, "load_pipeline", counting)
    return calls


def copy(goldens: Path, tmp_path: Path, sub: str = "") -> Path:
    return Path(shutil.copytree(goldens / sub, tmp_path / "goldens"))


def edit_patch(path: Path, share: float = 0.05, levels: int = 8) -> None:
    """Change a square patch of `share` of the pixels by `levels` gray levels (down where that would clip),
    keeping the PNG's metadata, as an editor that preserves text chunks does."""
    with Image.open(path) as image:
        text = dict(image.text)
        pixels = np.asarray(image.convert("RGB")).astype(np.int16)
    count = round(share * pixels.shape[0] * pixels.shape[1])
    rows = math.ceil(count**0.5)
    cols = math.ceil(count / rows)
    patch = pixels[:rows, :cols]
    pixels[:rows, :cols] = np.where(patch + levels > 255, patch - levels, patch + levels)
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    Image.fromarray(pixels.astype(np.uint8)).save(path, pnginfo=info)


def junit_cases(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(testsuite attributes, {test case name: outcome}) as a JUnit parser reads them."""
    try:
        from junitparser import Error, Failure, JUnitXml, Skipped
    except ImportError:  # the plain structure CI systems read
        suite = ET.parse(path).getroot().find("testsuite")
        assert suite is not None
        outcomes = {}
        for case in suite.iter("testcase"):
            found = [child.tag for child in case if child.tag in ("failure", "skipped", "error")]
            outcomes[case.attrib["name"]] = found[0] if found else "passed"
        return dict(suite.attrib), outcomes
    suites = list(JUnitXml.fromfile(str(path)))
    assert len(suites) == 1 and suites[0].name == "sdlite check"
    kinds = {Failure: "failure", Skipped: "skipped", Error: "error"}
    outcomes = {}
    for case in suites[0]:
        assert case.classname == "sdlite.check"
        outcomes[case.name] = next((kinds[type(r)] for r in case.result), "passed")
    suite = suites[0]
    attrs = {"tests": suite.tests, "failures": suite.failures, "errors": suite.errors, "skipped": suite.skipped}
    return {k: str(v) for k, v in attrs.items()}, outcomes


def statuses(report: CheckReport) -> dict[str, str]:
    return {r.name: r.status for r in report.results}


def test_goldens_pass_unchanged_with_one_load_per_group(goldens: Path, loads: list[str]) -> None:
    progress: list[tuple[int, int]] = []
    streamed: list[str] = []
    report = check(CheckConfig(paths=(str(goldens),)), progress=lambda d, t: progress.append((d, t)),
                   on_result=lambda r: streamed.append(r.name))  # fmt: skip
    names = ["default/00000-1.png", "default/00001-2.png", "default/00002-3.png", "default/00003-9.png",
             "fast/00000-20.png", "fast/00001-21.png"]  # fmt: skip
    assert statuses(report) == dict.fromkeys(names, "passed")
    assert [r.name for r in report.results] == names and sorted(streamed) == names
    assert all(r.metrics and r.metrics.max_diff == 0 and r.metrics.psnr == float("inf") for r in report.results)
    assert len(loads) == 2 and report.model_loads == 2  # one per mode, not one per image
    # Batch [1, 2] is computed once for its two goldens: 4 generations of 4 steps, one of them 2 images wide.
    assert progress[-1] == (6 * STEPS, 6 * STEPS)
    report.raise_for_status()  # exit 0
    assert report.ok and report.summary()["checked"] == 6


def test_a_local_edit_fails_exactly_that_image(goldens: Path, tmp_path: Path) -> None:
    folder = copy(goldens, tmp_path, "default")
    edit_patch(folder / "00001-2.png")
    junit, diffs = tmp_path / "reports" / "check.xml", tmp_path / "diffs"
    report = check(CheckConfig(paths=(str(folder),), junit=junit, diff_dir=diffs))
    assert statuses(report) == {"00000-1.png": "passed", "00001-2.png": "failed", "00002-3.png": "passed",
                                "00003-9.png": "passed"}  # fmt: skip
    failed = report.results[1]
    assert failed.metrics is not None and failed.metrics.max_diff == 8
    assert failed.metrics.changed == pytest.approx(0.05, abs=0.005)
    assert failed.reason.startswith(f"{failed.metrics.changed:.2%} of pixels differ by more than 4 gray levels")
    assert not failed.model_changed
    with pytest.raises(ImagesDiffer, match=r"1 of 4 images differ beyond tolerance .*: 00001-2\.png") as caught:
        report.raise_for_status()
    assert caught.value.exit_code == 7

    suite, cases = junit_cases(junit)
    assert cases == {"00000-1.png": "passed", "00001-2.png": "failure", "00002-3.png": "passed",
                     "00003-9.png": "passed"}  # fmt: skip
    assert (suite["tests"], suite["failures"], suite["errors"], suite["skipped"]) == ("4", "1", "0", "0")
    assert report.junit == junit and not list(junit.parent.glob(".*tmp"))  # written by rename, nothing left over

    # A heatmap for the failing image only: golden | regenerated | difference, enlarged and labelled.
    assert [p.relative_to(diffs).as_posix() for p in diffs.rglob("*")] == ["00001-2-diff.png"]
    assert failed.diff == diffs / "00001-2-diff.png"
    with Image.open(failed.diff) as heatmap:
        assert heatmap.width >= 3 * 192 and heatmap.height > 192


def test_another_model_fails_every_image(goldens: Path, tmp_path: Path) -> None:
    from sdlite.testing import make_tiny_model

    other = make_tiny_model(tmp_path / "other", seed=1)
    report = check(CheckConfig(paths=(str(goldens / "default"),), model=str(other)))
    assert set(statuses(report).values()) == {"failed"}
    assert all(r.model_changed and "the model differs from the golden's" in r.reason for r in report.results)
    with pytest.raises(ImagesDiffer, match="4 of 4 images differ"):
        report.raise_for_status()


def test_foreign_pngs_are_skipped_and_unreadable_ones_are_errors(goldens: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(goldens / "default" / "00003-9.png", folder)
    Image.new("RGB", (8, 8), "red").save(folder / "photo.png")
    Image.new("RGB", (8, 8), "red").save(folder / "grid-00000.png")
    Image.new("RGB", (8, 8), "red").save(folder / "00003-9-progress.png")
    a1111 = PngInfo()
    a1111.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 8x8")
    Image.new("RGB", (8, 8)).save(folder / "a1111.png", pnginfo=a1111)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    junit = tmp_path / "report.xml"
    report = check(CheckConfig(paths=(str(folder),), junit=junit))
    assert statuses(report) == {"00003-9-progress.png": "skipped", "00003-9.png": "passed", "a1111.png": "skipped",
                                "broken.png": "error", "grid-00000.png": "skipped", "photo.png": "skipped"}  # fmt: skip
    reasons = {r.name: r.reason for r in report.results}
    assert "grid" in reasons["grid-00000.png"] and "progress" in reasons["00003-9-progress.png"]
    assert "another tool" in reasons["a1111.png"] and "no sdlite metadata" in reasons["photo.png"]
    with pytest.raises(DataError, match=r"1 golden.* could not be checked: broken\.png") as caught:
        report.raise_for_status()  # an incomplete check is exit 3, not a pass
    assert caught.value.exit_code == 3
    suite, cases = junit_cases(junit)
    assert (suite["tests"], suite["failures"], suite["errors"], suite["skipped"]) == ("6", "0", "1", "4")
    assert cases["broken.png"] == "error" and cases["photo.png"] == "skipped"


def test_nothing_to_check_is_not_a_pass(tmp_path: Path, loads: list[str]) -> None:
    with pytest.raises(DataError, match="do not exist"):
        check(CheckConfig(paths=(str(tmp_path / "missing"),)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no PNG files"):
        check(CheckConfig(paths=(str(tmp_path / "empty"),)))
    Image.new("RGB", (8, 8)).save(tmp_path / "empty" / "photo.png")
    with pytest.raises(DataError, match="no sdlite images to check"):
        check(CheckConfig(paths=(str(tmp_path / "empty"),)))
    assert loads == []


def test_a_missing_model_fails_before_anything_is_made(goldens: Path, tmp_path: Path, loads: list[str]) -> None:
    junit = tmp_path / "report.xml"
    with pytest.raises(ModelError) as caught:
        check(CheckConfig(paths=(str(goldens),), model=str(tmp_path / "no-such-model"), junit=junit))
    assert caught.value.exit_code == 4 and loads == [] and not junit.exists()


def test_builtin_model_goldens_pass_on_another_installation(tmp_path: Path) -> None:
    """The built-in model's absolute path differs between a checkout and a CI runner's site-packages."""
    gens = (Generation("a red circle on a blue background", seed=3, steps=3),)
    [made] = run.sample(SampleConfig(model=str(DEFAULT_MODEL), generations=gens, out=tmp_path / "g")).images
    with Image.open(made.path) as image:
        text, pixels = dict(image.text), image.copy()
    record = json.loads(text["sdlite"])
    record["model"]["source"] = "/home/runner/venv/lib/python3.12/site-packages/sdlite/default_model"
    info = PngInfo()
    info.add_text("parameters", text["parameters"])
    info.add_text("sdlite", json.dumps(record))
    pixels.save(made.path, pnginfo=info)
    report = check(CheckConfig(paths=(str(tmp_path / "g"),)))
    assert statuses(report) == {made.path.name: "passed"} and not report.results[0].model_changed


def test_the_pass_rule() -> None:
    rng = np.random.default_rng(0)
    golden = rng.integers(8, 248, size=(64, 64, 3)).astype(np.uint8)
    same = compare(golden, golden)
    assert (same.max_diff, same.mean_diff, same.psnr, same.changed) == (0, 0.0, float("inf"), 0.0)
    noise = (golden.astype(int) + rng.integers(-1, 2, size=golden.shape)).astype(np.uint8)  # float noise: +-1
    assert passes(compare(golden, noise)) and compare(golden, noise).max_diff == 1
    patch = golden.copy()
    patch[:14, :14] += 8  # 196 of 4096 pixels: 4.8%
    metrics = compare(golden, patch)
    assert (metrics.max_diff, round(metrics.changed, 3)) == (8, 0.048) and not passes(metrics)
    assert 42 < metrics.psnr < 44
    outliers = golden.copy()
    outliers[0, :20] = 255 - outliers[0, :20]  # 20 pixels (0.49%) flipped, as a sharp edge can across devices
    assert passes(compare(golden, outliers))
    assert not passes(compare(golden, outliers, tolerance=0), max_changed=0)
    assert (DEFAULT_TOLERANCE, DEFAULT_MAX_CHANGED) == (4.0, 0.005)


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"paths": ()}, "no goldens given"), ({"tolerance": -1}, "--tolerance must be"),
     ({"max_changed": 1.5}, "--max-changed must be"), ({"max_changed": True}, "--max-changed must be")],
)  # fmt: skip
def test_config_is_checked(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        CheckConfig(**{"paths": ("goldens",), **fields})


def _cli() -> Any:
    """The `check` command's app, once sdlite/cli/quality.py declares it."""

    names = {c.name or (c.callback.__name__ if c.callback else None) for c in app.registered_commands}
    if "check" not in names:
        pytest.skip("`sdlite check` is not declared in sdlite/cli/ yet")
    return app


def test_cli_exit_codes_lines_and_json(goldens: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    app, runner = _cli(), CliRunner()
    ok = runner.invoke(app, ["check", str(goldens / "default"), "-q"])
    assert ok.exit_code == 0, ok.stderr
    assert ok.stdout.splitlines()[0].startswith("PASS 00000-1.png  max 0  psnr inf")
    assert "checked 4 images: 4 passed, 0 failed" in ok.stdout

    folder = copy(goldens, tmp_path, "default")
    edit_patch(folder / "00002-3.png")
    junit = tmp_path / "report.xml"
    failed = runner.invoke(app, ["check", "--goldens", str(folder), "--junit", str(junit), "--json", "-q"])
    assert failed.exit_code == 7, failed.stderr
    rows = [json.loads(line) for line in failed.stdout.splitlines()]
    assert [r["status"] for r in rows[:-1]] == ["passed", "passed", "failed", "passed"]
    assert rows[-1]["summary"]["failed"] == 1 and rows[-1]["summary"]["junit"] == str(junit)
    assert failed.stderr.startswith("error: 1 of 4 images differ beyond tolerance") and junit_cases(junit)[1]

    bad = runner.invoke(app, ["check", str(folder), "--tolerance", "-1"])
    assert bad.exit_code == 2 and "--tolerance" in bad.stderr


def test_single_file_goldens_check_with_the_recorded_or_given_tokenizer(tiny_model: Path, tmp_path: Path) -> None:
    """A single file from elsewhere holds no tokenizer: naming the goldens' own file again keeps their recorded one, and
    another file takes `--tokenizer` and `--no-ema-weights` as `sample` does (offline: SD v1's is not cached)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from typer.testing import CliRunner

    from sdlite.formats.single_file import UNET, ema_key
    from sdlite.models.config import ExportConfig
    from sdlite.models.export import export

    file = export(ExportConfig(source=str(tiny_model), out=tmp_path / "m.safetensors"))
    tokenizer = str(tiny_model / "tokenizer")
    gens = (Generation("a red circle", seed=3, steps=STEPS),)
    run.sample(SampleConfig(model=str(file), generations=gens, out=tmp_path / "g", tokenizer=tokenizer))
    state = load_file(file)  # a copy whose EMA UNet differs: only --no-ema-weights makes the goldens' pixels
    generator = torch.Generator().manual_seed(0)
    for key in [k for k in state if k.startswith(UNET)]:
        state[ema_key(key)] = state[key] + 0.2 * torch.randn(state[key].shape, generator=generator)
    with safe_open(file, "pt") as f:
        # the tiny model's configs, which SD v1's conventions would not give; no tokenizer, as other tools write
        meta = {k: v for k, v in f.metadata().items() if not k.startswith("sdlite.tokenizer")}
    save_file(state, tmp_path / "ema.safetensors", metadata=meta)

    app, runner = _cli(), CliRunner()
    same = runner.invoke(app, ["check", str(tmp_path / "g"), "--model", str(file), "-q"])
    assert same.exit_code == 0, same.stderr  # was exit 4: "a single-file model holds no tokenizer"
    other = ["check", str(tmp_path / "g"), "--model", str(tmp_path / "ema.safetensors"), "-q"]
    untold = runner.invoke(app, other)
    assert untold.exit_code == 4 and "--tokenizer" in untold.stderr  # another file's tokenizer is not assumed
    raw = runner.invoke(app, [*other, "--tokenizer", tokenizer, "--no-ema-weights"])
    assert raw.exit_code == 0, raw.stderr  # the options exist and reach the model
    ema = runner.invoke(app, [*other, "--tokenizer", tokenizer])
    assert ema.exit_code == 7, ema.stderr  # the EMA weights by default: other pixels


@pytest.mark.slow
def test_the_ci_example_makes_goldens_then_catches_an_edit(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    sdlite = Path(sys.executable).parent / "sdlite"
    if subprocess.run([str(sdlite), "check", "--help"], capture_output=True).returncode != 0:
        pytest.skip("the installed sdlite has no `check` command yet")
    script = Path(__file__).resolve().parents[2] / "examples" / "ci" / "check_goldens.sh"
    env = {**os.environ, "SDLITE": str(sdlite), "SAMPLE_ARGS": "--num-images 1 --steps 3"}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(script), "goldens", "report.xml", "diffs"], cwd=tmp_path, env=env,
                              capture_output=True, text=True)  # fmt: skip

    made = run()
    assert made.returncode == 0 and "made 4 goldens in goldens" in made.stdout, made.stderr
    assert run().returncode == 0 and junit_cases(tmp_path / "report.xml")[0]["failures"] == "0"
    edited = sorted((tmp_path / "goldens").glob("*.png"))[2]
    edit_patch(edited)
    failed = run()
    assert failed.returncode == 7, failed.stderr
    assert junit_cases(tmp_path / "report.xml")[1][edited.name] == "failure"
    assert [p.name for p in (tmp_path / "diffs").iterdir()] == [f"{edited.stem}-diff.png"]
