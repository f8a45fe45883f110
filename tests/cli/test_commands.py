"""The command line: help that teaches, JSON for scripts, one-line errors with distinct exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.schedulers import SCHEDULERS

runner = CliRunner()


def invoke(*args: str, **kwargs: object):
    return runner.invoke(app, list(args), **kwargs)  # type: ignore[arg-type]


def test_sample_help_lists_every_scheduler() -> None:
    result = invoke("sample", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for name in SCHEDULERS:
        assert name in text
    for option in (
        "--negative-prompt",
        "--prompts-file",
        "--from-image",
        "--num-images",
        "--batch-size",
        "--grid",
        "--json",
    ):
        assert option in text


def test_sample_json_lines(tiny_model: Path, tmp_path: Path) -> None:
    result = invoke(
        "sample",
        "a red circle",
        "a cat",
        "--model",
        str(tiny_model),
        "--steps",
        "2",
        "--seed",
        "5",
        "--num-images",
        "2",
        "--out",
        str(tmp_path),
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["seed"] for r in rows] == [5, 6, 7, 8]
    assert [r["prompt"] for r in rows] == ["a red circle"] * 2 + ["a cat"] * 2
    required = {
        "path",
        "prompt",
        "negative_prompt",
        "seed",
        "steps",
        "guidance",
        "scheduler",
        "height",
        "width",
        "model",
    }
    assert all(required <= set(r) for r in rows)
    assert all(Path(r["path"]).is_file() for r in rows)
    assert rows[0]["steps"] == 2 and rows[0]["height"] == 64 and rows[0]["scheduler"] == "ddim"


def test_random_seed_is_reported(tiny_model: Path, tmp_path: Path) -> None:
    result = invoke("sample", "a", "--model", str(tiny_model), "--steps", "1", "--out", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    path, _, seed = result.stdout.strip().rpartition("  seed ")
    assert Path(path).name == f"00000-{int(seed)}.png"


def test_model_from_environment(tiny_model: Path, tmp_path: Path) -> None:
    result = invoke(
        "sample", "a", "--steps", "1", "--seed", "1", "--out", str(tmp_path), env={"SDLITE_MODEL": str(tiny_model)}
    )
    assert result.exit_code == 0, result.stderr


def test_from_image_cli(tiny_model: Path, tmp_path: Path) -> None:
    first = invoke(
        "sample",
        "a green square",
        "--model",
        str(tiny_model),
        "--steps",
        "2",
        "--seed",
        "3",
        "--out",
        str(tmp_path / "a"),
        "--json",
    )
    source = Path(json.loads(first.stdout)["path"])
    again = invoke("sample", "--from-image", str(source), "--out", str(tmp_path / "b"), "--json")
    assert again.exit_code == 0, again.stderr
    row = json.loads(again.stdout)
    assert (row["prompt"], row["seed"], row["steps"]) == ("a green square", 3, 2)
    assert Path(row["path"]).read_bytes() == source.read_bytes()
    changed = invoke("sample", "--from-image", str(source), "--steps", "3", "--out", str(tmp_path / "c"), "--json")
    assert json.loads(changed.stdout)["steps"] == 3


def test_from_image_without_metadata_is_bad_data(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    result = invoke("sample", "--from-image", str(tmp_path / "plain.png"))
    assert result.exit_code == 3
    assert "has no sdlite metadata" in result.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--height", "100"], "nearest valid: 96 or 104"),
        (["--width", "513"], "nearest valid: 512 or 520"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--guidance", "-1"], "--guidance must be 0 or more"),
        (["--num-images", "0"], "--num-images must be at least 1"),
        (["--scheduler", "nope"], "--scheduler must be one of"),
        (["--dtype", "fp8"], "--dtype must be one of"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], fragment: str, tmp_path: Path) -> None:
    result = invoke("sample", "a", "--model", str(tmp_path / "never-loaded"), *args)
    assert result.exit_code == 2
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_missing_model_exits_4_naming_it(tmp_path: Path) -> None:
    result = invoke("sample", "a", "--model", str(tmp_path / "absent"), "--out", str(tmp_path))
    assert result.exit_code == 4
    assert str(tmp_path / "absent") in result.stderr


def test_pickle_refused_exit_4_and_allowed_with_flag(tiny_model: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pickled = tmp_path / "pickled"
    StableDiffusionPipeline.from_pretrained(tiny_model).save_pretrained(pickled, safe_serialization=False)
    refused = invoke("sample", "a", "--model", str(pickled), "--steps", "1", "--out", str(tmp_path / "o"))
    assert refused.exit_code == 4 and "--allow-pickle" in refused.stderr
    allowed = invoke(
        "sample",
        "a",
        "--model",
        str(pickled),
        "--steps",
        "1",
        "--seed",
        "0",
        "--out",
        str(tmp_path / "o"),
        "--allow-pickle",
        "--json",
    )
    assert allowed.exit_code == 0, allowed.stderr
    safe = invoke(
        "sample", "a", "--model", str(tiny_model), "--steps", "1", "--seed", "0", "--out", str(tmp_path / "s"), "--json"
    )
    # Same weights, same pixels, whichever format they were stored in.
    from PIL import Image

    a = Image.open(json.loads(allowed.stdout)["path"]).tobytes()
    b = Image.open(json.loads(safe.stdout)["path"]).tobytes()
    assert a == b


def test_bad_prompts_file_exits_3(tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text('{"prompt": "x", "stepz": 3}\n')
    result = invoke("sample", "--prompts-file", str(tmp_path / "p.jsonl"), "--model", "m")
    assert result.exit_code == 3
    assert "p.jsonl:1: unknown keys ['stepz']" in result.stderr


def test_debug_env_shows_traceback(tmp_path: Path) -> None:
    result = invoke("sample", "a", "--model", "m", "--steps", "0", env={"SDLITE_DEBUG": "1"})
    assert result.exit_code != 0
    assert result.exception is not None and "--steps must be at least 1" in str(result.exception)


def test_init_and_info(tmp_path: Path) -> None:
    result = invoke("init", str(tmp_path / "m"), "--seed", "3")
    assert result.exit_code == 0, result.stderr
    again = invoke("init", str(tmp_path / "m"))
    assert again.exit_code == 2 and "--force" in again.stderr
    info = invoke("info", str(tmp_path / "m"), "--json", "--height", "32", "--width", "48")
    details = json.loads(info.stdout)
    flow = {stage["stage"]: stage["output"] for stage in details["flow"]}
    assert flow["vae encoder"] == [4, 4, 6] and flow["vae decoder"] == [3, 32, 48]
    assert invoke("init", str(tmp_path / "x"), "--preset", "huge").exit_code == 2


def test_info_without_any_model_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sdlite.models.source

    monkeypatch.setattr(sdlite.models.source, "DEFAULT_MODEL", tmp_path / "missing")
    result = invoke("info")
    assert result.exit_code == 2 and "no model given" in result.stderr


def _fresh_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_help_and_usage_errors_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from sdlite.cli.app import app\n"
        "r = CliRunner()\n"
        "assert r.invoke(app, ['--help']).exit_code == 0\n"
        "assert r.invoke(app, ['sample', '--help']).exit_code == 0\n"
        "assert r.invoke(app, ['sample', 'a', '--model', 'm', '--height', '7']).exit_code == 2\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    assert _fresh_python(code).strip() == "[]"


def test_python_dash_m() -> None:
    result = subprocess.run([sys.executable, "-m", "sdlite", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("sdlite ")


def test_long_prompt_warning_on_stderr(tiny_model: Path, tmp_path: Path) -> None:
    prompt = " ".join(["blue"] * 75) + " purple elephant"  # 77 = BOS + 75 words + EOS
    result = invoke(
        "sample", prompt, "--model", str(tiny_model), "--steps", "1", "--seed", "0", "--out", str(tmp_path), "--json",
        "--prompt-syntax", "plain",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "warning: prompt is longer than 77 tokens; these words are ignored: 'purple elephant'" in result.stderr
    assert len(result.stdout.splitlines()) == 1  # stdout stays pure JSON


def test_from_image_with_another_model_warns(tiny_model: Path, tmp_path: Path) -> None:
    first = invoke(
        "sample", "a", "--model", str(tiny_model), "--steps", "1", "--seed", "0", "--out", str(tmp_path / "a"), "--json"
    )
    other = invoke("init", str(tmp_path / "other"), "--seed", "9")
    assert other.exit_code == 0
    source = json.loads(first.stdout)["path"]
    result = invoke("sample", "--from-image", source, "--model", str(tmp_path / "other"), "--out", str(tmp_path / "b"))
    assert result.exit_code == 0, result.stderr
    assert "is not the one the source image was made with" in result.stderr


def test_hub_id_sample_offline(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from sdlite.testing import make_hub_cache

    make_hub_cache(tiny_model, tmp_path / "hub", "sdlite-test/tiny")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE")  # only --offline keeps these calls off the network
    by_id = invoke(
        "sample",
        "a",
        "--model",
        "sdlite-test/tiny",
        "--steps",
        "2",
        "--seed",
        "4",
        "--out",
        str(tmp_path / "id"),
        "--json",
        "--offline",
    )
    assert by_id.exit_code == 0, by_id.stderr
    row = json.loads(by_id.stdout)
    assert row["model"] == "sdlite-test/tiny"
    by_path = invoke(
        "sample",
        "a",
        "--model",
        str(tiny_model),
        "--steps",
        "2",
        "--seed",
        "4",
        "--out",
        str(tmp_path / "path"),
        "--json",
    )
    assert Path(row["path"]).read_bytes() != b"" and row["model_hash"] == json.loads(by_path.stdout)["model_hash"]
    from PIL import Image

    assert Image.open(row["path"]).tobytes() == Image.open(json.loads(by_path.stdout)["path"]).tobytes()
    missing = invoke("sample", "a", "--model", "sdlite-test/absent", "--offline", "--out", str(tmp_path / "x"))
    assert missing.exit_code == 4
    assert "hub model sdlite-test/absent is not in the local cache and offline mode is on" in missing.stderr


def test_prompts_file_through_cli(tiny_model: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('a red circle\n{"prompt": "a blue square", "seed": 77, "steps": 3, "height": 32}\n')
    result = invoke(
        "sample",
        "--prompts-file",
        str(prompts),
        "--model",
        str(tiny_model),
        "--steps",
        "2",
        "--seed",
        "10",
        "--out",
        str(tmp_path / "o"),
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["prompt"], r["seed"], r["steps"], r["height"]) for r in rows] == [
        ("a red circle", 10, 2, 64),
        ("a blue square", 77, 2, 32),
    ]


def test_progress_bar_only_on_a_terminal_and_not_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from sdlite.cli.progress import progress_bar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress_bar(enabled=True) as update:
        update(3, 6)
    assert "3/6" in terminal.getvalue()
    with progress_bar(enabled=False) as update:
        assert update is None
    log = io.StringIO()  # not a terminal (CI, Slurm, nohup): plain lines instead of a bar (tests/cli/test_progress.py)
    monkeypatch.setattr(sys, "stderr", log)
    with progress_bar(enabled=True, images=1) as update:
        update(0, 6)
        update(6, 6)
        update.image_done()
    assert log.getvalue().startswith("sample: 1/1 images, 6/6 steps, ") and "\r" not in log.getvalue()


def test_shell_completion_is_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Typer's completion: the script for the shell sdlite runs under, detected from the parent process (here a
    test runner, so bash is said to be it)."""
    import typer.completion

    monkeypatch.setattr(typer.completion, "_get_shell_name", lambda: "bash")
    result = runner.invoke(app, ["--show-completion"], prog_name="sdlite")
    assert result.exit_code == 0 and "_SDLITE_COMPLETE" in result.stdout, result.output
    assert "--install-completion" in runner.invoke(app, ["--help"], prog_name="sdlite").stdout


def test_a_model_found_nowhere_is_named_as_a_path_and_as_a_hub_id(tmp_path: Path) -> None:
    result = invoke("sample", "a", "--model", "models/typo", "--offline", "--out", str(tmp_path / "x"))
    assert result.exit_code == 4
    assert "no folder or file models/typo here, and hub model models/typo is not in the local cache" in result.stderr
