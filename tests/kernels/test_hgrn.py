"""MLGRU scans: sequential and chunked Triton kernels (plain and gate-fused) vs their naive twins, and the
hardware-exact integer scan vs the numerics primitive (exact)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from mmfree.pymodel import numerics as N  # noqa: E402
from mmfree.pymodel.kernels import hgrn as K  # noqa: E402
from mmfree.pymodel.model import hgrn_recurrence  # noqa: E402
from tests.kernels._tol import assert_close  # noqa: E402

B, T, D = 2, 63, 60
# chunk 16 gives 4 chunks of T = 63 (the last one partial)
CASES = [("seq", 64, False, torch.float32), ("seq", 64, True, torch.float32), ("chunk", 16, False, torch.float32),
         ("chunk", 16, True, torch.float32), ("seq", 64, True, torch.bfloat16), ("chunk", 16, False, torch.bfloat16)]


def _ids(c):
    return f"{c[0]}{c[1]}-{'h0' if c[2] else 'noh0'}-{'fp32' if c[3] == torch.float32 else 'bf16'}"


def _grads(out, inputs, seed=7):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device, out.dtype)
    return torch.autograd.grad(out, [t for t in inputs if t is not None], g)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_scan_matches_naive(case, device):
    mode, chunk, use_h0, dtype = case
    gen = torch.Generator().manual_seed(0)
    f = torch.sigmoid(torch.randn(B, T, D, generator=gen) + 2).to(device, dtype).requires_grad_()
    c = torch.randn(B, T, D, generator=gen).to(device, dtype).requires_grad_()
    h0 = torch.randn(B, D, generator=gen).to(device).requires_grad_() if use_h0 else None
    h, h_last = K.hgrn(f, c, h0, mode=mode, chunk=chunk)
    r, r_last = K.hgrn_naive(f, c, h0)
    assert h.dtype == dtype and torch.equal(h_last, h[:, -1])
    assert_close("h", h, r, dtype)
    names = ["df", "dc"] + (["dh0"] if use_h0 else [])
    for name, a, b in zip(names, _grads(h, (f, c, h0)), _grads(r, (f, c, h0))):
        assert_close(name, a, b, dtype)


@pytest.mark.parametrize("case", [("seq", 64, True, True, torch.float32), ("chunk", 16, True, False, torch.float32),
                                  ("seq", 64, False, False, torch.float32), ("chunk", 16, True, True, torch.bfloat16)],
                         ids=["seq-lb-h0-fp32", "chunk16-lb-fp32", "seq-nolb-fp32", "chunk16-lb-h0-bf16"])
def test_gated_scan_matches_naive(case, device):
    mode, chunk, use_lb, use_h0, dtype = case
    gen = torch.Generator().manual_seed(1)
    i_pre = torch.randn(B, T, D, generator=gen).to(device, dtype).requires_grad_()
    f_pre = (2 * torch.randn(B, T, D, generator=gen)).to(device, dtype).requires_grad_()
    lb = torch.rand(D, generator=gen).to(device).requires_grad_() if use_lb else None
    h0 = torch.randn(B, D, generator=gen).to(device).requires_grad_() if use_h0 else None
    h, _ = K.hgrn_gated(i_pre, f_pre, lb, h0, mode=mode, chunk=chunk)
    r, _ = K.hgrn_gated_naive(i_pre, f_pre, lb, h0)
    assert_close("h", h, r, dtype)
    names = ["di", "df"] + (["dlb"] if use_lb else []) + (["dh0"] if use_h0 else [])
    for name, a, b in zip(names, _grads(h, (i_pre, f_pre, lb, h0)), _grads(r, (i_pre, f_pre, lb, h0))):
        assert_close(name, a, b, dtype)


def test_matches_the_model_recurrence(device):
    """The hook contract: same values and gradients as model.hgrn_recurrence (fp32)."""
    gen = torch.Generator().manual_seed(2)
    f = torch.rand(1, 33, 17, generator=gen).to(device).requires_grad_()
    c = torch.randn(1, 33, 17, generator=gen).to(device).requires_grad_()
    h, last = K.hgrn(f, c, mode="seq")
    r, r_last = hgrn_recurrence(f, c)
    assert_close("h", h, r, torch.float32)
    assert_close("h", last, r_last, torch.float32)
    for name, a, b in zip(("df", "dc"), _grads(h, (f, c)), _grads(r, (f, c))):
        assert_close(name, a, b, torch.float32)


def test_auto_mode_rule():
    cpu = torch.device("cpu")
    assert K.choose_mode(1, 2048, 60, cpu) == "chunk"        # 1 program, long sequence
    assert K.choose_mode(64, 2048, 4096, cpu) == "seq"       # plenty of programs
    assert K.choose_mode(1, 100, 60, cpu) == "seq"           # too short to chunk


@pytest.mark.parametrize("use_h0", [False, True], ids=["noh0", "h0"])
def test_hardware_scan_is_exact(use_h0, device):
    """Integer scan == numerics.hgrn_update step by step, including saturation at the int32 limits."""
    gen = torch.Generator().manual_seed(3)
    s = torch.randint(-2**31, 2**31, (B, T, D), generator=gen)
    g = torch.randint(0, N.ONE_Q31 + 1, (B, T, D), generator=gen)
    g[:, :3] = N.ONE_Q31                                     # rate 1: h jumps to s
    g[:, 3:6] = 0                                            # rate 0: h holds
    h0 = torch.randint(-2**31, 2**31, (B, D), generator=gen) if use_h0 else None
    dev = lambda t: None if t is None else t.to(device)      # noqa: E731
    got = K.hgrn_hw_int(dev(s), dev(g), dev(h0)).cpu()
    ref = K.hgrn_hw_int_naive(s, g, h0)
    assert got.dtype == torch.int64
    assert torch.equal(got, ref)
    loop = torch.zeros_like(s[:, 0]) if h0 is None else h0.clone()
    for t in range(T):                                       # the primitive itself, once more
        loop = N.hgrn_update(loop, s[:, t], g[:, t])
        assert torch.equal(got[:, t], loop)


def test_bad_shapes_are_clear(device):
    f = torch.rand(1, 4, 5, device=device)
    with pytest.raises(ValueError, match="h0 must be"):
        K.hgrn(f, f, torch.zeros(2, 5, device=device))
    with pytest.raises(ValueError, match="mode must be"):
        K.hgrn(f, f, mode="fast")
