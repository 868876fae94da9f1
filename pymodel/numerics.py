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
#: Fractional bits of the activation format ACT = signed Q15.16 in int32: residual stream, BitLinear
#: outputs (i, f, g, gate, up, o, down, logits), the recurrent state h and SiLU outputs.
ACT_FRAC = 16
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
#: int8 activation codes are symmetric: -127..127 (-128 never occurs).
CODE_MAX = 127
#: Per-channel vectors (RMSNorm weights and their products) are int16 mantissas with one exponent per
#: vector, normalised so that max |mantissa| lies in [2**14, 2**15).
VEC_BITS = 16
#: A BitLinear input u is first normalised so that |u'| <= 2**U_BITS.
U_BITS = 16
#: z = u' * n is reduced by Z_SHIFT before squaring into the sum of squares S (S < 2**48).
Z_SHIFT = 15
#: Extra bits of the activation reciprocal: R = (127 << (bitlen(P) + RECIP_EXTRA)) // P.
RECIP_EXTRA = 17
#: Output multiplier mantissa M lies in [2**(M_BITS-1), 2**M_BITS] (fits one 18x25 DSP with the accumulator).
M_BITS = 16
#: Sigmoid/gate values are unsigned Q0.31.
SIG_FRAC = 31
ONE_Q31 = 1 << SIG_FRAC
#: Sigmoid tail table E(a) = sigmoid(-a) for a in [0, SIG_RANGE], SIG_STEPS_LOG2 entries per unit.
SIG_RANGE = 16
SIG_STEPS_LOG2 = 5
SIG_INDEX_SHIFT = ACT_FRAC - SIG_STEPS_LOG2          # Q16 magnitude >> 11 = table index
SIG_ENTRIES = SIG_RANGE * (1 << SIG_STEPS_LOG2) + 1  # 513 (the last entry is the interpolation end point)
#: Reciprocal square root table over m in [1/4, 1] in steps of 1/256, values rsqrt(m) in Q30.
RSQRT_FRAC = 30
RSQRT_INDEX_BITS = 8
RSQRT_FIRST = 1 << (RSQRT_INDEX_BITS - 2)            # 64: index of m = 1/4
RSQRT_ENTRIES = (1 << RSQRT_INDEX_BITS) - RSQRT_FIRST + 1  # 193
#: Embedding rows: int16 codes with one power-of-two shift per row (x = code * 2**shift in ACT).
EMB_BITS = 16
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
    """E[i] = round(sigmoid(-i / 32) * 2**31), i = 0..512, uint32 (Q0.31). E[0] = 2**30."""
    vals = [round(2**SIG_FRAC / (1.0 + math.exp(i / (1 << SIG_STEPS_LOG2)))) for i in range(SIG_ENTRIES)]
    t = np.array(vals, dtype=np.uint32)
    t.setflags(write=False)
    return t


@lru_cache(maxsize=1)
def rsqrt_table() -> np.ndarray:
    """T[j] = round(2**30 / sqrt((j + 64) / 256)), j = 0..192, uint32 (Q2.30): rsqrt over m in [1/4, 1]."""
    vals = [round(2**RSQRT_FRAC / math.sqrt((j + RSQRT_FIRST) / (1 << RSQRT_INDEX_BITS))) for j in range(RSQRT_ENTRIES)]
    t = np.array(vals, dtype=np.uint32)
    t.setflags(write=False)
    return t


# ---- nonlinearities ---------------------------------------------------------------------------------
def sigmoid_tail(a):
    """sigmoid(-a) in Q0.31 for a >= 0 in ACT (Q16); a >= 16 uses the last entry.

    Linear interpolation between table entries: ``E[i] - (((E[i] - E[i+1]) * f) >> 11)`` with
    ``i = a >> 11``, ``f = a & 2047``.
    """
    table = sigmoid_tail_table()
    limit = SIG_RANGE << ACT_FRAC
    a = _where(a >= limit, limit - 1, a)
    idx = a >> SIG_INDEX_SHIFT
    frac = a & ((1 << SIG_INDEX_SHIFT) - 1)
    e0 = _take(table, idx)
    e1 = _take(table, idx + 1)
    return e0 - (((e0 - e1) * frac) >> SIG_INDEX_SHIFT)


def sigmoid_q31(x):
    """sigmoid(x) in Q0.31 for x in ACT: ``E(|x|)`` for x < 0, ``2**31 - E(x)`` for x >= 0."""
    e = sigmoid_tail(_abs(x))
    return _where(x >= 0, ONE_Q31 - e, e)


def silu(x):
    """SiLU(x) = x * sigmoid(x): ACT in, ACT out: ``rshift_round(x * sigmoid_q31(x), 31)``."""
    return rshift_round(x * sigmoid_q31(x), SIG_FRAC)


def forget_rate(f_pre, one_minus_lb):
    """g = 1 - f = (1 - lb) * sigmoid(-f_pre) in Q0.31. ``one_minus_lb`` is Q0.31 (2**31 means lb = 0)."""
    s = _where(f_pre >= 0, sigmoid_tail(_abs(f_pre)), ONE_Q31 - sigmoid_tail(_abs(f_pre)))
    return rshift_round(one_minus_lb * s, SIG_FRAC)


def hgrn_update(h, s, g):
    """The MLGRU step in the form ``h + g * (s - h)`` (= f h + (1-f) s): ACT h, s; Q0.31 g; int32 saturated."""
    return saturate(h + rshift_round(g * (s - h), SIG_FRAC))


def mul_act(a, b):
    """Product of two ACT values kept at full precision (Q32 in int64): the input of a BitLinear."""
    return a * b


# ---- the BitLinear quantizer and its output scale ----------------------------------------------------------
def normalize_input(u):
    """u' = rshift_round(u, max(0, bitlen(max|u|) - 16)) along the last axis, so |u'| <= 2**16.

    Returns (u', shift). A BitLinear's output does not depend on the scale of its input, so any
    integer vector (ACT or a Q32 product) can feed it.
    """
    mu = _amax(_abs(u), axis=-1, keepdims=True)
    sh = _clip0(bitlen(mu) - U_BITS)
    return rshift_round(u, sh), sh


def quantize(u, n, nw):
    """The activation side of a BitLinear whose input went through RMSNorm(weight n) before it.

    ``u``: int64 ``[..., K]`` (any scale); ``n``, ``nw``: int16 mantissas ``[K]`` of the pre-norm weight and
    of the product (pre-norm weight * the BitLinear's own norm weight). Returns
    ``(codes int64 [..., K] in -127..127, P [..., 1], S [..., 1])`` with ``P = max|p|`` (p = u' nw) and
    ``S = sum(rshift_round(u' n, 15)**2)``. RMSNorm's 1/rms and eps drop out: codes depend only on the
    direction of p, and the output scale uses P / sqrt(S) (see :func:`output_multiplier`).
    """
    up, _ = normalize_input(u)
    z = up * n
    p = up * nw
    zs = rshift_round(z, Z_SHIFT)
    S = _sum(zs * zs, axis=-1, keepdims=True)
    P = _amax(_abs(p), axis=-1, keepdims=True)
    return codes_from(p, P), P, S


def codes_from(p, P):
    """int8 codes ``sign(p) * min(127, round_half_away(127 |p| / P))`` via the reciprocal
    ``R = (127 << (bitlen(P) + 17)) // P``; P == 0 gives zeros."""
    b = bitlen(P)
    k = b + RECIP_EXTRA
    Psafe = _where(P > 0, P, P * 0 + 1)
    R = (CODE_MAX * _pow2(k)) // Psafe
    mag = (_abs(p) * R + (_pow2(k) >> 1)) >> k
    mag = _where(mag > CODE_MAX, mag * 0 + CODE_MAX, mag)
    q = _where(p < 0, -mag, mag)
    return _where(P > 0, q, q * 0)


def rsqrt(S):
    """(r, k) with rsqrt(S) ~= r * 2**-(46 + k): S is normalised to S' = S >> 2k (or << -2k) in [2**30, 2**32),
    r = rsqrt(S' / 2**32) in Q2.30 by table look-up with linear interpolation. S must be > 0."""
    b = bitlen(S)
    k = (b - 31) >> 1                       # floor((b - 31) / 2): S >> 2k has 31 or 32 bits
    Sn = shift_round_floor(S, 2 * k)
    idx = Sn >> 24                           # 64..255
    frac = Sn & ((1 << 24) - 1)
    table = rsqrt_table()
    j = idx - RSQRT_FIRST
    t0 = _take(table, j)
    t1 = _take(table, j + 1)
    return t0 - (((t0 - t1) * frac) >> 24), k


def shift_round_floor(x, s):
    """``x >> s`` (floor) for s >= 0, ``x << -s`` for s < 0."""
    if isinstance(s, (int, np.integer)):
        return x >> int(s) if s >= 0 else x << int(-s)
    return _where(s >= 0, x >> _clip0(s), x << _clip0(-s))


def output_multiplier(P, S, c_m: int, c_e: int):
    """Per-token multiplier ``(M, shift)`` of a BitLinear: ``out = shift_round(acc * M, shift)`` in ACT.

    The real output is ``acc * C * P / sqrt(S)``, where the export-time constant ``C = c_m * 2**c_e``
    holds ``alpha * sqrt(K) / 127 * 2**(F_n - F_nw - 15)``. Integer steps:
    ``(r, k) = rsqrt(S)`` (rsqrt(S) ~= r 2**-(46+k)); ``b = rshift_round(c_m * r, 16)``; ``m = b * P``;
    ``M = rshift_round(m, bitlen(m) - 16)`` (M in [2**15, 2**16]); ``shift = 30 + k - bitlen(m) - c_e``.
    Where P or S is 0 the output is 0 (M = 0, shift = 0).
    """
    valid = (P > 0) & (S > 0)
    Ssafe = _where(valid, S, S * 0 + (1 << 31))
    Psafe = _where(valid, P, P * 0 + 1)
    r, k = rsqrt(Ssafe)
    b = rshift_round(c_m * r, 16)
    m = b * Psafe
    em = bitlen(m)
    M = rshift_round(m, em - M_BITS)
    shift = 30 + k - em - c_e
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
    """BitLinear output in ACT: ``saturate(rshift_round(acc * M, shift))`` for shift >= 0 (shifts above 62
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


def embed(codes, shift):
    """Embedding row in ACT: ``saturate(code << shift)`` (shift >= 0) or ``rshift_round(code, -shift)``."""
    right = rshift_round(codes, _clip0(-shift))
    left = saturating_shift_left(codes, _clip0(shift))
    return _where(shift >= 0, left, right)


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
    """A per-channel float vector as int16 mantissas and its exponent F: ``v ~= m * 2**-F``,
    max |m| in [2**14, 2**15). An all-zero vector gives zeros and F = 0."""
    v = np.asarray(v, dtype=np.float64)
    mx = float(np.max(np.abs(v))) if v.size else 0.0
    if mx == 0.0:
        return np.zeros(v.shape, dtype=np.int16), 0
    F = (VEC_BITS - 2) - math.floor(math.log2(mx))
    m = np.rint(v * 2.0**F)
    if np.max(np.abs(m)) >= 2 ** (VEC_BITS - 1):   # log2 rounding at an exact power of two
        F -= 1
        m = np.rint(v * 2.0**F)
    return m.astype(np.int16), F


def constant_from_float(c: float) -> tuple[int, int]:
    """A positive constant as ``(c_m, c_e)``, ``c ~= c_m * 2**c_e``, c_m in [2**15, 2**16)."""
    if not (c > 0 and math.isfinite(c)):
        raise ValueError(f"scale constant must be positive and finite, got {c}")
    e = math.floor(math.log2(c)) - 15
    m = round(c / 2.0**e)
    if m >= 2**16:
        m, e = round(c / 2.0 ** (e + 1)), e + 1
    return int(m), int(e)


def q31_from_float(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] as Q0.31 (int64 holding 0..2**31)."""
    x = np.asarray(x, dtype=np.float64)
    return np.clip(np.rint(x * ONE_Q31), 0, ONE_Q31).astype(np.int64)


def embedding_from_float(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Embedding ``[V, d]`` as int16 codes and a per-row shift (int8) with ``x = code * 2**shift`` in ACT."""
    e = np.asarray(e, dtype=np.float64)
    mx = np.max(np.abs(e), axis=1)
    shift = np.zeros(e.shape[0], dtype=np.int64)
    nz = mx > 0
    # want max|code| = mx * 2**(16 - shift) in [2**14, 2**15)
    shift[nz] = np.floor(np.log2(mx[nz])).astype(np.int64) + ACT_FRAC - (EMB_BITS - 2)
    codes = np.rint(e * np.exp2(ACT_FRAC - shift)[:, None])
    over = np.max(np.abs(codes), axis=1) >= 2 ** (EMB_BITS - 1)
    if over.any():
        shift[over] += 1
        codes[over] = np.rint(e[over] * np.exp2(ACT_FRAC - shift[over])[:, None])
    return codes.astype(np.int16), shift.astype(np.int8)


def act_to_float(x) -> np.ndarray:
    """ACT integers as floats (for reporting and sampling only)."""
    return np.asarray(x, dtype=np.float64) / (1 << ACT_FRAC)
