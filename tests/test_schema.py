"""One typed schema per config: every source of a setting is checked the same way, and a bad value is
named where it came from (an option, a TOML key, a prompts-file line, a PNG), before any model loads.

Each test here is a bad input that once ended in a raw TypeError, a silent misreading or a wrong culprit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.errors import DataError, UsageError
from sdlite.models.config import ExportConfig, InfoConfig, InitConfig
from sdlite.quality.config import EvalConfig
from sdlite.sampling.config import Generation, LoraChoice, SampleConfig
from sdlite.sampling.prompts_file import prompt_rows
from sdlite.sampling.sources import SampleOverrides, build_sample_config
from sdlite.training.config import TrainConfig, build_train_config

runner = CliRunner()
NO_MODEL = "never-loaded-model"  # not a path and not a hub id: loading it would fail with exit 4


def prompt_file_rows(path: Path) -> list[dict[str, Any]]:
    """A prompts file's rows as the run takes them (without the `file:line` each error names)."""
    return [row for row, _ in prompt_rows(path)]


def invoke(*args: str) -> object:
    return runner.invoke(app, list(args))


def one_error_line(result: object, code: int) -> str:
    """The single `error:` line a failed command printed; checks the exit code and that nothing else was said."""
    assert result.exit_code == code, (result.exit_code, result.output)  # type: ignore[attr-defined]
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
    return lines[0]


def prompts(tmp_path: Path, text: str, name: str = "prompts.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def sample_file(path: Path, *extra: str) -> object:
    return invoke("sample", "--prompts-file", str(path), "--model", NO_MODEL, *extra)


# 1. Prompts-file lines: wrong types are data errors naming the file, the line and the key (exit 3).


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"prompt": "a", "steps": "ten"}', '"steps" must be a positive integer, got "ten"'),
        ('{"prompt": "a", "steps": true}', '"steps" must be a positive integer, got true'),
        ('{"prompt": "a", "steps": 2.5}', '"steps" must be an integer, got 2.5'),
        ('{"prompt": "a", "seed": 1.5}', '"seed" must be an integer, got 1.5'),
        ('{"prompt": "a", "num_images": "2"}', '"num_images" must be a positive integer, got "2"'),
        ('{"prompt": "a", "guidance": "x"}', '"guidance" must be a number, 0 or more, got "x"'),
        ('{"prompt": "a", "guidance": NaN}', '"guidance" must be a finite number, got nan'),
        ('{"prompt": "a", "eta": -1e999}', '"eta" must be a finite number, got -inf'),
        ('{"prompt": "a", "height": 100}', '"height" 100 is not a multiple of the VAE factor 8; nearest valid: 96'),
        ('{"prompt": "a", "width": 0}', '"width" must be at least 8, got 0'),
        ('{"prompt": "a", "seed": -1}', '"seed" must be between 0 and 4294967295, got -1'),
        ('{"prompt": "a", "seed": 4294967296}', '"seed" must be between 0 and 4294967295, got 4294967296'),
        ('{"prompt": "a", "scheduler": "karras"}', '"scheduler" must be one of ddim, ddpm'),
        ('{"prompt": "a", "scheduler": "euler", "eta": 0.5}', '"eta" has no effect with "scheduler" euler'),
        ('{"prompt": "a", "negative_prompt": ["x"]}', '"negative_prompt" must be text (a string), got ["x"]'),
        ('{"prompt": "a", "steps": {"n": 3}}', '"steps" must be a positive integer, got {"n": 3}'),
        ('{"prompt": "a", "steps": null}', '"steps" must be a positive integer, got null'),
        ('{"prompt": {"text": "a"}}', 'a JSON line needs a string "prompt", got {"text": "a"}'),
        ('{"prompt": "a", "steps": 3', "not valid JSON"),
        ('{"prompt": "a", "steps": ' + "9" * 5000 + "}", "not valid JSON"),
    ],
)
def test_bad_prompts_line_names_file_line_and_key(tmp_path: Path, line: str, expected: str) -> None:
    path = prompts(tmp_path, f"a plain prompt\n\n{line}\n")
    message = one_error_line(sample_file(path), 3)
    assert message.startswith(f"error: {path}:3: "), message
    assert expected in message


def test_bad_line_values_are_not_blamed_on_options(tmp_path: Path) -> None:
    for key, value in (("height", 100), ("seed", -5), ("steps", 0)):
        path = prompts(tmp_path, json.dumps({"prompt": "a", key: value}) + "\n")
        message = one_error_line(sample_file(path), 3)
        assert f"{path}:1: " in message and f'"{key}"' in message and f"--{key}" not in message


def test_steps_true_is_never_one_step() -> None:
    with pytest.raises(UsageError, match="--steps must be a positive integer, got true"):
        Generation("a", steps=True)
    with pytest.raises(UsageError, match="--num-images must be a positive integer, got false"):
        Generation("a", num_images=False)


def test_a_bad_line_is_reported_even_when_the_option_overrides_it(tmp_path: Path) -> None:
    path = prompts(tmp_path, '{"prompt": "a", "steps": "ten"}\n')
    assert '"steps" must be a positive integer' in one_error_line(sample_file(path, "--steps", "2"), 3)
    path = prompts(tmp_path, '{"prompt": "a", "height": 100}\n')
    assert f'{path}:1: "height" 100 is not a multiple' in one_error_line(sample_file(path, "--height", "64"), 3)


# 2. A JSON array of objects is a prompts file, never one literal prompt.


def test_json_array_file_is_read_as_prompts(tmp_path: Path) -> None:
    text = '[\n  {"prompt": "a red circle", "seed": 7, "steps": 3},\n  {"prompt": "a blue square"},\n  "a cat"\n]\n'
    path = prompts(tmp_path, text, "prompts.json")
    assert prompt_file_rows(path) == [
        {"prompt": "a red circle", "seed": 7, "steps": 3},
        {"prompt": "a blue square"},
        {"prompt": "a cat"},
    ]
    config = build_sample_config(SampleOverrides(model="m", prompts_file=path, settings={"seed": 1}), env={})
    assert [(g.prompt, g.seed, g.steps) for g in config.generations] == [
        ("a red circle", 7, 3),
        ("a blue square", 8, 50),
        ("a cat", 9, 50),
    ]


def test_json_array_errors_name_the_item_line(tmp_path: Path) -> None:
    path = prompts(tmp_path, '[\n {"prompt": "a"},\n {"prompt": "b", "steps": "ten"}\n]', "p.json")
    assert f'{path}:3: "steps" must be a positive integer, got "ten"' in one_error_line(sample_file(path), 3)
    path = prompts(tmp_path, '[{"prompt": "a"}, {"prompt": "b", "seed": 1.5}]', "one-line.json")
    assert f'{path}:1 (item 2): "seed" must be an integer, got 1.5' in one_error_line(sample_file(path), 3)
    path = prompts(tmp_path, '[{"prompt": "a"}, 5]', "numbers.json")
    assert 'an item must be an object with a "prompt"' in one_error_line(sample_file(path), 3)
    path = prompts(tmp_path, '[\n {"prompt": "a"},\n {"prompt": "b"\n', "cut.json")
    assert "not valid JSON" in one_error_line(sample_file(path), 3)
    path = prompts(tmp_path, "[]", "empty.json")
    assert "holds no prompts" in one_error_line(sample_file(path), 3)


def test_one_json_object_over_several_lines(tmp_path: Path) -> None:
    path = prompts(tmp_path, '{\n  "prompt": "a red circle",\n  "steps": 4\n}\n', "one.json")
    assert prompt_file_rows(path) == [{"prompt": "a red circle", "steps": 4}]


def test_bracketed_text_prompts_stay_plain_prompts(tmp_path: Path) -> None:
    path = prompts(tmp_path, "[cinematic] a cat\n[1, 2] a dog\n", "p.txt")
    assert [r["prompt"] for r in prompt_file_rows(path)] == ["[cinematic] a cat", "[1, 2] a dog"]


def test_encodings_bom_and_empty_files(tmp_path: Path) -> None:
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfa cat\n")
    assert prompt_file_rows(bom) == [{"prompt": "a cat"}]
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"a cat\nun caf\xe9\n")
    with pytest.raises(DataError, match=r"latin\.txt:2: not UTF-8 text \(byte 0xe9\)"):
        prompt_file_rows(latin)
    for content in (b"", b"\xef\xbb\xbf", b"\n\n# nothing\n"):
        (tmp_path / "empty.txt").write_bytes(content)
        with pytest.raises(DataError, match="holds no prompts"):
            prompt_file_rows(tmp_path / "empty.txt")
    assert "cannot read prompts file" in one_error_line(sample_file(tmp_path), 3)  # a folder


# 3. TOML files name the file and the key as written (exit 2).


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("max-steps = 10.7", "train.toml: max-steps must be an integer, got 10.7"),
        ('max-steps = "ten"', 'train.toml: max-steps must be a positive integer, got "ten"'),
        ("max_steps = 0", "train.toml: max_steps must be at least 1, got 0"),
        ("max-steps = true", "train.toml: max-steps must be a positive integer, got true"),
        ("max-steps = 1\nlr = nan", "train.toml: lr must be a finite number, got nan"),
        ("max-steps = 1\nlr = -1", "train.toml: lr must be positive, got -1"),
        ("max-steps = 1\nlora = 1", "train.toml: lora must be true or false, got 1"),
        ("max-steps = 1\nresolution = 60", "train.toml: resolution 60 is not a multiple of the VAE factor 8"),
        (
            "max-steps = 1\nvalidation-prompt = [1]",
            "train.toml: validation-prompt item 1 must be text (a string), got 1",
        ),
        ("max-steps = 1\nlr-scheduler = 'magic'", "train.toml: lr-scheduler must be one of constant"),
        ("max-steps = 1\nbatch-size = 2024-01-01", "train.toml: batch-size must be a positive integer, got"),
        (
            "max-steps = 1\n[seed]\nvalue = 1",
            'train.toml: seed must be an integer between 0 and 4294967295, got {"value": 1}',
        ),
        ("max-steps = 1\nepochs = 2", "train.toml: give exactly one of max-steps or epochs"),
        ("max-steps = 1\nmax_steps = 2", "train.toml: max-steps and max_steps are the same option"),
        ("max-steps = 1\nlearning_rate = 1", "train.toml: unknown options learning_rate"),
        ("max-steps = 1\ncaption-column = 5", "train.toml: caption-column must be text (a string), got 5"),
        ("max-steps = 1 1", "is not valid TOML"),
        ("max-steps = " + "9" * 5000, "is not valid TOML"),
    ],
)
def test_bad_toml_names_file_and_key(tmp_path: Path, line: str, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("train.toml").write_text(f'model = "{NO_MODEL}"\ndata = "d"\nout = "o"\n{line}\n')
    message = one_error_line(invoke("train", "--config", "train.toml"), 2)
    assert expected in message


def test_command_line_is_checked_before_the_toml_and_wins(tmp_path: Path) -> None:
    toml = tmp_path / "train.toml"
    toml.write_text('max-steps = 5\nbatch-size = 4\nlr = 0.001\nvalidation-prompt = "a red circle"\n')
    config = build_train_config({"model": "m", "data": "d", "out": "o", "max_steps": 2}, toml, env={})
    assert (config.max_steps, config.batch_size, config.lr, config.validation_prompts) == (
        2,
        4,
        0.001,
        ("a red circle",),
    )
    with pytest.raises(UsageError, match=r"^--max-steps must be at least 1, got 0$"):
        build_train_config({"model": "m", "data": "d", "out": "o", "max_steps": 0}, toml, env={})


# 4. Command-line options: the right option is named, every message is one line, exit 2.


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["sample", "a", "--steps", "ten"], '--steps must be a positive integer, got "ten"'),
        (["sample", "a", "--seed", "1.5"], '--seed must be an integer between 0 and 4294967295, got "1.5"'),
        (["sample", "a", "--guidance", "x"], '--guidance must be a number, 0 or more, got "x"'),
        (["sample", "a", "--guidance", "nan"], "--guidance must be a finite number, got nan"),
        (["sample", "a", "--guidance", "inf"], "--guidance must be a finite number, got inf"),
        (["sample", "a", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["sample", "a", "--batch-size", "-3"], "--batch-size must be at least 1, got -3"),
        (["sample", "a", "--num-images", "0"], "--num-images must be at least 1, got 0"),
        (["sample", "a", "--seed", "4294967295", "--num-images", "2"], "runs past the largest seed 4294967295"),
        (["sample", "a", "--lora", "x", "--lora-scale", "nan"], "--lora-scale must be a finite number, got nan"),
        (["sample", "a", "--lora", "x", "--lora-scale", "big"], '--lora-scale must be a number, got "big"'),
        (["sample", "a", "--dtype", "fp8"], '--dtype must be one of auto, fp32, fp16, bf16; got "fp8"'),
        (["sample", "a", "--stepz", "3"], "No such option: --stepz"),
        (["sample", "a", "--steps"], "Option '--steps' requires an argument"),
        (["sample", "a", "--grid=yes"], "--grid"),
        (["train", "--data", "d", "--out", "o", "--max-steps", "1", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["train", "--data", "d", "--out", "o", "--max-steps", "1", "--resolution", "60"], "--resolution 60 is not a multiple of the VAE factor 8; nearest valid: 56 or 64"),
        (["train", "--data", "d", "--out", "o", "--max-steps", "1", "--resolution", "4"], "--resolution must be at least 8, got 4"),
        (["train", "--data", "d", "--out", "o", "--max-steps", "ten"], '--max-steps must be a positive integer, got "ten"'),
        (["train", "--data", "d", "--out", "o", "--epochs", "0.5"], "--epochs must be at least 1, got 0.5"),
        (["train", "--data", "d", "--out", "o", "--max-steps", "1", "--lr", "inf"], "--lr must be a finite number, got inf"),
        (["train", "--data", "d", "--out", "o", "--max-steps", "1", "--caption-dropout", "1"], "--caption-dropout must be in [0, 1), got 1.0"),
        (["train", "--data", "d", "--out", "o", "--max-steps", "1", "--resume", ""], "--resume must not be empty"),
        (["train", "--data", "d", "--out", "o", "--max-steps", "1", "--num-processes", "0"], "--num-processes must be at least 1, got 0"),
        (["train", "--data", "d", "--out", "o", "--max-steps", "1", "--resume", "auto", "--overwrite"], "--overwrite and --resume contradict"),
        (["info", NO_MODEL, "--height", "12"], "--height 12 is not a multiple of the VAE factor 8"),
        (["info", NO_MODEL, "--width", "x"], '--width must be an integer, at least 8, got "x"'),
        (["export", NO_MODEL, "out.safetensors", "--format", "zip"], '--format must be one of single-file, diffusers, kohya; got "zip"'),
        (["export", NO_MODEL, "out.safetensors", "--dtype", "fp8"], '--dtype must be one of fp32, fp16, bf16; got "fp8"'),
        (["init", "m", "--seed", "-1"], "--seed must be between 0 and 4294967295, got -1"),
        (["eval", "shapes", "--model", NO_MODEL, "--n", "1"], "--n must be at least 2, got 1"),
    ],
)  # fmt: skip
def test_bad_options_exit_2_with_one_line_naming_the_option(args: list[str], expected: str) -> None:
    if args[0] in ("sample", "train"):
        args = [args[0], "--model", NO_MODEL, *args[1:]]
    assert expected in one_error_line(invoke(*args), 2)


def test_resolution_is_never_blamed_on_height() -> None:
    with pytest.raises(UsageError) as caught:
        TrainConfig(model="m", data="d", out="o", max_steps=1, resolution=60)
    assert str(caught.value).startswith("--resolution 60") and "--height" not in str(caught.value)


# 5. --from-image metadata and a model's own sdlite.json are checked too.


def fake_png(path: Path, settings: dict[str, object], **record: object) -> Path:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("sdlite", json.dumps({"settings": settings, **record}))
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize(
    ("settings", "record", "expected"),
    [
        ({"prompt": "a", "steps": "ten", "seed": 1}, {}, '"steps" must be a positive integer, got "ten"'),
        ({"prompt": "a", "seed": 1.5}, {}, '"seed" must be an integer, got 1.5'),
        ({"prompt": 5, "seed": 1}, {}, '"prompt" must be text (a string), got 5'),
        ({"prompt": "a", "seed": 1}, {"run": {"batch_seeds": ["x"]}}, 'field "batch_seeds" must be a list'),
        ({"prompt": "a", "seed": 1}, {"run": {"mode": "turbo"}}, 'field "mode" must be one of default, fast'),
        ({"prompt": "a", "seed": 1}, {"lora": [{"source": "l", "scale": True}]}, '"scale" must be a number, got true'),
    ],
)
def test_bad_png_metadata_is_a_data_error_naming_the_image(
    tmp_path: Path, settings: dict[str, object], record: dict[str, object], expected: str
) -> None:
    png = fake_png(tmp_path / "img.png", settings, **record)
    message = one_error_line(invoke("sample", "--from-image", str(png), "--model", NO_MODEL), 3)
    assert message.startswith(f"error: {png}: ") and expected in message


def test_model_recommended_settings_are_checked(tmp_path: Path) -> None:
    (tmp_path / "sdlite.json").write_text(json.dumps({"defaults": {"steps": "ten"}}))
    message = one_error_line(invoke("sample", "a", "--model", str(tmp_path)), 2)
    assert f'{tmp_path / "sdlite.json"}: "steps" must be a positive integer, got "ten"' in message
    (tmp_path / "sdlite.json").write_text(json.dumps({"defaults": [1]}))
    assert '"defaults" must be a JSON object' in one_error_line(invoke("sample", "a", "--model", str(tmp_path)), 2)


# 6. The Python API: configs constructed directly are checked the same way (UsageError, option names).


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: Generation("a", steps="ten"), '--steps must be a positive integer, got "ten"'),  # type: ignore[arg-type]
        (lambda: Generation("a", seed=1.5), "--seed must be an integer, got 1.5"),  # type: ignore[arg-type]
        (lambda: Generation("a", guidance=float("nan")), "--guidance must be a finite number, got nan"),
        (lambda: Generation(5), "PROMPT must be text (a string), got 5"),  # type: ignore[arg-type]
        (lambda: SampleConfig(model="m", generations=(Generation("a"),), batch_size=0), "--batch-size must be at least 1, got 0"),
        (lambda: SampleConfig(model="m", generations=("a",)), "PROMPT item 1 must be a Generation"),  # type: ignore[arg-type]
        (lambda: SampleConfig(model="m", generations=()), "no prompt given"),
        (lambda: LoraChoice("l", scale=float("inf")), "--lora-scale must be a finite number, got inf"),
        (lambda: TrainConfig(model="m", data="d", out="o", max_steps=10.7), "--max-steps must be an integer, got 10.7"),  # type: ignore[arg-type]
        (lambda: TrainConfig(model="m", data="d", out="o", max_steps=1, batch_size=0), "--batch-size must be at least 1, got 0"),
        (lambda: TrainConfig(model="m", data="d", out="o", max_steps=1, lora=1), "--lora must be true or false, got 1"),  # type: ignore[arg-type]
        (lambda: TrainConfig(model="m", data=5, out="o", max_steps=1), "--data must be a path, got 5"),  # type: ignore[arg-type]
        (lambda: InfoConfig(model="m", height=True), "--height must be an integer, at least 8, got true"),  # type: ignore[arg-type]
        (lambda: ExportConfig(source="m", out="o", format="zip"), "--format must be one of"),
        (lambda: InitConfig(out="o", overwrite="yes"), '--force must be true or false, got "yes"'),  # type: ignore[arg-type]
        (lambda: EvalConfig(model="m", steps=0), "--steps must be at least 1, got 0"),
        (lambda: EvalConfig(model="m", n=3), "--n must be even (half seen triples, half held out), got 3"),
    ],
)  # fmt: skip
def test_python_api_is_checked_like_the_command_line(make: object, expected: str) -> None:
    with pytest.raises(UsageError) as caught:
        make()  # type: ignore[operator]
    assert expected in str(caught.value)


def test_python_api_still_takes_paths_and_lists() -> None:
    config = SampleConfig(model=Path("m"), generations=[Generation("a", guidance=5)], out="o", loras=[Path("l")])  # type: ignore[arg-type]
    assert config.model == "m" and config.out == Path("o") and config.generations == (Generation("a", guidance=5),)
    assert config.loras == (LoraChoice("l", 1.0),) and config.generations[0].guidance == 5
    train = TrainConfig(model="m", data="d", out="o", epochs=2, validation_prompts=["x"])  # type: ignore[arg-type]
    assert train.data == Path("d") and train.validation_prompts == ("x",)


# 7. Training: --overwrite and --resume auto are part of the schema, not of the checkpoint fingerprint.


def test_overwrite_and_resume_auto() -> None:
    base = TrainConfig(model="m", data="d", out="o", max_steps=1)
    assert base.overwrite is False
    assert TrainConfig(model="m", data="d", out="o", max_steps=1, resume="auto").resume == "auto"
    fresh = TrainConfig(model="m", data="d", out="o", max_steps=1, overwrite=True)
    assert "overwrite" not in base.fingerprint() and "resume" not in base.fingerprint()
    assert fresh.fingerprint() == base.fingerprint()
    config = build_train_config({"model": "m", "data": "d", "out": "o", "max_steps": 1, "overwrite": True}, env={})
    assert config.overwrite is True
    with pytest.raises(UsageError, match="--overwrite and --resume contradict"):
        TrainConfig(model="m", data="d", out="o", max_steps=1, overwrite=True, resume="latest")
    help_text = " ".join(invoke("train", "--help").stdout.split())  # type: ignore[attr-defined]
    assert "--overwrite" in help_text and "auto (resume when a checkpoint exists" in help_text


# 8. A mistyped local model path is "no such folder or file", not an uncached hub id.


@pytest.mark.parametrize("typo", ["./modls/tiny", "~/no-such-sdlite-model", "models/tny/unet", "model.safetensors"])
def test_mistyped_local_model_path(typo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    message = one_error_line(invoke("sample", "a", "--model", typo, "--offline"), 4)
    assert message == f"error: no such folder or file: {typo}"


def test_a_typo_beside_a_local_folder_is_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    message = one_error_line(invoke("info", "models/tny", "--offline"), 4)
    assert message == "error: no such folder or file: models/tny"
    message = one_error_line(invoke("info", "sdlite-test/absent", "--offline"), 4)
    assert "hub model sdlite-test/absent is not in the local cache" in message  # a hub id stays one


def test_a_fifo_is_not_a_model(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "pipe")
    message = one_error_line(invoke("info", str(tmp_path / "pipe")), 4)
    assert "no such folder or file" in message and "neither a folder nor a file" in message


# 9. Usage errors are instant: no heavy library is imported to report them.


def test_schema_errors_do_not_import_torch(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "a", "steps": "ten"}\n')
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from sdlite.cli.app import app\n"
        "r = CliRunner()\n"
        f"assert r.invoke(app, ['sample', '--prompts-file', {str(bad)!r}, '--model', 'm']).exit_code == 3\n"
        "assert r.invoke(app, ['train', '--model', 'm', '--data', 'd', '--out', 'o', '--max-steps', 'x']).exit_code == 2\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
