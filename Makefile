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

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, from the exact spec: nothing later may pull another build of it
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/python -m trainer.programs.demo

test: install
	$(BIN)/python -m ruff check trainer shards tests
	$(BIN)/python -m pytest -q -ra tests

test-fast: install
	$(BIN)/python -m pytest -q -ra -m "not slow" tests

bench: install
	$(BIN)/python -m shards.bench

clean:
	rm -rf $(VENV) build *.egg-info
