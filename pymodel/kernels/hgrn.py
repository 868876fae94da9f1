"""The MLGRU recurrence ``h_t = f_t * h_{t-1} + c_t`` in Triton: sequential and chunked scans, optionally
fused with the gating, plus the hardware-exact integer scan.

Float contracts (shapes ``[B, T, D]``, ``h0 [B, D]`` or None; the state is carried in fp32 and each
``h_t`` is stored in the output dtype):

* :func:`hgrn` ``(f, c, h0) -> (h, h[:, -1])``: the ``MLGRU.recurrence`` hook of the float model.
  Output dtype: c's. Gradients for f, c and h0.
* :func:`hgrn_gated` ``(i_pre, f_pre, lb, h0) -> (h, h[:, -1])`` computes the gates inside the scan::

      f = sigmoid(f_pre);  f = lb + (1 - lb) * f   (when lb [D] is given)
      c = silu(i_pre) * (1 - f)

  exactly ``MLGRU.gates`` followed by the recurrence, without writing f and c to memory and without
  keeping them for the backward (it recomputes them from the pre-activations). Gradients for i_pre,
  f_pre, lb and h0.

Modes: ``"seq"`` runs one program per (batch, block of channels) through all T steps; ``"chunk"`` splits
time into chunks of ``chunk`` steps: a local scan per chunk (product of the gates and the end state),
a short sequential pass over chunks for the carries, then the final scan of every chunk from its carry,
in parallel. The chunked scan reads its inputs twice but has T/chunk times more parallel programs; it
pays when B * D is too small to fill the GPU. ``"auto"`` picks by that rule. The two modes differ only
by float rounding (the carry is a product of gates instead of a step-by-step update).

Hardware-exact contract: :func:`hgrn_hw_int` ``(s, g, h0) -> h`` (int64) is the sequential
``numerics.hgrn_update`` scan (h, s in the activation format, the rate g in Q0.31), exactly. There is
no chunked integer scan: the update rounds at every step, so it is not associative.

Naive twins: :func:`hgrn_naive`, :func:`hgrn_gated_naive` (plain torch loops, autograd),
:func:`hgrn_hw_int_naive` (the numerics primitive in a loop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from mmfree.pymodel import numerics as N
from mmfree.pymodel.kernels._triton import cast, check_device, interpreting, num_sms

CHUNK = 64


# =============================================================================================
# kernels
# =============================================================================================
@triton.jit
def _gates(a, b, lb, GATED: tl.constexpr, USE_LB: tl.constexpr):
    """(f, c) in fp32 from the loaded pair: (f, c) itself, or (f_pre, i_pre) when GATED."""
    f = a
    c = b
    if GATED:
        f = tl.sigmoid(a)
        if USE_LB:
            f = lb + (1.0 - lb) * f
        c = (b * tl.sigmoid(b)) * (1.0 - f)
    return f, c


@triton.jit
def _fwd_seq_kernel(A, Bv, LB, H0, O, T, D, GATED: tl.constexpr, USE_LB: tl.constexpr, HAS_H0: tl.constexpr,
                    EMU: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    m = d < D
    if USE_LB:
        lb = tl.load(LB + d, mask=m, other=0.0).to(tl.float32)
    else:
        lb = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_H0:
        h = tl.load(H0 + b * D + d, mask=m, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK_D,), dtype=tl.float32)
    base = b.to(tl.int64) * T * D + d
    for t in range(0, T):
        a = tl.load(A + base + t * D, mask=m, other=0.0).to(tl.float32)
        bb = tl.load(Bv + base + t * D, mask=m, other=0.0).to(tl.float32)
        f, c = _gates(a, bb, lb, GATED, USE_LB)
        h = f * h + c
        tl.store(O + base + t * D, cast(h, O.dtype.element_ty, EMU), mask=m)


@triton.jit
def _grads(g, hp, a, bb, f, lb, GATED: tl.constexpr, USE_LB: tl.constexpr):
    """Gradients of one step for dL/dh_t = g: (d first input, d second input, d lb)."""
    da = g * hp
    db = g
    dlb = g * 0.0
    if GATED:
        sf = tl.sigmoid(a)
        si = tl.sigmoid(bb)
        df = g * hp - g * (bb * si)                          # h = f h_prev + silu(i) (1 - f)
        dsig = df
        if USE_LB:
            dlb = df * (1.0 - sf)
            dsig = df * (1.0 - lb)
        da = dsig * sf * (1.0 - sf)
        db = g * (1.0 - f) * (si * (1.0 + bb * (1.0 - si)))
    return da, db, dlb


@triton.jit
def _bwd_seq_kernel(A, Bv, LB, H0, O, DO, DA, DB, DH0, DLB, T, D, GATED: tl.constexpr, USE_LB: tl.constexpr,
                    HAS_H0: tl.constexpr, EMU: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    m = d < D
    if USE_LB:
        lb = tl.load(LB + d, mask=m, other=0.0).to(tl.float32)
    else:
        lb = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_H0:
        h0 = tl.load(H0 + b * D + d, mask=m, other=0.0).to(tl.float32)
    else:
        h0 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    base = b.to(tl.int64) * T * D + d
    e = tl.zeros((BLOCK_D,), dtype=tl.float32)              # f_{t+1} * dL/dh_{t+1}
    dlb = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in range(0, T):
        t = T - 1 - i
        a = tl.load(A + base + t * D, mask=m, other=0.0).to(tl.float32)
        bb = tl.load(Bv + base + t * D, mask=m, other=0.0).to(tl.float32)
        f, c = _gates(a, bb, lb, GATED, USE_LB)
        g = tl.load(DO + base + t * D, mask=m, other=0.0).to(tl.float32) + e
        tv = d * 0 + t
        hp = tl.load(O + base + (t - 1) * D, mask=m & (tv > 0), other=0.0).to(tl.float32)
        hp = tl.where(tv > 0, hp, h0)
        da, db, dl = _grads(g, hp, a, bb, f, lb, GATED, USE_LB)
        dlb += dl
        tl.store(DA + base + t * D, cast(da, DA.dtype.element_ty, EMU), mask=m)
        tl.store(DB + base + t * D, cast(db, DB.dtype.element_ty, EMU), mask=m)
        e = g * f
    if HAS_H0:
        tl.store(DH0 + b * D + d, cast(e, DH0.dtype.element_ty, EMU), mask=m)
    if USE_LB:
        tl.store(DLB + b * D + d, dlb, mask=m)


@triton.jit
def _fwd_chunk_local_kernel(A, Bv, LB, AP, HL, T, D, NC, GATED: tl.constexpr, USE_LB: tl.constexpr,
                            CH: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per chunk: the product of its gates and its end state from a zero start."""
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    ci = tl.program_id(2)
    m = d < D
    if USE_LB:
        lb = tl.load(LB + d, mask=m, other=0.0).to(tl.float32)
    else:
        lb = tl.zeros((BLOCK_D,), dtype=tl.float32)
    base = b.to(tl.int64) * T * D + d
    h = tl.zeros((BLOCK_D,), dtype=tl.float32)
    ap = tl.full((BLOCK_D,), 1.0, tl.float32)
    for tt in range(0, CH):
        t = ci * CH + tt
        valid = m & ((d * 0 + t) < T)
        a = tl.load(A + base + t * D, mask=valid, other=0.0).to(tl.float32)
        bb = tl.load(Bv + base + t * D, mask=valid, other=0.0).to(tl.float32)
        f, c = _gates(a, bb, lb, GATED, USE_LB)
        f = tl.where(valid, f, 1.0)
        c = tl.where(valid, c, 0.0)
        h = f * h + c
        ap = ap * f
    o = (b * NC + ci) * D + d
    tl.store(AP + o, ap, mask=m)
    tl.store(HL + o, h, mask=m)


@triton.jit
def _fwd_chunk_carry_kernel(AP, HL, H0, CARRY, D, NC, HAS_H0: tl.constexpr, BLOCK_D: tl.constexpr):
    """Sequential over chunks: the state entering each chunk."""
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    m = d < D
    if HAS_H0:
        h = tl.load(H0 + b * D + d, mask=m, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for ci in range(0, NC):
        o = (b * NC + ci) * D + d
        tl.store(CARRY + o, h, mask=m)
        h = tl.load(AP + o, mask=m, other=1.0) * h + tl.load(HL + o, mask=m, other=0.0)


@triton.jit
def _fwd_chunk_final_kernel(A, Bv, LB, CARRY, O, T, D, NC, GATED: tl.constexpr, USE_LB: tl.constexpr,
                            EMU: tl.constexpr, CH: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    ci = tl.program_id(2)
    m = d < D
    if USE_LB:
        lb = tl.load(LB + d, mask=m, other=0.0).to(tl.float32)
    else:
        lb = tl.zeros((BLOCK_D,), dtype=tl.float32)
    base = b.to(tl.int64) * T * D + d
    h = tl.load(CARRY + (b * NC + ci) * D + d, mask=m, other=0.0)
    for tt in range(0, CH):
        t = ci * CH + tt
        valid = m & ((d * 0 + t) < T)
        a = tl.load(A + base + t * D, mask=valid, other=0.0).to(tl.float32)
        bb = tl.load(Bv + base + t * D, mask=valid, other=0.0).to(tl.float32)
        f, c = _gates(a, bb, lb, GATED, USE_LB)
        h = f * h + c
        tl.store(O + base + t * D, cast(h, O.dtype.element_ty, EMU), mask=valid)


@triton.jit
def _bwd_chunk_local_kernel(A, Bv, LB, DO, AP, EL, T, D, NC, GATED: tl.constexpr, USE_LB: tl.constexpr,
                            CH: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per chunk, backwards from a zero incoming gradient: product of its gates and f_t0 * dL/dh_t0."""
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    ci = tl.program_id(2)
    m = d < D
    if USE_LB:
        lb = tl.load(LB + d, mask=m, other=0.0).to(tl.float32)
    else:
        lb = tl.zeros((BLOCK_D,), dtype=tl.float32)
    base = b.to(tl.int64) * T * D + d
    e = tl.zeros((BLOCK_D,), dtype=tl.float32)
    ap = tl.full((BLOCK_D,), 1.0, tl.float32)
    for i in range(0, CH):
        t = ci * CH + CH - 1 - i
        valid = m & ((d * 0 + t) < T)
        a = tl.load(A + base + t * D, mask=valid, other=0.0).to(tl.float32)
        bb = tl.load(Bv + base + t * D, mask=valid, other=0.0).to(tl.float32)
        f, c = _gates(a, bb, lb, GATED, USE_LB)
        f = tl.where(valid, f, 1.0)
        g = tl.load(DO + base + t * D, mask=valid, other=0.0).to(tl.float32) + e
        e = f * g
        ap = ap * f
    o = (b * NC + ci) * D + d
    tl.store(AP + o, ap, mask=m)
    tl.store(EL + o, e, mask=m)


@triton.jit
def _bwd_chunk_carry_kernel(AP, EL, CARRY, DH0, D, NC, HAS_H0: tl.constexpr, EMU: tl.constexpr,
                            BLOCK_D: tl.constexpr):
    """Sequential over chunks from the end: the gradient flowing into each chunk from the next."""
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    m = d < D
    e = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in range(0, NC):
        ci = NC - 1 - i
        o = (b * NC + ci) * D + d
        tl.store(CARRY + o, e, mask=m)
        e = tl.load(EL + o, mask=m, other=0.0) + tl.load(AP + o, mask=m, other=1.0) * e
    if HAS_H0:
        tl.store(DH0 + b * D + d, cast(e, DH0.dtype.element_ty, EMU), mask=m)


@triton.jit
def _bwd_chunk_final_kernel(A, Bv, LB, H0, O, DO, CARRY, DA, DB, DLB, T, D, NC, GATED: tl.constexpr,
                            USE_LB: tl.constexpr, HAS_H0: tl.constexpr, EMU: tl.constexpr, CH: tl.constexpr,
                            BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    ci = tl.program_id(2)
    m = d < D
    if USE_LB:
        lb = tl.load(LB + d, mask=m, other=0.0).to(tl.float32)
    else:
        lb = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_H0:
        h0 = tl.load(H0 + b * D + d, mask=m, other=0.0).to(tl.float32)
    else:
        h0 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    base = b.to(tl.int64) * T * D + d
    e = tl.load(CARRY + (b * NC + ci) * D + d, mask=m, other=0.0)
    dlb = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in range(0, CH):
        t = ci * CH + CH - 1 - i
        tv = d * 0 + t
        valid = m & (tv < T)
        a = tl.load(A + base + t * D, mask=valid, other=0.0).to(tl.float32)
        bb = tl.load(Bv + base + t * D, mask=valid, other=0.0).to(tl.float32)
        f, c = _gates(a, bb, lb, GATED, USE_LB)
        g = tl.load(DO + base + t * D, mask=valid, other=0.0).to(tl.float32) + e
        hp = tl.load(O + base + (t - 1) * D, mask=valid & (tv > 0), other=0.0).to(tl.float32)
        hp = tl.where(tv > 0, hp, h0)
        da, db, dl = _grads(g, hp, a, bb, f, lb, GATED, USE_LB)
        dlb += tl.where(valid, dl, 0.0)
        tl.store(DA + base + t * D, cast(da, DA.dtype.element_ty, EMU), mask=valid)
        tl.store(DB + base + t * D, cast(db, DB.dtype.element_ty, EMU), mask=valid)
        e = tl.where(valid, g * f, e)
    if USE_LB:
        tl.store(DLB + (b * NC + ci) * D + d, dlb, mask=m)


@triton.jit
def _hw_scan_kernel(S, G, H0, H, T, D, HAS_H0: tl.constexpr, SIG_FRAC: tl.constexpr, BLOCK_D: tl.constexpr):
    """numerics.hgrn_update in time: h = saturate(h + rshift_round(g (s - h), SIG_FRAC))."""
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    m = d < D
    if HAS_H0:
        h = tl.load(H0 + b * D + d, mask=m, other=0).to(tl.int64)
    else:
        h = tl.zeros((BLOCK_D,), dtype=tl.int64)
    base = b.to(tl.int64) * T * D + d
    for t in range(0, T):
        s = tl.load(S + base + t * D, mask=m, other=0).to(tl.int64)
        g = tl.load(G + base + t * D, mask=m, other=0).to(tl.int64)
        h = h + ((g * (s - h) + (1 << (SIG_FRAC - 1))) >> SIG_FRAC)
        h = tl.minimum(tl.maximum(h, -2147483648), 2147483647)
        tl.store(H + base + t * D, h, mask=m)


# =============================================================================================
# launchers
# =============================================================================================
def _block_d(device) -> tuple[int, int]:
    """(channels per program, warps)."""
    return (128, 4) if device.type == "cuda" else (64, 1)


def choose_mode(B: int, T: int, D: int, device, chunk: int = CHUNK) -> str:
    """``"chunk"`` when the sequential scan has fewer programs than 4 per SM and T spans several chunks."""
    bd, _ = _block_d(device)
    programs = B * triton.cdiv(D, bd)
    return "chunk" if programs < 4 * num_sms(device) and T >= 4 * chunk else "seq"


def _fwd(a, bv, lb, h0, gated, mode, chunk):
    B, T, D = a.shape
    out = torch.empty(bv.shape, dtype=bv.dtype, device=bv.device)
    bd, warps = _block_d(a.device)
    nd = triton.cdiv(D, bd)
    use_lb = lb is not None
    dummy = out
    if mode == "seq":
        _fwd_seq_kernel[(B, nd)](a, bv, lb if use_lb else dummy, h0 if h0 is not None else dummy, out, T, D,
                                 GATED=gated, USE_LB=use_lb, HAS_H0=h0 is not None, EMU=interpreting(),
                                 BLOCK_D=bd, num_warps=warps)
        return out
    nc = triton.cdiv(T, chunk)
    ap = torch.empty((B, nc, D), dtype=torch.float32, device=a.device)
    hl = torch.empty_like(ap)
    carry = torch.empty_like(ap)
    _fwd_chunk_local_kernel[(B, nd, nc)](a, bv, lb if use_lb else dummy, ap, hl, T, D, nc, GATED=gated,
                                         USE_LB=use_lb, CH=chunk, BLOCK_D=bd, num_warps=warps)
    _fwd_chunk_carry_kernel[(B, nd)](ap, hl, h0 if h0 is not None else dummy, carry, D, nc,
                                     HAS_H0=h0 is not None, BLOCK_D=bd, num_warps=warps)
    _fwd_chunk_final_kernel[(B, nd, nc)](a, bv, lb if use_lb else dummy, carry, out, T, D, nc, GATED=gated,
                                         USE_LB=use_lb, EMU=interpreting(), CH=chunk, BLOCK_D=bd, num_warps=warps)
    return out


def _bwd(a, bv, lb, h0, out, dout, gated, mode, chunk):
    B, T, D = a.shape
    da = torch.empty_like(a)
    db = torch.empty_like(bv)
    dh0 = torch.empty_like(h0) if h0 is not None else None
    bd, warps = _block_d(a.device)
    nd = triton.cdiv(D, bd)
    use_lb = lb is not None
    dummy = da
    if mode == "seq":
        dlb = torch.empty((B, D), dtype=torch.float32, device=a.device) if use_lb else None
        _bwd_seq_kernel[(B, nd)](a, bv, lb if use_lb else dummy, h0 if h0 is not None else dummy, out, dout, da, db,
                                 dh0 if dh0 is not None else dummy, dlb if use_lb else dummy, T, D, GATED=gated,
                                 USE_LB=use_lb, HAS_H0=h0 is not None, EMU=interpreting(), BLOCK_D=bd,
                                 num_warps=warps)
    else:
        nc = triton.cdiv(T, chunk)
        ap = torch.empty((B, nc, D), dtype=torch.float32, device=a.device)
        el = torch.empty_like(ap)
        carry = torch.empty_like(ap)
        dlb = torch.empty((B * nc, D), dtype=torch.float32, device=a.device) if use_lb else None
        _bwd_chunk_local_kernel[(B, nd, nc)](a, bv, lb if use_lb else dummy, dout, ap, el, T, D, nc, GATED=gated,
                                             USE_LB=use_lb, CH=chunk, BLOCK_D=bd, num_warps=warps)
        _bwd_chunk_carry_kernel[(B, nd)](ap, el, carry, dh0 if dh0 is not None else dummy, D, nc,
                                         HAS_H0=h0 is not None, EMU=interpreting(), BLOCK_D=bd, num_warps=warps)
        _bwd_chunk_final_kernel[(B, nd, nc)](a, bv, lb if use_lb else dummy, h0 if h0 is not None else dummy, out,
                                             dout, carry, da, db, dlb if use_lb else dummy, T, D, nc, GATED=gated,
                                             USE_LB=use_lb, HAS_H0=h0 is not None, EMU=interpreting(), CH=chunk,
                                             BLOCK_D=bd, num_warps=warps)
    return da, db, (dlb.sum(0) if use_lb else None), dh0


class _HGRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, bv, lb, h0, gated, mode, chunk):
        a, bv = a.contiguous(), bv.contiguous()
        lb = lb.contiguous() if lb is not None else None
        h0 = h0.contiguous() if h0 is not None else None
        out = _fwd(a, bv, lb, h0, gated, mode, chunk)
        ctx.save_for_backward(a, bv, lb, h0, out)
        ctx.cfg = (gated, mode, chunk)
        return out

    @staticmethod
    def backward(ctx, dout):
        a, bv, lb, h0, out = ctx.saved_tensors
        gated, mode, chunk = ctx.cfg
        da, db, dlb, dh0 = _bwd(a, bv, lb, h0, out, dout.contiguous(), gated, mode, chunk)
        if dlb is not None:
            dlb = dlb.to(lb.dtype)
        return da, db, dlb, dh0, None, None, None


def _check(x: torch.Tensor, y: torch.Tensor, h0, name: str) -> None:
    if x.dim() != 3 or x.shape != y.shape:
        raise ValueError(f"{name}: the two inputs must both be [B, T, D], got {tuple(x.shape)} and {tuple(y.shape)}")
    if h0 is not None and h0.shape != (x.shape[0], x.shape[2]):
        raise ValueError(f"{name}: h0 must be [B, D] = {(x.shape[0], x.shape[2])}, got {tuple(h0.shape)}")


def _mode(mode: str, B: int, T: int, D: int, device, chunk: int) -> str:
    if mode not in ("auto", "seq", "chunk"):
        raise ValueError(f"mode must be auto, seq or chunk, got {mode!r}")
    return choose_mode(B, T, D, device, chunk) if mode == "auto" else mode


def hgrn(f: torch.Tensor, c: torch.Tensor, h0: torch.Tensor | None = None, mode: str = "auto", chunk: int = CHUNK):
    """``h_t = f_t h_{t-1} + c_t`` (see the module docstring). Returns ``(h [B, T, D], h[:, -1])``."""
    _check(f, c, h0, "hgrn")
    if f.dtype == torch.float64 or c.dtype == torch.float64:
        return hgrn_naive(f, c, h0)
    check_device(f, c, h0)
    B, T, D = f.shape
    out = _HGRN.apply(f, c, None, h0, False, _mode(mode, B, T, D, f.device, chunk), chunk)
    return out, out[:, -1]


def hgrn_gated(i_pre: torch.Tensor, f_pre: torch.Tensor, lb: torch.Tensor | None = None,
               h0: torch.Tensor | None = None, mode: str = "auto", chunk: int = CHUNK):
    """Gates and recurrence in one pass (see the module docstring). Returns ``(h [B, T, D], h[:, -1])``."""
    _check(f_pre, i_pre, h0, "hgrn_gated")
    if lb is not None and lb.shape != (f_pre.shape[-1],):
        raise ValueError(f"hgrn_gated: the lower bound must be [D] = [{f_pre.shape[-1]}], got {tuple(lb.shape)}")
    if torch.float64 in (i_pre.dtype, f_pre.dtype):
        return hgrn_gated_naive(i_pre, f_pre, lb, h0)
    check_device(i_pre, f_pre, lb, h0)
    B, T, D = f_pre.shape
    out = _HGRN.apply(f_pre, i_pre, lb, h0, True, _mode(mode, B, T, D, f_pre.device, chunk), chunk)
    return out, out[:, -1]


def hgrn_hw_int(s: torch.Tensor, g: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """The integer MLGRU scan ``h_t = numerics.hgrn_update(h_{t-1}, s_t, g_t)`` (int64 ``[B, T, D]``)."""
    _check(s, g, h0, "hgrn_hw_int")
    check_device(s, g, h0)
    B, T, D = s.shape
    s, g = s.to(torch.int64).contiguous(), g.to(torch.int64).contiguous()
    h = torch.empty_like(s)
    bd, warps = _block_d(s.device)
    h0c = h0.to(torch.int64).contiguous() if h0 is not None else None
    _hw_scan_kernel[(B, triton.cdiv(D, bd))](s, g, h0c if h0c is not None else h, h, T, D, HAS_H0=h0 is not None,
                                             SIG_FRAC=N.SIG_FRAC, BLOCK_D=bd, num_warps=warps)
    return h


# =============================================================================================
# naive twins
# =============================================================================================
def hgrn_naive(f: torch.Tensor, c: torch.Tensor, h0: torch.Tensor | None = None):
    """Twin of :func:`hgrn`: a plain loop with autograd, state in fp32 (fp64 for fp64 inputs)."""
    cdt = torch.float64 if c.dtype == torch.float64 else torch.float32
    f32, c32 = f.to(cdt), c.to(cdt)
    h = f32.new_zeros(f.shape[0], f.shape[2]) if h0 is None else h0.to(cdt)
    outs = []
    for t in range(f.shape[1]):
        h = f32[:, t] * h + c32[:, t]
        outs.append(h)
    out = torch.stack(outs, 1).to(c.dtype)
    return out, out[:, -1]


def gates_naive(i_pre: torch.Tensor, f_pre: torch.Tensor, lb: torch.Tensor | None):
    """``MLGRU.gates`` on pre-activations, in fp32: (f, c)."""
    cdt = torch.float64 if f_pre.dtype == torch.float64 else torch.float32
    f = torch.sigmoid(f_pre.to(cdt))
    if lb is not None:
        lbc = lb.to(cdt)
        f = lbc + (1 - lbc) * f
    c = F.silu(i_pre.to(cdt)) * (1 - f)
    return f, c


def hgrn_gated_naive(i_pre, f_pre, lb=None, h0=None):
    """Twin of :func:`hgrn_gated`: the model's gates then :func:`hgrn_naive`, output in i_pre's dtype."""
    f, c = gates_naive(i_pre, f_pre, lb)
    out, _ = hgrn_naive(f, c, h0)
    out = out.to(i_pre.dtype)
    return out, out[:, -1]


def hgrn_hw_int_naive(s, g, h0=None):
    """Twin of :func:`hgrn_hw_int`: ``numerics.hgrn_update`` step by step, as hwexact does."""
    s, g = s.to(torch.int64), g.to(torch.int64)
    h = torch.zeros_like(s[:, 0]) if h0 is None else h0.to(torch.int64)
    out = torch.empty_like(s)
    for t in range(s.shape[1]):
        h = N.hgrn_update(h, s[:, t], g[:, t])
        out[:, t] = h
    return out
