"""GEMM pointer offsets are int64: ``row * stride`` stays exact past 2**31 elements.

The CPU interpreter cannot hold a > 2**31-element operand in reasonable time, so the CPU test runs the
offset arithmetic itself (:func:`span64`, what every row/column index of the BitLinear kernels is made
from) at a program id whose offsets exceed 2**31, and checks that no kernel builds a row index any other
way. The end-to-end GEMM at M x N > 2**31 is the ``gpu`` test below.
"""

from __future__ import annotations

import inspect
import re

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from mmfree.pymodel.kernels import _triton as KT  # noqa: E402


@triton.jit
def _offsets_kernel(OUT, base_pid, stride, BLOCK: tl.constexpr):
    rows = KT.span64(base_pid + tl.program_id(0), BLOCK)
    tl.store(OUT + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK), rows * stride)


def test_span64_offsets_exceed_int32(device):
    out = torch.zeros(2 * 16, dtype=torch.int64, device=device)
    base_pid, stride = 4200, 32000                       # rows ~67,200 x a 32k-vocab head's stride > 2**31
    _offsets_kernel[(2,)](out, base_pid, stride, BLOCK=16)
    want = torch.tensor([(base_pid * 16 + i) * stride for i in range(32)], dtype=torch.int64)
    assert int(want.max()) > 2**31
    assert torch.equal(out.cpu(), want)


@pytest.mark.parametrize("module", ["bitlinear", "bitlinear_hw"])
def test_no_int32_row_indices_left(module):
    import importlib

    src = inspect.getsource(importlib.import_module(f"mmfree.pymodel.kernels.{module}"))
    # an index made as `pid * BLOCK + tl.arange(...)` is int32; every one goes through span64 instead
    assert not re.search(r"\*\s*BLOCK\w*\s*\+\s*tl\.arange", src)
    assert "span64(" in src


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (~25 GB)")
def test_head_gemm_past_int32_offsets():
    """A 32k-vocab head on 68,000 tokens: M x N = 2.18e9 > 2**31 output elements, checked against torch."""
    from mmfree.pymodel.kernels import bitlinear as FB
    from tests.kernels._tol import assert_close

    torch.manual_seed(0)
    x = torch.randn(68000, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(32000, 256, device="cuda", dtype=torch.bfloat16)
    nw = torch.ones(256, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        y = FB.bitlinear(x, nw, w, 1e-6)
        ref = FB.bitlinear_naive(x[-1024:], nw, w, 1e-6)          # per-token quantisation: rows are independent
    assert_close("out", y[-1024:], ref, torch.bfloat16)           # the rows whose offsets pass 2**31
