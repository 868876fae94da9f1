"""The kernels compile for real GPUs (PTX + ptxas for sm_80 and sm_90), checked without a GPU.

A separate process runs :mod:`tests.kernels.gpu_codegen` without TRITON_INTERPRET (this process has the
kernels in interpreter form) and with its own Triton cache, so every kernel is really compiled.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]


def _ptxas_available() -> bool:
    import triton

    return (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists()


def _run(args, tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path / "cache"),
               TRITON_DEFAULT_FP_FUSION="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "tests.kernels.gpu_codegen", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)


@pytest.mark.skipif(not _ptxas_available(), reason="the triton wheel has no NVIDIA ptxas here")
def test_kernels_compile_for_hopper_quick(tmp_path):
    """The riskiest kernels, one variant each, for sm_90 (the full sweep is the slow test below)."""
    r = _run(["--quick", "90"], tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.skipif(not _ptxas_available(), reason="the triton wheel has no NVIDIA ptxas here")
def test_every_kernel_variant_compiles_for_ampere_and_hopper(tmp_path):
    r = _run(["80", "90"], tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
