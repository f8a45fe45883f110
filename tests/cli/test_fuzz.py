"""Fuzzing the command line (hypothesis): whatever a user types or feeds in, sdlite answers with a
documented exit code and, on failure, exactly one `error:` line; never exit 1, never a traceback.

Generated: command lines for `sample`, `train --dry-run`, `info` and `export`; TOML files for
`train --config`; prompts files (plain lines, JSON lines, one JSON array, wrong types, ranges, NaN/inf,
huge and negative numbers, unicode, invalid UTF-8, a BOM, empty files, nested objects) and PNG metadata
for `sample --from-image`. Nearly all of them fail validation, or reach a model that does not exist
(exit 4), so each case takes milliseconds; a few valid prompts files run the tiny model for real.

The examples are fixed (derandomized) so `make test` is reproducible. For a longer, random run:
`SDLITE_FUZZ_EXAMPLES=50000 HF_HUB_OFFLINE=1 pytest tests/cli/test_fuzz.py` (the total number of cases,
shared by the tests in proportion to their default budgets).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
import typer.testing
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sdlite.cli.app import app
from sdlite.sampling.config import GENERATION_KEYS
from sdlite.schedulers import SCHEDULERS
from sdlite.training.config import TRAIN_KEYS

# Default cases per test; SDLITE_FUZZ_EXAMPLES rescales the total (and makes the run random).
BUDGETS = {"sample": 3000, "train": 2400, "info": 600, "export": 600, "toml": 1800, "prompts": 2400, "png": 600}
_TOTAL = os.environ.get("SDLITE_FUZZ_EXAMPLES")
_SCALE = int(_TOTAL) / sum(BUDGETS.values()) if _TOTAL else 1.0
OK_CODES = {0, 2, 3, 4, 5}
NO_MODEL = "never-loaded-model"  # neither a path nor a hub id: exit 4 once validation passes


def fuzz(name: str) -> Any:
    return settings(
        max_examples=max(1, round(BUDGETS[name] * _SCALE)),
        deadline=None,
        database=None,
        derandomize=_TOTAL is None,
        suppress_health_check=list(HealthCheck),
    )


STATS: Counter[tuple[str, int]] = Counter()  # (test, exit code) -> cases; SDLITE_FUZZ_STATS=1 prints it


@pytest.fixture(scope="module", autouse=True)
def _one_click_command() -> Iterator[None]:
    """Build the click command once: Typer rebuilds it on every CliRunner.invoke (about 0.1 s)."""
    command = typer.main.get_command(app)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(typer.testing, "_get_command", lambda _app: command)
        yield
    if os.environ.get("SDLITE_FUZZ_STATS"):
        print("\nfuzz cases by test and exit code:", dict(sorted(STATS.items())), "total", sum(STATS.values()))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "garbage.safetensors").write_bytes(b"\x00\x01 not a model")
    (folder / "data").mkdir()
    return folder


runner = typer.testing.CliRunner()


def run(args: list[str], label: str) -> Any:
    result = runner.invoke(app, args)
    STATS[(label, result.exit_code)] += 1
    check_answer(args, result)
    return result


def check_answer(args: list[str], result: Any) -> None:
    """The property: a documented exit code, and on failure one `error:` line on stderr, no traceback."""
    context = f"args={args!r}\nexit={result.exit_code}\noutput={result.output[-2000:]!r}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}\n{context}")
    assert result.exit_code in OK_CODES, context
    assert "Traceback" not in result.output, context
    if result.exit_code != 0:
        lines = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
        assert len(lines) == 1 and lines[0].startswith("error: "), context


# Values ------------------------------------------------------------------------------------------

ODD_TEXT = ["", " ", "\n", "\t", "a\x00b", "\udcff", "é", "🙂", "\u202e", "\ufeff", "a\r\nb", "-", "--", "-1e5", "ten"]
text = st.one_of(st.text(max_size=12), st.sampled_from(ODD_TEXT))
NUMBER_WORDS = [
    "nan",
    "-nan",
    "inf",
    "-inf",
    "1e999",
    "0x10",
    "1_000",
    "1.0",
    "-0",
    "+5",
    "\u0663",
    "\uff11",
    "1e3",
    "0.5",
    "",
]
number_text = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.integers(-3, 70).map(str),
    st.floats().map(repr),
    st.sampled_from(NUMBER_WORDS),
    st.sampled_from(["9" * 40, "-" + "9" * 40]),
    text,
)


def choice_text(names: list[str] | tuple[str, ...]) -> Any:
    return st.one_of(st.sampled_from(list(names)), text)


json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-3, 70),
    st.floats(),
    text,
    st.sampled_from(list(SCHEDULERS)),
)
json_value = st.recursive(
    json_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=6
)


def options(pool: dict[str, Any], flags: list[str]) -> Any:
    """A list of `--option value` pairs and bare flags, in any order, options possibly repeated."""
    pair = st.sampled_from(sorted(pool)).flatmap(lambda opt: pool[opt].map(lambda v: [opt, v]))
    flag = st.sampled_from(flags).map(lambda f: [f])
    return st.lists(pair | flag, max_size=6).map(lambda parts: [x for part in parts for x in part])


# Command lines -----------------------------------------------------------------------------------

SAMPLE_OPTIONS = {
    "--steps": number_text, "--guidance": number_text, "--eta": number_text, "--seed": number_text,
    "--num-images": number_text, "--batch-size": number_text, "--height": number_text, "--width": number_text,
    "--scheduler": choice_text(list(SCHEDULERS)), "--dtype": choice_text(["auto", "fp32", "fp16", "bf16", "fp8"]),
    "--device": choice_text(["auto", "cpu", "cuda", "mps", "tpu"]), "--negative-prompt": text,
    "--lora": text, "--lora-scale": number_text, "--tokenizer": text, "--prompts-file": text, "--from-image": text,
    "--out": text, "--stepz": number_text,
}  # fmt: skip
SAMPLE_FLAGS = [
    "--grid",
    "--fast",
    "--low-memory",
    "--quiet",
    "--json",
    "--offline",
    "--allow-pickle",
    "--no-ema-weights",
]


@fuzz("sample")
@given(prompts=st.lists(text, max_size=2), extra=options(SAMPLE_OPTIONS, SAMPLE_FLAGS))
def test_sample_command_lines(work: Path, prompts: list[str], extra: list[str]) -> None:
    run(["sample", "--model", NO_MODEL, "--out", str(work / "out"), *extra, "--", *prompts], "sample")


TRAIN_OPTIONS = {
    **{f"--{k}": number_text for k in (
        "resolution", "batch-size", "grad-accum", "lr", "warmup-steps", "max-steps", "epochs", "seed", "ema-decay",
        "snr-gamma", "noise-offset", "caption-dropout", "lora-rank", "lora-alpha", "checkpoint-every",
        "keep-checkpoints", "validate-every", "kl-weight",
    )},
    "--component": choice_text(["unet", "vae"]), "--lr-scheduler": choice_text(["constant", "cosine", "linear"]),
    "--mixed-precision": choice_text(["no", "fp16", "bf16"]), "--prediction-type": choice_text(["epsilon", "v_prediction"]),
    "--resume": choice_text(["latest", "auto"]), "--caption-column": text, "--validation-prompt": text,
    "--num-processes": st.sampled_from(["0", "1", "-1", "x", "1.5", ""]), "--tokenizer": text,
}  # fmt: skip
TRAIN_FLAGS = [
    "--center-crop", "--random-crop", "--random-flip", "--gradient-checkpointing", "--ema", "--train-text-encoder",
    "--lora", "--cache", "--no-cache", "--skip-bad-images", "--allow-missing-captions", "--overwrite", "--quiet",
    "--json-events", "--offline", "--no-ema-weights",
]  # fmt: skip


@fuzz("train")
@given(extra=options(TRAIN_OPTIONS, TRAIN_FLAGS), steps=st.sampled_from([["--max-steps", "1"], ["--epochs", "1"], []]))
def test_train_command_lines(work: Path, extra: list[str], steps: list[str]) -> None:
    base = ["train", "--model", NO_MODEL, "--data", str(work / "data"), "--out", str(work / "train-out")]
    run([*base, *steps, *extra, "--dry-run"], "train")


MODELS = st.sampled_from([NO_MODEL, "./missing/model", "org/missing-model", "~/missing", "GARBAGE"])


@fuzz("info")
@given(
    model=MODELS,
    extra=options({"--height": number_text, "--width": number_text, "--tokenizer": text}, ["--json", "--offline", "--allow-pickle", "--no-ema-weights"]),
)  # fmt: skip
def test_info_command_lines(work: Path, model: str, extra: list[str]) -> None:
    model = str(work / "garbage.safetensors") if model == "GARBAGE" else model
    run(["info", model, *extra], "info")


@fuzz("export")
@given(
    source=MODELS,
    extra=options(
        {
            "--format": choice_text(["single-file", "diffusers", "kohya", "zip"]),
            "--dtype": choice_text(["fp32", "fp16", "bf16", "auto"]),
            "--tokenizer": text,
        },
        ["--force", "--offline", "--allow-pickle", "--no-ema-weights"],
    ),
)
def test_export_command_lines(work: Path, source: str, extra: list[str]) -> None:
    source = str(work / "garbage.safetensors") if source == "GARBAGE" else source
    run(["export", source, str(work / "export-out.safetensors"), *extra], "export")


# TOML files --------------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON escapes are TOML basic-string escapes (a lone surrogate is not)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


toml_key = st.one_of(
    st.sampled_from(TRAIN_KEYS).map(lambda k: k.replace("_", "-")),
    st.sampled_from(TRAIN_KEYS),
    st.sampled_from(["validation-prompt", "learning_rate", "max--steps", "Max-Steps"]),
)
typed_for_key = {  # plausible values, so that many files get past the type checks to the ranges
    "max_steps": st.integers(-2, 5), "epochs": st.floats(-1, 3), "lr": st.floats(-1, 1), "batch_size": st.integers(-1, 4),
    "resolution": st.integers(-8, 80), "seed": st.integers(-1, 2**33), "resume": st.sampled_from(["latest", "auto", ""]),
    "lora": st.booleans(), "overwrite": st.booleans(), "validation_prompt": st.lists(text, max_size=2) | text,
    "component": st.sampled_from(["unet", "vae"]), "caption_dropout": st.floats(-0.5, 1.5),
}  # fmt: skip


def settings_dict(any_key: Any, typed: dict[str, Any], spell: Any = lambda k: k) -> Any:
    """A dict of settings: any key with any value, or a known key with a plausible value."""
    pair = st.one_of(
        st.tuples(any_key, json_value),
        st.sampled_from(sorted(typed)).flatmap(lambda k: typed[k].map(lambda v: (spell(k), v))),
    )
    return st.lists(pair, max_size=5).map(dict)


def toml_text(options: dict[str, Any]) -> bytes:
    lines = [f"{k if k.replace('-', '').replace('_', '').isalnum() else json.dumps(k)} = {toml_value(v)}\n"
             for k, v in options.items()]  # fmt: skip
    return "".join(lines).encode("utf-8", "surrogatepass")


toml_file = st.one_of(
    settings_dict(toml_key, typed_for_key, lambda k: k.replace("_", "-")).map(toml_text),
    st.binary(max_size=40),
    st.sampled_from([b"", b"\xef\xbb\xbfmax-steps = 1\n", b"[table]\nx = 1\n", b"max-steps = 1\nmax-steps = 2\n", b"max-steps = 1" + b"0" * 5000]),
)  # fmt: skip


@fuzz("toml")
@given(
    content=toml_file,
    cli=st.sampled_from([[], ["--data", "d", "--out", "o"], ["--data", "d", "--out", "o", "--max-steps", "1"]]),
)
def test_toml_files(work: Path, content: bytes, cli: list[str]) -> None:
    path = work / "train.toml"
    path.write_bytes(b'model = "never-loaded-model"\n' + content if content[:1] != b"\x00" else content)
    run(["train", "--config", str(path), *cli, "--dry-run"], "toml")


# Prompts files -----------------------------------------------------------------------------------

row_key = st.one_of(st.sampled_from(GENERATION_KEYS), text)
row_value_for_key = {
    "steps": st.integers(-1, 3), "num_images": st.integers(-1, 3), "seed": st.integers(-1, 2**33),
    "height": st.integers(-8, 80), "width": st.integers(-8, 80), "guidance": st.floats(-1, 10),
    "eta": st.floats(-1, 1), "scheduler": st.sampled_from(list(SCHEDULERS)),
}  # fmt: skip
json_row = settings_dict(row_key, row_value_for_key).flatmap(
    lambda d: st.one_of(st.just(d), text.map(lambda p: {"prompt": p, **d}))
)
plain_line = text.map(lambda t: t.replace("\n", " ").replace("\r", " "))


def encode(text_: str, how: str) -> bytes:
    if how == "utf-16":
        return text_.encode("utf-16", "surrogatepass")
    data = text_.encode("utf-8", "surrogatepass")
    return b"\xef\xbb\xbf" + data if how == "bom" else data


prompts_text = st.one_of(
    st.lists(st.one_of(plain_line, json_row.map(json.dumps)), max_size=4).map("\n".join),
    st.lists(st.one_of(json_row, json_value), max_size=4).map(json.dumps),
    st.lists(json_row, max_size=3).map(lambda rows: json.dumps(rows, indent=1)),
    json_row.map(lambda row: json.dumps(row, indent=2)),
    st.sampled_from(["", "\n\n", "# only a comment\n", "[", "[]", "{}", "[{}]", "[[{}]]", "{", "[cinematic] a cat", "null"]),
)  # fmt: skip
prompts_bytes = st.one_of(
    st.tuples(prompts_text, st.sampled_from(["utf-8", "utf-8", "bom", "utf-16"])).map(lambda t: encode(*t)),
    st.binary(max_size=40),
)


@fuzz("prompts")
@given(
    content=prompts_bytes,
    extra=st.just([]) | options({"--steps": number_text, "--seed": number_text, "--height": number_text}, ["--fast"]),
)
def test_prompts_files(work: Path, content: bytes, extra: list[str]) -> None:
    path = work / "prompts.jsonl"
    path.write_bytes(content)
    run(["sample", "--prompts-file", str(path), "--model", NO_MODEL, *extra], "prompts")


@fuzz("png")
@given(
    settings_=st.one_of(json_row, json_value),
    record=st.dictionaries(st.sampled_from(["model", "run", "lora"]), json_value, max_size=3),
)
def test_png_metadata(work: Path, settings_: Any, record: dict[str, Any]) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("sdlite", json.dumps({"settings": settings_, **record}))
    path = work / "source.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    run(["sample", "--from-image", str(path), "--model", NO_MODEL], "png")


# A few valid prompts files run the tiny model: odd prompts must make images too.

valid_row = st.fixed_dictionaries(
    {"prompt": text},
    optional={
        "steps": st.integers(1, 2), "seed": st.integers(0, 2**31), "num_images": st.integers(1, 2),
        "height": st.sampled_from([8, 16, 32]), "width": st.sampled_from([8, 16, 32]), "guidance": st.floats(0, 9),
        "scheduler": st.sampled_from(list(SCHEDULERS)), "negative_prompt": text,
    },
)  # fmt: skip


@settings(
    max_examples=max(1, round(3 * _SCALE)),
    deadline=None,
    database=None,
    derandomize=_TOTAL is None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.generate],
)  # about a second each: no shrinking
@given(rows=st.lists(valid_row, min_size=1, max_size=2), as_array=st.booleans())
def test_valid_prompts_files_run_the_tiny_model(tiny_model: Path, work: Path, rows: list[dict], as_array: bool) -> None:
    path = work / "valid.jsonl"
    text_ = json.dumps(rows) if as_array else "\n".join(json.dumps(r) for r in rows)
    path.write_bytes(text_.encode("utf-8", "surrogatepass"))
    result = run(["sample", "--prompts-file", str(path), "--model", str(tiny_model), "--steps", "1",
                  "--seed", "0", "--out", str(work / "images"), "--json", "--quiet"], "tiny model")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == sum(r.get("num_images", 1) for r in rows)
