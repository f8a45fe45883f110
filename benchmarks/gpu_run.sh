#!/usr/bin/env bash
# On a lent GPU machine (no network): install the carried wheels beside the image's torch and run the GPU
# benchmark. From this machine:
#   bash benchmarks/gpu_wheels.sh            # once, here
#   device run: bash benchmarks/gpu_run.sh [bench_gpu.py options]   carrying .gpu-wheels
# Writes the benchmark's output to $OUT/bench_gpu.txt when $OUT is set (the device tool fetches it).
set -euo pipefail
cd "$(dirname "$0")/.."
SITE="${TMPDIR:-/tmp}/sdlite-gpu-site"
python -m pip install --quiet --no-index --no-deps --target "$SITE" .gpu-wheels/*.whl
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
python -c "import torch, diffusers, transformers, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, torch.cuda.get_device_name())"
python benchmarks/bench_gpu.py "$@" 2>&1 | tee "${OUT:-/tmp}/bench_gpu.txt"
