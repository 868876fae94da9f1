"""Every HLS kernel under C-simulation, bit-identical to mmfree.pymodel.numerics on random vectors with
the extremes (int32 ends, table boundaries, saturation) and odd sizes (1, 5, 60, 63, 1000 ...)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from mmfree.hls import checks
from mmfree.hls import csim as C
from mmfree.hls import vectors as V
from mmfree.pymodel import numerics as N

FRACS = sorted({V.FRACS[0], 12, 16, 24, V.FRACS[-1]})


@pytest.mark.parametrize("frac", FRACS)
def test_sigmoid_and_silu(sim, rng, frac):
    x = V.act_values(rng, 50000, frac)
    assert_array_equal(sim.sigmoid_q31(x, frac), N.sigmoid_q31(x, frac))
    assert_array_equal(sim.silu(x, frac), N.silu(x, frac))


@pytest.mark.parametrize("frac", [V.FRACS[0], 16, V.FRACS[-1]])
def test_sigmoid_every_table_interval(sim, frac):
    """Each interpolation interval (all SIG_ENTRIES - 1 of them), its ends and its midpoint, at the smallest
    format (one table step per unit of the last place), a middle one and the largest."""
    t = frac - N.SIG_STEPS_LOG2
    base = np.arange(N.SIG_ENTRIES + 2, dtype=np.int64) << t
    x = np.concatenate([base - 1, base, base + 1, base + ((1 << t) >> 1), base + (1 << t) - 1])
    x = np.concatenate([x, -x])
    x = x[(x >= N.INT32_MIN) & (x <= N.INT32_MAX)]
    assert_array_equal(sim.sigmoid_q31(x, frac), N.sigmoid_q31(x, frac))
    assert_array_equal(sim.silu(x, frac), N.silu(x, frac))


@pytest.mark.parametrize("frac", FRACS)
def test_forget_rate(sim, rng, frac):
    f = V.act_values(rng, 50000, frac)
    olb = V.gate_values(rng, f.size)
    assert_array_equal(sim.forget_rate(f, olb, frac), N.forget_rate(f, olb, frac))


def test_hgrn_update_saturates(sim, rng):
    h = V.act_values(rng, 50000)
    s = rng.permutation(V.act_values(rng, 50000))
    g = V.gate_values(rng, 50000)
    # the corners: h and s at opposite int32 ends, the gate fully open
    lo, hi, one = N.INT32_MIN, N.INT32_MAX, N.ONE_Q31
    corners = np.array([[lo, hi, one], [hi, lo, one], [lo, hi, one - 1], [hi, hi, one], [lo, lo, 0], [0, hi, one]])
    h, s, g = (np.concatenate([c, v]) for c, v in zip(corners.T, (h, s, g)))
    got = sim.hgrn_update(h, s, g)
    assert_array_equal(got, N.hgrn_update(h, s, g))
    assert got[0] == hi and got[1] == lo


def test_output_multiplier(sim, rng):
    P, S, sz, c_m, c_e = V.multiplier_inputs(rng, 50000)
    M, sh = sim.output_multiplier(P, S, sz, c_m, c_e)
    rM, rsh = N.output_multiplier(P, S, sz, c_m, c_e)
    assert_array_equal(M, rM)
    assert_array_equal(sh, rsh)
    assert (M[(P > 0) & (S > 0)] >= 1 << (N.M_BITS - 1)).all()


def test_rsqrt_newton_every_table_interval(sim):
    """The rsqrt table + Newton step over every table interval (ends, midpoints, neighbours), at several
    even and odd normalisation shifts of S (S' in [2**30, 2**32) reached by right and left shifts)."""
    low = 32 - N.RSQRT_INDEX_BITS
    j = np.arange(N.RSQRT_FIRST, 1 << N.RSQRT_INDEX_BITS, dtype=np.int64) << low
    Sn = np.concatenate([j, j + 1, j + (1 << (low - 1)), j + (1 << low) - 1, j - 1])
    Sn = Sn[(Sn >= 1 << 30) & (Sn < 1 << 32)]
    S = np.concatenate([Sn, Sn >> 1, Sn << 20, Sn << 29, (Sn << 29) + (1 << 28) - 1, Sn >> 20, Sn >> 29, [1, 2, 3]])
    S = S[(S > 0) & (S <= C.S_MAX)]
    P = np.full(S.shape, (1 << N.P_BITS) - 1)
    sz = np.arange(S.size) % (C.SZ_MAX + 1)
    M, sh = sim.output_multiplier(P, S, sz, C.CM_HI, 0)
    rM, rsh = N.output_multiplier(P, S, sz, C.CM_HI, 0)
    assert_array_equal(M, rM)
    assert_array_equal(sh, rsh)


@pytest.mark.parametrize("k", [1, 5, 60, 63, 1000, N.MAX_K])
def test_sum_squares(sim, rng, k):
    """The self-normalised sum of squares at every magnitude of z up to 2**(U_BITS+VEC_BITS-1), including
    the largest S the spec allows (MAX_K terms at the maximum)."""
    for bits in (0, 1, N.ZS_BITS - 1, N.ZS_BITS, N.ZS_BITS + 1, 40, C.P_MAX.bit_length() - 1, C.P_MAX.bit_length()):
        z = V.z_values(rng, k, bits)
        assert sim.sum_squares(z) == tuple(int(v[0]) for v in N.sum_squares(z))
    for top in (C.P_MAX, C.P_MAX - 1):            # the largest sz; every term rounding up to 2**ZS_BITS
        z = np.full(k, top)
        z[::2] = -top
        S, sz = sim.sum_squares(z)
        assert (S, sz) == tuple(int(v[0]) for v in N.sum_squares(z))
        assert S <= C.S_MAX and sz <= C.SZ_MAX
    assert sz == C.SZ_MAX - 1 and S == k << (2 * N.ZS_BITS)


def test_dequantize_saturates_both_ways(sim, rng):
    acc = V.accumulators(rng, 50000)
    M = rng.integers(0, 1 << N.M_BITS, size=acc.size, endpoint=True)
    shift = rng.integers(-45, 75, size=acc.size, endpoint=True)
    got = sim.dequantize(acc, M, shift)
    assert_array_equal(got, N.dequantize(acc, M, shift))
    assert (got == N.INT32_MAX).any() and (got == N.INT32_MIN).any() and (got == 0).any()


@pytest.mark.parametrize("k", V.ODD_SIZES)
def test_normalize_and_codes(sim, rng, k):
    for bits in (0, 1, 15, N.U_BITS, N.U_BITS + 1, 40, 62):
        u = V.u_values(rng, k, bits)
        up, sh = sim.normalize_input(u)
        ref_up, ref_sh = N.normalize_input(u)
        assert_array_equal(up, ref_up)
        assert sh == int(ref_sh[0])
        P = int(np.abs(up).max()) * ((1 << (N.VEC_BITS - 1)) - 1)
        p = rng.integers(-P, P, size=k, endpoint=True)
        p[0] = P if bits % 2 else -P
        assert_array_equal(sim.codes_from(p, P), N.codes_from(p, np.int64(P)))


def test_codes_of_zero_vector(sim):
    assert_array_equal(sim.codes_from(np.zeros(7, np.int64), 0), np.zeros(7))
    codes, P, S, sz = sim.quantize(np.zeros(63, np.int64), np.ones(63, np.int64), np.ones(63, np.int64))
    assert (P, S, sz) == (0, 0, 0) and not codes.any()


def _near_code_ties(rng, P: int, count: int) -> np.ndarray:
    """Values p (|p| <= P) whose reduced p' lies at or next to a rounding tie 127 p' / P' = m + 1/2 of the
    codes: where the truncated reciprocal decides the code (the spec's RECIP_EXTRA bits matter)."""
    sp = max(0, P.bit_length() - N.P_CODE_BITS)
    Pn = (P + ((1 << sp) >> 1)) >> sp
    m = rng.integers(0, N.CODE_MAX, size=count)
    pn = ((2 * m + 1) * Pn) // (2 * N.CODE_MAX)
    pn = np.concatenate([pn + d for d in (-1, 0, 1, 2)])
    half = (1 << sp) >> 1
    p = np.concatenate([pn << sp, (pn << sp) - half, (pn << sp) + half - 1 if sp else pn])
    p = np.concatenate([p, -p])
    return np.clip(p, -P, P)


def test_codes_at_the_reduction_boundaries(sim, rng):
    """P just below, at and above the P_CODE_BITS reduction (sp = 0, 1, ...), P' rounding up to a power of
    two, up to P_MAX; p at +-P, at rounding ties of the reduction and next to the code rounding ties."""
    Ps = [1, 2, 127, 254, 255, 32385, (1 << 31) + 12345]
    for b in range(N.P_CODE_BITS - 1, C.P_MAX.bit_length()):
        Ps += [(1 << b) - 1, 1 << b, (1 << b) + 1, (1 << b) + (1 << max(b - N.P_CODE_BITS, 0)) - 1]
        Ps += [int(v) for v in rng.integers(1 << b, min(2 << b, C.P_MAX), size=2, endpoint=True)]
    for P in sorted({min(p, C.P_MAX) for p in Ps}):
        sp = max(0, P.bit_length() - N.P_CODE_BITS)
        half = (1 << (sp - 1)) if sp else 0
        p = np.concatenate([[P, -P, 0, half, -half, half - 1, -(half + 1)],
                            rng.integers(-P, P, size=200, endpoint=True), _near_code_ties(rng, P, 100)])
        p = np.clip(p, -P, P)
        assert_array_equal(sim.codes_from(p, P), N.codes_from(p, np.int64(P)), err_msg=f"P={P}")


@pytest.mark.parametrize("k", V.ODD_SIZES)
def test_rmsnorm_quantize_kernel(sim, rng, k):
    for bits in (3, 20, 40, 62):
        u = V.u_values(rng, k, bits)
        n, nw = V.vec_values(rng, k), V.vec_values(rng, k)
        codes, P, S, sz = sim.quantize(u, n, nw)
        rc, rP, rS, rsz = N.quantize(u, n, nw)
        assert_array_equal(codes, rc)
        assert (P, S, sz) == (int(rP[0]), int(rS[0]), int(rsz[0]))
        assert np.abs(codes).max() <= N.CODE_MAX


@pytest.mark.parametrize("rows,k", V.MATVEC_SHAPES)
def test_ternary_matvec_kernel(sim, rng, rows, k):
    t = V.ternary(rng, rows, k)
    codes = V.codes(rng, k)
    got = sim.ternary_matvec(N.pack_ternary(t), codes)
    assert_array_equal(got, t.astype(np.int64) @ codes)


def test_ternary_matvec_extreme_accumulators(sim):
    k = 1000
    t = np.ones((2, k), np.int8)
    t[1] = -1
    codes = np.full(k, N.CODE_MAX)
    assert_array_equal(sim.ternary_matvec(N.pack_ternary(t), codes), [N.CODE_MAX * k, -N.CODE_MAX * k])


def test_ternary_matvec_any_byte(sim, rng):
    """Bytes 243..255 never occur in an export; the kernel decodes them as the spec table does (zeros)."""
    raw = rng.integers(0, 256, size=(40, N.row_bytes(63)), dtype=np.uint8)
    raw[0, :] = 255
    codes = V.codes(rng, 63)
    assert_array_equal(sim.ternary_matvec(raw, codes), N.unpack_ternary(raw, 63).astype(np.int64) @ codes)


@pytest.mark.parametrize("rows", [1, 60, 63, 1000])
def test_dequantize_kernel(sim, rng, rows):
    acc = V.accumulators(rng, rows, 1000)
    P, S, sz, c_m, c_e = (a[-7:] for a in V.multiplier_inputs(rng, 300))
    for args in zip(P, S, sz, c_m, c_e):
        y, M, sh = sim.dequantize_rows(acc, *(int(a) for a in args))
        rM, rsh = N.output_multiplier(*(np.int64(a) for a in args))
        assert (M, sh) == (int(rM), int(rsh))
        assert_array_equal(y, N.dequantize(acc, rM, rsh))


@pytest.mark.parametrize("d", [1, 60, 63, 1000])
def test_mlgru_kernel(sim, rng, d):
    for frac in (V.FRACS[0], 16, V.FRACS[-1]):
        i, f, g, h = (V.act_values(rng, d, frac) for _ in range(4))
        olb = V.gate_values(rng, d)
        h_new, u = sim.mlgru(i, f, g, olb, h, frac)
        ref_h = N.hgrn_update(h, N.silu(i, frac), N.forget_rate(f, olb, frac))
        assert_array_equal(h_new, ref_h)
        assert_array_equal(u, N.mul_act(g, N.silu(ref_h, frac)))


@pytest.mark.parametrize("k,rows", [(1, 1), (60, 63), (63, 60), (1000, 7), (63, 1000)])
def test_bitlinear_kernel(sim, rng, k, rows):
    image, offs, reference = V.bitlinear_case(rng, k, rows)
    for bits in (0, 18, 31, 62):
        u = V.u_values(rng, k, bits)
        assert_array_equal(sim.bitlinear(image, *offs, u, rows), reference(u))


def test_check_suite_all_bit_identical(sim):
    """What `mmfree hls csim` runs for the kernels."""
    bad = [c.as_dict() for c in checks.kernel_checks(sim, seed=3, n=5000) if not c.ok]
    assert not bad


def test_library_is_cached_and_warning_free(sim):
    import json

    path, built = C.build_library()
    assert path == sim.path and not built
    info = json.loads((path.parent / "build.json").read_text())
    assert info["warnings"].strip() == "", info["warnings"]
