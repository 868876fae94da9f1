"""Hardware-exact BitLinear: the integer pipeline of :mod:`mmfree.pymodel.numerics` in two Triton kernels.

Integer contract (:func:`hw_bitlinear_int`), equal element for element to::

    codes, P, S, sz = numerics.quantize(u, n, nw)                 # normalise u, z = u'n, p = u'nw, (S, sz), P, int8 codes
    acc             = codes @ t.T                                 # int32, exact
    M, shift        = numerics.output_multiplier(P, S, sz, c_m, c_e)  # rsqrt table + Newton, per-token multiplier
    out         = numerics.dequantize(acc, M, shift)          # Q(frac), saturated to int32

``u`` is int64 ``[..., K]`` (activations or products of two), ``n``/``nw`` the spec's VEC_BITS-bit mantissas
``[K]`` (any integer dtype), ``t`` the ternary matrix ``[N, K]`` (int8, or float holding -1/0/1 as :mod:`mmfree.pymodel.hwexact`
keeps it), ``c_m``/``c_e`` the BitLinear's export constant. Returns int64 ``[..., N]`` in the
BitLinear's output format Q(frac). Every constant comes from the spec module.

Training contract (:func:`hw_bitlinear`): the forward value is the integer result (``out / 2**frac``), the
gradient is the official fake-quant BitLinear's gradient at the float surrogate input (straight-through
per operation, as :mod:`mmfree.pymodel.hwexact` does with ``_ste(module(surrogate), out_int)``), without
running the surrogate's forward product.

Kernels: ``_hw_quant_kernel`` (rows: the whole quantizer and the output multiplier, one pass per row
block) and ``_hw_gemm_kernel`` (int8 x int8 tiles, epilogue ``dequantize``). Naive twins:
:func:`hw_quantize_naive`, :func:`hw_bitlinear_int_naive`, :func:`hw_bitlinear_naive` (the numerics
primitives themselves on torch int64 tensors).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mmfree.pymodel import numerics as N
from mmfree.pymodel.kernels import bitlinear as FB
from mmfree.pymodel.kernels._triton import (
    autotune_gemm,
    check_device,
    gemm_blocks,
    grouped_tile,
    out_dtype_of,
    row_block,
    span64,
)


# =============================================================================================
# integer helpers (the numerics primitives, written for Triton int64 tensors)
# =============================================================================================
@triton.jit
def _bitlen(x):
    """numerics.bitlen: bits of x >= 0 (0 -> 0), via the float64 exponent and an exact correction."""
    bits = x.to(tl.float64).to(tl.int64, bitcast=True)
    e = ((bits >> 52) & 0x7FF) - 1022
    e = tl.where(x > 0, e, 0)
    too_high = (e > 0) & ((x >> tl.maximum(e - 1, 0)) == 0)
    return tl.where(too_high, e - 1, e)


@triton.jit
def _pow2(s):
    """2**s for int64 0 <= s <= 62."""
    return tl.full(s.shape, 1, tl.int64) << s


@triton.jit
def _rshift_round(x, s):
    """numerics.rshift_round for int64 s >= 0: (x + 2**(s-1)) >> s, x where s == 0."""
    half = tl.where(s > 0, _pow2(tl.maximum(s - 1, 0)), 0)
    return (x + half) >> s


@triton.jit
def _sat_shift_left(v, s):
    """numerics.saturating_shift_left for s >= 0."""
    s = tl.minimum(s, 32)
    small = s <= 31
    lim = _pow2(tl.where(small, 31 - s, 0))
    pos = v >= lim
    neg = tl.where(small, v < -lim, v < 0)
    safe = tl.where(pos | neg, 0, v)
    out = safe << tl.where(small, s, 0)
    return tl.where(pos, 2147483647, tl.where(neg, -2147483648, out))


# =============================================================================================
# kernels
# =============================================================================================
@triton.jit
def _hw_quant_kernel(U, NV, NWV, RSQ, CODES, PP, SS, MUL, SHIFT, M, K, stride_u, stride_c, c_m, c_e,
                     U_BITS: tl.constexpr, ZS_BITS: tl.constexpr, P_CODE_BITS: tl.constexpr,
                     RECIP_EXTRA: tl.constexpr, CODE_MAX: tl.constexpr, P_BITS: tl.constexpr, M_BITS: tl.constexpr,
                     RSQRT_FIRST: tl.constexpr, RSQRT_LOW: tl.constexpr, RSQRT_FRAC: tl.constexpr,
                     OUT_SHIFT_BASE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Rows of u: numerics.quantize (codes, P, S, sz) and numerics.output_multiplier (M, shift)."""
    pid = tl.program_id(0)
    rows = span64(pid, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    rmask = rows < M
    cmask = cols < K
    mask = rmask[:, None] & cmask[None, :]
    u = tl.load(U + rows[:, None] * stride_u + cols[None, :], mask=mask, other=0).to(tl.int64)
    n = tl.load(NV + cols, mask=cmask, other=0).to(tl.int64)
    nw = tl.load(NWV + cols, mask=cmask, other=0).to(tl.int64)
    # normalize_input: u' = shift_round(u, bitlen(max|u|) - U_BITS) (left shift when negative; 0 stays 0)
    mu = tl.max(tl.abs(u), axis=1)
    sh = tl.where(mu > 0, _bitlen(mu) - U_BITS, 0)[:, None]
    up = tl.where(sh >= 0, _rshift_round(u, tl.maximum(sh, 0)), u << tl.maximum(-sh, 0))
    z = up * n[None, :]
    p = up * nw[None, :]
    # sum_squares: every term reduced to ZS_BITS bits by the row's shift sz before squaring
    Z = tl.max(tl.abs(z), axis=1)
    sz = tl.maximum(_bitlen(Z) - ZS_BITS, 0)
    zs = _rshift_round(z, sz[:, None] + tl.zeros((BLOCK_M, BLOCK_K), tl.int64))
    S = tl.sum(zs * zs, axis=1)
    P = tl.max(tl.abs(p), axis=1)
    # codes_from(p, P): p and P reduced to P_CODE_BITS bits, reciprocal R = (CODE_MAX << k) // P', k = bitlen(P') + RECIP_EXTRA
    sp = tl.maximum(_bitlen(P) - P_CODE_BITS, 0)
    pr = _rshift_round(p, sp[:, None] + tl.zeros((BLOCK_M, BLOCK_K), tl.int64))
    Pr = _rshift_round(P, sp)
    k = _bitlen(Pr) + RECIP_EXTRA
    Psafe = tl.where(Pr > 0, Pr, 1)
    R = (CODE_MAX * _pow2(k)) // Psafe
    mag = (tl.abs(pr) * R[:, None] + (_pow2(k) >> 1)[:, None]) >> k[:, None]
    mag = tl.minimum(mag, CODE_MAX)
    q = tl.where(pr < 0, -mag, mag)
    q = tl.where((Pr > 0)[:, None], q, 0)
    tl.store(CODES + rows[:, None] * stride_c + cols[None, :], q.to(tl.int8), mask=mask)
    # output_multiplier(P, S, sz, c_m, c_e): rsqrt(S) by table look-up and one Newton step
    valid = (P > 0) & (S > 0)
    Sv = tl.where(valid, S, 2147483648)
    Pv = tl.where(valid, P, 1)
    kk = (_bitlen(Sv) - 31) >> 1
    Sn = tl.where(kk >= 0, Sv >> tl.maximum(2 * kk, 0), Sv << tl.maximum(-2 * kk, 0))
    j = (Sn >> RSQRT_LOW) - RSQRT_FIRST
    frac = Sn & ((1 << RSQRT_LOW) - 1)
    t0 = tl.load(RSQ + j, mask=rmask, other=0)
    t1 = tl.load(RSQ + j + 1, mask=rmask, other=0)
    r0 = t0 - (((t0 - t1) * frac) >> RSQRT_LOW)
    t = (r0 * r0) >> RSQRT_FRAC
    v = ((Sn >> 2) * t) >> RSQRT_FRAC
    r = (r0 * (3 * (1 << RSQRT_FRAC) - v)) >> (RSQRT_FRAC + 1)
    b = (c_m * r + (1 << (M_BITS - 1))) >> M_BITS                # rshift_round(c_m * r, M_BITS)
    ps = tl.maximum(_bitlen(Pv) - P_BITS, 0)
    m = b * _rshift_round(Pv, ps)
    em = _bitlen(m)
    Mv = _rshift_round(m, tl.maximum(em - M_BITS, 0))
    shift = OUT_SHIFT_BASE + kk + sz - em - c_e - ps
    tl.store(PP + rows, P, mask=rmask)
    tl.store(SS + rows, S, mask=rmask)
    tl.store(MUL + rows, tl.where(valid, Mv, 0), mask=rmask)
    tl.store(SHIFT + rows, tl.where(valid, shift, 0), mask=rmask)


@autotune_gemm("int8")
@triton.jit
def _hw_gemm_kernel(CODES, T, MUL, SHIFT, OUT, M, N, K, stride_c, stride_t, stride_o,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """out = numerics.dequantize(codes @ t.T, M, shift): int8 tiles, int32 accumulator, int64 epilogue."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    rm = span64(pid_m, BLOCK_M)
    rn = span64(pid_n, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(CODES + rm[:, None] * stride_c + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K), other=0)
        b = tl.load(T + rn[None, :] * stride_t + kk[:, None], mask=(rn[None, :] < N) & (kk[:, None] < K), other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)      # Triton 3.6 needs out_dtype for an int32 acc
    mul = tl.load(MUL + rm, mask=rm < M, other=0)
    shift = tl.load(SHIFT + rm, mask=rm < M, other=0)
    v = acc.to(tl.int64) * mul[:, None]
    sh = shift[:, None] + tl.zeros((BLOCK_M, BLOCK_N), tl.int64)
    right = _rshift_round(v, tl.minimum(tl.maximum(sh, 0), 62))
    right = tl.minimum(tl.maximum(right, -2147483648), 2147483647)
    left = _sat_shift_left(v, tl.maximum(-sh, 0))
    out = tl.where(sh >= 0, right, left)
    tl.store(OUT + rm[:, None] * stride_o + rn[None, :], out.to(tl.int32), mask=(rm[:, None] < M) & (rn[None, :] < N))


# =============================================================================================
# launchers
# =============================================================================================
def _rsqrt_table(device) -> torch.Tensor:
    key = str(device)
    t = _TABLES.get(key)
    if t is None:
        t = torch.from_numpy(N.rsqrt_table().astype("int64")).to(device)
        _TABLES[key] = t
    return t


_TABLES: dict[str, torch.Tensor] = {}

#: The numerics constants the quantizer kernel is specialised on (read from the spec module, never copied).
_SPEC = dict(U_BITS=N.U_BITS, ZS_BITS=N.ZS_BITS, P_CODE_BITS=N.P_CODE_BITS, RECIP_EXTRA=N.RECIP_EXTRA,
             CODE_MAX=N.CODE_MAX, P_BITS=N.P_BITS, M_BITS=N.M_BITS, RSQRT_FIRST=N.RSQRT_FIRST,
             RSQRT_LOW=32 - N.RSQRT_INDEX_BITS, RSQRT_FRAC=N.RSQRT_FRAC, OUT_SHIFT_BASE=N.OUT_SHIFT_BASE)


def _check_k(K: int) -> None:
    from mmfree import MmfreeError

    if K > N.MAX_K:
        raise MmfreeError(f"BitLinear input width {K} exceeds the numerics spec's MAX_K ({N.MAX_K})")


def hw_quantize(u: torch.Tensor, n: torch.Tensor, nw: torch.Tensor, c_m: int, c_e: int):
    """Triton :func:`numerics.quantize` + :func:`numerics.output_multiplier` on rows ``u [M, K]`` (int64).

    Returns ``(codes int8 [M, K], P, S, M_mul, shift)`` (the last four int64 ``[M]``).
    """
    Mr, K = u.shape
    _check_k(K)
    bm, bk = row_block(K)
    bm = max(1, min(bm, 2048 // bk))
    dev = u.device
    u = u.to(torch.int64)
    if u.stride(-1) != 1:
        u = u.contiguous()
    codes = torch.empty((Mr, K), dtype=torch.int8, device=dev)
    P, S, Mul, Sh = (torch.empty(Mr, dtype=torch.int64, device=dev) for _ in range(4))
    if Mr:
        _hw_quant_kernel[(triton.cdiv(Mr, bm),)](
            u, n.to(torch.int64).contiguous(), nw.to(torch.int64).contiguous(), _rsqrt_table(dev), codes, P, S, Mul, Sh,
            Mr, K, u.stride(0), K, int(c_m), int(c_e), **_SPEC, BLOCK_M=bm, BLOCK_K=bk, num_warps=4)
    return codes, P, S, Mul, Sh


def _int8_ternary(t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.int8:
        return t.contiguous()
    return t.to(torch.int8).contiguous()


def hw_bitlinear_int(u: torch.Tensor, n: torch.Tensor, nw: torch.Tensor, t: torch.Tensor, c_m: int,
                     c_e: int) -> torch.Tensor:
    """The BitLinear's output (int64 ``[..., N]``, int32 values in its format), exactly the numerics pipeline."""
    check_device(u, n, nw, t)
    K = u.shape[-1]
    Nn = t.shape[0]
    if t.shape[1] != K or n.shape != (K,) or nw.shape != (K,):
        raise ValueError(f"hardware BitLinear shapes do not match: u [..., {K}], n {tuple(n.shape)}, "
                         f"nw {tuple(nw.shape)}, ternary {tuple(t.shape)}")
    u2 = u.reshape(-1, K)
    codes, _, _, Mul, Sh = hw_quantize(u2, n, nw, c_m, c_e)
    tq = _int8_ternary(t)
    Mr = u2.shape[0]
    out = torch.empty((Mr, Nn), dtype=torch.int32, device=u.device)
    if Mr:
        def grid(meta):
            return (triton.cdiv(Mr, meta["BLOCK_M"]) * triton.cdiv(Nn, meta["BLOCK_N"]),)

        _hw_gemm_kernel[grid](codes, tq, Mul, Sh, out, Mr, Nn, K, codes.stride(0), tq.stride(0), out.stride(0),
                              **gemm_blocks(u.device, int8=True, size=max(Nn, K)))
    return out.to(torch.int64).reshape(*u.shape[:-1], Nn)


class _HWBitLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_sur, norm_w, w, eps, out_int, out_dtype, frac):
        K = x_sur.shape[-1]
        with torch.autocast(x_sur.device.type, enabled=False):
            x2 = x_sur.reshape(-1, K)
            if x2.stride(-1) != 1:
                x2 = x2.contiguous()
            _, rstd, s = FB.act_quant(x2, norm_w, eps, store_q=False)
            sw = FB.weight_scale(w)
            t = FB.ternarize(w, sw)
        ctx.save_for_backward(x2, norm_w, rstd, s, t, sw)
        ctx.eps, ctx.shape, ctx.bwd_gemm = eps, x_sur.shape, "triton"
        ctx.dtypes = (x_sur.dtype, norm_w.dtype, w.dtype)
        return (out_int.to(torch.float64) / float(1 << frac)).to(out_dtype)

    @staticmethod
    def backward(ctx, grad):
        dx, dnw, dw, _, _, _ = FB._FusedBitLinear.backward(ctx, grad)
        return dx, dnw, dw, None, None, None, None


def hw_bitlinear(u, n, nw, t, c_m, c_e, x_sur, norm_w, w, eps, frac: int):
    """Hardware-exact BitLinear for training: ``(out_int int64, out float)``.

    ``out`` has the value ``out_int / 2**frac`` (``frac``: fractional bits of this BitLinear's output
    format; in the autocast dtype, or ``x_sur``'s dtype) and the
    gradient of the fake-quant BitLinear ``bitlinear(x_sur, norm_w, w, eps)`` with respect to
    ``x_sur``, ``norm_w`` and ``w``. Without a gradient to compute it is the exact float64 value, as
    :func:`mmfree.pymodel.hwexact._ste` gives then.
    """
    out_int = hw_bitlinear_int(u, n, nw, t, c_m, c_e)
    if not (torch.is_grad_enabled() and (x_sur.requires_grad or norm_w.requires_grad or w.requires_grad)):
        return out_int, out_int.to(torch.float64) / float(1 << frac)        # exact, as hwexact's _ste
    check_device(x_sur, norm_w, w)
    out = _HWBitLinear.apply(x_sur, norm_w, w, float(eps), out_int, out_dtype_of(x_sur), int(frac))
    return out_int, out


# =============================================================================================
# naive twins: the numerics primitives on torch int64 tensors
# =============================================================================================
def hw_quantize_naive(u, n, nw, c_m, c_e):
    """Twin of :func:`hw_quantize`: ``numerics.quantize`` and ``numerics.output_multiplier``."""
    codes, P, S, sz = N.quantize(u.to(torch.int64), n.to(torch.int64), nw.to(torch.int64))
    Mul, Sh = N.output_multiplier(P, S, sz, int(c_m), int(c_e))
    return codes.to(torch.int8), P[..., 0], S[..., 0], Mul[..., 0], Sh[..., 0]


def hw_bitlinear_int_naive(u, n, nw, t, c_m, c_e):
    """Twin of :func:`hw_bitlinear_int`, as :mod:`mmfree.pymodel.hwexact` computes it."""
    codes, P, S, sz = N.quantize(u.to(torch.int64), n.to(torch.int64), nw.to(torch.int64))
    acc = (codes.to(torch.float32) @ t.to(torch.float32).T).to(torch.int64)     # exact: |acc| < 2**24
    M, shift = N.output_multiplier(P, S, sz, int(c_m), int(c_e))
    return N.dequantize(acc, M, shift)


def hw_bitlinear_naive(u, n, nw, t, c_m, c_e, x_sur, norm_w, w, eps, frac: int):
    """Twin of :func:`hw_bitlinear`: integer value, gradient of :func:`bitlinear_naive` at the surrogate."""
    out_int = hw_bitlinear_int_naive(u, n, nw, t, c_m, c_e)
    exact = out_int.to(torch.float64) / float(1 << frac)
    if not (torch.is_grad_enabled() and (x_sur.requires_grad or norm_w.requires_grad or w.requires_grad)):
        return out_int, exact
    sur = FB.bitlinear_naive(x_sur, norm_w, w, eps)
    return out_int, sur + (exact - sur.to(torch.float64)).detach().to(sur.dtype)
