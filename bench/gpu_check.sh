#!/usr/bin/env bash
# GPU-only checks and benchmarks of mmfree, in one run of about 8 minutes on one CUDA GPU.
#
#   bash bench/gpu_check.sh              # from the repository root, on a machine with a CUDA GPU
#   OUT=/some/dir BUDGET_S=520 bash bench/gpu_check.sh
#
# What it does, in order (each step under its own time limit, all within BUDGET_S seconds, default 510):
#   1. wheels: installs any .whl/*.whl (e.g. fla-core, for the comparison in gpu_bitlinear.py) into
#      /tmp/site with pip --no-index and puts it on PYTHONPATH (for machines without a package index);
#   2. this package: `pip install --no-deps --no-build-isolation --no-index -e .` into the running python
#      (torch, triton, numpy, safetensors, tokenizers, tqdm must already be there; amaranth is not needed),
#      else a plain install into /tmp/mmfree-site;
#   3. prints nvidia-smi, the GPU and the versions of python, torch, triton, numpy and fla-core;
#   4. pytest tests/kernels tests/pymodel/test_train.py -x -v on CUDA (TRITON_INTERPRET unset, so the
#      kernels run natively; 8 xdist workers and a per-test timeout of 300 s where pytest-xdist and
#      pytest-timeout are installed; -v prints each test's outcome by name as it ends, so a run cut short
#      still says which test failed; junit XML kept; step limit 300 s). The per-test timeout is only a
#      hang guard: every worker autotunes the GEMMs itself, so the first tests that run the fused kernels
#      take 70-120 s each (a 120 s timeout left no margin). Add MMFREE_GPU_SLOW=1 to also run the @slow
#      hardware-exact training test on CUDA (63 s on an H100);
#   5. `mmfree energy --model default --backends gpu --tokens 256 --json` (NVML energy of the float model
#      decoding on the GPU), after 5 s of NVML idle power for context;
#   6. python bench/gpu_bitlinear.py --record --json   (fills <!-- gpu-bitlinear --> in docs/training.md)
#   7. python bench/gpu_train.py --steps 1 --record --json   (fills <!-- gpu-train --> in docs/training.md;
#      one timed step after two warm-ups: the naive configurations take about 6 s per step at 2 x 2048
#      tokens, so the default --steps 4 alone takes about 4 minutes)
# Measured on one H100 (2026-11-26): install + versions 14 s, pytest over 200 s (cut short there),
# on one H200 (2026-11-26, 8 workers): pytest 185-204 s, slowest tests 102-116 s
# (test_train_runs_on_the_triton_kernels[fake]) and 67-81 s (the fp32 fused BitLinear tests),
# energy 15 s, gpu_bitlinear.py 82 s, gpu_train.py with --steps 4 over 120 s for 370M alone.
# Results go to $OUT (default build/gpu_check): log (everything printed), env.txt, pytest.xml,
# energy.json, gpu_bitlinear.json, gpu_train.json and training.md (docs/training.md after the benches,
# copied after each step so that a run cut short still returns what it measured). At most 8 files.
# Exit status: 0 when every step passed, else 1 (each step still runs after an earlier one failed).

set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu_check}
mkdir -p "$OUT"
exec > >(tee "$OUT/log") 2>&1
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-510}
START=$SECONDS
STATUS=0

left() { echo $((BUDGET_S - (SECONDS - START))); }
# step NAME MAX_SECONDS CMD...: runs CMD under min(MAX_SECONDS, what is left of the budget)
step() {
    local name=$1 max=$2 lim
    shift 2
    lim=$(left)
    ((lim > max)) && lim=$max
    if ((lim < 10)); then
        echo "=== $name: skipped, the time budget is spent"
        STATUS=1
        return
    fi
    echo "=== $name (limit ${lim}s, $((SECONDS - START))s into the run)"
    local t0=$SECONDS rc=0
    timeout --kill-after=10 "$lim" "$@" || rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0))s$( ((rc == 124 || rc == 137)) && echo ' (TIMED OUT)')"
    ((rc == 0)) || STATUS=1
}

if compgen -G ".whl/*.whl" >/dev/null; then
    echo "=== wheels: $(ls .whl)"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
echo "=== installing mmfree"
if ! $PY -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>/tmp/mmfree-install.err; then
    cat /tmp/mmfree-install.err
    echo "editable install failed; plain install into /tmp/mmfree-site"
    $PY -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/mmfree-site . \
        && export PYTHONPATH=/tmp/mmfree-site${PYTHONPATH:+:$PYTHONPATH}
fi

{
    date -u
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm --format=csv
    $PY - <<'EOF'
import platform, sys
import numpy, torch, triton
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__, "numpy", numpy.__version__)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", p.multi_processor_count, "SMs", f"sm_{p.major}{p.minor}")
else:
    print("torch sees no CUDA GPU")
try:
    import fla
    print("fla-core", getattr(fla, "__version__", "?"), fla.__file__)
except Exception as exc:
    print("fla-core unavailable:", type(exc).__name__, exc)
import mmfree.pymodel.kernels.bitlinear as b
print("mmfree kernels from", b.__file__)
EOF
} 2>&1 | tee "$OUT/env.txt"

TIMEOUT_OPT=()
$PY -c "import pytest_timeout" 2>/dev/null && TIMEOUT_OPT=(--timeout 300)
XDIST_OPT=()
$PY -c "import xdist" 2>/dev/null && XDIST_OPT=(-n 8)
step "pytest (CUDA)" 300 $PY -m pytest tests/kernels tests/pymodel/test_train.py -x -v --tb=short \
    -p no:cacheprovider -W ignore::pytest.PytestConfigWarning "${XDIST_OPT[@]}" "${TIMEOUT_OPT[@]}" \
    --junitxml="$OUT/pytest.xml"
if [[ ${MMFREE_GPU_SLOW:-0} == 1 ]]; then
    step "pytest (CUDA, hardware-exact training on the kernels, a @slow test)" 90 env MMFREE_SLOW=1 \
        $PY -m pytest "tests/kernels/test_install.py::test_train_runs_on_the_triton_kernels[hardware]" -v \
        -p no:cacheprovider -W ignore::pytest.PytestConfigWarning "${TIMEOUT_OPT[@]}"
fi

step "NVML idle power (5 s)" 20 $PY - <<'EOF'
import time
import pynvml
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
a, t0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h), time.perf_counter()
time.sleep(5)
b, t1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h), time.perf_counter()
print(f"idle: {(b - a) / 1000 / (t1 - t0):.1f} W over {t1 - t0:.1f} s (NVML total-energy counter); "
      f"power.draw now {pynvml.nvmlDeviceGetPowerUsage(h) / 1000:.1f} W")
EOF
step "mmfree energy (gpu row)" 90 bash -c "$PY -m mmfree energy --model default --backends gpu --tokens 256 --json \
    > '$OUT/energy.json'; rc=\$?; cat '$OUT/energy.json'; exit \$rc"

step "gpu_bitlinear.py" 170 bash -c "$PY bench/gpu_bitlinear.py --record --json > '$OUT/gpu_bitlinear.json'"
cp docs/training.md "$OUT/training.md"
sed -n '/<!-- gpu-bitlinear:begin -->/,/<!-- gpu-bitlinear:end -->/p' docs/training.md

step "gpu_train.py" 260 bash -c "$PY bench/gpu_train.py --steps 1 --record --json > '$OUT/gpu_train.json'"
cp docs/training.md "$OUT/training.md"
sed -n '/<!-- gpu-train:begin -->/,/<!-- gpu-train:end -->/p' docs/training.md

echo "=== done in $((SECONDS - START))s, status $STATUS"
exit $STATUS
