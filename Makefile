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

.PHONY: install demo test test-numerics test-dist-default test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, from the exact spec: nothing later may pull another build of it
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# DEMO_ARGS: the demo's options and job overrides (python -m trainer.programs.demo --help), e.g. a quick look:
# make demo DEMO_ARGS="--pretrain-clips 64 --eval-clips 60 run.max_steps=20"
DEMO_ARGS ?=
demo: install
	$(BIN)/python -m trainer.programs.demo $(DEMO_ARGS)

# KERNELS=avx2 or KERNELS=default runs the tests on the CPU kernels of a machine without AVX-512, or of any x86-64
# (trainer/programs/kernels.py; tests/README.md "Numerics")
KERNELS ?= native
RUN_ON_KERNELS = $(BIN)/python -m trainer.programs.kernels $(KERNELS)
# the suite runs in 2 pytest-xdist workers: one process leaves the second core idle most of the time (start-up,
# gloo waits, subprocesses); the tests on the local Slurm share one worker (tests/conftest.py)
TEST_WORKERS ?= 2
PYTEST = $(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadgroup --durations=10

test: install
	$(BIN)/python -m ruff check trainer shards tests
	$(RUN_ON_KERNELS) $(PYTEST) tests

# the tests that compare runs summed in another order (marker numerics), on the kernels of both other CPU kinds
test-numerics: install
	$(BIN)/python -m trainer.programs.kernels avx2 $(PYTEST) -m numerics tests
	$(BIN)/python -m trainer.programs.kernels default $(PYTEST) -m numerics tests

# CI's second command: every test of tests/dist (2 ranks against one process) on the kernels of any x86-64, the
# level at which the old fixed tolerances failed (tests/README.md, "Numerics")
test-dist-default: install
	$(BIN)/python -m trainer.programs.kernels default $(PYTEST) tests/dist

test-fast: install
	$(RUN_ON_KERNELS) $(PYTEST) -m "not slow" tests

bench: install
	$(BIN)/python -m shards.bench

clean:
	rm -rf $(VENV) build *.egg-info
