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

FRACS = sorted({V.FRACS[0], 8, 16, 24, V.FRACS[-1]})


@pytest.mark.parametrize("frac", FRACS)
def test_sigmoid_and_silu(sim, rng, frac):
    x = V.act_values(rng, 50000, frac)
    assert_array_equal(sim.sigmoid_q31(x, frac), N.sigmoid_q31(x, frac))
    assert_array_equal(sim.silu(x, frac), N.silu(x, frac))


def test_sigmoid_every_table_interval(sim):
    """Each interpolation interval, its ends and its midpoint, at frac 16 (t = 11)."""
    frac = 16
    t = frac - N.SIG_STEPS_LOG2
    base = np.arange(N.SIG_ENTRIES + 2, dtype=np.int64) << t
    x = np.concatenate([base - 1, base, base + 1, base + (1 << (t - 1))])
    x = np.concatenate([x, -x])
    assert_array_equal(sim.sigmoid_q31(x, frac), N.sigmoid_q31(x, frac))


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
    P, S, c_m, c_e = V.multiplier_inputs(rng, 50000)
    M, sh = sim.output_multiplier(P, S, c_m, c_e)
    rM, rsh = N.output_multiplier(P, S, c_m, c_e)
    assert_array_equal(M, rM)
    assert_array_equal(sh, rsh)
    assert (M[(P > 0) & (S > 0)] >= 1 << (N.M_BITS - 1)).all()


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
    codes, P, S = sim.quantize(np.zeros(63, np.int64), np.ones(63, np.int64), np.ones(63, np.int64))
    assert (P, S) == (0, 0) and not codes.any()


@pytest.mark.parametrize("k", V.ODD_SIZES)
def test_rmsnorm_quantize_kernel(sim, rng, k):
    for bits in (3, 20, 40, 62):
        u = V.u_values(rng, k, bits)
        n, nw = V.vec_values(rng, k), V.vec_values(rng, k)
        codes, P, S = sim.quantize(u, n, nw)
        rc, rP, rS = N.quantize(u, n, nw)
        assert_array_equal(codes, rc)
        assert (P, S) == (int(rP[0]), int(rS[0]))
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
    P, S, c_m, c_e = (a[-7:] for a in V.multiplier_inputs(rng, 300))
    for args in zip(P, S, c_m, c_e):
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
