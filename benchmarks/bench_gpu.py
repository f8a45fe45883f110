"""GPU figures for the SD v1.5 architecture (random weights from `sdlite init --preset sd15`), 512x512.

Sections, in the order they run (the ones issue 14 is judged on first):
  train      images/s, MFU and peak VRAM (against the plan's estimate) with each lever: the fp16 batch-8
             baseline with the latent/text cache, bf16, batch 16, --channels-last, --compile;
  overhead   `--fast` seconds per image at batch 1 and 8: sdlite (PNGs with metadata, written by its
             background writer) against plain diffusers with the same compile recipe, writing the same
             PNGs and writing nothing (denoise + decode alone);
  latency    wall time to the first `--fast` image from a fresh process, cold (empty compile cache)
             and warm (the second call on the same model and size);
  sample     it/s and s/image, fp16/bf16, batch 1/8, default vs --fast, with the UNet's TFLOP/s;
  memory     peak VRAM of one fp16 batch-1 image, default vs --low-memory;
  sdxl       the SDXL base 1.0 architecture (random fp16 weights, `--preset sdxl`) at 1024x1024: sampling it/s and
             s/image with and without --fast, and LoRA training (rank 16, UNet) images/s with the cache.

Every figure comes from a fresh worker process (its own compile caches and peak-memory counters).
`--budget S` (default 480) stops starting new workers once S seconds have passed, so the default run
fits a short GPU lease; `--only train,overhead` picks sections. Nothing here is needed by CI or the
tests; `--smoke` runs the same code on the tiny preset at 64x64 on whatever device there is (a test does
that on CPU).

usage: python benchmarks/bench_gpu.py [--smoke] [--only SECTIONS] [--budget S] [--batches N] [--train-steps N]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a red circle on a blue background"
SECTIONS = ("train", "overhead", "latency", "sample", "memory", "sdxl")
# ../shared/reference.md: the SD v1.5 UNet costs about 0.8 TFLOP per forward at 64x64 latents, so about
# 1.7 TFLOP per guided step (two passes) per image. (The VAE decode, ~2.5 TFLOP an image, is not in it/s.)
UNET_TFLOP_PER_GUIDED_STEP = 1.7
# Dense fp16/bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s), for the utilisation column.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "4090": 165.0}


def sample_worker(model: str, dtype: str, batch: int, mode: str, steps: int, batches: int, size: int) -> dict:
    """Load once, make `batches + 1` batches (the first warms up and compiles), time the rest per step."""
    import torch

    from sdlite.sampling.config import Generation, SampleConfig
    from sdlite.sampling.run import sample

    marks: list[float] = []
    gen = Generation(PROMPT, seed=0, steps=steps, scheduler="ddim", guidance=7.5, num_images=batch * (batches + 1),
                     height=size, width=size)  # fmt: skip
    config = SampleConfig(model=model, generations=(gen,), out=Path(tempfile.mkdtemp()), batch_size=batch,
                          dtype=dtype, mode=mode)  # fmt: skip
    cuda = torch.cuda.is_available()
    images: list[float] = []

    def progress(done: int, total: int) -> None:
        if cuda:
            torch.cuda.synchronize()
        marks.append(time.perf_counter())

    run = sample(config, progress=progress, on_image=lambda r: images.append(time.perf_counter()))
    per_batch = steps  # progress reports each denoising step of each batch once
    first = per_batch  # skip the warm-up batch entirely
    step_times = [b - a for a, b in zip(marks[first:-1], marks[first + 1 :], strict=True)]
    # Steps that span a batch boundary also hold a decode and PNG writes: leave them out of it/s.
    denoise = [t for i, t in enumerate(step_times) if (i + 1) % per_batch != 0]
    it_per_s = len(denoise) / sum(denoise)
    batch_ends = [images[i * batch - 1] for i in range(1, batches + 2)]
    s_per_image = (batch_ends[-1] - batch_ends[0]) / (batches * batch)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return {"it_per_s": it_per_s, "s_per_image": s_per_image, "peak_vram_gib": peak, "speedups": list(run.speedups)}


def plain_worker(model: str, dtype: str, batch: int, steps: int, batches: int, size: int) -> dict:
    """Plain diffusers with the `--fast` recipe (sdlite.modes applies the same switches): per image, batches
    that write their PNGs (PIL, in the loop) alternate with batches that write nothing."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from sdlite.sampling.modes import apply_mode

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(dtype, torch.float32)
    pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch_dtype, safety_checker=None,
                                                   requires_safety_checker=False).to(device)  # fmt: skip
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    apply_mode(pipe, "fast", device, False)
    out = Path(tempfile.mkdtemp())
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(2 * batches + 1):
        write = round_ % 2 == 1
        generator = [torch.Generator("cpu").manual_seed(round_ * batch + i) for i in range(batch)]
        start = time.perf_counter()
        images = pipe([PROMPT] * batch, num_inference_steps=steps, guidance_scale=7.5, height=size, width=size,
                      generator=generator).images  # fmt: skip
        if write:
            for i, image in enumerate(images):
                image.save(out / f"{round_:05d}-{i}.png")
        if round_:  # round 0 warms up (and compiles)
            seconds[write].append((time.perf_counter() - start) / batch)
    return {"with_png": min(seconds[True]), "without_png": min(seconds[False])}


def train_worker(model: str, data: str, cache: bool, steps: int, batch: int, precision: str, compile_: bool,
                 channels_last: bool, lora: bool = False, resolution: int | None = None) -> dict:  # fmt: skip
    import torch

    from sdlite.training.config import TrainConfig
    from sdlite.training.unet import train

    marks: list[float] = []
    plan: dict = {}

    def on_event(event: dict) -> None:
        if event["event"] == "plan":
            plan.update(event)
        if event["event"] == "step":
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

    out = tempfile.mkdtemp()
    lora_settings = {"lora": True, "lora_rank": 16} if lora else {}
    config = TrainConfig(model=model, data=data, out=out, max_steps=steps, batch_size=batch, cache=cache,
                         lr=1e-4 if lora else 1e-5,
                         mixed_precision=precision, compile=compile_, channels_last=channels_last,
                         resolution=resolution, **lora_settings)  # fmt: skip
    train(config, on_event=on_event)
    steady = marks[3:]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    rate = (len(steady) - 1) * batch / (steady[-1] - steady[0])
    mfu = rate * plan["tflops_per_image"] / plan["peak_tflops"] if plan.get("peak_tflops") else float("nan")
    return {"images_per_s": rate, "peak_vram_gib": peak, "mfu": mfu, "estimate_gib": plan.get("memory_gib"),
            "largest_batch": plan.get("largest_batch")}  # fmt: skip


def first_image_seconds(model: str, size: int, cache: str) -> float:
    """Wall time from starting `sdlite sample --fast` to its first image line, in a fresh process."""
    env = {**os.environ, "SDLITE_CACHE_DIR": cache}
    command = [sys.executable, "-m", "sdlite", "sample", PROMPT, "--model", model, "--fast", "--height", str(size),
               "--width", str(size), "--seed", "0", "--out", tempfile.mkdtemp(), "-q"]  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    process.stdout.readline()
    seconds = time.perf_counter() - start
    process.wait()
    return seconds


# --smoke runs each worker in this process: what it checks is the measuring code, not a GPU's memory, and a
# fresh interpreter per worker (torch and diffusers imported again) was most of the smoke test's minute.
IN_PROCESS = {"on": False}


@functools.cache
def spawn(*args: str) -> dict:
    """One measurement in a fresh process (its own peak memory, no warm caches); the same one is made once (the
    memory section's default run is the sample section's fp16 batch 1 default run)."""
    if IN_PROCESS["on"]:
        return run_worker(args[0], list(args[1:]))
    done = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"worker {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_worker(kind: str, rest: list[str]) -> dict:
    if kind == "sample":
        model, dtype, batch, mode, steps, batches, size = rest
        return sample_worker(model, dtype, int(batch), mode, int(steps), int(batches), int(size))
    if kind == "plain":
        model, dtype, batch, steps, batches, size = rest
        return plain_worker(model, dtype, int(batch), int(steps), int(batches), int(size))
    model, data, cache, steps, batch, precision, compile_, channels_last, *more = rest
    lora, resolution = (more[0] == "1", int(more[1])) if more else (False, None)
    return train_worker(model, data, cache == "1", int(steps), int(batch), precision, compile_ == "1",
                        channels_last == "1", lora, resolution)  # fmt: skip


class Budget:
    """Stops starting workers once `seconds` have passed since the script started (None: no limit)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds, self.start = seconds, time.perf_counter()

    def left(self, label: str) -> bool:
        elapsed = time.perf_counter() - self.start
        if self.seconds is None or elapsed < self.seconds:
            return True
        print(f"{label:<34}skipped: {elapsed:.0f} s of the {self.seconds:.0f} s budget used", flush=True)
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny preset, 64x64, few steps: check the script runs")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"sections to run, of {','.join(SECTIONS)}")
    parser.add_argument(
        "--budget", type=float, help="seconds after which no new worker starts [default: 480; none with --smoke]"
    )
    parser.add_argument("--batches", type=int, default=3, help="timed batches per configuration (after a warm-up)")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--peak-tflops", type=float, help="the device's dense fp16 peak [default: by device name]")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args.worker[0], args.worker[1:])))
        return
    sections = [s for s in args.only.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")

    import torch

    from sdlite.models.config import InitConfig
    from sdlite.models.presets import init_model
    from sdlite.testing import make_shapes_dataset

    budget = Budget(args.budget if args.budget is not None else None if args.smoke else 480.0)
    IN_PROCESS["on"] = args.smoke
    os.environ["HF_HUB_OFFLINE"] = "1"
    work = Path(tempfile.mkdtemp(prefix="sdlite-bench-gpu-"))
    os.environ.setdefault("SDLITE_CACHE_DIR", str(work / "cache"))
    preset, size, steps = ("tiny", 64, 3) if args.smoke else ("sd15", 512, 50)
    batches = 1 if args.smoke else args.batches
    model = str(init_model(InitConfig(out=work / preset, preset=preset, dtype="fp16" if not args.smoke else "fp32")))
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name() if cuda else "CPU"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    half, sample_dtype = ("fp16", "fp16") if cuda else ("no", "fp32")  # mixed precision; sampling dtype
    print(f"device: {name}; torch {torch.__version__}; {preset} at {size}x{size}, {steps} DDIM steps, guidance 7.5")

    if "train" in sections:
        data = str(make_shapes_dataset(work / "data", n=128 if not args.smoke else 8, size=size))
        bf16 = "bf16" if cuda else "no"
        levers = [  # (cache, batch, precision, compile, channels_last)
            ("1", 8, half, "0", "0"),  # the baseline of ../shared/reference.md
            ("1", 8, bf16, "0", "0"),
            ("1", 16, bf16, "0", "0"),
            ("1", 16, bf16, "0", "1"),
            ("0", 8, half, "0", "0"),
            ("1", 16, bf16, "1", "0"),
        ]
        if args.smoke:  # the same code paths, small: batch 2, compile left to the GPU run
            levers = [
                (cache, 2, precision, "0", cl) for cache, _, precision, _, cl in (levers[0], levers[3], levers[4])
            ]
        print(f"\n{'training at ' + str(size):<38}{'images/s':>9}{'MFU':>7}{'VRAM GiB':>10}{'estimate':>10}"
              f"{'max batch':>10}")  # fmt: skip
        for cache, batch, precision, compile_, channels_last in levers:
            label = (
                f"{precision}, batch {batch}, {'with' if cache == '1' else 'without'} cache"
                + (", channels_last" if channels_last == "1" else "")
                + (", --compile" if compile_ == "1" else "")
            )
            if not budget.left(label):
                break
            r = spawn("train", model, data, cache, str(args.train_steps if not args.smoke else 6), str(batch),
                      precision, compile_, channels_last)  # fmt: skip
            mfu = f"{r['mfu']:.0%}" if r["mfu"] == r["mfu"] else "-"
            print(f"{label:<38}{r['images_per_s']:>9.2f}{mfu:>7}{r['peak_vram_gib']:>10.2f}"
                  f"{r['estimate_gib'] or float('nan'):>10.2f}{r['largest_batch'] or '-':>10}", flush=True)  # fmt: skip

    if "overhead" in sections:
        print(f"\n{'--fast, ' + sample_dtype + ', s/image':<26}{'sdlite':>9}{'plain+PNG':>11}{'plain':>9}"
              f"{'sdlite/plain':>14}{'sdlite/plain+PNG':>18}")  # fmt: skip
        for batch in (1, 8) if not args.smoke else (1,):
            if not budget.left(f"batch {batch}"):
                break
            ours = spawn("sample", model, sample_dtype, str(batch), "fast", str(steps), str(batches), str(size))
            plain = spawn("plain", model, sample_dtype, str(batch), str(steps), str(batches), str(size))
            s, w, p = ours["s_per_image"], plain["with_png"], plain["without_png"]
            print(f"{'batch ' + str(batch):<26}{s:>9.3f}{w:>11.3f}{p:>9.3f}{s / p:>14.3f}{s / w:>18.3f}", flush=True)

    if "latency" in sections and (cuda or not args.smoke) and budget.left("first --fast image"):
        cache = str(work / "compile-cache")
        cold, warm = first_image_seconds(model, size, cache), first_image_seconds(model, size, cache)
        print(
            f"\n{'first --fast image (fresh process)':<34}{'cold s':>9}{'warm s':>9}\n{'':<34}{cold:>9.1f}{warm:>9.1f}"
        )

    if "sample" in sections:
        print(
            f"\n{'dtype':<6}{'batch':>6}{'mode':>10}{'it/s':>9}{'s/image':>9}{'TFLOP/s':>9}{'util':>7}{'VRAM GiB':>10}"
        )
        for dtype in ("fp16", "bf16") if not args.smoke else ("fp16",):
            for batch in (1, 8) if not args.smoke else (1,):
                for mode in ("default", "fast"):
                    if not budget.left(f"{dtype} batch {batch} {mode}"):
                        break
                    r = spawn("sample", model, dtype, str(batch), mode, str(steps), str(batches), str(size))
                    # The FLOP count is SD v1.5's: for the smoke preset these two columns mean nothing.
                    tflops = r["it_per_s"] * UNET_TFLOP_PER_GUIDED_STEP * batch if preset == "sd15" else float("nan")
                    util = f"{tflops / peak:.0%}" if peak and preset == "sd15" else "-"
                    print(f"{dtype:<6}{batch:>6}{mode:>10}{r['it_per_s']:>9.2f}{r['s_per_image']:>9.3f}"
                          f"{tflops:>9.1f}{util:>7}{r['peak_vram_gib']:>10.2f}", flush=True)  # fmt: skip

    if "memory" in sections:
        print(f"\n{'memory, fp16, batch 1':<28}{'peak VRAM GiB':>14}{'s/image':>9}")
        for mode in ("default", "low-memory"):
            if not budget.left(mode):
                break
            r = spawn("sample", model, "fp16", "1", mode, str(steps), str(batches), str(size))
            print(f"{mode:<28}{r['peak_vram_gib']:>14.2f}{r['s_per_image']:>9.3f}", flush=True)

    if "sdxl" in sections and budget.left("SDXL"):
        xl_preset, xl_size, xl_steps = ("sdxl-tiny", 64, 3) if args.smoke else ("sdxl", 1024, 30)
        xl = str(init_model(InitConfig(out=work / xl_preset, preset=xl_preset, dtype="fp16" if cuda else "fp32")))
        print(f"\n{'SDXL ' + str(xl_size) + ', ' + sample_dtype + ', ' + str(xl_steps) + ' steps':<28}"
              f"{'it/s':>9}{'s/image':>9}{'VRAM GiB':>10}")  # fmt: skip
        for mode in ("default", "fast"):
            if not budget.left(f"SDXL {mode}"):
                break
            r = spawn("sample", xl, sample_dtype, "1", mode, str(xl_steps), str(batches), str(xl_size))
            print(f"{mode:<28}{r['it_per_s']:>9.2f}{r['s_per_image']:>9.3f}{r['peak_vram_gib']:>10.2f}", flush=True)
        data = str(make_shapes_dataset(work / "xl-data", n=32 if not args.smoke else 4, size=xl_size))
        print(f"\n{'SDXL LoRA training at ' + str(xl_size):<38}{'images/s':>9}{'VRAM GiB':>10}{'estimate':>10}")
        for batch in (2, 4) if not args.smoke else (2,):
            precision = "bf16" if cuda else "no"
            if not budget.left(f"SDXL LoRA batch {batch}"):
                break
            r = spawn("train", xl, data, "1", str(args.train_steps if not args.smoke else 6), str(batch), precision,
                      "0", "0", "1", str(xl_size))  # fmt: skip
            label = f"{precision}, batch {batch}, rank 16, with cache"
            print(f"{label:<38}{r['images_per_s']:>9.2f}{r['peak_vram_gib']:>10.2f}"
                  f"{r['estimate_gib'] or float('nan'):>10.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
