# sdlite developer commands. `make test` and `make demo` install everything they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SDLITE := $(VENV)/bin/sdlite
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0
# Tests and the demo never touch the network for weights.
OFFLINE := HF_HUB_OFFLINE=1
# Test workers (pytest-xdist, one thread each): on the 2-core machines CI and development run on, a third worker
# fills the time the others wait on the processes their tests start. Files marked xdist_group stay on one
# worker, so their module-scoped fixtures (reference runs, goldens) are made once.
WORKERS ?= 3

.PHONY: install test lint demo bench bench-gpu gpu-wheels default-model mutants clean

install: $(STAMP)

# torch goes in first, pinned, so pip takes the local CPU wheel and never pulls CUDA packages.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(OFFLINE) $(PY) -m pytest -q -n $(WORKERS) --dist loadgroup

# Break sdlite on purpose, one way at a time, and check the reliability suite notices each break.
mutants: install
	$(OFFLINE) $(PY) tests/reliability/mutants.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The built-in model (no --model): a few scenes, one of them a combination never shown in training; then a
# drawn red circle recoloured (image-to-image) and its background repainted (inpainting), and the forward noise.
demo: install
	$(OFFLINE) $(SDLITE) sample "a red circle on a blue background" "a yellow triangle on a black background" \
		"a white square on a green background" "a purple circle on a black background" \
		--num-images 2 --seed 42 --out build/demo --grid
	$(OFFLINE) $(PY) examples/make_scene.py build/demo/inputs
	$(OFFLINE) $(SDLITE) sample "a yellow circle on a blue background" --init-image build/demo/inputs/red-circle.png \
		--strength 0.6 --num-images 4 --seed 42 --out build/demo/recolour --grid --save-progress 6
	$(OFFLINE) $(SDLITE) sample "a red circle on a green background" --init-image build/demo/inputs/red-circle.png \
		--mask build/demo/inputs/background-mask.png --num-images 4 --seed 42 --out build/demo/inpaint --grid
	$(OFFLINE) $(SDLITE) noise build/demo/inputs/red-circle.png --out build/demo/noise.png --frames 11 --force

# Retrain the built-in model from scratch with sdlite's own commands (under an hour on 2 cores).
default-model: install
	$(OFFLINE) PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/train_default_model.sh build/default-model sdlite sdlite/default_model

# One table: every figure next to its baseline, measured in the same run (CPU, about 5 minutes).
bench: install
	$(OFFLINE) $(PY) benchmarks/bench.py --markdown

# SD v1.5 architecture at 512x512 on a GPU (not for CI; `--smoke` checks it on CPU).
bench-gpu: install
	$(OFFLINE) $(PY) benchmarks/bench_gpu.py

# The wheels a lent GPU machine lacks, for `bash benchmarks/gpu_run.sh` there (carry .gpu-wheels).
gpu-wheels: install
	PIP=$(VENV)/bin/pip bash benchmarks/gpu_wheels.sh

clean:
	rm -rf build outputs .pytest_cache .ruff_cache
