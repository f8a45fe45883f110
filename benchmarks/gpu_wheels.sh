#!/usr/bin/env bash
# Download the wheels a lent GPU machine lacks (its image has torch, accelerate, older transformers, no
# diffusers; ../shared/reference.md "GPU runs") into .gpu-wheels/ (git-ignored, ~32 MB), for
# benchmarks/gpu_run.sh there (pytest too, for tests/test_gpu.py). Run here, where the package registries are reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-.venv/bin/pip}"
mkdir -p .gpu-wheels
"$PIP" download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d .gpu-wheels \
  diffusers==0.42.1 transformers==5.24.0 huggingface_hub==2.4.0 httpx2==2.16.2 httpcore2==2.16.2 \
  truststore==0.10.5 hf-xet==1.8.0 typer==0.29.2 pydantic==2.14.4 pydantic_core==2.50.5 \
  annotated-types==0.8.0 typing-inspection==0.4.5 importlib_metadata==10.2.0 peft==0.21.2 \
  tokenizers==0.23.3 annotated-doc==0.0.7 typing_extensions==4.16.0 anyio==4.16.0 \
  pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 Pygments==2.21.0
du -sh .gpu-wheels
