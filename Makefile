# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing: torch 2.13.0 first (the local CPU build; an
# unpinned torch would pull several GB of CUDA packages), then this project
# with its `dev` extra. A machine whose python already has torch (a GPU box)
# keeps its own build: the venv then sees the system site-packages.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-gpu clean

$(STAMP): pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  if $(PYTHON) -c "import torch" 2>/dev/null; then \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else \
	    $(PYTHON) -m venv $(VENV); \
	  fi; \
	fi
	$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/wsl demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	@for b in benchmarks/*.py; do [ "$$b" = benchmarks/gpu.py ] && continue; echo "== $$b"; $(PY) $$b || exit 1; done

# Every benchmark's CUDA path on one GPU (< 8 minutes), one JSON line each; exits non-zero without CUDA.
bench-gpu: $(STAMP)
	$(PY) benchmarks/gpu.py

clean:
	rm -rf $(VENV) wsl-store demo-out .pytest_cache
