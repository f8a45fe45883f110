"""Untrusted files: a pickle that would run code is refused everywhere, by content, before it loads;
damaged safetensors fail fast, with one line and little memory."""

from __future__ import annotations

import json
import shutil
import struct
import time
import tracemalloc
from pathlib import Path

import pytest
from faults import write_malicious_pickle
from typer.testing import CliRunner

from sdlite.cli.app import app
from sdlite.errors import ModelError
from sdlite.models.loading import file_format, resolve_model
from sdlite.training import checkpoints

runner = CliRunner()


@pytest.fixture
def model_copy(tiny_model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


def command_args(command: str, model: Path, data: Path, out: Path) -> list[str]:
    if command == "info":
        return ["info", str(model)]
    if command == "train":
        return ["train", "--model", str(model), "--data", str(data), "--out", str(out), "--max-steps", "1"]
    return ["sample", "a red circle", "--model", str(model), "--steps", "1", "--out", str(out)]


def assert_refused(result: object, sentinel: Path, fragment: str = "pickle") -> None:
    assert result.exit_code == 4, result.stderr  # type: ignore[attr-defined]
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    errors = [line for line in lines if line.startswith("error: ")]  # train reports its plan first
    assert errors == lines[-1:] and fragment in errors[0] and "Traceback" not in result.stderr  # type: ignore[attr-defined]
    assert not sentinel.exists(), "the pickle's code ran"


@pytest.mark.parametrize("command", ["sample", "train", "info"])
@pytest.mark.parametrize("name", ["model.ckpt", "model.bin", "model.pt", "innocent.safetensors", "noext"])
def test_a_crafted_checkpoint_is_refused_by_every_command(
    command: str, name: str, shapes: Path, tmp_path: Path
) -> None:
    sentinel = tmp_path / "pwned"
    path = write_malicious_pickle(tmp_path / name, sentinel)
    result = runner.invoke(app, command_args(command, path, shapes, tmp_path / "out"))
    assert_refused(result, sentinel)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["sample", "train", "info"])
def test_pickle_weights_inside_a_model_folder_are_refused(
    command: str, model_copy: Path, shapes: Path, tmp_path: Path
) -> None:
    sentinel = tmp_path / "pwned"
    (model_copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    write_malicious_pickle(model_copy / "unet" / "diffusion_pytorch_model.bin", sentinel)
    assert_refused(runner.invoke(app, command_args(command, model_copy, shapes, tmp_path / "out")), sentinel)


def test_a_pickle_renamed_safetensors_is_refused_by_content(model_copy: Path, tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    write_malicious_pickle(model_copy / "vae" / "diffusion_pytorch_model.safetensors", sentinel)
    assert file_format(model_copy / "vae" / "diffusion_pytorch_model.safetensors") == "pickle"
    with pytest.raises(ModelError, match=r"named \.safetensors but holds a pickle"):
        resolve_model(str(model_copy), allow_pickle=True)  # not even the opt-in loads a disguised pickle
    assert not sentinel.exists()


def test_a_torch_zip_checkpoint_is_recognised_as_pickle(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "weights.safetensors"
    torch.save({"w": torch.zeros(2)}, path)
    assert file_format(path) == "pickle"


@pytest.mark.parametrize("where", ["unet/diffusion_pytorch_model.safetensors", "training/optimizer.safetensors",
                                   "unet/diffusion_pytorch_model.bin"])  # fmt: skip
def test_resume_refuses_a_forged_checkpoint_holding_a_pickle(
    tiny_model: Path, shapes: Path, tmp_path: Path, where: str
) -> None:
    """Whoever can write a checkpoint folder can also write a matching manifest: the content check,
    not the hashes, is what keeps a pickle out."""
    out = tmp_path / "out"
    args = ["train", "--model", str(tiny_model), "--data", str(shapes), "--out", str(out), "--batch-size", "2",
            "--checkpoint-every", "1"]  # fmt: skip
    assert runner.invoke(app, [*args, "--max-steps", "2"]).exit_code == 0
    folder = checkpoints.checkpoint_dir(out, 1)
    sentinel = tmp_path / "pwned"
    write_malicious_pickle(folder / where, sentinel)
    (folder / checkpoints.MANIFEST).unlink()
    checkpoints.write_manifest(folder, 1, json.loads((out / "sdlite-train.json").read_text())["config"])
    result = runner.invoke(app, [*args, "--max-steps", "3", "--resume", str(folder)])
    assert_refused(result, sentinel, "never resumes from pickles")


def truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def huge_tensor_claim(path: Path) -> None:
    """A valid header that promises a 4 TiB tensor, followed by 16 bytes."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 2**42]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))


def huge_header_claim(path: Path) -> None:
    """A header-length field of 2**60 bytes: reading it as told would exhaust memory."""
    path.write_bytes(struct.pack("<Q", 2**60) + b'{"w": {}}' + bytes(64))


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [(truncated, "is truncated"), (huge_tensor_claim, "is truncated"), (huge_header_claim, "corrupt or truncated")],
    ids=["truncated", "huge-tensor", "huge-header"],
)
def test_damaged_safetensors_fail_fast_in_one_line(model_copy: Path, damage: object, fragment: str) -> None:
    damage(model_copy / "unet" / "diffusion_pytorch_model.safetensors")  # type: ignore[operator]
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(ModelError, match=fragment):
        resolve_model(str(model_copy))
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 16 * 2**20, (elapsed, peak)
    for command in (["info", str(model_copy)], ["sample", "a", "--model", str(model_copy), "--steps", "1"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 4 and fragment in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
