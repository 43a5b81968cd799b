# Two commands do all the set-up: `make demo` and `make test` (see README).
# The venv is created once; the stamp file makes a second run install nothing.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.cmg-installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export DS_ACCELERATOR ?= cpu
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install demo test test-numerics test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, from the exact spec: nothing later may pull another build of it
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/python -m trainer.programs.demo

# KERNELS=avx2 or KERNELS=default runs the tests on the CPU kernels of a machine without AVX-512, or of any x86-64
# (trainer/programs/kernels.py; tests/README.md "Numerics")
KERNELS ?= native
RUN_ON_KERNELS = $(BIN)/python -m trainer.programs.kernels $(KERNELS)

test: install
	$(BIN)/python -m ruff check trainer shards tests
	$(RUN_ON_KERNELS) $(BIN)/python -m pytest -q -ra tests

# the tests that compare runs summed in another order (marker numerics), on the kernels of both other CPU kinds
test-numerics: install
	$(BIN)/python -m trainer.programs.kernels avx2 $(BIN)/python -m pytest -q -ra -m numerics tests
	$(BIN)/python -m trainer.programs.kernels default $(BIN)/python -m pytest -q -ra -m numerics tests

test-fast: install
	$(RUN_ON_KERNELS) $(BIN)/python -m pytest -q -ra -m "not slow" tests

bench: install
	$(BIN)/python -m shards.bench

clean:
	rm -rf $(VENV) build *.egg-info
