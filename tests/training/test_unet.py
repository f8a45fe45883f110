"""`train`: the loss falls, every option does what it says, resume is exact, faults are handled."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.training import losses, max_diff, run, unet_weights
from safetensors.torch import load_file

from sdlite.errors import DataError, Interrupted, ModelError, UsageError
from sdlite.testing import make_shapes_dataset
from sdlite.training import checkpoints
from sdlite.training.config import TrainConfig
from sdlite.training.unet import resume_settings


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n=8)


def test_loss_falls_and_output_is_a_usable_model(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    result, events = run(tiny_model, shapes, tmp_path / "out", max_steps=40, batch_size=4)
    curve = losses(events)
    assert len(curve) == 40
    assert sum(curve[-10:]) / 10 < 0.7 * sum(curve[:10]) / 10
    out = result.out
    rows = (out / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr" and len(rows) == 41 and rows[-1].startswith("40,")
    from PIL import Image

    with Image.open(out / "loss.png") as curve_png:
        assert curve_png.size == (640, 360) and len(set(curve_png.getdata())) > 2
    record = json.loads((out / "sdlite-train.json").read_text())
    assert record["plan"]["steps"] == 40 and record["config"]["lr"] == 1e-3
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert max_diff(unet_weights(out), unet_weights(tiny_model)) > 0
    assert pipe.unet.config.sample_size == 8
    from sdlite.sampling.config import Generation, SampleConfig
    from sdlite.sampling.run import sample

    images = sample(
        SampleConfig(model=str(out), generations=(Generation("a red circle", seed=0, steps=2),), out=tmp_path / "s")
    )
    assert images.images[0].path.is_file()


def test_plan_and_events(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    _, events = run(tiny_model, shapes, tmp_path / "o", max_steps=3, grad_accum=2)
    plan = events[0]
    assert plan["event"] == "plan"
    assert (plan["images"], plan["effective_batch"], plan["micro_batches_per_epoch"], plan["steps"]) == (8, 4, 4, 3)
    assert plan["epochs"] == pytest.approx(1.5)
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3]
    assert all(e["images_per_s"] > 0 and math.isfinite(e["loss"]) for e in steps)
    assert events[-1]["event"] == "done"


def test_epochs_set_the_step_count(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    result, _ = run(tiny_model, shapes, tmp_path / "o", max_steps=None, epochs=2, batch_size=4)
    assert result.steps == 4  # 8 images / batch 4 = 2 steps per epoch


def test_exact_resume_after_ctrl_c(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    settings = {"max_steps": 8, "grad_accum": 2, "lr_scheduler": "cosine", "warmup_steps": 2, "ema": True,
                "ema_decay": 0.9, "caption_dropout": 0.3, "snr_gamma": 5.0, "noise_offset": 0.05, "random_flip": True}  # fmt: skip
    run(tiny_model, shapes, tmp_path / "a", **settings)

    sent: list[int] = []

    def ctrl_c_at_step_3(step: int, loss: Any) -> Any:
        if step == 3 and not sent:  # once: the hook runs for each micro-batch, and a second Ctrl-C stops at once
            sent.append(step)
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    with pytest.raises(Interrupted, match="interrupted at step 4"):
        run(tiny_model, shapes, tmp_path / "b", hook=ctrl_c_at_step_3, **settings)
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["step-000004"]
    _, events = run(tiny_model, shapes, tmp_path / "b", resume="latest", **settings)
    assert [e["step"] for e in events if e["event"] == "step"] == [5, 6, 7, 8]
    assert max_diff(unet_weights(tmp_path / "a"), unet_weights(tmp_path / "b")) == 0.0
    assert (tmp_path / "a" / "loss.csv").read_text() == (tmp_path / "b" / "loss.csv").read_text()


def test_checkpoints_are_usable_kept_and_verified(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    run(tiny_model, shapes, out, max_steps=7, checkpoint_every=2, keep_checkpoints=2)
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step-000004", "step-000006"]
    from sdlite.models.loading import resolve_model

    assert resolve_model(str(out / "checkpoints" / "step-000006")).weight_files  # a complete model folder
    # Settings that change the weights must match; a tampered or foreign folder is refused.
    with pytest.raises(UsageError, match=r"different settings.*lr"):
        run(tiny_model, shapes, out, max_steps=8, lr=5e-4, resume="latest")
    # Another process count gives every step other examples; checkpoints from before it was recorded
    # (one process) still resume.
    latest = out / "checkpoints" / "step-000006"
    config = TrainConfig(model=str(tiny_model), data=shapes, out=out, max_steps=8, batch_size=2, lr=1e-3)
    with pytest.raises(UsageError, match=r"different settings \(num_processes: 1 -> 2\)"):
        checkpoints.verify(latest, resume_settings(config, 2))
    manifest = json.loads((latest / checkpoints.MANIFEST).read_text())
    del manifest["fingerprint"]["num_processes"]
    (latest / checkpoints.MANIFEST).write_text(json.dumps(manifest))
    assert checkpoints.verify(latest, resume_settings(config, 1))["step"] == 6
    # A checkpoint at or past the run's last step has nothing left to train: refused, OUT untouched.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(UsageError, match=r"at step 6 and this run ends at step 5: nothing is left to train"):
        run(tiny_model, shapes, out, max_steps=5, resume="latest")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    tampered = out / "checkpoints" / "step-000006" / "training" / "lr_schedule.json"
    tampered.write_text(tampered.read_text().replace("1", "2"))
    with pytest.raises(ModelError, match="modified after sdlite wrote it"):
        run(tiny_model, shapes, out, max_steps=8, resume="latest")
    foreign = tmp_path / "foreign"
    shutil.copytree(tiny_model, foreign)
    with pytest.raises(ModelError, match="sdlite only resumes from checkpoints it wrote"):
        run(tiny_model, shapes, out, max_steps=8, resume=str(foreign))


def test_lora_trains_only_the_adapter(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    result, _ = run(tiny_model, shapes, tmp_path / "lora", lora=True, lora_rank=4, max_steps=6, lr=1e-2)
    out = result.out
    assert (out / "pytorch_lora_weights.safetensors").is_file() and not (out / "unet").exists()
    adapter = load_file(out / "pytorch_lora_weights.safetensors")
    assert adapter and all("lora" in k for k in adapter)
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    def image(lora_scale: float | None) -> Any:
        pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        kwargs: dict[str, Any] = {}
        if lora_scale is not None:
            pipe.load_lora_weights(out)
            kwargs["cross_attention_kwargs"] = {"scale": lora_scale}
        gen = torch.Generator().manual_seed(0)
        return pipe("a red circle", num_inference_steps=2, generator=gen, output_type="np", **kwargs).images[0]

    plain, with_lora = image(None), image(0.7)
    assert not np.allclose(plain, with_lora)
    from PIL import Image

    from sdlite.sampling.config import Generation, LoraChoice, SampleConfig
    from sdlite.sampling.run import sample

    config = SampleConfig(model=str(tiny_model), generations=(Generation("a red circle", seed=0, steps=2),), out=tmp_path / "s",
                          loras=(LoraChoice(str(out), 0.7),))  # fmt: skip
    ours = np.asarray(Image.open(sample(config).images[0].path))
    np.testing.assert_array_equal(ours, (with_lora * 255).round().astype(np.uint8))


@pytest.mark.parametrize("text_encoder", [False, True])
def test_lora_model_has_only_adapter_parameters_trainable(tiny_model: Path, shapes: Path, text_encoder: bool) -> None:
    from accelerate import Accelerator

    from sdlite.models.loading import resolve_model
    from sdlite.training import unet

    config = TrainConfig(model=str(tiny_model), data=shapes, out=Path("unused"), max_steps=1, lora=True,
                         train_text_encoder=text_encoder)  # fmt: skip
    parts = unet._load_components(resolve_model(str(tiny_model)), config, Accelerator(cpu=True), __import__("torch"))
    trainable = [n for n, p in parts.unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    trainable_text = [n for n, p in parts.text_encoder.named_parameters() if p.requires_grad]
    assert len(trainable_text) == (2 * 4 * 2 if text_encoder else 0)  # 2 layers x q/k/v/out x (A, B)
    assert all("lora" in n for n in trainable_text)
    assert not any(p.requires_grad for p in parts.vae.parameters())


def test_lora_initial_weights_come_from_the_seed(tiny_model: Path) -> None:
    """peft draws the adapters' first matrices from torch's global generator, which training never seeded:
    the same command trained a different adapter each time (and could not be checked against a resumed run)."""
    import torch
    from accelerate import Accelerator

    from sdlite.models.loading import resolve_model
    from sdlite.training import unet

    def adapters(seed: int) -> dict[str, Any]:
        config = TrainConfig(model=str(tiny_model), data=Path("unused"), out=Path("unused"), max_steps=1, lora=True,
                             train_text_encoder=True, seed=seed)  # fmt: skip
        parts = unet._load_components(resolve_model(str(tiny_model)), config, Accelerator(cpu=True), torch)
        return {n: p.detach().clone() for m in (parts.unet, parts.text_encoder)
                for n, p in m.named_parameters() if "lora_A" in n}  # fmt: skip

    state = torch.random.get_rng_state()
    first = adapters(1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left as it was
    torch.manual_seed(12345)  # whatever else ran before must not matter
    again, other = adapters(1), adapters(2)
    assert any("self_attn" in n for n in first) and max_diff(first, again) == 0 and max_diff(first, other) > 0


def test_ema_output_differs_from_raw(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    run(tiny_model, shapes, tmp_path / "raw", max_steps=5)
    run(tiny_model, shapes, tmp_path / "ema", max_steps=5, ema=True, ema_decay=0.5, checkpoint_every=4)
    raw, ema = unet_weights(tmp_path / "raw"), unet_weights(tmp_path / "ema")
    assert max_diff(raw, ema) > 0
    # The EMA sits between the base weights and the raw weights it averages.
    base = unet_weights(tiny_model)
    key = next(k for k in raw if raw[k].numel() > 100 and max_diff({k: raw[k]}, {k: base[k]}) > 0)
    assert (ema[key] - base[key]).abs().sum() < (raw[key] - base[key]).abs().sum()


def test_snr_gamma_changes_the_weighting(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    import torch
    from diffusers import DDPMScheduler

    from sdlite.training.unet import loss_weights

    scheduler = DDPMScheduler.from_pretrained(tiny_model / "scheduler")
    t = torch.tensor([1, 500, 999])
    w = loss_weights(scheduler, t, 5.0)
    assert w[0] < 0.01 and w[1] == 1 and w[2] == 1  # low noise (high SNR) is down-weighted to gamma/SNR
    assert torch.equal(loss_weights(scheduler, t, None), torch.ones(3))
    _, plain = run(tiny_model, shapes, tmp_path / "a", max_steps=1)
    _, snr = run(tiny_model, shapes, tmp_path / "b", max_steps=1, snr_gamma=0.001)  # below every SNR: all down-weighted
    assert losses(snr)[0] < losses(plain)[0]


@pytest.mark.parametrize(
    "option",
    [
        {"noise_offset": 0.1},
        {"prediction_type": "v_prediction"},
        {"caption_dropout": 0.9},
        {"crop": "random"},
        {"random_flip": True},
    ],
)
def test_option_changes_first_loss(tiny_model: Path, shapes: Path, tmp_path: Path, option: dict[str, Any]) -> None:
    from PIL import Image

    wide = Path(shutil.copytree(shapes, tmp_path / "wide"))  # 96x64: room for a random crop
    for png in wide.glob("*.png"):
        Image.open(png).resize((96, 64)).save(png)
    # Four images in the step: a coin-flip option (random_flip) changes at least one of them.
    _, a = run(tiny_model, wide, tmp_path / "a", max_steps=1, batch_size=4, buckets=False)
    _, b = run(tiny_model, wide, tmp_path / "b", max_steps=1, batch_size=4, buckets=False, **option)
    assert losses(a)[0] != losses(b)[0]


def test_max_grad_norm_clips_the_step(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    """--max-grad-norm reaches the optimizer step: gradients clipped to a norm far below AdamW's eps barely move
    the weights, where the default clip (1) lets the first step move them by about the learning rate."""
    base = unet_weights(tiny_model)
    default, _ = run(tiny_model, shapes, tmp_path / "a", max_steps=1)
    clipped, _ = run(tiny_model, shapes, tmp_path / "b", max_steps=1, max_grad_norm=1e-9)
    moved = max_diff(unet_weights(default.out), base)
    assert moved > 1e-4
    assert max_diff(unet_weights(clipped.out), base) < 0.1 * moved


def test_v_prediction_is_saved_in_the_scheduler(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    result, _ = run(tiny_model, shapes, tmp_path / "v", max_steps=1, prediction_type="v_prediction")
    assert (
        json.loads((result.out / "scheduler" / "scheduler_config.json").read_text())["prediction_type"]
        == "v_prediction"
    )


def test_cache_same_first_loss_and_reuse(
    tiny_model: Path, shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SDLITE_CACHE_DIR", str(tmp_path / "cache"))
    _, plain = run(tiny_model, shapes, tmp_path / "plain", max_steps=2, cache=False)
    _, first = run(tiny_model, shapes, tmp_path / "c1", max_steps=2)  # on by default: the augmentation is fixed
    _, second = run(tiny_model, shapes, tmp_path / "c2", max_steps=2, cache=True)
    assert (plain[0]["cache"], plain[0]["cache_note"]) == (False, "off: --no-cache")
    assert first[0]["cache"] and first[0]["cache_note"].startswith("on: the augmentation is fixed")
    assert not any(e["event"] == "cache" for e in plain)
    assert losses(first)[0] == pytest.approx(losses(plain)[0], rel=1e-5)
    counts1 = next(e for e in first if e["event"] == "cache")
    counts2 = next(e for e in second if e["event"] == "cache")
    assert counts1["latents_computed"] == 8 and counts2["latents_reused"] == 8 and counts2["latents_computed"] == 0
    _, other = run(tiny_model, shapes, tmp_path / "c3", max_steps=1, cache=True, resolution=32)
    assert next(e for e in other if e["event"] == "cache")["latents_computed"] == 8  # new settings, new entries
    with pytest.raises(UsageError, match="--cache needs a fixed augmentation"):
        TrainConfig(model="m", data=shapes, out=tmp_path, max_steps=1, cache=True, random_flip=True)
    flipped = TrainConfig(model="m", data=shapes, out=tmp_path, max_steps=1, random_flip=True)
    assert flipped.cache_choice() == (False, "off: random crop/flip change the pixels every epoch")


def test_train_text_encoder(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    result, _ = run(tiny_model, shapes, tmp_path / "te", max_steps=3, train_text_encoder=True)
    base = load_file(tiny_model / "text_encoder" / "model.safetensors")
    trained = load_file(result.out / "text_encoder" / "model.safetensors")
    assert max_diff(base, trained) > 0
    frozen, _ = run(tiny_model, shapes, tmp_path / "frozen", max_steps=1)
    assert max_diff(base, load_file(frozen.out / "text_encoder" / "model.safetensors")) == 0


def test_gradient_checkpointing_and_bf16(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    _, plain = run(tiny_model, shapes, tmp_path / "a", max_steps=2)
    _, ckpt = run(tiny_model, shapes, tmp_path / "b", max_steps=2, gradient_checkpointing=True)
    assert losses(ckpt) == pytest.approx(losses(plain), rel=1e-5)
    result, bf16 = run(tiny_model, shapes, tmp_path / "c", max_steps=2, mixed_precision="bf16")
    assert all(math.isfinite(v) for v in losses(bf16)) and losses(bf16)[0] != losses(plain)[0]
    assert {str(v.dtype) for v in unet_weights(result.out).values()} == {"torch.float32"}


def test_lr_warmup_is_logged(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    _, events = run(tiny_model, shapes, tmp_path / "o", max_steps=4, lr=1e-3, lr_scheduler="linear", warmup_steps=2)
    lrs = [e["lr"] for e in events if e["event"] == "step"]
    # diffusers' linear schedule: warm up from 0 over 2 steps, then decay to 0 at step 4.
    assert lrs == pytest.approx([0.0, 5e-4, 1e-3, 5e-4])
    logged = [float(row.split(",")[2]) for row in (tmp_path / "o" / "loss.csv").read_text().splitlines()[1:]]
    assert logged == pytest.approx(lrs)


def test_validation_grids(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    _, events = run(
        tiny_model,
        shapes,
        tmp_path / "o",
        max_steps=4,
        validation_prompts=("a red circle", "a blue square"),
        validate_every=2,
    )
    grids = [e["path"] for e in events if e["event"] == "validation"]
    assert [Path(g).name for g in grids] == ["step-000002.png", "step-000004.png"]
    from PIL import Image

    with Image.open(grids[0]) as grid:
        assert grid.width > 2 * 128


def test_bad_images_and_captions(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(shapes, tmp_path / "data"))
    (data / "003.png").write_bytes(b"not a png")
    out = tmp_path / "o"
    with pytest.raises(DataError, match=r"003\.png.*--skip-bad-images"):
        run(tiny_model, data, out)
    assert not (out / "loss.csv").exists()  # stopped before any step
    result, events = run(tiny_model, data, out, skip_bad_images=True)
    assert len(result.skipped) == 1 and "003.png" in result.skipped[0]
    assert next(e for e in events if e["event"] == "plan")["images"] == 7
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    del rows[0]["text"]
    (data / "003.png").unlink()
    rows = [r for r in rows if r["file_name"] != "003.png"]
    (data / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match="--allow-missing-captions"):
        run(tiny_model, data, tmp_path / "o2")
    result, _ = run(tiny_model, data, tmp_path / "o3", allow_missing_captions=True)
    assert any("missing caption" in s for s in result.skipped)


def test_too_few_images_for_a_batch(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot fill one global batch of 16"):
        run(tiny_model, shapes, tmp_path / "o", batch_size=16)


def test_half_precision_keeps_trainable_weights_fp32(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    # bf16: what autocasts on a CPU (fp16 runs on GPUs, tests/test_gpu.py); validation runs in it too
    result, events = run(tiny_model, shapes, tmp_path / "bf16", max_steps=2, mixed_precision="bf16",
                         validation_prompts=("a red circle",))  # fmt: skip
    assert (result.out / "validation" / "step-000002.png").is_file()
    assert all(math.isfinite(v) for v in losses(events))
    assert {str(v.dtype) for v in unet_weights(result.out).values()} == {"torch.float32"}
    # Frozen components are the base model's own files, untouched by the fp16 compute copy.
    base_vae = tiny_model / "vae" / "diffusion_pytorch_model.safetensors"
    assert (result.out / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == base_vae.read_bytes()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for CPU-only machines")
def test_fp16_on_a_cpu_is_refused_before_anything_loads(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    """Accelerate runs no fp16 autocast on a CPU: the run would be fp32 in truth and crash at validation."""
    with pytest.raises(UsageError, match=r"fp16 needs a GPU.*bf16"):
        run(tiny_model, shapes, tmp_path / "o", mixed_precision="fp16")
    assert not (tmp_path / "o").exists()


def test_a_fine_tune_keeps_its_base_models_recommended_settings(tiny_model: Path, shapes: Path, tmp_path: Path) -> None:
    """The base's sdlite.json (e.g. the built-in model's guidance 5) goes with the trained model and its
    checkpoints; without it a fine-tune sampled with other defaults than its base."""
    from sdlite.sampling.sources import model_defaults

    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    (base / "sdlite.json").write_text(json.dumps({"defaults": {"guidance": 5.0, "steps": 12}}))
    result, _ = run(base, shapes, tmp_path / "o", max_steps=2, checkpoint_every=1)
    assert model_defaults(str(result.out)) == model_defaults(str(base)) == {"guidance": 5.0, "steps": 12}
    assert model_defaults(str(result.out / "checkpoints" / "step-000001")) == {"guidance": 5.0, "steps": 12}
    checkpoints.verify(result.out / "checkpoints" / "step-000001", {})  # written before its manifest
