# The README's two commands: `make demo` and `make test`. Both create and reuse a local .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mmfree-installed
# pytest workers: the suite is CPU-bound; MMFREE_JOBS=1 for a serial run
JOBS   ?= $(or $(MMFREE_JOBS),2)

.PHONY: demo test test-all venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	# torch first and pinned: 2.13.0 is the CPU wheel these machines install offline;
	# on a GPU host keep your CUDA build (pip leaves an installed torch alone).
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: $(STAMP)
	$(BIN)/mmfree demo

test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadgroup

# everything, the slow tests too
test-all: $(STAMP)
	MMFREE_SLOW=1 $(BIN)/python -m pytest -n $(JOBS) --dist loadgroup

clean:
	rm -rf build .pytest_cache
