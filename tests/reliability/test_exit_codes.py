"""Every exit code in the table, each produced by a real failure of its kind, and the table itself in
README and `sdlite --help`."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from faults import SDLITE
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.errors import EXIT_CODES

runner = CliRunner()
README = Path(__file__).parents[2] / "README.md"


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args))


def test_the_table_is_in_readme_and_help() -> None:
    rows = dict(re.findall(r"^\| (\d+) \| (.+) \|$", README.read_text(), flags=re.MULTILINE))
    assert sorted(int(code) for code in rows) == sorted(EXIT_CODES)
    help_text = invoke("--help").stdout
    for code, meaning in EXIT_CODES.items():
        assert re.search(rf"^\s*{code}\s+{re.escape(meaning)}", help_text, flags=re.MULTILINE), code
        assert rows[str(code)].replace("`", "").startswith(meaning.split(" (")[0])


def nan_vae(model: Path, tmp_path: Path) -> Path:
    broken = Path(shutil.copytree(model, tmp_path / "nan"))
    weights = broken / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["decoder.conv_out.weight"] = torch.full_like(state["decoder.conv_out.weight"], float("nan"))
    save_file(state, weights)
    return broken


def failing_args(code: int, model: Path, tmp_path: Path) -> list[str]:
    """A command line that really fails with `code` (0: one that succeeds)."""
    out = tmp_path / "out"
    sample = ["sample", "a red circle", "--model", str(model), "--steps", "1", "--out", str(out)]
    if code == 0:
        return sample
    if code == 2:
        return [*sample, "--height", "7"]  # not a multiple of the VAE factor
    if code == 3:
        Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")  # an image without sdlite metadata
        return ["sample", "--from-image", str(tmp_path / "plain.png"), "--out", str(out)]
    if code == 4:
        return ["info", str(tmp_path / "no-such-model")]
    if code == 5:
        (tmp_path / "file").write_text("in the way")
        return [*sample[:-1], str(tmp_path / "file" / "out")]
    if code == 7:  # a golden edited after it was made
        assert invoke(*sample).exit_code == 0
        golden = next(out.glob("*.png"))
        with Image.open(golden) as image:
            info = PngInfo()
            for key, value in image.text.items():
                info.add_text(key, value)
            edited = Image.eval(image.convert("RGB"), lambda v: 255 - v)
        edited.save(golden, pnginfo=info)
        return ["check", str(out), "-q"]
    return [*sample[:3], str(nan_vae(model, tmp_path)), *sample[4:]]  # 6: a VAE that decodes to NaN


@pytest.mark.parametrize("code", [0, 2, 3, 4, 5, 6, 7])
def test_each_kind_of_failure_has_its_code(code: int, tiny_model: Path, tmp_path: Path) -> None:
    result = invoke(*failing_args(code, tiny_model, tmp_path))
    assert result.exit_code == code, result.stderr
    if code:
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("raised", "code", "message"),
    [(RuntimeError("a bug\nsecond line"), 1,
      "internal error: RuntimeError: a bug (rerun with SDLITE_DEBUG=1 for the traceback)"),
     (MemoryError(), 5, "error: out of memory: lower --batch-size"),
     (KeyboardInterrupt(), 130, "interrupted")],
    ids=["bug", "memory", "ctrl-c"],
)  # fmt: skip
def test_unexpected_exceptions_map_to_their_code(
    monkeypatch: pytest.MonkeyPatch, raised: BaseException, code: int, message: str
) -> None:
    import sdlite.models.info

    def fail(config: object) -> None:
        raise raised

    monkeypatch.setattr(sdlite.models.info, "describe", fail)
    result = invoke("info", "m")
    assert result.exit_code == code
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1


def communicate(process: subprocess.Popen[str], timeout: float = 30) -> tuple[str, str]:
    """The rest of a process's output; a process still running after `timeout` is killed (and the test fails)."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise


def test_ctrl_c_while_sampling_exits_130_keeping_finished_images(tiny_model: Path, tmp_path: Path) -> None:
    """A long run interrupted mid-batch stops at once (well before the 2 s hard stop): the step callback
    sees the request."""
    out = tmp_path / "out"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "a red circle", "steps": 3}\n{"prompt": "a blue square", "steps": 500, "num_images": 4}\n'
    )
    process = subprocess.Popen([*SDLITE, "sample", "--prompts-file", str(prompts), "--model", str(tiny_model),
                                "--out", str(out), "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stdout is not None
    first = process.stdout.readline()  # the first image is written: now interrupt the second, mid-denoising
    time.sleep(1.0)
    asked = time.monotonic()
    process.send_signal(signal.SIGINT)
    rest, err = communicate(process)
    assert time.monotonic() - asked < 1.5
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted"
    images = [p.name for p in out.iterdir() if not p.name.startswith(".")]  # .sdlite-claims is index bookkeeping
    assert first and not rest and images == [json.loads(first)["path"].split("/")[-1]]


def test_ctrl_c_during_one_long_operation_exits_within_seconds(tiny_model: Path, tmp_path: Path) -> None:
    """One denoising step of a huge image can take minutes in a single torch call, where no step callback
    runs: Ctrl-C still ends the run 2 s later with exit 130, nothing half-written."""
    out = tmp_path / "out"
    process = subprocess.Popen([*SDLITE, "sample", "a red circle", "--model", str(tiny_model), "--steps", "50",
                                "--height", "2048", "--width", "2048", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stderr is not None
    warning = process.stderr.readline()  # printed once the memory check passed, before the model loads
    assert warning.startswith("warning: 2048x2048 is far above the model's native 64x64")
    # OUT is made once the model is loaded, just before denoising: wait for it (a loaded machine can take many
    # seconds to import and load), then a second more, and the run is inside the first step's attention.
    waited = time.monotonic()
    while not out.exists() and time.monotonic() - waited < 120:
        time.sleep(0.1)
    time.sleep(1.0)
    asked = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, err = communicate(process)
    assert time.monotonic() - asked < 3.5
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted"
    assert not out.exists() or not list(out.iterdir())
