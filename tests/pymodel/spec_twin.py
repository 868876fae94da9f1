"""A second, deliberately plain implementation of the integer primitives, written from docs/numerics.md.

Pure Python integers, no numpy, and it does NOT import mmfree.pymodel.numerics: every constant below is
typed from the document (that is the point: test_spec_twin.py compares this with numerics.py, so a place
where the code and the document say different things shows up as a disagreement). Section names refer to
docs/numerics.md. Vectors are Python lists of ints.
"""

from __future__ import annotations

import math

# ---- constants as the document states them ----------------------------------------------------------
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
U_BITS = 30            # Formats: max |u'| in [2^29, 2^30]
ZS_BITS = 23           # Formats: sz = max(0, bitlen(max|z|) - 23)
P_CODE_BITS = 32       # Rounding: p and P first reduced to 32 bits
RECIP_EXTRA = 22       # Rounding: k = bitlen(P') + 22
CODE_MAX = 127
M_BITS = 24            # Output multiplier: b = rshift_round(c_m r, 24), M has 24 bits
P_BITS = 24            # Output multiplier: ps = max(0, bitlen(P) - 24)
ONE_Q31 = 2**31        # Formats: gates in Q0.31
SIG_STEPS = 256        # Nonlinearities: E[i] = round(sigmoid(-i/256) 2^31), i = 0..4096
SIG_ENTRIES = 4097
RSQRT_ENTRIES = 769    # Nonlinearities: 769-entry Q2.30 table over m in [1/4, 1], steps of 1/1024


def bitlen(x: int) -> int:
    return abs(x).bit_length()


def rshift_round(x: int, s: int) -> int:
    """Rounding and saturation: floor((x + 2^(s-1)) / 2^s), round half up; s = 0 leaves x."""
    assert s >= 0
    return x if s == 0 else (x + 2 ** (s - 1)) // 2**s


def sat32(x: int) -> int:
    return max(INT32_MIN, min(INT32_MAX, x))


# ---- Formats: the BitLinear input, the sum of squares, the codes ---------------------------------------
def normalize(u: list[int]) -> tuple[list[int], int]:
    """u' = u 2^-sh, sh = bitlen(max|u|) - 30: a rounding right shift, or an exact left shift. A zero
    vector stays zero (the document: 'a zero input gives a zero output'; sh taken as 0)."""
    mu = max(abs(v) for v in u)
    if mu == 0:
        return list(u), 0
    sh = bitlen(mu) - U_BITS
    return ([rshift_round(v, sh) for v in u] if sh >= 0 else [v * 2 ** (-sh) for v in u]), sh


def sum_squares(z: list[int]) -> tuple[int, int]:
    sz = max(0, bitlen(max(abs(v) for v in z)) - ZS_BITS)
    return sum(rshift_round(v, sz) ** 2 for v in z), sz


def codes(p: list[int]) -> list[int]:
    """Rounding and saturation, activation codes (half away from zero through the reciprocal)."""
    P = max(abs(v) for v in p)
    if P == 0:
        return [0] * len(p)
    sp = max(0, bitlen(P) - P_CODE_BITS)
    P2 = rshift_round(P, sp)
    k = bitlen(P2) + RECIP_EXTRA
    R = (CODE_MAX * 2**k) // P2
    out = []
    for v in p:
        v2 = rshift_round(v, sp)
        mag = min(CODE_MAX, (abs(v2) * R + 2 ** (k - 1)) // 2**k)
        out.append(-mag if v2 < 0 else mag)
    return out


# ---- Nonlinearities ------------------------------------------------------------------------------------
def sigmoid_table() -> list[int]:
    return [round(2**31 / (1 + math.exp(i / SIG_STEPS))) for i in range(SIG_ENTRIES)]


def rsqrt_table() -> list[int]:
    return [round(2**30 / math.sqrt((j + 256) / 1024)) for j in range(RSQRT_ENTRIES)]


_SIG, _RSQ = sigmoid_table(), rsqrt_table()


def sigmoid_tail(a: int, frac: int) -> int:
    """E(a) for a >= 0 in Q(frac): t = frac - 8, i = a >> t, f = a & (2^t - 1), E[i] - (((E[i] - E[i+1]) f) >> t);
    a >= 16 uses the last interval: a is taken as its end, 16 - 2^-frac."""
    t = frac - 8
    a = min(a, 16 * 2**frac - 1)
    i, f = a >> t, a & (2**t - 1)
    return _SIG[i] - (((_SIG[i] - _SIG[i + 1]) * f) >> t)


def sigmoid_q31(x: int, frac: int) -> int:
    return ONE_Q31 - sigmoid_tail(x, frac) if x >= 0 else sigmoid_tail(-x, frac)


def silu(x: int, frac: int) -> int:
    return rshift_round(x * sigmoid_q31(x, frac), 31)


def forget_rate(f: int, one_minus_lb: int, frac: int) -> int:
    """(1 - lb) sigmoid(-f) in Q0.31, rescaled with rshift_round like every rescale."""
    return rshift_round(one_minus_lb * sigmoid_q31(-f, frac), 31)


def hgrn_update(h: int, s: int, rate: int) -> int:
    """h + rate (s - h), saturating."""
    return sat32(h + rshift_round(rate * (s - h), 31))


def rsqrt(S: int) -> tuple[int, int]:
    """S' = S 2^-2k in [2^30, 2^32); r0 from the table by the top 10 bits of S', interpolation on the low 22
    bits (floor); one Newton step. rsqrt(S) ~= r 2^-(46+k)."""
    k = (bitlen(S) - 31) // 2
    Sn = S >> (2 * k) if k >= 0 else S << (-2 * k)
    j, f = (Sn >> 22) - 256, Sn & (2**22 - 1)
    r0 = _RSQ[j] - (((_RSQ[j] - _RSQ[j + 1]) * f) >> 22)
    t = (r0 * r0) >> 30
    v = ((Sn >> 2) * t) >> 30
    return (r0 * (3 * 2**30 - v)) >> 31, k


def output_multiplier(P: int, S: int, sz: int, c_m: int, c_e: int) -> tuple[int, int]:
    if P == 0 or S == 0:
        return 0, 0
    r, k = rsqrt(S)
    b = rshift_round(c_m * r, M_BITS)
    ps = max(0, bitlen(P) - P_BITS)
    m = b * rshift_round(P, ps)
    M = rshift_round(m, bitlen(m) - M_BITS)
    return M, 30 + k + sz - bitlen(m) - c_e - ps


def dequantize(acc: int, M: int, shift: int) -> int:
    """sat(rshift_round(acc M, shift)); a negative shift is a saturating left shift; right shifts above
    62 give 0."""
    v = acc * M
    if shift < 0:
        return sat32(v * 2 ** (-shift))
    return 0 if shift > 62 else sat32(rshift_round(v, shift))


def argmax(xs: list[int]) -> int:
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


# ---- Packing ---------------------------------------------------------------------------------------------
def pack_row(trits: list[int], row_align: int = 16) -> bytes:
    """Five trits per byte, byte = sum (t_i + 1) 3^i, padded with zero trits to a multiple of 16 bytes."""
    n = -(-len(trits) // 5)
    n = -(-n // row_align) * row_align
    t = list(trits) + [0] * (5 * n - len(trits))
    return bytes(sum((t[5 * b + i] + 1) * 3**i for i in range(5)) for b in range(n))
