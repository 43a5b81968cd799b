# Two commands do all the set-up: `make demo` and `make test` (see README).
# The venv is created once; the stamp file makes a second run install nothing.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# the index torch is installed from (empty: pip's own, where PyPI's Linux x86-64 wheel is a CUDA build), e.g.
# TORCH_INDEX=https://download.pytorch.org/whl/cu128 for a named CUDA build (docs/performance.md, "GPU check")
TORCH_INDEX ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.cmg-installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export DS_ACCELERATOR ?= cpu
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install demo test test-numerics test-dist-default test-fast bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, from the exact spec: nothing later may pull another build of it
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
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

# the GPU check (tests/gpu, marker gpu; docs/performance.md, "GPU check"): one command on a fresh GPU machine, its
# report under GPU_REPORT. DeepSpeed must pick its CUDA accelerator, so the recipe runs without DS_ACCELERATOR=cpu;
# it refuses to run (rather than skip every test) where torch sees no GPU.
GPU_REPORT ?= gpu_report
gpu-check: install
	@$(BIN)/python -c "import sys, torch; sys.exit(None if torch.cuda.is_available() else \
		'gpu-check: torch ' + torch.__version__ + ' sees no CUDA GPU (a CPU build? make clean, then ' \
		'make gpu-check TORCH_INDEX=https://download.pytorch.org/whl/cu128)')"
	env -u DS_ACCELERATOR CMG_GPU_REPORT=$(GPU_REPORT) $(BIN)/python -m pytest -q -ra -m gpu --durations=0 tests/gpu
	@echo "gpu-check: report in $(GPU_REPORT)/report.md and report.json"

clean:
	rm -rf $(VENV) build *.egg-info
