"""numerics.py against spec_twin.py, a plain-integer implementation written from docs/numerics.md alone
(issue 27 item 4): EXACT equality on hypothesis-generated inputs, with the saturation and rounding edges
drawn on purpose (half-way values, powers of two and their neighbours, int32 limits, zero vectors)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfree.pymodel import numerics as N
from tests.pymodel import spec_twin as T

SETTINGS = settings(max_examples=150, deadline=None)


def edgy(lo: int, hi: int) -> st.SearchStrategy[int]:
    """Integers in [lo, hi], with powers of two, their neighbours and the ends drawn often."""
    edges = {lo, hi, 0, 1, -1}
    for e in range(0, 63):
        for v in (2**e - 1, 2**e, 2**e + 1, -(2**e) - 1, -(2**e), -(2**e) + 1, 3 * 2**e // 2):
            edges.add(v)
    edges = sorted(v for v in edges if lo <= v <= hi)
    return st.one_of(st.integers(lo, hi), st.sampled_from(edges))


FRAC = st.integers(T.SIG_STEPS.bit_length(), 28)      # (SIG_STEPS_LOG2, FRAC_MAX] = [9, 28]
I32 = edgy(T.INT32_MIN, T.INT32_MAX)


def a(*v):
    return np.array(v, dtype=np.int64)


def i(x) -> int:
    """The one element of a numpy result of any shape, as a Python int."""
    return int(np.asarray(x).reshape(-1)[0])


def test_constants_match_the_document():
    assert (N.U_BITS, N.ZS_BITS, N.P_CODE_BITS, N.RECIP_EXTRA, N.CODE_MAX, N.M_BITS, N.P_BITS, N.ONE_Q31) == \
        (T.U_BITS, T.ZS_BITS, T.P_CODE_BITS, T.RECIP_EXTRA, T.CODE_MAX, T.M_BITS, T.P_BITS, T.ONE_Q31)
    assert N.sigmoid_tail_table().tolist() == T.sigmoid_table()
    assert N.rsqrt_table().tolist() == T.rsqrt_table()


@SETTINGS
@given(edgy(-(2**61), 2**61), st.integers(0, 62))
def test_rshift_round(x, s):
    assert i(N.rshift_round(a(x), s)) == T.rshift_round(x, s)
    assert i(N.rshift_round(a(x), a(s))) == T.rshift_round(x, s)


@SETTINGS
@given(st.lists(edgy(-(2**62) + 1, 2**62 - 1), min_size=1, max_size=12))
def test_normalize_input(u):
    got, sh = N.normalize_input(a(*u))
    want, wsh = T.normalize(u)
    assert got.tolist() == want and i(sh) == wsh


@SETTINGS
@given(st.lists(edgy(-(2**60) + 1, 2**60 - 1), min_size=1, max_size=12))
def test_sum_squares_and_codes(z):
    S, sz = N.sum_squares(a(*z))
    assert (i(S), i(sz)) == T.sum_squares(z)
    P = np.max(np.abs(a(*z)), keepdims=True)
    assert N.codes_from(a(*z), P).tolist() == T.codes(z)


@SETTINGS
@given(edgy(1, 2**62))
def test_rsqrt(S):
    r, k = N.rsqrt(a(S))
    assert (i(r), i(k)) == T.rsqrt(S)


@SETTINGS
@given(edgy(0, 2**60), edgy(0, 2**62), st.integers(0, 40), st.integers(2**23, 2**24 - 1), st.integers(-80, 40))
def test_output_multiplier(P, S, sz, c_m, c_e):
    M, shift = N.output_multiplier(a(P), a(S), a(sz), c_m, c_e)
    assert (i(M), i(shift)) == T.output_multiplier(P, S, sz, c_m, c_e)


@SETTINGS
@given(edgy(-127 * 2**15, 127 * 2**15), edgy(0, 2**24), st.integers(-70, 100))
def test_dequantize_saturation_and_shift_edges(acc, M, shift):
    want = T.dequantize(acc, M, shift)
    assert i(N.dequantize(a(acc), a(M), a(shift))) == want                 # vector shift
    assert i(N.dequantize(a(acc), a(M), shift)) == want   # scalar shift


@SETTINGS
@given(I32, FRAC)
def test_sigmoid_and_silu(x, frac):
    assert i(N.sigmoid_q31(a(x), frac)) == T.sigmoid_q31(x, frac)
    assert i(N.silu(a(x), frac)) == T.silu(x, frac)


@SETTINGS
@given(I32, edgy(0, 2**31), FRAC, I32, I32, edgy(0, 2**31))
def test_forget_rate_and_hgrn_update(f, one_minus_lb, frac, h, s, rate):
    assert i(N.forget_rate(a(f), a(one_minus_lb), frac)) == T.forget_rate(f, one_minus_lb, frac)
    assert i(N.hgrn_update(a(h), a(s), a(rate))) == T.hgrn_update(h, s, rate)


@SETTINGS
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=20))
def test_argmax_lowest_index_on_ties(xs):
    assert i(N.argmax(a(*xs))) == T.argmax(xs)


@SETTINGS
@given(st.lists(st.lists(st.integers(-1, 1), min_size=7, max_size=7), min_size=1, max_size=3),
       st.integers(1, 90))
def test_packing(rows, k):
    t = np.array([(r * 13)[:k] for r in rows], dtype=np.int64)
    packed = N.pack_ternary(t)
    assert [bytes(row) for row in packed.tolist()] == [T.pack_row(r.tolist()) for r in t]
