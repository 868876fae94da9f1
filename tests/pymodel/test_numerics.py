"""Property tests of every numerics primitive against an exact model of what the spec says.

The "high-precision model" is written here independently with Python integers and Fractions (exact),
following docs/numerics.md; the numpy (and torch) primitives must equal it exactly. Where the spec
approximates a real function (sigmoid, rsqrt, the output scale) the documented error bounds are
checked against mpmath-free float64 math with margins stated in the spec.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mmfree.pymodel import numerics as N

I32 = st.integers(N.INT32_MIN, N.INT32_MAX)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def floor_div(a: Fraction | int) -> int:
    return math.floor(Fraction(a))


def exact_rshift_round(x: int, s: int) -> int:
    return x if s == 0 else floor_div(Fraction(x, 1) / 2**s + Fraction(1, 2))


def exact_sat(x: int) -> int:
    return max(N.INT32_MIN, min(N.INT32_MAX, x))


def arr(*xs):
    return np.array(xs, dtype=np.int64)


# ---- rounding, shifting, saturation ---------------------------------------------------------------
@SETTINGS
@given(x=st.integers(-(2**60), 2**60), s=st.integers(0, 62))
def test_rshift_round_is_round_half_up(x, s):
    assert int(N.rshift_round(arr(x), s)[0]) == exact_rshift_round(x, s)
    assert int(N.rshift_round(arr(x), arr(s))[0]) == exact_rshift_round(x, s)


@pytest.mark.parametrize("x,s,expected", [(3, 1, 2), (-3, 1, -1), (1, 1, 1), (-1, 1, 0), (5, 2, 1), (6, 2, 2), (-6, 2, -1)])
def test_rshift_round_ties(x, s, expected):
    assert int(N.rshift_round(arr(x), s)[0]) == expected


@SETTINGS
@given(v=st.integers(-(2**45), 2**45), s=st.integers(0, 45))
def test_saturating_shift_left(v, s):
    expected = exact_sat(v * 2**s)
    assert int(N.saturating_shift_left(arr(v), s)[0]) == expected
    assert int(N.saturating_shift_left(arr(v), arr(s))[0]) == expected


@SETTINGS
@given(x=st.integers(0, 2**63 - 1))
def test_bitlen_exact(x):
    assert int(N.bitlen(arr(x))[0]) == x.bit_length()
    assert int(N.bitlen(torch.tensor([x]))[0]) == x.bit_length()


def test_bitlen_at_powers_of_two():
    xs = [0] + [2**k + d for k in range(63) for d in (-1, 0, 1) if 0 <= 2**k + d < 2**63]
    assert N.bitlen(np.array(xs, dtype=np.int64)).tolist() == [x.bit_length() for x in xs]


# ---- sigmoid, SiLU, gates, recurrence ---------------------------------------------------------------
FRACS = st.integers(N.SIG_STEPS_LOG2 + 1, N.FRAC_MAX)


def exact_tail(a: int, frac: int) -> int:
    """The spec's sigmoid tail: table + interpolation, floor of the interpolation product."""
    t = N.sigmoid_tail_table()
    sh = frac - N.SIG_STEPS_LOG2
    a = min(a, (N.SIG_RANGE << frac) - 1)
    i, f = a >> sh, a & ((1 << sh) - 1)
    e0, e1 = int(t[i]), int(t[i + 1])
    return e0 - floor_div(Fraction((e0 - e1) * f, 2**sh))


def exact_sigmoid_q31(x: int, frac: int) -> int:
    e = exact_tail(abs(x), frac)
    return 2**31 - e if x >= 0 else e


@SETTINGS
@given(x=I32, frac=FRACS)
def test_sigmoid_and_silu_match_spec(x, frac):
    assert int(N.sigmoid_q31(arr(x), frac)[0]) == exact_sigmoid_q31(x, frac)
    assert int(N.silu(arr(x), frac)[0]) == exact_rshift_round(x * exact_sigmoid_q31(x, frac), 31)


def test_sigmoid_rejects_bad_frac():
    with pytest.raises(ValueError, match="frac"):
        N.sigmoid_q31(arr(1), 3)


def test_sigmoid_table_contents():
    t = N.sigmoid_tail_table()
    assert t.shape == (N.SIG_ENTRIES,) and t[0] == 2**30
    for i in (0, 1, 37, 256, 512, N.SIG_ENTRIES - 1):
        assert int(t[i]) == round(2**31 / (1 + math.exp(i / 2**N.SIG_STEPS_LOG2)))
    assert np.all(np.diff(t.astype(np.int64)) <= 0)


@pytest.mark.parametrize("frac", [16, 23])
def test_sigmoid_error_bounds_documented(frac):
    one = 1 << frac
    x = np.arange(-20 * one, 20 * one, 811 << (frac - 16), dtype=np.int64)
    ref = 1 / (1 + np.exp(-x / one))
    assert np.abs(N.sigmoid_q31(x, frac) / 2**31 - ref).max() <= 2.0e-7
    err = np.abs(N.silu(x, frac) / one - x / one * ref)
    assert err[np.abs(x) < 16 * one].max() <= 4.5e-7 + 2.0 / one
    assert err.max() <= 2.3e-6 + 1.0 / one   # beyond |x| = 16 the tail table holds its last value (sigmoid(-16) ~ 1e-7)
    a = np.arange(0, 10 * one, 613 << (frac - 16), dtype=np.int64)
    tail_ref = 1 / (1 + np.exp(a / one))
    assert (np.abs(N.sigmoid_tail(a, frac) / 2**31 - tail_ref) / tail_ref).max() <= 5e-5


@SETTINGS
@given(f=I32, olb=st.integers(0, 2**31), frac=FRACS)
def test_forget_rate_matches_spec(f, olb, frac):
    s = exact_tail(abs(f), frac) if f >= 0 else 2**31 - exact_tail(abs(f), frac)
    assert int(N.forget_rate(arr(f), arr(olb), frac)[0]) == exact_rshift_round(olb * s, 31)


@SETTINGS
@given(h=I32, s=I32, g=st.integers(0, 2**31))
def test_hgrn_update_matches_spec_and_saturates(h, s, g):
    expected = exact_sat(h + exact_rshift_round(g * (s - h), 31))
    assert int(N.hgrn_update(arr(h), arr(s), arr(g))[0]) == expected


def test_hgrn_update_extremes():
    h = arr(N.INT32_MAX, N.INT32_MIN, 0, N.INT32_MAX)
    s = arr(N.INT32_MIN, N.INT32_MAX, N.INT32_MAX, N.INT32_MAX)
    g = arr(2**31, 2**31, 2**31, 0)
    assert N.hgrn_update(h, s, g).tolist() == [N.INT32_MIN, N.INT32_MAX, N.INT32_MAX, N.INT32_MAX]


# ---- the BitLinear quantizer ------------------------------------------------------------------------
VMAX = 2 ** (N.VEC_BITS - 1) - 1
vectors = st.integers(1, 70).flatmap(lambda k: st.tuples(
    st.lists(st.integers(-(2**62) + 1, 2**62 - 1) | st.integers(-300, 300), min_size=k, max_size=k),
    st.lists(st.integers(-VMAX, VMAX), min_size=k, max_size=k),
    st.lists(st.integers(-VMAX, VMAX), min_size=k, max_size=k)))


def exact_quantize(u, n, nw):
    mu = max(abs(v) for v in u)
    sh = mu.bit_length() - N.U_BITS if mu else 0
    up = [exact_rshift_round(v, sh) if sh >= 0 else v * 2**-sh for v in u]
    assert all(abs(v) <= 2**N.U_BITS for v in up)
    assert mu == 0 or max(abs(v) for v in up) >= 2 ** (N.U_BITS - 1)
    z = [a * b for a, b in zip(up, n)]
    p = [a * b for a, b in zip(up, nw)]
    assert all(abs(v) < 2**62 for v in z + p)
    Z = max(abs(v) for v in z)
    sz = max(0, Z.bit_length() - N.ZS_BITS)
    S = sum(exact_rshift_round(v, sz) ** 2 for v in z)
    P = max(abs(v) for v in p)
    if P == 0:
        return [0] * len(u), P, S, sz
    sp = max(0, P.bit_length() - N.P_CODE_BITS)
    pp = [exact_rshift_round(v, sp) for v in p]
    Pp = exact_rshift_round(P, sp)
    k = Pp.bit_length() + N.RECIP_EXTRA
    R = (127 << k) // Pp
    q = []
    for v in pp:
        mag = min(127, floor_div(Fraction(abs(v) * R, 2**k) + Fraction(1, 2)))
        q.append(-mag if v < 0 else mag)
    return q, P, S, sz


@SETTINGS
@given(vec=vectors)
def test_quantize_matches_spec(vec):
    u, n, nw = vec
    q, P, S, sz = N.quantize(np.array(u, dtype=np.int64), np.array(n, dtype=np.int64), np.array(nw, dtype=np.int64))
    eq, eP, eS, esz = exact_quantize(u, n, nw)
    assert q.tolist() == eq and int(P[0]) == eP and int(S[0]) == eS and int(sz[0]) == esz
    if eP:  # the largest |p| maps to exactly +-127
        assert max(abs(v) for v in eq) == 127


def test_quantize_rounds_half_away_from_zero():
    # p = +-1 and +-3 with P = 254: 127 * 1/254 = 0.5 exactly -> 1 and -1
    u = np.array([[1, -1, 3, -3, 254]], dtype=np.int64)
    ones = np.ones(5, dtype=np.int64)
    q = N.quantize(u, ones, ones)[0]
    assert q.tolist() == [[1, -1, 2, -2, 127]]


def test_quantize_zero_vector_gives_zero():
    q, P, S, sz = N.quantize(np.zeros((2, 7), dtype=np.int64), np.ones(7, dtype=np.int64), np.ones(7, dtype=np.int64))
    assert not q.any() and not P.any() and not S.any() and not sz.any()


# ---- rsqrt, output scale ------------------------------------------------------------------------------
def exact_rsqrt(S: int):
    b = S.bit_length()
    k = (b - 31) // 2
    Sn = S >> (2 * k) if k >= 0 else S << (-2 * k)
    assert 2**30 <= Sn < 2**32
    t = N.rsqrt_table()
    low = 32 - N.RSQRT_INDEX_BITS
    j = (Sn >> low) - N.RSQRT_FIRST
    frac = Sn & (2**low - 1)
    t0, t1 = int(t[j]), int(t[j + 1])
    r0 = t0 - floor_div(Fraction((t0 - t1) * frac, 2**low))
    tt = (r0 * r0) >> 30
    v = ((Sn >> 2) * tt) >> 30
    return (r0 * (3 * 2**30 - v)) >> 31, k


@SETTINGS
@given(S=st.integers(1, 2**48 - 1))
def test_rsqrt_matches_spec_and_bound(S):
    r, k = N.rsqrt(arr(S))
    er, ek = exact_rsqrt(S)
    assert (int(r[0]), int(k[0])) == (er, ek)
    assert abs(er * 2.0 ** -(46 + ek) * math.sqrt(S) - 1) <= 3e-9


@SETTINGS
@given(P=st.integers(1, 2**60 - 1), S=st.integers(1, 2**62 - 1), sz=st.integers(0, 40), c=st.floats(1e-12, 1e3),
       acc=st.integers(-(2**22), 2**22))
def test_output_scale_matches_spec_and_bound(P, S, sz, c, acc):
    c_m, c_e = N.constant_from_float(c)
    M, shift = N.output_multiplier(arr(P), arr(S), arr(sz), c_m, c_e)
    r, k = exact_rsqrt(S)
    b = exact_rshift_round(c_m * r, N.M_BITS)
    ps = max(0, P.bit_length() - N.P_BITS)
    m = b * exact_rshift_round(P, ps)
    em = m.bit_length()
    eM = exact_rshift_round(m, em - N.M_BITS)
    eshift = 30 + k + sz - em - c_e - ps
    assert (int(M[0]), int(shift[0])) == (eM, eshift)
    assert 2 ** (N.M_BITS - 1) <= eM <= 2**N.M_BITS
    out = int(N.dequantize(arr(acc), M, shift)[0])
    expected = exact_sat(exact_rshift_round(acc * eM, min(eshift, 62)) if eshift >= 0 else acc * eM * 2**-eshift)
    assert out == expected
    real = acc * c_m * 2.0**c_e * P / math.sqrt(S) * 2.0 ** (16 - sz)
    if 1e3 < abs(real) < 2**31 - 1e3:
        assert abs(out - real) / abs(real) <= 3e-7 + 1 / abs(real)


def test_output_multiplier_zero_inputs():
    M, shift = N.output_multiplier(arr(0, 5), arr(7, 0), arr(0, 0), 2**23 + 5, -20)
    assert M.tolist() == [0, 0] and shift.tolist() == [0, 0]
    assert N.dequantize(arr(123, -5), M, shift).tolist() == [0, 0]


# ---- argmax, formats, float conversions ------------------------------------------------------------
def test_argmax_lowest_index_on_ties():
    x = np.array([[3, 7, 7, 1], [-5, -5, -9, -5]], dtype=np.int64)
    assert N.argmax(x).tolist() == [1, 0]
    assert N.argmax(torch.tensor(x)).tolist() == [1, 0]


@SETTINGS
@given(v=st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=1, max_size=40))
def test_vector_from_float_normalised(v):
    m, F = N.vector_from_float(np.array(v))
    mx = max(abs(x) for x in v)
    if mx == 0:
        assert not m.any()
        return
    assume(mx > 1e-30)
    assert 2 ** (N.VEC_BITS - 2) <= np.abs(m.astype(np.int64)).max() < 2 ** (N.VEC_BITS - 1)
    assert np.abs(m * 2.0**-F - np.array(v)).max() <= 2.0 ** -(F + 1) * 1.0000001


@SETTINGS
@given(c=st.floats(1e-30, 1e30))
def test_constant_from_float(c):
    m, e = N.constant_from_float(c)
    assert 2 ** (N.M_BITS - 1) <= m < 2**N.M_BITS
    assert abs(m * 2.0**e / c - 1) <= 2.0**-N.M_BITS


def test_constant_from_float_rejects_nonpositive():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            N.constant_from_float(bad)


@SETTINGS
@given(m=st.floats(0, 1e9))
def test_frac_for_leaves_headroom(m):
    f = N.frac_for(m)
    assert N.FRAC_MIN <= f <= N.FRAC_MAX
    if f > N.FRAC_MIN:
        assert m * 2.0 ** (f + N.CALIBRATION_MARGIN_BITS) < 2**30


def test_fixed_from_float_rounds_and_saturates():
    assert N.fixed_from_float(np.array([0.5, -0.25, 1e12, -1e12]), 4).tolist() == [8, -4, N.INT32_MAX, N.INT32_MIN]


# ---- packing -------------------------------------------------------------------------------------
@SETTINGS
@given(n=st.integers(1, 9), k=st.integers(1, 200), seed=st.integers(0, 2**16))
def test_pack_round_trip_and_density(n, k, seed):
    t = np.random.default_rng(seed).integers(-1, 2, size=(n, k))
    packed = N.pack_ternary(t)
    assert packed.shape == (n, N.row_bytes(k)) and packed.shape[1] % N.ROW_ALIGN_BYTES == 0
    assert packed.max() <= 242
    np.testing.assert_array_equal(N.unpack_ternary(packed, k), t)


def test_pack_known_bytes():
    # t = [-1, 0, 1, 1, -1] -> digits 0,1,2,2,0 -> 0 + 3 + 18 + 54 + 0 = 75; padding trits are 0 -> digit 1
    assert N.pack_ternary(np.array([[-1, 0, 1, 1, -1, 0]]))[0, :2].tolist() == [75, 121]
    assert N.row_bytes(1024) == 208 and N.row_bytes(80) == 16 and N.row_bytes(81) == 32


def test_pack_rejects_non_ternary():
    with pytest.raises(ValueError, match="outside"):
        N.pack_ternary(np.array([[0, 2]]))
    with pytest.raises(ValueError, match="positive"):
        N.row_bytes(0)


# ---- numpy and torch give the same bits -----------------------------------------------------------------
def test_torch_and_numpy_primitives_agree():
    rng = np.random.default_rng(0)
    x = rng.integers(N.INT32_MIN, N.INT32_MAX, size=(3, 61), dtype=np.int64)
    g = rng.integers(0, 2**31, size=(3, 61), dtype=np.int64)
    n = rng.integers(-VMAX, VMAX, size=61, dtype=np.int64)
    T = torch.from_numpy
    for fn, args in [(N.silu, (x, 20)), (N.sigmoid_q31, (x, 17)), (N.forget_rate, (x, g, 23)),
                     (N.hgrn_update, (x, x[::-1].copy(), g)), (N.normalize_input, (x * 1000,)),
                     (N.normalize_input, (x >> 20,)), (N.sum_squares, (x * 4096,)), (N.quantize, (x, n, n[::-1].copy()))]:
        a = fn(*args)
        b = fn(*[T(v) if isinstance(v, np.ndarray) else v for v in args])
        a = a if isinstance(a, tuple) else (a,)
        b = b if isinstance(b, tuple) else (b,)
        for u, v in zip(a, b):
            np.testing.assert_array_equal(np.asarray(u), v.numpy())
