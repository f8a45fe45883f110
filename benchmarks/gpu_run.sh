#!/usr/bin/env bash
# On a lent GPU machine (no network): install the carried wheels beside the image's torch, then run the
# GPU-only tests (tests/test_gpu.py, skipped in CI) and/or the GPU benchmark. From this machine:
#   make gpu-wheels                                   # once, here
#   device run: bash benchmarks/gpu_run.sh [--tests] [bench_gpu.py options]    carrying .gpu-wheels
# `--tests` alone runs only the tests; with other options it runs both (tests first). Output is also
# written under $OUT (bench_gpu.txt, test_gpu.txt) when $OUT is set: the device tool fetches it.
set -euo pipefail
cd "$(dirname "$0")/.."
SITE="${TMPDIR:-/tmp}/sdlite-gpu-site"
python -m pip install --quiet --no-index --no-deps --target "$SITE" .gpu-wheels/*.whl
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
python -c "import torch, diffusers, transformers, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, torch.cuda.get_device_name())"
LOGS="${OUT:-/tmp}"
status=0
if [ "${1:-}" = "--tests" ]; then
  shift
  python -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/training/test_levers.py 2>&1 | tee "$LOGS/test_gpu.txt" \
    || status=$?
  [ $# -eq 0 ] && exit "$status"
fi
python benchmarks/bench_gpu.py "$@" 2>&1 | tee "$LOGS/bench_gpu.txt" || status=$?
exit "$status"
