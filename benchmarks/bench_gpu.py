"""GPU figures for the SD v1.5 architecture (random weights from `sdlite init --preset sd15`), 512x512.

  sampling   fp16 and bf16, batch 1 and 8, 50 steps: it/s and s/image, default vs --fast, and the
             UNet's achieved TFLOP/s and utilisation against the published FLOP count;
  training   images/s and MFU at 512 with each lever: the latent/text cache, bf16, a larger batch,
             torch.compile (--compile), against the fp16 batch-8 baseline;
  latency    wall time to the first `--fast` image from a fresh process, cold (empty compile cache)
             and warm (the second call on the same model and size);
  memory     peak VRAM of one fp16 batch-1 image, default vs --low-memory.

Every figure comes from a fresh worker process (its own compile caches and peak-memory counters), and
each default/--fast pair runs back to back. Nothing here is needed by CI or the tests; `--smoke` runs
the same code on the tiny preset at 64x64 on whatever device there is (a test does that on CPU).

usage: python benchmarks/bench_gpu.py [--smoke] [--batches N] [--train-steps N] [--peak-tflops X]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a red circle on a blue background"
# ../shared/reference.md: the SD v1.5 UNet costs about 0.8 TFLOP per forward at 64x64 latents, so about
# 1.7 TFLOP per guided step (two passes) per image. (The VAE decode, ~2.5 TFLOP an image, is not in it/s.)
UNET_TFLOP_PER_GUIDED_STEP = 1.7
# Dense fp16/bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s), for the utilisation column.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "4090": 165.0}


def sample_worker(model: str, dtype: str, batch: int, mode: str, steps: int, batches: int, size: int) -> dict:
    """Load once, make `batches + 1` batches (the first warms up and compiles), time the rest per step."""
    import torch

    from sdlite.config import Generation, SampleConfig
    from sdlite.sampling import sample

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


def train_worker(model: str, data: str, cache: bool, steps: int, batch: int, precision: str, compile_: bool) -> dict:
    import torch

    from sdlite.config import TrainConfig
    from sdlite.training import train

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
    config = TrainConfig(model=model, data=data, out=out, max_steps=steps, batch_size=batch, lr=1e-5, cache=cache,
                         mixed_precision=precision, compile=compile_)  # fmt: skip
    train(config, on_event=on_event)
    steady = marks[3:]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    rate = (len(steady) - 1) * batch / (steady[-1] - steady[0])
    mfu = rate * plan["tflops_per_image"] / plan["peak_tflops"] if plan.get("peak_tflops") else float("nan")
    return {"images_per_s": rate, "peak_vram_gib": peak, "mfu": mfu}


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


def spawn(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"worker {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny preset, 64x64, few steps: check the script runs")
    parser.add_argument("--batches", type=int, default=3, help="timed batches per configuration (after a warm-up)")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--peak-tflops", type=float, help="the device's dense fp16 peak [default: by device name]")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "sample":
            model, dtype, batch, mode, steps, batches, size = rest
            result = sample_worker(model, dtype, int(batch), mode, int(steps), int(batches), int(size))
        else:
            model, data, cache, steps, batch, precision, compile_ = rest
            result = train_worker(model, data, cache == "1", int(steps), int(batch), precision, compile_ == "1")
        print(json.dumps(result))
        return

    import torch

    from sdlite.config import InitConfig
    from sdlite.presets import init_model
    from sdlite.testing import make_shapes_dataset

    os.environ["HF_HUB_OFFLINE"] = "1"
    work = Path(tempfile.mkdtemp(prefix="sdlite-bench-gpu-"))
    os.environ.setdefault("SDLITE_CACHE_DIR", str(work / "cache"))
    preset, size, steps = ("tiny", 64, 3) if args.smoke else ("sd15", 512, 50)
    batches = 1 if args.smoke else args.batches
    model = str(init_model(InitConfig(out=work / preset, preset=preset, dtype="fp16" if not args.smoke else "fp32")))
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name() if cuda else "CPU"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    print(f"device: {name}; torch {torch.__version__}; {preset} at {size}x{size}, {steps} DDIM steps, guidance 7.5")

    print(f"\n{'dtype':<6}{'batch':>6}{'mode':>10}{'it/s':>9}{'s/image':>9}{'TFLOP/s':>9}{'util':>7}{'VRAM GiB':>10}")
    for dtype in ("fp16", "bf16"):
        for batch in (1, 8) if not args.smoke else (1,):
            for mode in ("default", "fast"):
                r = spawn("sample", model, dtype, str(batch), mode, str(steps), str(batches), str(size))
                # The FLOP count is SD v1.5's: for the smoke preset these two columns mean nothing.
                tflops = r["it_per_s"] * UNET_TFLOP_PER_GUIDED_STEP * batch if preset == "sd15" else float("nan")
                util = f"{tflops / peak:.0%}" if peak and preset == "sd15" else "-"
                print(f"{dtype:<6}{batch:>6}{mode:>10}{r['it_per_s']:>9.2f}{r['s_per_image']:>9.3f}{tflops:>9.1f}"
                      f"{util:>7}{r['peak_vram_gib']:>10.2f}", flush=True)  # fmt: skip

    print(f"\n{'memory, fp16, batch 1':<28}{'peak VRAM GiB':>14}{'s/image':>9}")
    for mode in ("default", "low-memory"):
        r = spawn("sample", model, "fp16", "1", mode, str(steps), str(batches), str(size))
        print(f"{mode:<28}{r['peak_vram_gib']:>14.2f}{r['s_per_image']:>9.3f}", flush=True)

    data = str(make_shapes_dataset(work / "data", n=128 if not args.smoke else 8, size=size))
    half = "fp16" if cuda else "no"
    print(f"\n{'training at ' + str(size):<34}{'images/s':>9}{'MFU':>7}{'VRAM GiB':>10}")
    levers = [  # (label, cache, batch, precision, compile)
        (f"{half}, batch 8, with cache", "1", 8, half, "0"),
        (f"{half}, batch 8, without cache", "0", 8, half, "0"),
        ("bf16, batch 8, with cache", "1", 8, "bf16" if cuda else "no", "0"),
        ("bf16, batch 16, with cache", "1", 16, "bf16" if cuda else "no", "0"),
        ("bf16, batch 16, cache, --compile", "1", 16, "bf16" if cuda else "no", "1"),
    ]
    if args.smoke:  # the same code paths, small: batch 2, and compile left to the GPU run
        levers = [(f"{precision}, batch 2, {'with' if cache == '1' else 'without'} cache", cache, 2, precision, "0")
                  for _, cache, _, precision, _ in levers[:3]]  # fmt: skip
    for label, cache, batch, precision, compile_ in levers:
        steps = str(args.train_steps if not args.smoke else 6)
        r = spawn("train", model, data, cache, steps, str(batch), precision, compile_)
        mfu = f"{r['mfu']:.0%}" if r["mfu"] == r["mfu"] else "-"
        print(f"{label:<34}{r['images_per_s']:>9.2f}{mfu:>7}{r['peak_vram_gib']:>10.2f}", flush=True)

    if cuda or not args.smoke:
        cache = str(work / "compile-cache")
        cold, warm = first_image_seconds(model, size, cache), first_image_seconds(model, size, cache)
        print(
            f"\n{'first --fast image (fresh process)':<34}{'cold s':>9}{'warm s':>9}\n{'':<34}{cold:>9.1f}{warm:>9.1f}"
        )


if __name__ == "__main__":
    main()
