"""Fused BitLinear, official fake-quant numerics: RMSNorm + per-token int8 + ternary weights + product.

Contract (the ``BitLinear.kernel`` hook, ``kernel(x, norm_w, w, eps)``): the value and the gradients of
``TernaryLinearSTE.apply(rms_norm(x, norm_w, eps), w)`` of :mod:`mmfree.pymodel.model`::

    y   = (x * rsqrt(mean(x**2) + eps)) * norm_w        fp32, rounded to x's dtype like rms_norm does
    s   = 127 / max(max|y|, 1e-5)                       per token, as torch's 127.0 / t: 127 * (IEEE 1 / t)
    q   = clamp(round_half_even(y * s), -128, 127)      int8 codes
    sw  = 1 / max(mean|w|, 1e-5)                        per tensor
    t   = clamp(round_half_even(w * sw), -1, 1)         int8 ternary
    out = (q @ t.T) / (s * sw)                          the integer product is exact (int32 accumulator)

Given rstd, the codes and s are defined bit for bit (elementwise IEEE operations and a max), on a GPU as
in the interpreter; rstd itself is a float reduction in the device's summation order, so it matches the
twin's to fp32 rounding, and a code may differ from the twin's only where that last bit moves y * s (or,
for bf16 x, y) across a rounding tie. The tests check the codes exactly at the kernel's rstd.

Backward is straight-through on both roundings: ``dy = g @ t / sw``, then the RMSNorm backward gives
``dx`` and ``dnorm_w``; ``dw = g.T @ (q / s)``.

The output is in the autocast dtype when autocast is on for x's device, else in x's dtype (the model's
torch path returns x's dtype and, under autocast, rounds the accumulator to bf16; the kernel never
rounds the accumulator). float64 inputs take the naive path (the Triton kernels compute in fp32).

Memory: the forward keeps x (the caller holds it anyway), two floats per token (rstd, s) and the int8
ternary matrix; the codes are recomputed in the backward (one cheap row pass) instead of stored.

Kernels (each launched from the autograd function below):

* ``_act_quant_kernel``   rows: RMSNorm, absmax, int8 codes (+ rstd, s); the naive twin is :func:`act_quant_naive`
* ``_ternarize_kernel``   elementwise: ternary int8 of the weight; twin :func:`ternarize_naive`
* ``_fwd_gemm_kernel``    int8 x int8 -> int32 tiles, epilogue ``/ (s * sw)``
* ``_bwd_dy_kernel``      ``g @ t / sw``
* ``_norm_bwd_kernel``    rows: RMSNorm backward, partial ``dnorm_w`` per program
* ``_bwd_dw_kernel``      ``(g / s).T @ q`` with the recomputed codes

:func:`bitlinear` is the fused path, :func:`bitlinear_naive` its plain-torch twin (autograd through
torch ops); the tests compare them output by output and gradient by gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from mmfree.pymodel.kernels._triton import (
    autotune_gemm,
    cast,
    check_device,
    dot_operand,
    dot_precision,
    gemm_blocks,
    grouped_tile,
    interpreting,
    num_sms,
    out_dtype_of,
    rint,
    row_block,
    span64,
)


# =============================================================================================
# Triton kernels
# =============================================================================================
@triton.jit
def _act_quant_kernel(X, NW, Q, RSTD, S, M, K, stride_x, stride_q, eps,
                      ROUND_Y: tl.constexpr, STORE_Q: tl.constexpr, EMU: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Rows of X: rstd = rsqrt(mean(x^2) + eps), y = (x rstd) nw, s = 127 / max|y|, q = round(y s)."""
    pid = tl.program_id(0)
    rows = span64(pid, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    rmask = rows < M
    cmask = cols < K
    mask = rmask[:, None] & cmask[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    nw = tl.load(NW + cols, mask=cmask, other=0.0).to(tl.float32)
    # Divisions are IEEE (div_rn): Triton's plain fp32 '/' (and tl.fdiv before Triton 3.9, which ignores
    # ieee_rounding) is an approximate division on NVIDIA GPUs (div.full.f32, up to 2 ulp off; the
    # interpreter's is exact), and s must be torch's value bit for bit, so that the codes are the exact
    # function of rstd that the twin computes (ties of y * s round the same way).
    one = tl.zeros((BLOCK_M,), tl.float32) + 1.0
    ms = tl.math.div_rn(tl.sum(x * x, axis=1), tl.zeros((BLOCK_M,), tl.float32) + K)
    rstd = tl.math.div_rn(one, tl.sqrt_rn(ms + eps))
    y = (x * rstd[:, None]) * nw[None, :]
    if ROUND_Y:                                   # rms_norm returns x's dtype: quantize what it returns
        y = cast(y, X.dtype.element_ty, EMU).to(tl.float32)
    amax = tl.max(tl.abs(y), axis=1)
    s = 127.0 * tl.math.div_rn(one, tl.maximum(amax, 1e-5))   # torch: 127.0 / t = t.reciprocal() * 127
    tl.store(RSTD + rows, rstd, mask=rmask)
    tl.store(S + rows, s, mask=rmask)
    if STORE_Q:
        v = tl.minimum(tl.maximum(y * s[:, None], -128.0), 127.0)   # clamp first: no FMA into rint
        tl.store(Q + rows[:, None] * stride_q + cols[None, :], rint(v).to(tl.int8), mask=mask)


@triton.jit
def _ternarize_kernel(W, SW, T, numel, BLOCK: tl.constexpr):
    """t = clamp(round(w * sw), -1, 1) as int8."""
    offs = span64(tl.program_id(0), BLOCK)
    mask = offs < numel
    sw = tl.load(SW)
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.minimum(tl.maximum(w * sw, -2.0), 2.0)
    t = tl.minimum(tl.maximum(rint(v), -1.0), 1.0)
    tl.store(T + offs, t.to(tl.int8), mask=mask)


@autotune_gemm("int8")
@triton.jit
def _fwd_gemm_kernel(Q, T, S, SW, OUT, M, N, K, stride_q, stride_t, stride_o, EMU: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """out[m, n] = (sum_k q[m, k] t[n, k]) / (s[m] * sw): int8 tensor-core tiles, exact int32 accumulator."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    rm = span64(pid_m, BLOCK_M)
    rn = span64(pid_n, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(Q + rm[:, None] * stride_q + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K), other=0)
        b = tl.load(T + rn[None, :] * stride_t + kk[:, None], mask=(rn[None, :] < N) & (kk[:, None] < K), other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)      # Triton 3.6 needs out_dtype for an int32 acc
    s = tl.load(S + rm, mask=rm < M, other=1.0)
    sw = tl.load(SW)
    out = acc.to(tl.float32) / (s[:, None] * sw)
    tl.store(OUT + rm[:, None] * stride_o + rn[None, :], cast(out, OUT.dtype.element_ty, EMU),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


@autotune_gemm("dy")
@triton.jit
def _bwd_dy_kernel(G, T, SW, DY, M, N, K, stride_g, stride_t, stride_dy,
                   PRECISION: tl.constexpr, EMU: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """dy[m, k] = (sum_n g[m, n] t[n, k]) / sw. Tiles over (M, K), reduction over N."""
    pid_m, pid_k = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(K, BLOCK_K), GROUP_M)
    rm = span64(pid_m, BLOCK_M)
    rk = span64(pid_k, BLOCK_K)
    rn = tl.arange(0, BLOCK_N).to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        nn = n0 + rn
        g = tl.load(G + rm[:, None] * stride_g + nn[None, :], mask=(rm[:, None] < M) & (nn[None, :] < N), other=0.0)
        t = tl.load(T + nn[:, None] * stride_t + rk[None, :], mask=(nn[:, None] < N) & (rk[None, :] < K), other=0)
        acc = tl.dot(dot_operand(g, g.dtype, EMU), dot_operand(t, g.dtype, EMU), acc, input_precision=PRECISION)
    sw = tl.load(SW)
    dy = acc / sw
    tl.store(DY + rm[:, None] * stride_dy + rk[None, :], cast(dy, DY.dtype.element_ty, EMU),
             mask=(rm[:, None] < M) & (rk[None, :] < K))


@autotune_gemm("dw")
@triton.jit
def _bwd_dw_kernel(G, Q, S, DW, M, N, K, stride_g, stride_q, stride_dw,
                   PRECISION: tl.constexpr, EMU: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """dw[n, k] = sum_m (g[m, n] / s[m]) q[m, k]. Tiles over (N, K), reduction over M (tokens)."""
    pid_n, pid_k = grouped_tile(tl.program_id(0), tl.cdiv(N, BLOCK_N), tl.cdiv(K, BLOCK_K), GROUP_M)
    rn = span64(pid_n, BLOCK_N)
    rk = span64(pid_k, BLOCK_K)
    rm = tl.arange(0, BLOCK_M).to(tl.int64)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        mm = m0 + rm
        g = tl.load(G + mm[:, None] * stride_g + rn[None, :], mask=(mm[:, None] < M) & (rn[None, :] < N), other=0.0)
        s = tl.load(S + mm, mask=mm < M, other=1.0)
        gs = cast(g.to(tl.float32) * (1.0 / s)[:, None], g.dtype, EMU)
        q = tl.load(Q + mm[:, None] * stride_q + rk[None, :], mask=(mm[:, None] < M) & (rk[None, :] < K), other=0)
        acc = tl.dot(dot_operand(tl.trans(gs), g.dtype, EMU), dot_operand(q, g.dtype, EMU), acc,
                     input_precision=PRECISION)
    tl.store(DW + rn[:, None] * stride_dw + rk[None, :], acc, mask=(rn[:, None] < N) & (rk[None, :] < K))


@triton.jit
def _norm_bwd_kernel(X, NW, DY, RSTD, DX, DNW, M, K, stride_x, stride_dy, stride_dx, rows_per_program,
                     EMU: tl.constexpr, BLOCK_K: tl.constexpr):
    """RMSNorm backward of y = (x rstd) nw: dx = rstd (dy nw - xhat mean(dy nw xhat)), dnw += dy xhat."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_K)
    cmask = cols < K
    nw = tl.load(NW + cols, mask=cmask, other=0.0).to(tl.float32)
    dnw = tl.zeros((BLOCK_K,), dtype=tl.float32)
    row0 = pid.to(tl.int64) * rows_per_program
    for i in range(0, rows_per_program):
        row = row0 + i
        m = cmask & ((cols * 0 + row) < M)
        x = tl.load(X + row * stride_x + cols, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + cols, mask=m, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row, mask=row < M, other=0.0)
        xhat = x * rstd
        dyn = dy * nw
        c = tl.sum(dyn * xhat, axis=0) / K
        dx = (dyn - xhat * c) * rstd
        tl.store(DX + row * stride_dx + cols, cast(dx, DX.dtype.element_ty, EMU), mask=m)
        dnw += dy * xhat
    tl.store(DNW + pid * K + cols, dnw, mask=cmask)


# =============================================================================================
# launchers (2-D inputs, contiguous rows)
# =============================================================================================
def act_quant(x2: torch.Tensor, norm_w: torch.Tensor, eps: float, store_q: bool = True):
    """Codes (int8 ``[M, K]``, or None), rstd and s (fp32 ``[M]``) of rows ``x2 [M, K]``."""
    M, K = x2.shape
    bm, bk = row_block(K)
    q = torch.empty((M, K), dtype=torch.int8, device=x2.device) if store_q else None
    rstd = torch.empty(M, dtype=torch.float32, device=x2.device)
    s = torch.empty(M, dtype=torch.float32, device=x2.device)
    if M:
        _act_quant_kernel[(triton.cdiv(M, bm),)](
            x2, norm_w, q if store_q else s, rstd, s, M, K, x2.stride(0), K, float(eps),
            ROUND_Y=x2.dtype in (torch.bfloat16, torch.float16), STORE_Q=store_q, EMU=interpreting(),
            BLOCK_M=bm, BLOCK_K=bk, num_warps=4 if bk < 4096 else 8)
    return q, rstd, s


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """``sw = 1 / max(mean|w|, 1e-5)`` as a 1-element fp32 tensor (no host synchronisation)."""
    with torch.autocast(w.device.type, enabled=False):
        return (1.0 / w.detach().float().abs().mean().clamp(min=1e-5)).reshape(1)


def ternarize(w: torch.Tensor, sw: torch.Tensor) -> torch.Tensor:
    """Ternary int8 ``[N, K]`` of ``w`` with scale ``sw``."""
    w = w.detach().contiguous()
    t = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    n = w.numel()
    BLOCK = 1024 if w.device.type == "cuda" else min(triton.next_power_of_2(max(n, 16)), 1 << 16)
    _ternarize_kernel[(triton.cdiv(n, BLOCK),)](w, sw, t, n, BLOCK=BLOCK)
    return t


def fwd_gemm(q, t, s, sw, out_dtype):
    M, K = q.shape
    N = t.shape[0]
    out = torch.empty((M, N), dtype=out_dtype, device=q.device)

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    _fwd_gemm_kernel[grid](q, t, s, sw, out, M, N, K, q.stride(0), t.stride(0), out.stride(0), EMU=interpreting(),
                           **gemm_blocks(q.device, int8=True, size=max(N, K)))
    return out


def bwd_dy(g, t, sw, dtype):
    M, N = g.shape
    K = t.shape[1]
    dy = torch.empty((M, K), dtype=dtype, device=g.device)

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(K, meta["BLOCK_K"]),)

    _bwd_dy_kernel[grid](g, t, sw, dy, M, N, K, g.stride(0), t.stride(0), dy.stride(0),
                         PRECISION=dot_precision(g.dtype), EMU=interpreting(),
                         **gemm_blocks(g.device, int8=False, size=max(N, K)))
    return dy


def bwd_dw(g, q, s):
    M, N = g.shape
    K = q.shape[1]
    dw = torch.empty((N, K), dtype=torch.float32, device=g.device)
    cfg = gemm_blocks(g.device, int8=False, size=max(N, K))
    if cfg:
        cfg = dict(cfg, BLOCK_M=cfg["BLOCK_K"], BLOCK_K=cfg["BLOCK_M"])   # reduction over tokens

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_N"]) * triton.cdiv(K, meta["BLOCK_K"]),)

    _bwd_dw_kernel[grid](g, q, s, dw, M, N, K, g.stride(0), q.stride(0), dw.stride(0),
                         PRECISION=dot_precision(g.dtype), EMU=interpreting(), **cfg)
    return dw


def norm_bwd(x2, norm_w, dy, rstd, x_dtype):
    M, K = x2.shape
    _, bk = row_block(K)
    programs = max(1, min(M, num_sms(x2.device) * 4))
    rows = triton.cdiv(M, programs)
    programs = triton.cdiv(M, rows) if M else 1
    dx = torch.empty((M, K), dtype=x_dtype, device=x2.device)
    dnw = torch.zeros((programs, K), dtype=torch.float32, device=x2.device)
    if M:
        _norm_bwd_kernel[(programs,)](x2, norm_w, dy, rstd, dx, dnw, M, K, x2.stride(0), dy.stride(0), dx.stride(0),
                                      rows, EMU=interpreting(), BLOCK_K=bk, num_warps=4 if bk < 4096 else 8)
    return dx, dnw.sum(0)


# =============================================================================================
# autograd
# =============================================================================================
class _FusedBitLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, norm_w, w, eps, out_dtype, bwd_gemm):
        shape = x.shape
        K = shape[-1]
        N = w.shape[0]
        if w.shape[1] != K or norm_w.shape != (K,):
            raise ValueError(f"BitLinear shapes do not match: x [..., {K}], norm weight {tuple(norm_w.shape)}, "
                             f"weight {tuple(w.shape)} (expected [N, {K}])")
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.reshape(-1, K)
            if x2.stride(-1) != 1:
                x2 = x2.contiguous()
            q, rstd, s = act_quant(x2, norm_w, eps)
            sw = weight_scale(w)
            t = ternarize(w, sw)
            out = fwd_gemm(q, t, s, sw, out_dtype)
        ctx.save_for_backward(x2, norm_w, rstd, s, t, sw)
        ctx.eps, ctx.shape, ctx.bwd_gemm = eps, shape, bwd_gemm
        ctx.dtypes = (x.dtype, norm_w.dtype, w.dtype)
        return out.reshape(*shape[:-1], N)

    @staticmethod
    def backward(ctx, grad):
        x2, norm_w, rstd, s, t, sw = ctx.saved_tensors
        x_dtype, nw_dtype, w_dtype = ctx.dtypes
        N, K = t.shape
        dx = dnw = dw = None
        with torch.autocast(x2.device.type, enabled=False):
            g = grad.reshape(-1, N)
            if g.stride(-1) != 1 or g.stride(0) != N:
                g = g.contiguous()
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                if ctx.bwd_gemm == "torch":
                    dy = (g @ t.to(g.dtype)) / sw.to(g.dtype)
                else:
                    dy = bwd_dy(g, t, sw, g.dtype)
                dx, dnw = norm_bwd(x2, norm_w, dy, rstd, x_dtype)
                dx = dx.reshape(ctx.shape)
                dnw = dnw.to(nw_dtype)
            if ctx.needs_input_grad[2]:
                q, _, _ = act_quant(x2, norm_w, ctx.eps)          # the forward's codes, recomputed
                if ctx.bwd_gemm == "torch":
                    dw = (g.T @ (q.to(g.dtype) / s.to(g.dtype)[:, None])).float()
                else:
                    dw = bwd_dw(g, q, s)
                dw = dw.to(w_dtype)
        return dx, dnw, dw, None, None, None


def bitlinear(x: torch.Tensor, norm_w: torch.Tensor, w: torch.Tensor, eps: float, bwd_gemm: str = "triton"):
    """Fused BitLinear (see the module docstring for the contract). ``x [..., K]``, ``norm_w [K]``, ``w [N, K]``.

    ``bwd_gemm="torch"`` runs the two backward products with torch matmuls (cuBLAS on a GPU) instead of
    the Triton GEMMs; the values are the same up to float summation order.
    """
    if x.dtype == torch.float64 or w.dtype == torch.float64:
        return bitlinear_naive(x, norm_w, w, eps)
    check_device(x, norm_w, w)
    return _FusedBitLinear.apply(x, norm_w, w, float(eps), out_dtype_of(x), bwd_gemm)


def bitlinear_torch_bwd(x, norm_w, w, eps):
    """:func:`bitlinear` with the backward products on torch matmuls (cuBLAS)."""
    return bitlinear(x, norm_w, w, eps, bwd_gemm="torch")


#: The backward-GEMM backend of each BitLinear shape class (:func:`shape_class`): cuBLAS (``"torch"``) unless
#: the Triton GEMMs won. Filled from ``bench/gpu_bitlinear.py`` (rows ``ours`` = Triton vs ``ours-cublas``; it
#: prints this table as ``bwd_gemm table``; needs a GPU), measured 2026-11-26 on one H100 80GB HBM3, 16,384
#: tokens, bf16 autocast, fwd+bwd ms (docs/training.md, GPU benchmarks). A class with no measurement: cuBLAS.
BWD_GEMM_TABLE = {
    ("square", "small"): "triton",   # 370M d->d 1024x1024: Triton 1.423, cuBLAS 1.448 (within 2 %)
    ("square", "large"): "torch",    # 1.3B d->d 2048x2048: Triton 2.053, cuBLAS 1.703
    ("wide", "large"): "torch",      # 370M gate 1024->5632: 2.560 vs 1.904; 1.3B gate 2048->11264: 5.984 vs 4.170
    ("narrow", "small"): "triton",   # 370M down 2816->1024: Triton 1.850, cuBLAS 1.952
    ("narrow", "large"): "torch",    # 1.3B down 5632->2048: Triton 4.064, cuBLAS 3.726
}
#: weight elements from which a shape class is "large" (2**22: a 2048 x 2048 matrix)
LARGE_WEIGHT = 1 << 22


def shape_class(N: int, K: int) -> tuple[str, str]:
    """(``"square"`` (N == K) | ``"wide"`` (N > K) | ``"narrow"`` (N < K), ``"small"`` | ``"large"``
    (N * K >= :data:`LARGE_WEIGHT`)) of a BitLinear weight ``[N, K]``."""
    kind = "square" if N == K else "wide" if N > K else "narrow"
    return kind, "large" if N * K >= LARGE_WEIGHT else "small"


def bwd_backend(N: int, K: int) -> str:
    """The backward-GEMM backend (``"triton"`` | ``"torch"``) :data:`BWD_GEMM_TABLE` gives a weight ``[N, K]``."""
    return BWD_GEMM_TABLE.get(shape_class(N, K), "torch")


def bitlinear_auto(x, norm_w, w, eps):
    """:func:`bitlinear` with the backward GEMMs of :func:`bwd_backend` for ``w``'s shape (what ``install`` sets)."""
    return bitlinear(x, norm_w, w, eps, bwd_gemm=bwd_backend(*w.shape))


# =============================================================================================
# naive twins (plain torch, autograd through torch ops)
# =============================================================================================
def act_quant_naive(x2: torch.Tensor, norm_w: torch.Tensor, eps: float, rstd: torch.Tensor | None = None):
    """Twin of :func:`act_quant`: (codes as int8, rstd, s) with the model's rms_norm arithmetic.

    rstd is a float reduction whose summation order is the device's (the kernel's and torch's differ in the
    last bits); everything after it is elementwise or a max and defined exactly. Given ``rstd`` (the
    kernel's, ``[M]``), this returns the codes and s that the kernel must produce bit for bit."""
    cdt = torch.float64 if x2.dtype == torch.float64 else torch.float32
    x32 = x2.detach().to(cdt)
    if rstd is None:
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    else:
        rstd = rstd.detach().to(x32.device, cdt).reshape(-1, 1)
    y = ((x32 * rstd) * norm_w.detach().to(cdt)).to(x2.dtype).to(cdt)
    s = 127.0 / y.abs().amax(-1, keepdim=True).clamp(min=1e-5)
    q = (y * s).round().clamp(-128, 127)
    return q.to(torch.int8), rstd[:, 0], s[:, 0]


def ternarize_naive(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin of :func:`weight_scale` + :func:`ternarize`: (ternary int8, sw)."""
    cdt = torch.float64 if w.dtype == torch.float64 else torch.float32
    wd = w.detach().to(cdt)
    sw = 1.0 / wd.abs().mean().clamp(min=1e-5)
    return (wd * sw).round().clamp(-1, 1).to(torch.int8), sw


def bitlinear_naive(x: torch.Tensor, norm_w: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Plain-torch twin of :func:`bitlinear`: same contract, autograd through torch operations."""
    out_dtype = out_dtype_of(x)
    with torch.autocast(x.device.type, enabled=False):
        cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        x32 = x.to(cdt)
        y = ((x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)) * norm_w.to(cdt)).to(x.dtype).to(cdt)
        s = 127.0 / y.detach().abs().amax(-1, keepdim=True).clamp(min=1e-5)
        q = (y.detach() * s).round().clamp(-128, 127)
        wc = w.to(cdt)
        sw = 1.0 / wc.detach().abs().mean().clamp(min=1e-5)
        t = (wc.detach() * sw).round().clamp(-1, 1)
        yq = y + (q / s - y).detach()                  # straight-through
        wq = wc + (t / sw - wc).detach()
        lin = F.linear(yq, wq)
        exact = (q @ t.T) / (s * sw)                   # integer product, exact in fp32 (|sum| < 2**24)
        out = lin + (exact - lin).detach()
    return out.to(out_dtype)
