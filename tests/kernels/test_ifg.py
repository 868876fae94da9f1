"""The fused i/f/g projections (one pass over the input for the three quantisers): Triton under the
interpreter vs the naive twin (three BitLinears), outputs and gradients by name; codes exact."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from mmfree.pymodel.kernels import bitlinear as FB  # noqa: E402
from mmfree.pymodel.kernels import ifg as IFG  # noqa: E402
from tests.kernels._tol import assert_close  # noqa: E402
from tests.kernels.test_bitlinear import _flip_allowance  # noqa: E402

SHAPES = [(2, 9, 60, 60), (1, 1, 100, 100)]        # (batch, time, K, N): the MLGRU's d -> d, a decode token


def _inputs(shape, dtype, device, seed=0):
    B, T, K, N = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, K, generator=g)
    nws = 1 + 0.3 * torch.randn(3, K, generator=g)
    ws = 0.05 * torch.randn(3, N, K, generator=g)
    return (x.to(device, dtype).requires_grad_(), nws.to(device).requires_grad_(), ws.to(device).requires_grad_())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_one_pass_codes_equal_the_single_projection_kernel(dtype, device):
    """rstd once, then per projection: the codes, s and rstd of bitlinear.act_quant, bit for bit."""
    x, nws, _ = _inputs(SHAPES[0], dtype, device)
    x2 = x.detach().reshape(-1, SHAPES[0][2])
    q, rstd, s = IFG.act_quant_multi(x2, nws.detach(), 1e-8)
    for p in range(3):
        qp, rstdp, sp = FB.act_quant(x2, nws.detach()[p], 1e-8)
        assert torch.equal(q[p], qp) and torch.equal(s[p], sp) and torch.equal(rstd, rstdp), p


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}T{}K{}N{}".format(*s))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_ifg_matches_naive(shape, dtype, device):
    x, nws, ws = _inputs(shape, dtype, device, seed=1)
    g = torch.randn(3, *shape[:2], shape[3], generator=torch.Generator().manual_seed(2)).to(device, dtype)
    got_out = IFG.ifg(x, nws, ws, 1e-8)
    got = dict(zip(("dx", "dnorm_w", "dw"), torch.autograd.grad(got_out, (x, nws, ws), g)))
    ref_out = IFG.ifg_naive(x, nws, ws, 1e-8)
    ref = dict(zip(("dx", "dnorm_w", "dw"), torch.autograd.grad(ref_out, (x, nws, ws), g)))
    assert got_out.shape == (3, *shape[:2], shape[3]) and got_out.dtype == dtype
    extra = max(_flip_allowance(x, nws[p], ws[p], 1e-8) for p in range(3))
    assert_close("out", got_out, ref_out, dtype, extra=extra)
    for name in ("dx", "dnorm_w", "dw"):
        assert_close(name, got[name], ref[name], dtype)


def test_shape_mismatch_is_a_clear_error(device):
    x, nws, ws = _inputs(SHAPES[0], torch.float32, device)
    with pytest.raises(ValueError, match="expected \\[P, K\\] and \\[P, N, K\\]"):
        IFG.ifg(x, nws[:, :50], ws, 1e-8)
