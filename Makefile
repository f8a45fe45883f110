# sdlite developer commands. `make test` and `make demo` install everything they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SDLITE := $(VENV)/bin/sdlite
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0
# Tests and the demo never touch the network for weights.
OFFLINE := HF_HUB_OFFLINE=1

.PHONY: install test lint demo bench clean

install: $(STAMP)

# torch goes in first, pinned, so pip takes the local CPU wheel and never pulls CUDA packages.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(OFFLINE) $(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Until sdlite ships its own trained default model, the demo builds a tiny random one (seconds on a CPU).
demo: install
	$(OFFLINE) $(SDLITE) init build/demo-model --preset tiny --seed 0 --force
	$(OFFLINE) $(SDLITE) sample "a red circle on a blue background" "a green square on a white background" \
		--model build/demo-model --num-images 2 --seed 42 --steps 25 --out build/demo --grid

bench: install
	$(OFFLINE) $(PY) benchmarks/bench_sample.py
	$(OFFLINE) $(PY) benchmarks/bench_train.py

clean:
	rm -rf build outputs .pytest_cache .ruff_cache
