"""The C-simulation check suite behind ``mmfree hls csim``: every kernel against the numerics spec on
random vectors (extremes and odd sizes included), and a model's tokens through the layer kernel against
:class:`~mmfree.pymodel.intmodel.IntModel`. Every comparison is exact equality.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from mmfree.hls import csim as C
from mmfree.hls import vectors as V
from mmfree.pymodel import numerics as N


@dataclass
class Check:
    """One exact comparison: ``mismatches`` of ``elements`` values differ (0 = bit-identical)."""

    name: str
    kind: str                      # "kernel" or "model"
    elements: int
    mismatches: int
    first_mismatch: dict | None = None
    detail: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.mismatches == 0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def compare(name: str, kind: str, got, want, detail: str = "") -> Check:
    """Exact comparison of two integer arrays (shapes must agree; a shape difference counts as a failure)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return Check(name, kind, int(want.size), int(max(want.size, 1)),
                     {"reason": f"shape {got.shape} != reference shape {want.shape}"}, detail)
    diff = got.astype(np.int64) != want.astype(np.int64)
    n = int(diff.sum())
    first = None
    if n:
        idx = tuple(int(i) for i in np.argwhere(diff)[0])
        first = {"index": list(idx), "hls": int(got[idx]), "reference": int(want[idx])}
    return Check(name, kind, int(want.size), n, first, detail)


@dataclass
class _Timer:
    checks: list = field(default_factory=list)

    def add(self, fn, *args, **kw):
        t = time.perf_counter()
        c = fn(*args, **kw)
        c.seconds = round(time.perf_counter() - t, 4)
        self.checks.append(c)


# ======================================================================================================
# kernels against the numerics spec
# ======================================================================================================
def kernel_checks(sim, seed: int = 0, n: int = 20000) -> list[Check]:
    """Every kernel and primitive of ``sim`` (a :class:`mmfree.hls.csim.CSim`) on random inputs."""
    rng = np.random.default_rng(seed)
    out = _Timer()
    K = "kernel"
    fracs = sorted({V.FRACS[0], V.FRACS[-1], int(rng.integers(V.FRACS[0], V.FRACS[-1] + 1))})

    # ---- elementwise nonlinearities, at the smallest, the largest and one random activation format
    for frac in fracs:
        x = V.act_values(rng, n, frac)
        out.add(lambda: compare(f"sigmoid_q31[frac={frac}]", K, sim.sigmoid_q31(x, frac), N.sigmoid_q31(x, frac)))
        out.add(lambda: compare(f"silu[frac={frac}]", K, sim.silu(x, frac), N.silu(x, frac)))
        olb = V.gate_values(rng, n)
        out.add(lambda: compare(f"forget_rate[frac={frac}]", K, sim.forget_rate(x, olb, frac),
                                N.forget_rate(x, olb, frac)))
    h, s, g = V.act_values(rng, n), rng.permutation(V.act_values(rng, n)), V.gate_values(rng, n)
    out.add(lambda: compare("hgrn_update", K, sim.hgrn_update(h, s, g), N.hgrn_update(h, s, g)))

    # ---- output multiplier and dequantize
    P, S, sz, c_m, c_e = V.multiplier_inputs(rng, n)
    M_ref, sh_ref = N.output_multiplier(P, S, sz, c_m, c_e)
    M, sh = sim.output_multiplier(P, S, sz, c_m, c_e)
    out.add(lambda: compare("output_multiplier.M", K, M, M_ref))
    out.add(lambda: compare("output_multiplier.shift", K, sh, sh_ref))
    acc = V.accumulators(rng, n)
    Mq = rng.permutation(np.concatenate([M_ref, [0, 1, 1 << N.M_BITS]]))[:n]
    shq = rng.integers(-40, 70, size=n, endpoint=True)
    out.add(lambda: compare("dequantize", K, sim.dequantize(acc, Mq, shq), N.dequantize(acc, Mq, shq)))

    # ---- vector kernels at odd sizes and at every input magnitude
    for k in V.ODD_SIZES:
        bits = int(rng.integers(0, 63))
        u = V.u_values(rng, k, bits)
        up, ush = sim.normalize_input(u)
        ref_up, ref_sh = N.normalize_input(u)
        out.add(lambda: compare(f"normalize_input[K={k}, |u|<2^{bits}]", K, np.append(up, ush),
                                np.append(ref_up, ref_sh)))
        zbits = int(rng.integers(0, C.P_MAX.bit_length() + 1))
        z = V.z_values(rng, k, zbits)
        out.add(lambda: compare(f"sum_squares[K={k}, |z|<2^{zbits}]", K, np.array(sim.sum_squares(z)),
                                np.concatenate(N.sum_squares(z))))
        nv, nwv = V.vec_values(rng, k), V.vec_values(rng, k)
        codes, Pq, Sq, szq = sim.quantize(u, nv, nwv)
        rc, rP, rS, rsz = N.quantize(u, nv, nwv)
        out.add(lambda: compare(f"rmsnorm_quantize[K={k}]", K, np.append(codes, [Pq, Sq, szq]),
                                np.concatenate([rc, rP, rS, rsz])))
        p = rng.integers(-int(rP[0]), int(rP[0]), size=k, endpoint=True) if rP[0] else np.zeros(k, np.int64)
        out.add(lambda: compare(f"codes_from[K={k}]", K, sim.codes_from(p, int(rP[0])), N.codes_from(p, rP[0])))

    # ---- the packed ternary product
    for rows, k in V.MATVEC_SHAPES:
        t = V.ternary(rng, rows, k)
        c = V.codes(rng, k)
        packed = N.pack_ternary(t)
        ref = N.unpack_ternary(packed, k).astype(np.int64) @ c
        out.add(lambda: compare(f"ternary_matvec[N={rows}, K={k}]", K, sim.ternary_matvec(packed, c), ref))
    raw = rng.integers(0, 256, size=(17, N.row_bytes(63)), dtype=np.uint8)   # bytes 243..255 decode to 0
    c = V.codes(rng, 63)
    out.add(lambda: compare("ternary_matvec[raw bytes 0..255]", K, sim.ternary_matvec(raw, c),
                            N.unpack_ternary(raw, 63).astype(np.int64) @ c))

    # ---- dequantize kernel (stream) and the whole-BitLinear kernel
    for k, rows in ((60, 63), (1000, 7), (63, 1000)):
        accs = V.accumulators(rng, rows, k)
        Pk, Sk, szk, cmk, cek = (int(a[-1]) for a in V.multiplier_inputs(rng, 200))
        y, Mk, shk = sim.dequantize_rows(accs, Pk, Sk, szk, cmk, cek)
        rM, rsh = N.output_multiplier(np.int64(Pk), np.int64(Sk), np.int64(szk), cmk, cek)
        out.add(lambda: compare(f"dequantize_kernel[N={rows}]", K, np.append(y, [Mk, shk]),
                                np.append(N.dequantize(accs, rM, rsh), [rM, rsh])))
        image, offs, ref = V.bitlinear_case(rng, k, rows)
        u = V.u_values(rng, k, int(rng.integers(10, 63)))
        ref_y = ref(u)
        out.add(lambda: compare(f"bitlinear[K={k}, N={rows}]", K,
                                sim.bitlinear(image, *offs, u, rows), ref_y))

    # ---- the MLGRU kernel
    for d in (1, 63, 1000):
        frac = int(rng.integers(V.FRACS[0], V.FRACS[-1] + 1))
        i, f, gg, hh = (V.act_values(rng, d, frac) for _ in range(4))
        olb = V.gate_values(rng, d)
        hn, u = sim.mlgru(i, f, gg, olb, hh, frac)
        ref_h = N.hgrn_update(hh, N.silu(i, frac), N.forget_rate(f, olb, frac))
        ref_u = N.mul_act(gg, N.silu(ref_h, frac))
        out.add(lambda: compare(f"mlgru[d={d}, frac={frac}]", K, np.concatenate([hn, u]),
                                np.concatenate([ref_h, ref_u])))
    return out.checks


# ======================================================================================================
# a model through the layer kernel against IntModel
# ======================================================================================================
def model_checks(sim, model, tokens, h0: np.ndarray | None = None) -> list[Check]:
    """``tokens`` (a chain from state ``h0``) through every layer kernel and the lm_head BitLinear,
    compared tap by tap with ``IntModel.forward``; one check per tap name plus the final states."""
    from mmfree.hls.harness import ModelRunner

    h0 = model.initial_state().h if h0 is None else np.asarray(h0, dtype=np.int64)
    taps: dict = {}
    t0 = time.perf_counter()
    hs, _ = model.forward(h0, tokens, taps=taps)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    got, ghs = ModelRunner(sim, model).run_tokens(tokens, h0)
    t_hls = time.perf_counter() - t0
    checks = []
    for name, want in taps.items():
        if name == "embed":
            continue      # the kernels' input
        checks.append(compare(name, "model", got[name], want))
    checks.append(compare("state h (all layers)", "model", ghs, hs))
    checks[-1].detail = f"reference {t_ref:.3f} s, C-simulation {t_hls:.3f} s for {len(tokens)} token(s)"
    return checks
