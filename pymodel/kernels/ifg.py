"""The MLGRU's three input projections (i, f, g) as one fused BitLinear: one pass over the input.

Contract: for ``x [..., K]``, norm weights ``norm_ws [P, K]`` and weights ``ws [P, N, K]`` (P = 3: i_proj,
f_proj, g_proj, which read the same normalised input ``a``), the values and gradients of
``[bitlinear(x, norm_ws[p], ws[p], eps) for p in range(P)]`` (:mod:`mmfree.pymodel.kernels.bitlinear`: the
float model's BitLinear, fake-quant numerics), returned as ``[P, ..., N]``.

What is shared: RMSNorm's ``rstd`` is a function of x alone, so one row kernel (``_act_quant_multi_kernel``)
reads each row of x once, computes rstd once and, for each projection, ``y = x rstd nw_p``, its per-token
scale and int8 codes; the codes equal :func:`bitlinear.act_quant`'s for each projection bit for bit (same
operations in the same order; tested). The products are the int8 GEMMs of ``bitlinear`` (P launches: each
projection has its own codes, token scales and weight scale, so the three products do not concatenate into
one GEMM without a block-diagonal operand). Backward: per projection ``dy_p = g_p t_p / sw_p`` (the backend of
:func:`bitlinear.bwd_backend`), the RMSNorm backward per projection summed in fp32 (``dx``), ``dnorm_w_p``,
and ``dw_p = g_p.T (q_p / s_p)`` with the codes recomputed by the same one-pass row kernel.

:func:`ifg_naive` is the plain-torch twin (three :func:`bitlinear.bitlinear_naive`). ``install`` sets it as
``MLGRU.ifg`` (sequences of more than one token; decoding keeps the three BitLinears).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mmfree.pymodel.kernels import bitlinear as FB
from mmfree.pymodel.kernels._triton import cast, check_device, interpreting, out_dtype_of, rint, row_block, span64


@triton.jit
def _act_quant_multi_kernel(X, NW, Q, RSTD, S, M, K, stride_x, eps, P: tl.constexpr,
                            ROUND_Y: tl.constexpr, STORE_Q: tl.constexpr, EMU: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Rows of X, read once: rstd = rsqrt(mean(x^2) + eps); per projection p: y = (x rstd) nw_p,
    s_p = 127 / max|y|, q_p = round(y s_p). The arithmetic of bitlinear._act_quant_kernel, op for op."""
    pid = tl.program_id(0)
    rows = span64(pid, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    rmask = rows < M
    cmask = cols < K
    mask = rmask[:, None] & cmask[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    one = tl.zeros((BLOCK_M,), tl.float32) + 1.0
    ms = tl.math.div_rn(tl.sum(x * x, axis=1), tl.zeros((BLOCK_M,), tl.float32) + K)
    rstd = tl.math.div_rn(one, tl.sqrt_rn(ms + eps))
    tl.store(RSTD + rows, rstd, mask=rmask)
    xr = x * rstd[:, None]
    for p in tl.static_range(P):
        nw = tl.load(NW + p * K + cols, mask=cmask, other=0.0).to(tl.float32)
        y = xr * nw[None, :]
        if ROUND_Y:
            y = cast(y, X.dtype.element_ty, EMU).to(tl.float32)
        amax = tl.max(tl.abs(y), axis=1)
        s = 127.0 * tl.math.div_rn(one, tl.maximum(amax, 1e-5))
        tl.store(S + p * M + rows, s, mask=rmask)
        if STORE_Q:
            v = tl.minimum(tl.maximum(y * s[:, None], -128.0), 127.0)
            tl.store(Q + p * M * K + rows[:, None] * K + cols[None, :], rint(v).to(tl.int8), mask=mask)


def act_quant_multi(x2: torch.Tensor, norm_ws: torch.Tensor, eps: float):
    """(codes int8 ``[P, M, K]``, rstd fp32 ``[M]``, s fp32 ``[P, M]``) of rows ``x2 [M, K]`` for the P norm
    weights ``norm_ws [P, K]``, reading x once."""
    M, K = x2.shape
    P = norm_ws.shape[0]
    bm, bk = row_block(K)
    q = torch.empty((P, M, K), dtype=torch.int8, device=x2.device)
    rstd = torch.empty(M, dtype=torch.float32, device=x2.device)
    s = torch.empty((P, M), dtype=torch.float32, device=x2.device)
    if M:
        _act_quant_multi_kernel[(triton.cdiv(M, bm),)](
            x2, norm_ws.contiguous(), q, rstd, s, M, K, x2.stride(0), float(eps), P=P,
            ROUND_Y=x2.dtype in (torch.bfloat16, torch.float16), STORE_Q=True, EMU=interpreting(),
            BLOCK_M=bm, BLOCK_K=bk, num_warps=4 if bk < 4096 else 8)
    return q, rstd, s


class _FusedIFG(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, norm_ws, ws, eps, out_dtype):
        P, N, K = ws.shape
        if x.shape[-1] != K or norm_ws.shape != (P, K):
            raise ValueError(f"projection shapes do not match: x [..., {x.shape[-1]}], norm weights "
                             f"{tuple(norm_ws.shape)}, weights {tuple(ws.shape)} (expected [P, K] and [P, N, K])")
        shape = x.shape
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.reshape(-1, K)
            if x2.stride(-1) != 1:
                x2 = x2.contiguous()
            q, rstd, s = act_quant_multi(x2, norm_ws, eps)
            sws = [FB.weight_scale(ws[p]) for p in range(P)]
            ts = [FB.ternarize(ws[p], sws[p]) for p in range(P)]
            out = torch.stack([FB.fwd_gemm(q[p], ts[p], s[p], sws[p], out_dtype) for p in range(P)])
        ctx.save_for_backward(x2, norm_ws, rstd, s, torch.stack(ts), torch.stack(sws))
        ctx.eps, ctx.shape, ctx.dtypes = eps, shape, (x.dtype, norm_ws.dtype, ws.dtype)
        return out.reshape(P, *shape[:-1], N)

    @staticmethod
    def backward(ctx, grad):
        x2, norm_ws, rstd, s, ts, sws = ctx.saved_tensors
        x_dtype, nw_dtype, w_dtype = ctx.dtypes
        P, N, K = ts.shape
        backend = FB.bwd_backend(N, K)
        dx = dnw = dw = None
        with torch.autocast(x2.device.type, enabled=False):
            g = grad.reshape(P, -1, N).contiguous()
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                acc, dnws = torch.zeros(x2.shape, dtype=torch.float32, device=x2.device), []
                for p in range(P):
                    dy = ((g[p] @ ts[p].to(g.dtype)) / sws[p].to(g.dtype) if backend == "torch"
                          else FB.bwd_dy(g[p], ts[p], sws[p], g.dtype))
                    dxp, dnwp = FB.norm_bwd(x2, norm_ws[p], dy, rstd, torch.float32)
                    acc += dxp
                    dnws.append(dnwp)
                dx = acc.to(x_dtype).reshape(ctx.shape)
                dnw = torch.stack(dnws).to(nw_dtype)
            if ctx.needs_input_grad[2]:
                q, _, _ = act_quant_multi(x2, norm_ws, ctx.eps)           # the forward's codes, recomputed
                dws = [((g[p].T @ (q[p].to(g.dtype) / s[p].to(g.dtype)[:, None])).float() if backend == "torch"
                        else FB.bwd_dw(g[p], q[p], s[p])) for p in range(P)]
                dw = torch.stack(dws).to(w_dtype)
        return dx, dnw, dw, None, None


def ifg(x: torch.Tensor, norm_ws: torch.Tensor, ws: torch.Tensor, eps: float) -> torch.Tensor:
    """The P projections of ``x [..., K]`` (norm weights ``[P, K]``, weights ``[P, N, K]``) as ``[P, ..., N]``:
    see the module docstring. float64 inputs take the naive path."""
    if x.dtype == torch.float64 or ws.dtype == torch.float64:
        return ifg_naive(x, norm_ws, ws, eps)
    check_device(x, norm_ws, ws)
    return _FusedIFG.apply(x, norm_ws, ws, float(eps), out_dtype_of(x))


def ifg_naive(x: torch.Tensor, norm_ws: torch.Tensor, ws: torch.Tensor, eps: float) -> torch.Tensor:
    """Plain-torch twin of :func:`ifg`: the P BitLinears one after the other (autograd through torch ops)."""
    return torch.stack([FB.bitlinear_naive(x, norm_ws[p], ws[p], eps) for p in range(ws.shape[0])])
