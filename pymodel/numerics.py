"""The numerics spec: every integer format, rounding rule, saturation rule, lookup table and the packed
weight layout of the mmfree integer pipeline. ``docs/numerics.md`` explains and justifies it.

This module is the single source of truth. The integer reference (:mod:`mmfree.pymodel.intmodel`), the
hardware-exact training mode (:mod:`mmfree.pymodel.hwexact`), the export, the RTL, the HLS kernels and
the PYNQ driver all take their constants and tables from here; nothing re-derives them.

Every primitive works on numpy ``int64`` arrays and on torch ``int64`` tensors alike (the same code
runs in the numpy reference and inside the torch training graph). Floats appear only in the
export-time helpers at the bottom (``*_from_float``), never in the datapath.

Rounding names used throughout:

* ``rshift_round(x, s)`` = ``floor((x + 2**(s-1)) / 2**s)``: round half up (toward +inf), the cheap
  hardware rounding (add a constant, arithmetic shift). Used for every rescale.
* activation codes round half away from zero (sign-magnitude), so the int8 quantizer is symmetric.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

#: Bumped whenever any number this module defines changes. Exports record it; loaders refuse others.
SPEC_VERSION = 1

# ---- formats -----------------------------------------------------------------------------------------
#: Activation values are int32 fixed point with a per-model number of fractional bits chosen at export by
#: calibration (``res_frac`` for the residual stream x and the o/down outputs added to it, ``act_frac`` for
#: every other vector: i, f, g, gate, up, h, SiLU outputs, logits). Both lie in [FRAC_MIN, FRAC_MAX].
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
FRAC_MIN = 9          # > SIG_STEPS_LOG2: the sigmoid index needs at least one fractional bit left
FRAC_MAX = 28
#: Calibration keeps this many bits of headroom above the largest magnitude it observed (8x).
CALIBRATION_MARGIN_BITS = 3
#: int8 activation codes are symmetric: -127..127 (-128 never occurs).
CODE_MAX = 127
#: Per-channel vectors (RMSNorm weights and their products) are signed 31-bit mantissas in int32 with one
#: exponent per vector, normalised so that max |mantissa| lies in [2**29, 2**30).
VEC_BITS = 31
#: A BitLinear input u is first normalised so that max |u'| lies in [2**29, 2**30]: z = u'n and p = u'nw
#: then stay below 2**60 (int64).
U_BITS = 30
#: z is normalised by its own maximum to ZS_BITS bits before squaring: S = sum zs**2 < 2**62 for K <= 2**16.
ZS_BITS = 23
#: p is normalised by its maximum to P_CODE_BITS bits before the codes are computed.
P_CODE_BITS = 32
#: Extra bits of the activation reciprocal: R = (127 << (bitlen(P') + RECIP_EXTRA)) // P' (R < 2**30).
RECIP_EXTRA = 22
#: P is reduced to this many bits before it enters the output multiplier.
P_BITS = 24
#: Output multiplier mantissa M lies in [2**(M_BITS-1), 2**M_BITS]; the per-BitLinear constant mantissa
#: c_m lies in [2**(M_BITS-1), 2**M_BITS).
M_BITS = 24
#: The constant's exponent c_e is a signed CE_BITS-bit integer (the hardware's register width): c_e in
#: [CE_MIN, CE_MAX]. Export refuses a model whose constant falls outside, the image loader refuses an image.
CE_BITS = 8
CE_MIN, CE_MAX = -(2 ** (CE_BITS - 1)), 2 ** (CE_BITS - 1) - 1
#: The output multiplier's shift is OUT_SHIFT_BASE + k + sz - bitlen(m) - ps - c_e
#: (= RSQRT_SCALE_EXP - 16: the rsqrt scale less the 2**16 folded into the constant C).
OUT_SHIFT_BASE = 30
#: Sigmoid/gate values are unsigned Q0.31.
SIG_FRAC = 31
ONE_Q31 = 1 << SIG_FRAC
#: Sigmoid tail table E(a) = sigmoid(-a) for a in [0, SIG_RANGE], 2**SIG_STEPS_LOG2 entries per unit;
#: the table index of a magnitude a in Q(frac) is ``a >> (frac - SIG_STEPS_LOG2)``.
SIG_RANGE = 16
SIG_STEPS_LOG2 = 8
SIG_ENTRIES = SIG_RANGE * (1 << SIG_STEPS_LOG2) + 1  # 4097 (the last entry is the interpolation end point)
#: Reciprocal square root table over m in [1/4, 1] in steps of 1/1024, values rsqrt(m) in Q2.30; rsqrt(S) is
#: returned as r * 2**-(RSQRT_SCALE_EXP + k).
RSQRT_SCALE_EXP = 46
RSQRT_FRAC = 30
RSQRT_INDEX_BITS = 10
RSQRT_FIRST = 1 << (RSQRT_INDEX_BITS - 2)            # 256: index of m = 1/4
RSQRT_ENTRIES = (1 << RSQRT_INDEX_BITS) - RSQRT_FIRST + 1  # 769
#: Longest BitLinear input the spec allows: accumulators |acc| <= 127 * K fit 23 bits + sign.
MAX_K = 1 << 15
#: The ternary accumulator stays exact in float32 BLAS while |acc| <= 127 * K < 2**24.
MAX_K_FLOAT32_EXACT = (1 << 24) // CODE_MAX
ACC_BITS = 24

# ---- packed ternary weights ------------------------------------------------------------------------
#: Five trits per byte: byte = sum_i (t_i + 1) * 3**i, t_0 the lowest column. 1.6 bits per weight.
TRITS_PER_BYTE = 5
#: Rows are padded (with zero trits) to a whole number of this many bytes: one 128-bit bus beat.
ROW_ALIGN_BYTES = 16


# ======================================================================================================
# array helpers: the same code for numpy int64 arrays and torch int64 tensors
# ======================================================================================================
def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _where(c, a, b):
    if _is_torch(c):
        import torch

        return torch.where(c, a, b)
    return np.where(c, a, b)


def _amax(x, axis=-1, keepdims=False):
    if _is_torch(x):
        return x.amax(dim=axis, keepdim=keepdims)
    return np.max(x, axis=axis, keepdims=keepdims)


def _sum(x, axis=-1, keepdims=False):
    if _is_torch(x):
        return x.sum(dim=axis, keepdim=keepdims)
    return np.sum(x, axis=axis, keepdims=keepdims, dtype=np.int64)


def _abs(x):
    return x.abs() if _is_torch(x) else np.abs(x)


def _pow2(s):
    """2**s elementwise for int64 s >= 0 (python int, numpy array or torch tensor)."""
    if isinstance(s, (int, np.integer)):
        return 1 << int(s)
    if _is_torch(s):
        return s.new_ones(()) << s
    return np.left_shift(np.int64(1), s)


def _clip0(s):
    """max(s, 0) elementwise."""
    return _where(s > 0, s, s * 0)


def _take(table: np.ndarray, idx):
    if _is_torch(idx):
        return _torch_table(table.tobytes(), table.dtype.str, str(idx.device))[idx]
    return table[idx]


@lru_cache(maxsize=32)
def _torch_table(data: bytes, dtype: str, device: str):
    import torch

    return torch.from_numpy(np.frombuffer(data, dtype=np.dtype(dtype)).astype(np.int64)).to(device)


# ======================================================================================================
# integer primitives
# ======================================================================================================
def rshift_round(x, s):
    """``floor((x + 2**(s-1)) / 2**s)`` for s >= 0 (``x`` unchanged where s == 0): round half up."""
    if isinstance(s, (int, np.integer)):
        s = int(s)
        if s < 0:
            raise ValueError("rshift_round needs s >= 0")
        return x if s == 0 else (x + (1 << (s - 1))) >> s
    half = _where(s > 0, _pow2(_clip0(s - 1)), s * 0)
    return (x + half) >> s


def shift_round(x, s):
    """``x * 2**-s`` rounded half up for s >= 0; exactly ``x * 2**-s`` (a left shift) for s < 0."""
    if isinstance(s, (int, np.integer)):
        return rshift_round(x, int(s)) if s >= 0 else x << int(-s)
    return _where(s >= 0, rshift_round(x, _clip0(s)), x << _clip0(-s))


def saturate(x, lo=INT32_MIN, hi=INT32_MAX):
    """Clamp to [lo, hi] (default: int32)."""
    if _is_torch(x):
        return x.clamp(lo, hi)
    return np.clip(x, lo, hi)


def bitlen(x):
    """Number of bits of non-negative integers (0 -> 0), exact for the whole int64 range."""
    if isinstance(x, (int, np.integer)):
        return int(x).bit_length()
    if _is_torch(x):
        import torch

        _, e = torch.frexp(x.to(torch.float64))
        e = e.to(torch.int64)
    else:
        _, e = np.frexp(np.asarray(x, dtype=np.float64))
        e = e.astype(np.int64)
    # float64 rounding can push e one too high just below a power of two: correct it exactly
    too_high = (e > 0) & ((x >> _clip0(e - 1)) == 0)
    return e - too_high.astype(e.dtype) if not _is_torch(e) else e - too_high.to(e.dtype)


# ---- lookup tables ------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def sigmoid_tail_table() -> np.ndarray:
    """E[i] = round(sigmoid(-i / 2**SIG_STEPS_LOG2) * 2**31), i = 0..SIG_ENTRIES-1 (0..4096), uint32 (Q0.31).
    E[0] = 2**30."""
    vals = [round(2**SIG_FRAC / (1.0 + math.exp(i / (1 << SIG_STEPS_LOG2)))) for i in range(SIG_ENTRIES)]
    t = np.array(vals, dtype=np.uint32)
    t.setflags(write=False)
    return t


@lru_cache(maxsize=1)
def rsqrt_table() -> np.ndarray:
    """T[j] = round(2**30 / sqrt((j + 256) / 1024)), j = 0..768, uint32 (Q2.30): rsqrt over m in [1/4, 1]
    in steps of 1/1024."""
    vals = [round(2**RSQRT_FRAC / math.sqrt((j + RSQRT_FIRST) / (1 << RSQRT_INDEX_BITS))) for j in range(RSQRT_ENTRIES)]
    t = np.array(vals, dtype=np.uint32)
    t.setflags(write=False)
    return t


# ---- nonlinearities ---------------------------------------------------------------------------------
def sigmoid_tail(a, frac: int):
    """sigmoid(-a) in Q0.31 for a >= 0 in Q(frac); a >= 16 uses the last table interval.

    Linear interpolation: ``E[i] - (((E[i] - E[i+1]) * f) >> t)`` with ``t = frac - SIG_STEPS_LOG2``,
    ``i = a >> t``, ``f = a & (2**t - 1)``.
    """
    t = frac - SIG_STEPS_LOG2
    if not SIG_STEPS_LOG2 < frac <= FRAC_MAX:
        raise ValueError(f"frac must be in ({SIG_STEPS_LOG2}, {FRAC_MAX}], got {frac}")
    table = sigmoid_tail_table()
    limit = SIG_RANGE << frac
    a = _where(a >= limit, limit - 1, a)
    idx = a >> t
    f = a & ((1 << t) - 1)
    e0 = _take(table, idx)
    e1 = _take(table, idx + 1)
    return e0 - (((e0 - e1) * f) >> t)


def sigmoid_q31(x, frac: int):
    """sigmoid(x) in Q0.31 for x in Q(frac): ``E(|x|)`` for x < 0, ``2**31 - E(x)`` for x >= 0."""
    e = sigmoid_tail(_abs(x), frac)
    return _where(x >= 0, ONE_Q31 - e, e)


def silu(x, frac: int):
    """SiLU(x) = x * sigmoid(x), Q(frac) in and out: ``rshift_round(x * sigmoid_q31(x), 31)``."""
    return rshift_round(x * sigmoid_q31(x, frac), SIG_FRAC)


def forget_rate(f_pre, one_minus_lb, frac: int):
    """g = 1 - f = (1 - lb) * sigmoid(-f_pre) in Q0.31 (f_pre in Q(frac); ``one_minus_lb`` Q0.31, 2**31 = no bound)."""
    e = sigmoid_tail(_abs(f_pre), frac)
    s = _where(f_pre >= 0, e, ONE_Q31 - e)
    return rshift_round(one_minus_lb * s, SIG_FRAC)


def hgrn_update(h, s, g):
    """The MLGRU step in the form ``h + g * (s - h)`` (= f h + (1-f) s): h, s in Q(act_frac); g Q0.31; int32 saturated."""
    return saturate(h + rshift_round(g * (s - h), SIG_FRAC))


def mul_act(a, b):
    """Product of two int32 activations kept at full precision (int64): the input of a BitLinear."""
    return a * b


# ---- the BitLinear quantizer and its output scale ----------------------------------------------------------
def normalize_input(u):
    """u' = u * 2**-sh along the last axis with ``sh = bitlen(max|u|) - U_BITS``: a rounding right shift
    (``rshift_round``) when sh > 0, an exact left shift when sh < 0, so max |u'| is in [2**29, 2**30].

    Returns (u', sh). A BitLinear's output does not depend on the scale of its input, so any integer
    vector (an activation or a product of two) can feed it; normalising keeps full precision either way.
    An all-zero u stays zero.
    """
    mu = _amax(_abs(u), axis=-1, keepdims=True)
    sh = _where(mu > 0, bitlen(mu) - U_BITS, mu * 0)
    return shift_round(u, sh), sh


def sum_squares(z):
    """(S, sz): ``S = sum(rshift_round(z, sz)**2)`` along the last axis with
    ``sz = max(0, bitlen(max|z|) - ZS_BITS)``, so every term has at most 23 bits before squaring."""
    Z = _amax(_abs(z), axis=-1, keepdims=True)
    sz = _clip0(bitlen(Z) - ZS_BITS)
    zs = rshift_round(z, sz)
    return _sum(zs * zs, axis=-1, keepdims=True), sz


def quantize(u, n, nw):
    """The activation side of a BitLinear whose input went through RMSNorm(weight n) before it.

    ``u``: int64 ``[..., K]`` (any scale); ``n``, ``nw``: 31-bit mantissas ``[K]`` of the pre-norm weight and
    of the product (pre-norm weight * the BitLinear's own norm weight). Returns
    ``(codes int64 [..., K] in -127..127, P [..., 1], S [..., 1], sz [..., 1])`` with ``P = max|p|``
    (p = u' nw) and ``(S, sz) = sum_squares(u' n)``. RMSNorm's 1/rms and eps drop out: codes depend only
    on the direction of p, and the output scale uses P / sqrt(S 4**sz) (see :func:`output_multiplier`).
    """
    up, _ = normalize_input(u)
    S, sz = sum_squares(up * n)
    p = up * nw
    P = _amax(_abs(p), axis=-1, keepdims=True)
    return codes_from(p, P), P, S, sz


def codes_from(p, P):
    """int8 codes ``sign(p) * min(127, round_half_away(127 |p| / P))``; P == 0 gives zeros.

    p and P are first reduced to P_CODE_BITS bits (``sp = max(0, bitlen(P) - 32)``,
    ``p' = rshift_round(p, sp)``, ``P' = rshift_round(P, sp)``); then the reciprocal
    ``R = (127 << k) // P'`` with ``k = bitlen(P') + RECIP_EXTRA`` and ``|q| = (|p'| R + 2**(k-1)) >> k``.
    """
    sp = _clip0(bitlen(P) - P_CODE_BITS)
    p = rshift_round(p, sp)
    P = rshift_round(P, sp)
    k = bitlen(P) + RECIP_EXTRA
    Psafe = _where(P > 0, P, P * 0 + 1)
    R = (CODE_MAX * _pow2(k)) // Psafe
    mag = (_abs(p) * R + (_pow2(k) >> 1)) >> k
    mag = _where(mag > CODE_MAX, mag * 0 + CODE_MAX, mag)
    q = _where(p < 0, -mag, mag)
    return _where(P > 0, q, q * 0)


def rsqrt(S):
    """(r, k) with rsqrt(S) ~= r * 2**-(46 + k), S > 0.

    S is normalised to S' = S >> 2k (or << -2k) in [2**30, 2**32); r0 = rsqrt(S' / 2**32) in Q2.30 from
    the table (top RSQRT_INDEX_BITS bits of S', linear interpolation on the rest), then one Newton step:
    ``t = (r0 * r0) >> 30``; ``v = ((S' >> 2) * t) >> 30``; ``r = (r0 * (3 * 2**30 - v)) >> 31``.
    """
    b = bitlen(S)
    k = (b - 31) >> 1                       # floor((b - 31) / 2): S >> 2k has 31 or 32 bits
    Sn = shift_round_floor(S, 2 * k)
    low = 32 - RSQRT_INDEX_BITS
    j = (Sn >> low) - RSQRT_FIRST
    frac = Sn & ((1 << low) - 1)
    table = rsqrt_table()
    t0 = _take(table, j)
    t1 = _take(table, j + 1)
    r0 = t0 - (((t0 - t1) * frac) >> low)
    t = (r0 * r0) >> RSQRT_FRAC
    v = ((Sn >> 2) * t) >> RSQRT_FRAC
    return (r0 * (3 * (1 << RSQRT_FRAC) - v)) >> (RSQRT_FRAC + 1), k


def shift_round_floor(x, s):
    """``x >> s`` (floor) for s >= 0, ``x << -s`` for s < 0."""
    if isinstance(s, (int, np.integer)):
        return x >> int(s) if s >= 0 else x << int(-s)
    return _where(s >= 0, x >> _clip0(s), x << _clip0(-s))


def output_multiplier(P, S, sz, c_m: int, c_e: int):
    """Per-token multiplier ``(M, shift)`` of a BitLinear: ``out = dequantize(acc, M, shift)``.

    The real output is ``acc * C * 2**16 * P / sqrt(S * 4**sz)`` (in Q(F_out) units), where the
    export-time constant ``C = c_m * 2**c_e`` holds ``alpha * sqrt(K) / 127 * 2**(F_n - F_nw) * 2**(F_out - 16)``.
    Integer steps: ``(r, k) = rsqrt(S)`` (rsqrt(S) ~= r 2**-(46+k)); ``b = rshift_round(c_m * r, 24)``;
    ``ps = max(0, bitlen(P) - 24)``; ``m = b * rshift_round(P, ps)``; ``M = rshift_round(m, bitlen(m) - 24)``
    (M in [2**23, 2**24]); ``shift = 30 + k + sz - bitlen(m) - ps - c_e``. Where P or S is 0 the output
    is 0 (M = 0, shift = 0).
    """
    valid = (P > 0) & (S > 0)
    Ssafe = _where(valid, S, S * 0 + (1 << 31))
    Psafe = _where(valid, P, P * 0 + 1)
    r, k = rsqrt(Ssafe)
    b = rshift_round(c_m * r, M_BITS)
    ps = _clip0(bitlen(Psafe) - P_BITS)
    m = b * rshift_round(Psafe, ps)
    em = bitlen(m)
    M = rshift_round(m, em - M_BITS)
    shift = OUT_SHIFT_BASE + k + sz - em - ps - c_e
    return _where(valid, M, M * 0), _where(valid, shift, shift * 0)


def saturating_shift_left(v, s):
    """``saturate(v * 2**s)`` for s >= 0, without intermediate overflow (|v| < 2**62)."""
    if isinstance(s, (int, np.integer)):
        s = v * 0 + int(s)
    s = _where(s > 32, s * 0 + 32, s)
    small = s <= 31
    lim = _pow2(_where(small, 31 - s, s * 0))             # v * 2**s >= 2**31  <=>  v >= 2**(31 - s)
    pos = v >= lim
    neg = _where(small, v < -lim, v < 0)                   # v * 2**s < -2**31 (s = 32: any v < 0)
    safe = _where(pos | neg, v * 0, v)
    out = safe << _where(small, s, s * 0)
    return _where(pos, v * 0 + INT32_MAX, _where(neg, v * 0 + INT32_MIN, out))


def dequantize(acc, M, shift):
    """BitLinear output (in its Q(F_out)): ``saturate(rshift_round(acc * M, shift))`` for shift >= 0 (shifts above 62
    act as 62, i.e. give 0), ``saturating_shift_left(acc * M, -shift)`` for shift < 0."""
    v = acc * M
    if isinstance(shift, (int, np.integer)):
        return saturate(rshift_round(v, min(int(shift), 62))) if shift >= 0 else saturating_shift_left(v, -int(shift))
    right = saturate(rshift_round(v, _where(shift > 62, shift * 0 + 62, _clip0(shift))))
    left = saturating_shift_left(v, _clip0(-shift))
    return _where(shift >= 0, right, left)


def argmax(logits):
    """Greedy token: index of the largest value along the last axis, lowest index on ties."""
    if _is_torch(logits):
        import torch

        mx = logits.amax(-1, keepdim=True)
        idx = torch.arange(logits.shape[-1], device=logits.device)
        return torch.where(logits == mx, idx, logits.shape[-1]).amin(-1)
    return np.argmax(logits, axis=-1)


# ======================================================================================================
# packed ternary weights
# ======================================================================================================
def row_bytes(k: int, row_align_bytes: int = ROW_ALIGN_BYTES) -> int:
    """Bytes of one packed row of ``k`` trits: ceil(k / 5) rounded up to a multiple of ``row_align_bytes``."""
    if k <= 0:
        raise ValueError(f"row length must be positive, got {k}")
    if row_align_bytes <= 0:
        raise ValueError(f"row_align_bytes must be positive, got {row_align_bytes}")
    raw = -(-k // TRITS_PER_BYTE)
    return -(-raw // row_align_bytes) * row_align_bytes


@lru_cache(maxsize=1)
def trit_decode_table() -> np.ndarray:
    """``[256, 5]`` int8: the trits of each byte value (bytes 243..255 never occur and decode to 0)."""
    t = np.zeros((256, TRITS_PER_BYTE), dtype=np.int8)
    for b in range(243):
        v = b
        for i in range(TRITS_PER_BYTE):
            t[b, i] = v % 3 - 1
            v //= 3
    t.setflags(write=False)
    return t


def pack_ternary(t: np.ndarray, row_align_bytes: int = ROW_ALIGN_BYTES) -> np.ndarray:
    """Pack a ternary matrix ``[N, K]`` (values -1, 0, 1) into ``uint8 [N, row_bytes(K)]``."""
    t = np.asarray(t)
    if t.ndim != 2:
        raise ValueError(f"expected a 2-D ternary matrix, got shape {t.shape}")
    if t.size and (t.min() < -1 or t.max() > 1):
        raise ValueError("ternary matrix has values outside {-1, 0, 1}")
    n, k = t.shape
    rb = row_bytes(k, row_align_bytes)
    padded = np.zeros((n, rb * TRITS_PER_BYTE), dtype=np.int64)
    padded[:, :k] = t
    digits = (padded + 1).reshape(n, rb, TRITS_PER_BYTE)
    weights = np.array([3**i for i in range(TRITS_PER_BYTE)], dtype=np.int64)
    return (digits @ weights).astype(np.uint8)


def unpack_ternary(packed: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`pack_ternary`: ``uint8 [N, row_bytes]`` -> int8 ``[N, k]``."""
    packed = np.asarray(packed, dtype=np.uint8)
    n = packed.shape[0]
    return trit_decode_table()[packed].reshape(n, -1)[:, :k]


# ======================================================================================================
# export-time conversions from float (the only place floats meet the formats)
# ======================================================================================================
def vector_from_float(v: np.ndarray) -> tuple[np.ndarray, int]:
    """A per-channel float vector as VEC_BITS-bit mantissas (int32) and its exponent F: ``v ~= m * 2**-F``,
    max |m| in [2**(VEC_BITS-2), 2**(VEC_BITS-1)). An all-zero vector gives zeros and F = 0."""
    v = np.asarray(v, dtype=np.float64)
    mx = float(np.max(np.abs(v))) if v.size else 0.0
    if mx == 0.0:
        return np.zeros(v.shape, dtype=np.int32), 0
    F = (VEC_BITS - 2) - math.floor(math.log2(mx))
    m = np.rint(np.ldexp(v, F))
    if np.max(np.abs(m)) >= 2 ** (VEC_BITS - 1):   # log2 rounding at an exact power of two
        F -= 1
        m = np.rint(np.ldexp(v, F))
    return m.astype(np.int32), F


def constant_from_float(c: float) -> tuple[int, int]:
    """A positive constant as ``(c_m, c_e)``, ``c ~= c_m * 2**c_e``, c_m in [2**(M_BITS-1), 2**M_BITS)."""
    if not (c > 0 and math.isfinite(c)):
        raise ValueError(f"scale constant must be positive and finite, got {c}")
    e = math.floor(math.log2(c)) - (M_BITS - 1)
    m = round(c / 2.0**e)
    if m >= 2**M_BITS:
        m, e = round(c / 2.0 ** (e + 1)), e + 1
    return int(m), int(e)


def q31_from_float(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] as Q0.31 (int64 holding 0..2**31)."""
    x = np.asarray(x, dtype=np.float64)
    return np.clip(np.rint(x * ONE_Q31), 0, ONE_Q31).astype(np.int64)


def frac_for(max_abs: float) -> int:
    """Fractional bits for values up to ``max_abs`` with CALIBRATION_MARGIN_BITS of headroom in int32
    (``max_abs * 2**margin < 2**30``), clamped to [FRAC_MIN, FRAC_MAX]."""
    if not (max_abs >= 0 and math.isfinite(max_abs)):
        raise ValueError(f"calibration magnitude must be finite, got {max_abs}")
    if max_abs == 0:
        return FRAC_MAX
    f = 30 - CALIBRATION_MARGIN_BITS - math.floor(math.log2(max_abs)) - 1
    return max(FRAC_MIN, min(FRAC_MAX, f))


def fixed_from_float(x: np.ndarray, frac: int) -> np.ndarray:
    """Floats as int32 fixed point Q(frac), rounded to nearest and saturated (the embedding table)."""
    x = np.asarray(x, dtype=np.float64)
    return np.clip(np.rint(x * 2.0**frac), INT32_MIN, INT32_MAX).astype(np.int32)


def act_to_float(x, frac: int) -> np.ndarray:
    """Q(frac) integers as floats (for reporting and sampling only)."""
    return np.asarray(x, dtype=np.float64) / (1 << frac)
