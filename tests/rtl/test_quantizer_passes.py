"""The quantizer's pass structure (docs/rtl.md, "Composition") under amaranth.sim, unit by unit on whole
vectors, each pass fed only with what the earlier passes produced:

1. :class:`MaxAbs` over u -> the normalising shift;
2. :class:`QuantStats` over (u, n, nw, shift) with ``sz = 0`` -> P, Z and sz of each vector (``S`` ignored);
   :class:`Reciprocal` of P -> (R, k, sp);
3. :class:`QuantStats` again with the vector's ``sz`` -> p and S; :class:`Codes` of p with (R, k, sp);
   :class:`OutputMultiplier` of (S, P, sz, c_m, c_e).

The codes, P, S, sz and (M, shift) must equal numerics.quantize + numerics.output_multiplier exactly.
"""

import numpy as np
import pytest

from mmfree.pymodel import numerics as N
from mmfree.rtl import quantize as Q
from tests.rtl.cases import _concat, _u_vector, _vec_weights, vector_sizes
from tests.rtl.streams import pack, run_unit, unpack


def _sim(unit, stall, seed, n_out=None, **fields):
    words = pack(unit.IN, **fields)
    return unpack(unit.OUT, run_unit(unit, words, len(words) if n_out is None else n_out, stall=stall, seed=seed))


@pytest.mark.parametrize("stall", [0.0, 0.3], ids=["nostall", "stall"])
def test_three_passes_match_quantize_and_output_multiplier(stall):
    rng = np.random.default_rng(55 + int(stall * 10))
    sizes = vector_sizes(rng, 150)
    us = [_u_vector(rng, s) for s in sizes]
    ns = [_vec_weights(rng, s) for s in sizes]
    nws = [_vec_weights(rng, s) for s in sizes]
    c_m = rng.integers(1 << (N.M_BITS - 1), 1 << N.M_BITS, len(sizes))
    c_e = rng.integers(-40, 40, len(sizes))
    u, last = _concat(us)
    n, nw = np.concatenate(ns), np.concatenate(nws)
    ends = np.flatnonzero(last)
    per_elem = np.repeat(np.arange(len(sizes)), sizes)

    # pass 1
    mx = _sim(Q.MaxAbs(), stall, 1, n_out=len(sizes), u=u, last=last)
    shift = mx["shift"][per_elem]
    # pass 2 (the sum-of-squares shift is not known yet: 0)
    st2 = _sim(Q.QuantStats(), stall, 2, u=u, n=n, nw=nw, shift=shift, sz=0, last=last)
    P, sz = st2["P"][ends], st2["sz"][ends]
    rc = _sim(Q.Reciprocal(), stall, 3, P=P)
    # pass 3
    st3 = _sim(Q.QuantStats(), stall, 4, u=u, n=n, nw=nw, shift=shift, sz=sz[per_elem], last=last)
    S = st3["S"][ends]
    codes = _sim(Q.Codes(), stall, 5, p=st3["p"], R=rc["R"][per_elem], k=rc["k"][per_elem],
                 sp=rc["sp"][per_elem], last=last)
    om = _sim(Q.OutputMultiplier(), stall, 6, S=S, P=P, sz=sz, c_m=c_m, c_e=c_e)

    want_codes, want_P, want_S, want_sz, want_M, want_shift = [], [], [], [], [], []
    for i, (uu, nn, ww) in enumerate(zip(us, ns, nws)):
        q, Pv, Sv, szv = N.quantize(uu, nn, ww)
        M, sh = N.output_multiplier(Pv, Sv, szv, int(c_m[i]), int(c_e[i]))
        want_codes.append(q)
        want_P.append(int(Pv[0])), want_S.append(int(Sv[0])), want_sz.append(int(szv[0]))
        want_M.append(int(M[0])), want_shift.append(int(sh[0]))
    np.testing.assert_array_equal(P, want_P)
    np.testing.assert_array_equal(sz, want_sz)
    np.testing.assert_array_equal(S, want_S)
    np.testing.assert_array_equal(codes["q"], np.concatenate(want_codes))
    np.testing.assert_array_equal(codes["last"], last)
    np.testing.assert_array_equal(om["M"], want_M)
    np.testing.assert_array_equal(om["shift"], want_shift)
    # the per-element p and z of both passes agree: only S depends on the input sz
    np.testing.assert_array_equal(st2["p"], st3["p"])
    np.testing.assert_array_equal(st2["z"], st3["z"])
