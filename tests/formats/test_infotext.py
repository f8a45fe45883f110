"""The A1111 `parameters` chunk reads back, field by field, through AUTOMATIC1111's own infotext parser rules."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.formats.png_record import a1111_parameters, library_versions
from sdlite.schedulers import SCHEDULERS

# --- A test-side re-implementation of A1111's infotext parser --------------------------------------
# Source: AUTOMATIC1111/stable-diffusion-webui, modules/infotext_utils.py, `parse_generation_parameters`,
# `unquote`, `re_param_code`, `re_imagesize`, as in v1.10 (read at commit c19d0443, which has the v1.9+
# `Hires schedule type` default). Only the rules that touch the fields sdlite writes are reproduced:
# - the text is stripped and split on "\n"; the last line holds the key: value pairs only when
#   `re_param` finds at least 3 pairs in it, else it is one more prompt line;
# - every other line is stripped; lines up to one starting "Negative prompt:" are the prompt, that
#   line (minus the 16-character prefix, stripped) and those after it the negative prompt, joined by "\n";
# - each pair's value is JSON-decoded when it starts and ends with `"` (left as is if that fails);
#   a value like "512x512" is split into KEY-1 and KEY-2; a pair whose value is empty is dropped;
# - absent `RNG` reads as "GPU", absent `Schedule type` as "Automatic".
# A1111 then runs `infotext_versions.backcompat`, which only acts when `Version` parses as a version
# number (checked below that sdlite's does not).
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
A1111_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")


def a1111_unquote(text: str) -> str:
    if not text or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def a1111_parse(text: str) -> dict[str, str]:
    """What A1111's `parse_generation_parameters` returns for the fields sdlite writes."""
    *lines, last = text.strip().split("\n")
    if len(A1111_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for raw in lines:
        line = raw.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    parsed: dict[str, str] = {}
    for key, value in A1111_PARAM.findall(last):
        if not value:  # A1111's `v[0]` raises on an empty value; it prints an error and skips the pair
            continue
        if value[0] == '"' and value[-1] == '"':
            value = a1111_unquote(value)
        size = A1111_IMAGESIZE.match(value)
        if size:
            parsed[f"{key}-1"], parsed[f"{key}-2"] = size.group(1), size.group(2)
        else:
            parsed[key] = value
    parsed["Prompt"] = "\n".join(prompt)
    parsed["Negative prompt"] = "\n".join(negative)
    parsed.setdefault("RNG", "GPU")
    parsed.setdefault("Schedule type", "Automatic")
    return parsed


# --- What A1111 must read for each sdlite scheduler -------------------------------------------------
# (Sampler, Schedule type) as A1111 names them; None: no Schedule type written (A1111 timestep samplers,
# and DDPM, which A1111 does not have). Every scheduler sdlite offers must be listed here.
A1111_NAMES: dict[str, tuple[str, str | None]] = {
    "ddim": ("DDIM", None),
    "ddpm": ("DDPM", None),
    "pndm": ("PLMS", None),
    "euler": ("Euler", "Uniform"),
    "euler-a": ("Euler a", "Uniform"),
    "dpm++2m": ("DPM++ 2M", "Uniform"),
    "dpm++2m-karras": ("DPM++ 2M", "Karras"),
    "unipc": ("UniPC", None),
    "lms": ("LMS", "Uniform"),
}

PROMPT = "a red circle, on blue: (bright)"
NEGATIVE = "blurry, low quality: 2"
MODEL_NAME = "tiny, v2"
MODEL_HASH = "0123456789abcdef" * 4


def settings_for(scheduler: str, eta: float = 0.0, **changes: Any) -> dict[str, Any]:
    base = {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "steps": 7,
        "guidance": 6.5,
        "scheduler": scheduler,
        "eta": eta,
        "seed": 1234,
        "height": 48,
        "width": 32,
    }
    return {**base, **changes}


def expected_fields(settings: dict[str, Any], model_name: str = MODEL_NAME) -> dict[str, str]:
    sampler, schedule_type = A1111_NAMES[settings["scheduler"]]
    fields = {
        "Prompt": settings["prompt"],
        "Negative prompt": settings["negative_prompt"],
        "Steps": str(settings["steps"]),
        "Sampler": sampler,
        "Schedule type": schedule_type or "Automatic",
        "CFG scale": f"{settings['guidance']:g}",
        "Seed": str(settings["seed"]),
        "Size-1": str(settings["width"]),
        "Size-2": str(settings["height"]),
        "Model hash": MODEL_HASH[:10],
        "Model": model_name,
        "RNG": "CPU",
        "Version": f"sdlite {library_versions()['sdlite']}",
    }
    if settings["eta"]:
        fields["Eta DDIM"] = f"{settings['eta']:g}"
    return fields


def test_every_scheduler_is_named() -> None:
    assert set(A1111_NAMES) == set(SCHEDULERS)


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_every_field_reads_back_in_a1111(scheduler: str) -> None:
    settings = settings_for(scheduler)
    text = a1111_parameters(settings, SCHEDULERS[scheduler], MODEL_HASH, MODEL_NAME)
    assert a1111_parse(text) == expected_fields(settings)
    written_keys = {k for k, _ in A1111_PARAM.findall(text.split("\n")[-1])}
    assert ("Schedule type" in written_keys) == (A1111_NAMES[scheduler][1] is not None)
    assert "Eta" not in written_keys and "Eta DDIM" not in written_keys


def test_ddim_eta_is_written_as_eta_ddim() -> None:
    settings = settings_for("ddim", eta=0.5)
    text = a1111_parameters(settings, SCHEDULERS["ddim"], MODEL_HASH, MODEL_NAME)
    parsed = a1111_parse(text)
    assert parsed == expected_fields(settings)
    assert parsed["Eta DDIM"] == "0.5" and "Eta" not in parsed


def test_pairs_come_in_a1111_order() -> None:
    """A1111's `create_infotext` order: ..., Model, RNG, then sampler extras (Eta DDIM), Version last."""
    text = a1111_parameters(settings_for("dpm++2m-karras"), SCHEDULERS["dpm++2m-karras"], MODEL_HASH, MODEL_NAME)
    keys = [k for k, _ in A1111_PARAM.findall(text.split("\n")[-1])]
    assert keys == [
        "Steps",
        "Sampler",
        "Schedule type",
        "CFG scale",
        "Seed",
        "Size",
        "Model hash",
        "Model",
        "RNG",
        "Version",
    ]
    text = a1111_parameters(settings_for("ddim", eta=1.0), SCHEDULERS["ddim"], MODEL_HASH, MODEL_NAME)
    keys = [k for k, _ in A1111_PARAM.findall(text.split("\n")[-1])]
    assert keys[-3:] == ["RNG", "Eta DDIM", "Version"]


def test_example_text() -> None:
    text = a1111_parameters(settings_for("dpm++2m-karras"), SCHEDULERS["dpm++2m-karras"], MODEL_HASH, MODEL_NAME)
    version = library_versions()["sdlite"]
    assert text == (
        "a red circle, on blue: (bright)\n"
        "Negative prompt: blurry, low quality: 2\n"
        "Steps: 7, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 32x48, "
        f'Model hash: 0123456789, Model: "tiny, v2", RNG: CPU, Version: sdlite {version}'
    )


@pytest.mark.parametrize(
    "model_name", ["tiny", "tiny, v2", "a:b", "two\nlines", '"quoted"', 'say "hi", then', "back\\slash, x", "ünï, cöde"]
)
def test_model_names_read_back(model_name: str) -> None:
    settings = settings_for("euler")
    text = a1111_parameters(settings, SCHEDULERS["euler"], MODEL_HASH, model_name)
    assert a1111_parse(text) == expected_fields(settings, model_name)


def test_no_negative_prompt_and_multiline_prompt() -> None:
    settings = settings_for("ddim", prompt="line one, a\nline two: b", negative_prompt="")
    text = a1111_parameters(settings, SCHEDULERS["ddim"], MODEL_HASH, MODEL_NAME)
    assert "Negative prompt" not in text
    assert a1111_parse(text) == expected_fields(settings)


def test_version_triggers_no_a1111_backcompat() -> None:
    """A1111's `infotext_versions.parse_version` keeps `X-Y` of an `X-Y-...` version, then `packaging`
    parses it; a result of None turns its old-version compatibility switches off."""
    from packaging.version import InvalidVersion, Version

    value = expected_fields(settings_for("ddim"))["Version"]
    match = re.match(r"([^-]+-[^-]+)-.*", value)
    with pytest.raises(InvalidVersion):
        Version(match.group(1) if match else value)


def test_cli_png_reads_back_in_a1111(tiny_model: Path, tmp_path: Path) -> None:
    model = tmp_path / MODEL_NAME
    shutil.copytree(tiny_model, model)
    result = CliRunner().invoke(
        app,
        [
            "sample",
            PROMPT,
            "--negative-prompt",
            NEGATIVE,
            "--model",
            str(model),
            "--scheduler",
            "ddim",
            "--eta",
            "0.5",
            "--steps",
            "2",
            "--guidance",
            "6.5",
            "--seed",
            "1234",
            "--height",
            "48",
            "--width",
            "32",
            "--out",
            str(tmp_path / "out"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.splitlines()[0])
    with Image.open(row["path"]) as image:
        text = image.text["parameters"]
    expected = expected_fields(settings_for("ddim", eta=0.5, steps=2))
    expected["Model hash"] = row["model_hash"][:10]
    assert a1111_parse(text) == expected


# --- Reading A1111's PNGs back (`sample --from-image` on a PNG with only a `parameters` chunk) -------

runner = CliRunner()


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_an_infotext_only_png_replays_sdlite_settings_for_every_scheduler(
    scheduler: str, tiny_model: Path, tmp_path: Path
) -> None:
    """Strip sdlite's own chunk: the A1111 text alone carries prompt, seed, steps, CFG, size and sampler."""
    import numpy as np
    from PIL.PngImagePlugin import PngInfo

    eta = ["--eta", "0.5"] if scheduler == "ddim" else []
    args = ["sample", "a red circle, on blue: (bright)", "--negative-prompt", "blurry, dark", "--model",
            str(tiny_model), "--seed", "5", "--steps", "3", "--guidance", "4.5", "--scheduler", scheduler,
            "--height", "32", "--width", "48", "--json", "--out", str(tmp_path / "a"), *eta]  # fmt: skip
    made = runner.invoke(app, args)
    assert made.exit_code == 0, made.output
    source = Path(json.loads(made.stdout)["path"])
    with Image.open(source) as image:
        info = PngInfo()
        info.add_text("parameters", image.text["parameters"])
        image.save(tmp_path / "a1111.png", pnginfo=info)
    again = runner.invoke(app, ["sample", "--from-image", str(tmp_path / "a1111.png"), "--model", str(tiny_model),
                                "--json", "--out", str(tmp_path / "b")])  # fmt: skip
    assert again.exit_code == 0, again.output
    warnings = [line for line in again.stderr.splitlines() if line.startswith("warning:")]  # beside progress lines
    assert warnings == []  # every key is replayed: nothing to warn about
    result = json.loads(again.stdout)
    assert (result["prompt"], result["negative_prompt"], result["scheduler"]) == (
        "a red circle, on blue: (bright)", "blurry, dark", scheduler)  # fmt: skip
    assert (result["seed"], result["steps"], result["guidance"], result["width"], result["height"]) == (
        5,
        3,
        4.5,
        48,
        32,
    )
    assert result["eta"] == (0.5 if eta else 0.0)
    with Image.open(source) as a, Image.open(result["path"]) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))  # same model and settings: the same pixels


def test_a_real_a1111_infotext_is_read_with_notes() -> None:
    from sdlite.formats.infotext import generation_settings

    text = (
        "masterpiece, a castle on a hill, <lora:castles:0.8>\n"
        "Negative prompt: lowres, bad anatomy\n"
        "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234567890, Size: 512x768, "
        'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Lora hashes: "castles: 0123abcd", '
        "Version: v1.10.1"
    )
    settings, model, notes = generation_settings(text)
    assert settings == {"prompt": "masterpiece, a castle on a hill, <lora:castles:0.8>",
                        "negative_prompt": "lowres, bad anatomy", "steps": 28, "guidance": 7.0, "seed": 1234567890,
                        "width": 512, "height": 768, "scheduler": "dpm++2m-karras", "clip_skip": 2}  # fmt: skip
    assert model == {"name": "v1-5-pruned-emaonly", "hash": "6ce0161689"}
    assert "not replayed: Lora hashes" in notes and any("--lora" in n for n in notes)
    # A1111's "Automatic" schedule: Karras for DPM++ 2M, the model's own spacing for Euler a.
    assert generation_settings("x\nSteps: 20, Sampler: DPM++ 2M, Seed: 1")[0]["scheduler"] == "dpm++2m-karras"
    assert generation_settings("x\nSteps: 20, Sampler: Euler a, Seed: 1")[0]["scheduler"] == "euler-a"
    unknown = generation_settings("x\nSteps: 20, Sampler: DPM++ SDE, Schedule type: Karras, Seed: 1")
    assert "scheduler" not in unknown[0] and "'DPM++ SDE Karras' has no sdlite equivalent" in unknown[2][0]
