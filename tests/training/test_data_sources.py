"""Training on the data people have: Parquet and Arrow datasets, DreamBooth folders, tag captions, trackers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from sdlite.formats.png_record import read_record
from sdlite.testing import make_shapes_dataset
from sdlite.training.config import TrainConfig
from sdlite.training.unet import train

# Module-scoped fixtures below are made once: `make test` keeps this file on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("data_sources")

UNET = Path("unet") / "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n=6)


def run(model: Path, data: Path, out: Path, **settings: Any) -> tuple[Any, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    options = {"max_steps": 3, "batch_size": 2, "lr": 1e-3, **settings}
    result = train(TrainConfig(model=str(model), data=data, out=out, **options), on_event=events.append)
    return result, events


def as_tables(folder: Path, root: Path) -> tuple[Path, Path]:
    """The same images and captions as a Parquet file (HF Image struct) and a `datasets` save_to_disk folder."""
    import datasets

    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    data = {"image": [str(folder / r["file_name"]) for r in rows], "text": [r["text"] for r in rows]}
    dataset = datasets.Dataset.from_dict(data).cast_column("image", datasets.Image())
    dataset = dataset.map(lambda row: row)  # embed the image bytes, as published datasets hold them
    root.mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(str(root / "train.parquet"))
    dataset.save_to_disk(str(root / "saved"))
    return root / "train.parquet", root / "saved"


def test_parquet_and_save_to_disk_train_like_the_same_images_in_a_folder(
    tiny_model: Path, shapes: Path, tmp_path: Path
) -> None:
    parquet, saved = as_tables(shapes, tmp_path / "tables")
    run(tiny_model, shapes, tmp_path / "folder", cache=False)
    reference = load_file(tmp_path / "folder" / UNET)
    for data, name in ((parquet, "parquet"), (saved, "saved")):
        _, events = run(tiny_model, data, tmp_path / name, cache=False)
        assert events[0]["images"] == 6
        weights = load_file(tmp_path / name / UNET)
        assert all(np.array_equal(weights[k].numpy(), reference[k].numpy()) for k in reference), name
    # Cached latents of table rows are keyed by the rows' bytes: the second run reuses all of them.
    run(tiny_model, parquet, tmp_path / "c1", cache=True)
    _, second = run(tiny_model, saved, tmp_path / "c2", cache=True)
    cache = next(e for e in second if e["event"] == "cache")
    assert cache["latents_reused"] == 6 and cache["latents_computed"] == 0


def test_dreambooth_with_prior_preservation_from_uncaptioned_photos(tiny_model: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for n in range(4):  # a "subject": the same green square, moved about; no captions at all
        image = Image.new("RGB", (64, 64), (240, 240, 240))
        image.paste((30, 180, 30), (8 + 4 * n, 12, 40 + 4 * n, 44))
        image.save(photos / f"IMG_{n:04d}.jpg")
    classes = tmp_path / "class"
    common = {"instance_prompt": "a photo of sks block", "class_prompt": "a photo of a block", "class_data": classes,
              "num_class_images": 3, "batch_size": 1, "max_steps": 2}  # fmt: skip
    for lora in (True, False):
        result, events = run(tiny_model, photos, tmp_path / f"out-{lora}", lora=lora, **common)
        plan = events[0]
        assert plan["captioned"] == 4 and plan["class_images"] == 3 and not result.skipped
        made = next(e for e in events if e["event"] == "class_images")
        assert made["generating"] == (3 if lora else 0)  # generated once, reused by the second run
        assert result.final_loss is not None
    generated = sorted(classes.glob("*.png"))
    assert len(generated) == 3
    assert read_record(generated[0])["settings"]["prompt"] == "a photo of a block"
    assert (tmp_path / "out-True" / "pytorch_lora_weights.safetensors").is_file()
    # Without prior preservation the class loss is gone: a different first loss.
    _, plain = run(tiny_model, photos, tmp_path / "plain", instance_prompt="a photo of sks block", batch_size=1,
                   max_steps=1)  # fmt: skip
    loss = lambda evs: next(e["loss"] for e in evs if e["event"] == "step")  # noqa: E731
    assert loss(plain) != loss(events)


def test_shuffled_tag_captions_change_the_loss_and_turn_the_text_cache_off(tiny_model: Path, tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "tags", n=4)
    meta = data / "metadata.jsonl"
    rows = [json.loads(line) for line in meta.read_text().splitlines()]
    for row in rows:
        row["text"] = "shapes, " + ", ".join(row["text"].removeprefix("a ").split(" "))
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, plain = run(tiny_model, data, tmp_path / "a", max_steps=1)
    _, shuffled = run(tiny_model, data, tmp_path / "b", max_steps=1, shuffle_captions=True, keep_tokens=1)
    loss = lambda evs: next(e["loss"] for e in evs if e["event"] == "step")  # noqa: E731
    assert loss(plain) != loss(shuffled)
    cache = next(e for e in shuffled if e["event"] == "cache")
    assert cache["texts_computed"] == cache["texts_reused"] == 0


def test_tensorboard_events_hold_the_loss_and_the_validation_grids(tiny_model: Path, shapes: Path,
                                                                   tmp_path: Path) -> None:  # fmt: skip
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    _, events = run(tiny_model, shapes, out, max_steps=4, report_to=("tensorboard",),
                    validation_prompts=("a red circle on a blue background",), validate_every=2)  # fmt: skip
    logged = [e["loss"] for e in events if e["event"] == "step"]
    runs = [p.parent for p in (out / "logs").rglob("events.out.tfevents.*")]
    scalars, images = {}, {}
    for folder in runs:
        reader = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
        reader.Reload()
        tags = reader.Tags()
        scalars.update({t: reader.Scalars(t) for t in tags["scalars"]})
        images.update({t: reader.Images(t) for t in tags["images"]})
    assert [s.step for s in scalars["train/loss"]] == [1, 2, 3, 4]
    assert [s.value for s in scalars["train/loss"]] == pytest.approx(logged, rel=1e-6)
    assert {"train/lr", "train/images_per_s"} <= set(scalars)
    (tag,) = [t for t in images if "validation" in t]
    assert [i.step for i in images[tag]] == [2, 4]
    grid = sorted((out / "validation").glob("*.png"))[-1]
    assert (images[tag][-1].width, images[tag][-1].height) == Image.open(grid).size


def test_plan_reports_model_flops_and_mfu_needs_a_known_peak(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    from sdlite.models.presets import PRESETS
    from sdlite.training.flops import peak_flops, train_flops_per_image

    assert train_flops_per_image(PRESETS["sd15"], 512, 512, False) == pytest.approx(2.42e12, rel=0.01)
    assert peak_flops("NVIDIA H200", "bf16") == 989e12 and peak_flops("NVIDIA H100 80GB HBM3", "no") == 494e12
    assert peak_flops("cpu", "no") is None
    result, events = run(tiny_model, shapes, tmp_path / "o", max_steps=1)
    plan = events[0]
    assert plan["tflops_per_image"] > 0 and plan["peak_tflops"] is None
    from sdlite.training.config import TrainConfig
    from sdlite.training.plan import dry_run

    dry = dry_run(TrainConfig(model=str(tiny_model), data=shapes, out=tmp_path / "o", max_steps=1, batch_size=2))
    assert dry.tflops_per_image == plan["tflops_per_image"]  # --dry-run reports the plan the run does
    step = next(e for e in events if e["event"] == "step")
    assert "mfu" not in step and result.images_per_s > 0 and result.mfu is None


def test_mfu_in_step_events_and_result_when_the_peak_is_known(
    tiny_model: Path, shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from sdlite.training import unet

    with_flops = unet.with_flops

    def known_peak(plan: Any, *args: Any) -> Any:  # a device whose peak is twice one image's step
        plan = with_flops(plan, *args)
        return dataclasses.replace(plan, peak_tflops=2 * plan.tflops_per_image)

    monkeypatch.setattr(unet, "with_flops", known_peak)
    result, events = run(tiny_model, shapes, tmp_path / "o", max_steps=2)
    steps = [e for e in events if e["event"] == "step"]
    assert all(e["mfu"] == pytest.approx(e["images_per_s"] / 2) for e in steps)
    assert result.mfu == pytest.approx(result.images_per_s / 2) and events[-1]["mfu"] == result.mfu


def test_compile_hands_the_unet_to_torch_compile_and_the_tracker_project_names_the_run(
    tiny_model: Path, shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    compiled: list[Any] = []

    def fake_compile(model: Any, *args: Any, **kwargs: Any) -> Any:  # compiling for real takes minutes on a CPU
        compiled.append(type(model).__name__)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    _, events = run(tiny_model, shapes, tmp_path / "o", max_steps=1, compile=True, report_to=("tensorboard",),
                    tracker_project="my-project")  # fmt: skip
    assert "UNet2DConditionModel" in compiled
    assert "torch.compile (Inductor)" in next(e for e in events if e["event"] == "speedups")["applied"]
    assert (tmp_path / "o" / "logs" / "my-project").is_dir()


def test_prior_loss_weight_scales_the_class_loss(tiny_model: Path, tmp_path: Path) -> None:
    photos = make_shapes_dataset(tmp_path / "photos", n=2)
    common = {"instance_prompt": "a photo of sks shape", "class_prompt": "a photo of a shape",
              "class_data": tmp_path / "class", "num_class_images": 1, "batch_size": 1, "max_steps": 1}  # fmt: skip
    first = lambda evs: next(e["loss"] for e in evs if e["event"] == "step")  # noqa: E731
    losses = [
        first(run(tiny_model, photos, tmp_path / f"w{w}", prior_loss_weight=w, **common)[1]) for w in (0.0, 1.0, 2.0)
    ]
    assert losses[0] < losses[1] < losses[2]
    assert losses[2] - losses[1] == pytest.approx(losses[1] - losses[0], rel=1e-4)  # linear in the weight


def test_compiled_unet_saves_plain_keys_for_lora_and_full_models(
    tiny_model: Path, shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What torch.compile hands back wraps the UNet (its state-dict keys gain an `_orig_mod.` prefix): saved
    models, LoRAs and checkpoints must hold the UNet's own keys, or other tools cannot load them."""
    import torch
    from safetensors.torch import load_file
    from torch._dynamo.eval_frame import DisableContext, OptimizedModule

    def wrap_without_compiling(model: Any, *args: Any, **kwargs: Any) -> Any:  # the real wrapper, run eagerly
        return OptimizedModule(model, DisableContext())

    monkeypatch.setattr(torch, "compile", wrap_without_compiling)
    lora, _ = run(tiny_model, shapes, tmp_path / "lora", max_steps=2, compile=True, lora=True, checkpoint_every=1)
    full, _ = run(tiny_model, shapes, tmp_path / "full", max_steps=2, compile=True, checkpoint_every=1)
    files = [lora.out / "pytorch_lora_weights.safetensors", full.out / "unet" / "diffusion_pytorch_model.safetensors",
             *(lora.out / "checkpoints").rglob("*.safetensors"), *(full.out / "checkpoints").rglob("*.safetensors")]  # fmt: skip
    keys = [k for f in files for k in load_file(f)]
    assert keys and not [k for k in keys if "_orig_mod" in k]
    assert any(k.startswith("unet.") and "lora" in k for k in load_file(files[0]))
