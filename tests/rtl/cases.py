"""Random test cases for every compute unit: inputs, and the reference's answer from mmfree.pymodel.numerics.

One generator per unit returns a :class:`Case`: the input fields (packed into the unit's ``i`` payload),
the number of outputs to collect, and a ``check(got)`` that compares the unpacked outputs with the
reference exactly (``np.testing.assert_array_equal``). The same cases drive amaranth.sim and the
Verilator/cocotb runs. Inputs mix uniform values over the whole format with saturation extremes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mmfree.pymodel import numerics as N
from mmfree.rtl import quantize as Q
from tests.rtl.streams import pack, unpack

I32 = (N.INT32_MIN, N.INT32_MAX)


@dataclass
class Case:
    inputs: dict
    n_out: int
    check: Callable[[dict], None]
    n_vectors: int


def _mix(rng, n, lo, hi, extremes=()):
    """Uniform in [lo, hi] mixed with small values, log-uniform magnitudes and the given extremes."""
    u = rng.integers(lo, hi, n, endpoint=True)
    span = max(1, min(hi, -lo if lo < 0 else hi))
    mag = np.floor(np.exp2(rng.uniform(0, np.log2(span), n))).astype(np.int64)
    sign = rng.choice([-1, 1], n) if lo < 0 else np.ones(n, dtype=np.int64)
    logu = np.clip(sign * mag, lo, hi)
    small = rng.integers(max(lo, -70), min(hi, 70), n, endpoint=True)
    pick = rng.integers(0, 4, n)
    out = np.where(pick == 0, u, np.where(pick == 1, logu, small))
    ext = [e for e in extremes if lo <= e <= hi]
    if ext:
        m = rng.random(n) < 0.08
        out = np.where(m, rng.choice(np.array(ext, dtype=np.int64), n), out)
    return out.astype(np.int64)


def _i32(rng, n):
    return _mix(rng, n, *I32, extremes=(N.INT32_MIN, N.INT32_MAX, 0, 1, -1, N.INT32_MIN + 1, N.INT32_MAX - 1))


def _act(rng, n, frac):
    """Activations in Q(frac), biased to the sigmoid's interesting range (|x| < 20) and its table edge (16.0)."""
    x = _i32(rng, n)
    one = np.left_shift(np.int64(1), frac)
    near = (rng.uniform(-20, 20, n) * one).astype(np.int64)
    edge = (N.SIG_RANGE * one + rng.integers(-3, 3, n)) * rng.choice([-1, 1], n)
    pick = rng.integers(0, 4, n)
    return N.saturate(np.where(pick == 0, x, np.where(pick == 3, edge, near))).astype(np.int64)


def _q31(rng, n):
    return _mix(rng, n, 0, N.ONE_Q31, extremes=(0, 1, N.ONE_Q31, N.ONE_Q31 - 1))


def _eq(got, want, what):
    np.testing.assert_array_equal(np.asarray(got, dtype=np.int64), np.asarray(want, dtype=np.int64), err_msg=what)


def _elementwise(fn_inputs, fn_expected):
    def make(rng, n):
        ins = fn_inputs(rng, n)
        exp = fn_expected(**ins)

        def check(got):
            for k, v in exp.items():
                _eq(got[k], v, k)
            _eq(got["last"], ins["last"], "last")
        return Case(ins, n, check, n)
    return make


def _last_flags(n, rng):
    return (rng.random(n) < 0.05).astype(np.int64)


# ---- element-wise units ---------------------------------------------------------------------------------
def _fracs(rng, n):
    """Per-element fractional bits: the whole legal range, the common middle more often."""
    lo = max(N.FRAC_MIN, N.SIG_STEPS_LOG2 + 1)
    return np.where(rng.random(n) < 0.5, rng.integers(lo, N.FRAC_MAX + 1, n), rng.integers(14, 20, n))


def _per_frac(fn, frac, **arrays):
    """Apply a reference function that takes one python-int ``frac`` to each group of elements."""
    out = np.zeros(len(frac), dtype=np.int64)
    for f in np.unique(frac):
        sel = frac == f
        out[sel] = np.asarray(fn(*(v[sel] for v in arrays.values()), int(f)), dtype=np.int64)
    return out


residual_add = _elementwise(
    lambda rng, n: {"x": _i32(rng, n), "y": _i32(rng, n), "last": _last_flags(n, rng)},
    lambda x, y, last: {"z": N.saturate(x + y)})


def _act_f(rng, n):
    frac = _fracs(rng, n)
    return _act(rng, n, frac), frac


def _sig_inputs(rng, n):
    x, frac = _act_f(rng, n)
    return {"x": x, "frac": frac, "last": _last_flags(n, rng)}


sigmoid = _elementwise(_sig_inputs, lambda x, frac, last: {"y": _per_frac(N.sigmoid_q31, frac, x=x)})

silu = _elementwise(_sig_inputs, lambda x, frac, last: {"y": _per_frac(N.silu, frac, x=x)})


def _forget_inputs(rng, n):
    f, frac = _act_f(rng, n)
    return {"f": f, "one_minus_lb": _q31(rng, n), "frac": frac, "last": _last_flags(n, rng)}


forget_rate = _elementwise(_forget_inputs, lambda f, one_minus_lb, frac, last: {
    "g": _per_frac(N.forget_rate, frac, f=f, one_minus_lb=one_minus_lb)})

hgrn_update = _elementwise(
    lambda rng, n: {"h": _i32(rng, n), "s": _i32(rng, n), "g": _q31(rng, n), "last": _last_flags(n, rng)},
    lambda h, s, g, last: {"h": N.hgrn_update(h, s, g)})


def _mlgru_inputs(rng, n):
    i, frac = _act_f(rng, n)
    return {"h": _i32(rng, n), "i": i, "f": _act(rng, n, frac), "one_minus_lb": _q31(rng, n), "frac": frac,
            "last": _last_flags(n, rng)}


def _mlgru_ref(h, i, f, one_minus_lb, frac, last):
    s = _per_frac(N.silu, frac, i=i)
    g = _per_frac(N.forget_rate, frac, f=f, one_minus_lb=one_minus_lb)
    return {"h": N.hgrn_update(h, s, g)}


mlgru_update = _elementwise(_mlgru_inputs, _mlgru_ref)


def _gated_inputs(rng, n):
    b, frac = _act_f(rng, n)
    return {"a": _i32(rng, n), "b": b, "frac": frac, "last": _last_flags(n, rng)}


gated_product = _elementwise(_gated_inputs, lambda a, b, frac, last: {
    "u": N.mul_act(a, _per_frac(N.silu, frac, b=b))})


dequantize = _elementwise(
    lambda rng, n: {"acc": _mix(rng, n, -(1 << (N.ACC_BITS - 1)), (1 << (N.ACC_BITS - 1)) - 1,
                                extremes=(-(1 << (N.ACC_BITS - 1)), (1 << (N.ACC_BITS - 1)) - 1, 0)),
                    "M": np.where(rng.random(n) < 0.8, rng.integers(1 << (N.M_BITS - 1), (1 << N.M_BITS) + 1, n),
                                  _mix(rng, n, 0, (1 << Q.MULT_WIDTH) - 1, extremes=(0, (1 << Q.MULT_WIDTH) - 1))),
                    "shift": np.where(rng.random(n) < 0.7, rng.integers(-34, 64, n),
                                      rng.integers(-(1 << (Q.SHIFT_WIDTH - 1)), 1 << (Q.SHIFT_WIDTH - 1), n)),
                    "last": _last_flags(n, rng)},
    lambda acc, M, shift, last: {"y": N.dequantize(acc, M, shift)})


def output_multiplier(rng, n):
    S = np.floor(np.exp2(rng.uniform(0, Q.S_WIDTH, n))).astype(np.int64)
    P = np.floor(np.exp2(rng.uniform(0, Q.PMAX_WIDTH, n))).astype(np.int64)
    S = np.where(rng.random(n) < 0.05, rng.choice([0, 1, (1 << Q.S_WIDTH) - 1], n), S)
    P = np.where(rng.random(n) < 0.05, rng.choice([0, 1, (1 << Q.PMAX_WIDTH) - 1], n), P)
    # S in the rsqrt's interesting spots: just below / at powers of two (odd and even bit lengths)
    edge = np.left_shift(np.int64(1), rng.integers(1, Q.S_WIDTH, n)) + rng.integers(-2, 2, n)
    S = np.where(rng.random(n) < 0.1, np.clip(edge, 0, (1 << Q.S_WIDTH) - 1), S)
    c_m = rng.integers(1 << (N.M_BITS - 1), 1 << N.M_BITS, n)
    c_m = np.where(rng.random(n) < 0.05, rng.choice([1 << (N.M_BITS - 1), (1 << N.M_BITS) - 1], n), c_m)
    c_e = rng.integers(-(1 << (Q.CE_WIDTH - 1)), 1 << (Q.CE_WIDTH - 1), n)
    sz = np.where(rng.random(n) < 0.3, 0, rng.integers(0, Q.SZ_MAX + 1, n))
    sz = np.where(rng.random(n) < 0.05, Q.SZ_MAX, sz)
    M, shift = N.output_multiplier(P, S, sz, c_m, c_e)
    ins = {"S": S, "P": P, "c_m": c_m, "c_e": c_e, "sz": sz}

    def check(got):
        _eq(got["M"], M, "M")
        _eq(got["shift"], shift, "shift")
    return Case(ins, n, check, n)


# ---- reductions: whole vectors ---------------------------------------------------------------------------
def vector_sizes(rng, n_vectors: int, odd=(1, 2, 60, 63, 1000), max_small: int = 12) -> list[int]:
    """The odd sizes first, then random small ones (fast to simulate), ``n_vectors`` in all."""
    sizes = list(odd)[:n_vectors]
    sizes += [int(s) for s in rng.integers(1, max_small + 1, max(0, n_vectors - len(sizes)))]
    return sizes


def _concat(vectors):
    x = np.concatenate(vectors)
    last = np.concatenate([np.r_[np.zeros(len(v) - 1, dtype=np.int64), 1] for v in vectors])
    return x, last


def _u_vector(rng, size):
    """A BitLinear input: ACT values, Q32 products or tiny values, with the odd zero vector."""
    kind = rng.integers(0, 5)
    if kind == 0:
        v = _i32(rng, size)
    elif kind == 1:
        v = _i32(rng, size) * _i32(rng, size) // 2 + rng.integers(-3, 3, size)
        v = np.clip(v, -(1 << 62), 1 << 62)
    elif kind == 2:
        v = rng.integers(-(1 << 62), (1 << 62) + 1, size) >> int(rng.integers(0, 62))
    elif kind == 3:
        v = rng.integers(-40, 41, size)
    else:
        v = np.zeros(size, dtype=np.int64) if rng.random() < 0.5 else np.full(size, rng.choice([-(1 << 62), 1 << 62]))
    return v.astype(np.int64)


def max_abs(rng, n_vectors, sizes=None):
    sizes = sizes or vector_sizes(rng, n_vectors)
    vecs = [_u_vector(rng, s) for s in sizes]
    u, last = _concat(vecs)
    mx = [int(np.max(np.abs(v))) for v in vecs]
    sh = [int(N.normalize_input(v)[1][0]) for v in vecs]

    def check(got):
        _eq(got["maxabs"], mx, "maxabs")
        _eq(got["shift"], sh, "shift")
    return Case({"u": u, "last": last}, len(vecs), check, len(vecs))


def _vec_weights(rng, size):
    """A 31-bit norm-weight vector: full range with extremes, small magnitudes (so that max|z| is small and
    the sum-of-squares shift is 0), or all zero."""
    vmax = (1 << (N.VEC_BITS - 1)) - 1
    kind = rng.integers(0, 6)
    if kind <= 2:
        return _mix(rng, size, -vmax, vmax, extremes=(-vmax, vmax, 0, 1, -1))
    if kind <= 4:
        top = int(np.exp2(rng.uniform(0, N.VEC_BITS - 1)))
        return rng.integers(-top, top + 1, size)
    return np.zeros(size, dtype=np.int64)


def quant_stats(rng, n_vectors, sizes=None):
    """Passes 2 and 3 in one run: ``sz`` in the input is the vector's own (as pass 2 would give it), so
    every output field is checked: p, z per element; P, Z, sz, S per vector."""
    sizes = sizes or vector_sizes(rng, n_vectors)
    vecs, ns, nws, shifts, szs, ps, zs, Ss, Ps, Zs, szv = [], [], [], [], [], [], [], [], [], [], []
    for s in sizes:
        u = _u_vector(rng, s)
        n = _vec_weights(rng, s)
        nw = _vec_weights(rng, s)
        up, sh = N.normalize_input(u)
        _, P, S, sz = N.quantize(u, n, nw)
        z = up * n
        S2, sz2 = N.sum_squares(z)
        assert int(S2[0]) == int(S[0]) and int(sz2[0]) == int(sz[0])
        vecs.append(u), ns.append(n), nws.append(nw)
        shifts.append(np.full(s, int(sh[0]))), szs.append(np.full(s, int(sz[0])))
        ps.append(up * nw), zs.append(z)
        Ss.append(int(S[0])), Ps.append(int(P[0])), Zs.append(int(np.max(np.abs(z)))), szv.append(int(sz[0]))
    u, last = _concat(vecs)
    ends = np.flatnonzero(last)

    def check(got):
        _eq(got["p"], np.concatenate(ps), "p")
        _eq(got["z"], np.concatenate(zs), "z")
        _eq(got["S"][ends], Ss, "S")
        _eq(got["P"][ends], Ps, "P")
        _eq(got["Z"][ends], Zs, "Z")
        _eq(got["sz"][ends], szv, "sz")
        _eq(got["last"], last, "last")
    ins = {"u": u, "n": np.concatenate(ns), "nw": np.concatenate(nws), "shift": np.concatenate(shifts),
           "sz": np.concatenate(szs), "last": last}
    return Case(ins, len(u), check, len(vecs))


def _p_top(rng, pmax):
    """max|p| of a test vector: tiny, log-uniform, the code reduction's boundaries (P' rounds up to
    2**P_CODE_BITS at 2**(P_CODE_BITS + 1) - 1), or the largest."""
    pc = N.P_CODE_BITS
    picks = [1, 2, 127, pmax, int(np.exp2(rng.uniform(0, Q.PMAX_WIDTH))), (1 << pc) - 1, 1 << pc,
             (1 << (pc + 1)) - 1, (1 << (pc + 1)) - 2, 1 << (pc + 1), (1 << (pc + 2)) - 1]
    return max(1, min(int(rng.choice(picks)), pmax))


def _p_vectors(rng, sizes):
    """Test vectors of pass-3 products ``p`` (zeros, random, extremes, rounding ties of the reduction), their
    ``P = max|p|`` and the reference codes."""
    pmax = (1 << Q.PMAX_WIDTH) - 1
    vecs, Ps, codes = [], [], []
    for s in sizes:
        kind = rng.integers(0, 5)
        if kind == 0:
            p = np.zeros(s, dtype=np.int64)
        else:
            top = _p_top(rng, pmax)
            p = rng.integers(-top, top + 1, s)
            if kind == 1:
                p[rng.integers(0, s)] = top * rng.choice([-1, 1])
            elif kind == 2:
                # rounding ties of the reduction p' = rshift_round(p, sp)
                sp = max(0, top.bit_length() - N.P_CODE_BITS)
                if sp:
                    p = (p >> sp << sp) + (1 << (sp - 1))
                    p = np.clip(p, -top, top)
                p[rng.integers(0, s)] = top * rng.choice([-1, 1])
        P = np.max(np.abs(p), keepdims=True)
        vecs.append(p), Ps.append(int(P[0])), codes.append(N.codes_from(p, P))
    return vecs, Ps, codes


def _reciprocal_ref(P: int) -> tuple[int, int, int]:
    """(R, k, sp) of :func:`numerics.codes_from` for one ``P`` (Python integers: ``127 << k`` exceeds int64);
    ``P = 0`` gives zeros."""
    if P == 0:
        return 0, 0, 0
    sp = max(0, P.bit_length() - N.P_CODE_BITS)
    Pr = int(N.rshift_round(P, sp))
    k = Pr.bit_length() + N.RECIP_EXTRA
    return (N.CODE_MAX << k) // Pr, k, sp


def codes_from_p(rng, n_vectors, sizes=None):
    vecs, Ps, codes = _p_vectors(rng, sizes or vector_sizes(rng, n_vectors))
    p, last = _concat(vecs)

    def check(got):
        _eq(got["q"], np.concatenate(codes), "q")
        _eq(got["last"], last, "last")
    P = np.concatenate([np.full(len(v), P) for v, P in zip(vecs, Ps)])
    return Case({"p": p, "P": P, "last": last}, len(p), check, len(vecs))


def reciprocal(rng, n_vectors):
    pmax = (1 << Q.PMAX_WIDTH) - 1
    P = [0, 1, pmax] + [_p_top(rng, pmax) for _ in range(max(0, n_vectors - 3))]
    P = P[:n_vectors]
    ref = [_reciprocal_ref(int(x)) for x in P]

    def check(got):
        _eq(got["R"], [r[0] for r in ref], "R")
        _eq(got["k"], [r[1] for r in ref], "k")
        _eq(got["sp"], [r[2] for r in ref], "sp")
    return Case({"P": np.array(P, dtype=np.int64)}, len(P), check, len(P))


def codes(rng, n_vectors, sizes=None):
    """Pass 3 given the reciprocal (R, k, sp) of each vector's P, as :class:`Reciprocal` produces it."""
    vecs, Ps, want = _p_vectors(rng, sizes or vector_sizes(rng, n_vectors))
    p, last = _concat(vecs)
    rks = [_reciprocal_ref(P) for P in Ps]
    per = {f: np.concatenate([np.full(len(v), rk[i]) for v, rk in zip(vecs, rks)]) for i, f in enumerate("Rks")}

    def check(got):
        _eq(got["q"], np.concatenate(want), "q")
        _eq(got["last"], last, "last")
    return Case({"p": p, "R": per["R"], "k": per["k"], "sp": per["s"], "last": last}, len(p), check, len(vecs))


def argmax(rng, n_vectors, sizes=None):
    sizes = sizes or vector_sizes(rng, n_vectors)
    vecs = []
    for s in sizes:
        kind = rng.integers(0, 3)
        v = _i32(rng, s) if kind == 0 else rng.integers(-3, 4, s) if kind == 1 else np.full(s, rng.choice(I32))
        vecs.append(v.astype(np.int64))
    x, last = _concat(vecs)
    idx = [int(N.argmax(v)) for v in vecs]
    val = [int(v.max()) for v in vecs]

    def check(got):
        _eq(got["index"], idx, "index")
        _eq(got["value"], val, "value")
    return Case({"x": x, "last": last}, len(vecs), check, len(vecs))


#: unit name (as in mmfree.rtl.catalog.VECTOR_UNITS) -> (case generator, kind); "element" generators take a
#: count of elements, "vector" generators a count of vectors.
CASES = {
    "residual_add": (residual_add, "element"),
    "sigmoid": (sigmoid, "element"),
    "silu": (silu, "element"),
    "forget_rate": (forget_rate, "element"),
    "hgrn_update": (hgrn_update, "element"),
    "mlgru_update": (mlgru_update, "element"),
    "gated_product": (gated_product, "element"),
    "dequantize": (dequantize, "element"),
    "output_multiplier": (output_multiplier, "element"),
    "max_abs": (max_abs, "vector"),
    "quant_stats": (quant_stats, "vector"),
    "codes_from_p": (codes_from_p, "vector"),
    "reciprocal": (reciprocal, "vector"),
    "codes": (codes, "vector"),
    "argmax": (argmax, "vector"),
}


def make_case(name: str, rng, count: int) -> Case:
    gen, _kind = CASES[name]
    return gen(rng, count)


# ---- the matvec engine -------------------------------------------------------------------------------------
@dataclass
class MatvecJob:
    """Streams for :class:`mmfree.rtl.matvec.TernaryMatVec` and the reference accumulators.

    ``act``/``cmd``: raw payloads; ``weights``: beats as ints; ``acc``: ``[rows, tokens]`` expected
    (ternary matrix times codes, exact integers); ``last``: expected ``last`` flags per row.
    """

    act: list
    cmd: list
    weights: list
    acc: np.ndarray
    last: np.ndarray


def matvec_job(dut, rng, shapes) -> MatvecJob:
    """One command per ``(rows, K)`` in ``shapes``, alternating banks 0, 1, 0...; the codes of command
    ``c`` are loaded into its bank before the commands start (so at most ``banks`` commands). With
    ``dut.vlanes`` V > 1 each ``act`` transfer carries V consecutive positions (zeros past K)."""
    from mmfree.rtl.matvec import beats_per_row

    L, k, R, V = dut.lanes, dut.tokens, dut.ways, dut.vlanes
    if any(rows % R for rows, _ in shapes):
        raise ValueError(f"rows must be a multiple of ways = {R}")
    if len(shapes) > dut.banks:
        raise ValueError("one bank per command")
    acts, cmds, beats, accs, lasts = {}, [], [], [], []
    for c, (rows, K) in enumerate(shapes):
        kind = rng.integers(0, 3)
        W = rng.integers(-1, 2, (rows, K)) if kind else rng.choice([-1, 1], (rows, K))
        codes = rng.integers(-N.CODE_MAX, N.CODE_MAX + 1, (k, K))
        if kind == 0:
            codes = rng.choice([-N.CODE_MAX, N.CODE_MAX], (k, K))     # accumulator extremes
        bank = c % dut.banks
        Kv = -(-K // V)         # transfers per vector
        grouped = np.pad(codes, ((0, 0), (0, Kv * V - K))).reshape(k, Kv, V)
        words = (grouped & 0xFF) << (8 * np.arange(V)) if V > 1 else codes
        words = words.sum(axis=2) if V > 1 else words
        if c % 2 == 0:          # every token's code of a position at once (the datapath's QCODES)
            for t in range(k):
                acts.setdefault(f"code{t}", []).extend(words[t])
            acts.setdefault("en", []).extend([(1 << k) - 1] * Kv)
            acts.setdefault("bank", []).extend([bank] * Kv)
            acts.setdefault("first", []).extend([1] + [0] * (Kv - 1))
        else:                   # one token vector after another
            for t in range(k):
                for tt in range(k):
                    acts.setdefault(f"code{tt}", []).extend(words[t] if tt == t else [0] * Kv)
                acts.setdefault("en", []).extend([1 << t] * Kv)
                acts.setdefault("bank", []).extend([bank] * Kv)
                acts.setdefault("first", []).extend([1] + [0] * (Kv - 1))
        bpr = beats_per_row(K, L)
        cmds.append((rows // R, bpr, bank))
        packed = N.pack_ternary(W).reshape(rows, bpr, L // N.TRITS_PER_BYTE)
        for g in range(rows // R):          # a beat carries the same column beat of the group's R rows
            for b in range(bpr):
                beats.append(int.from_bytes(b"".join(bytes(packed[g * R + w, b]) for w in range(R)), "little"))
        # the reference: exact integer products (as IntModel computes them)
        accs.append(W.astype(np.int64) @ codes.T.astype(np.int64))
        lasts.append(np.r_[np.zeros(rows // R - 1, dtype=np.int64), 1])
    act = pack(dut.ACT, **{f: np.array(v) for f, v in acts.items()})
    cmd = pack(dut.CMD, rows=[c[0] for c in cmds], beats=[c[1] for c in cmds], bank=[c[2] for c in cmds])
    return MatvecJob(act, cmd, beats, np.concatenate(accs), np.concatenate(lasts))


def matvec_unpack(dut, words):
    """Raw ``out`` payloads -> (acc ``[rows, tokens]``, last)."""
    got = unpack(dut.OUT, words)
    k, R = dut.tokens, dut.ways
    if not words:
        return np.zeros((0, k)), got["last"]
    # acc[w * k + t] of each group -> rows g * R + w
    acc = np.stack([np.stack([got[f"acc{w * k + t}"] for t in range(k)], axis=1) for w in range(R)], axis=1)
    return acc.reshape(-1, k), got["last"]
