"""Random test inputs for the kernels, with the extremes mixed in.

Only inputs are made here; the expected outputs always come from :mod:`mmfree.pymodel.numerics` or
:class:`mmfree.pymodel.intmodel.IntModel`. Every generator returns int64 numpy arrays whose values lie
in the range the kernel wrappers of :mod:`mmfree.hls.csim` accept, and puts the range ends, zero and
the lookup-table interval boundaries first, so even short vectors hit them.
"""

from __future__ import annotations

import numpy as np

from mmfree.hls import csim as C
from mmfree.pymodel import layout as LY
from mmfree.pymodel import numerics as N

#: Odd and awkward vector sizes every size-dependent kernel is checked with.
ODD_SIZES = (1, 4, 5, 6, 60, 63, 79, 80, 81, 1000)


def _mix(rng: np.random.Generator, special: list[int], n: int, lo: int, hi: int,
         body: np.ndarray | None = None) -> np.ndarray:
    """The in-range ``special`` values (sorted, once each) followed by ``body`` (default: uniform in
    [lo, hi]), cut to ``n`` values."""
    sp = np.array(sorted({int(v) for v in special if lo <= v <= hi}), dtype=np.int64)
    if body is None:
        body = rng.integers(lo, hi, size=n, endpoint=True, dtype=np.int64)
    return np.clip(np.concatenate([sp, np.asarray(body, dtype=np.int64)])[:n], lo, hi)


def act_values(rng: np.random.Generator, n: int, frac: int = 16) -> np.ndarray:
    """int32 activations in Q(frac): the int32 ends, zero, the sigmoid-table interval boundaries of that
    format, small (a few units) and full-range values."""
    lim = N.SIG_RANGE << frac
    step = 1 << (frac - N.SIG_STEPS_LOG2)
    special = [N.INT32_MIN, N.INT32_MIN + 1, -1, 0, 1, N.INT32_MAX - 1, N.INT32_MAX]
    for base in (lim, step, 7 * step, 300 * step, 1 << frac):
        for d in (-1, 0, 1):
            special += [base + d, -(base + d)]
    small = np.clip(np.rint(rng.normal(0, 4.0 * 2**frac, size=n // 2)), N.INT32_MIN, N.INT32_MAX).astype(np.int64)
    full = rng.integers(N.INT32_MIN, N.INT32_MAX, size=n - n // 2, endpoint=True, dtype=np.int64)
    return _mix(rng, special, n, N.INT32_MIN, N.INT32_MAX, rng.permutation(np.concatenate([small, full])))


def gate_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """Q0.31 gates in [0, 2**31], ends included."""
    special = [0, 1, 2, N.ONE_Q31 - 1, N.ONE_Q31, N.ONE_Q31 // 2]
    return _mix(rng, special, n, 0, N.ONE_Q31)


def vec_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """Per-channel mantissas (signed VEC_BITS bits), ends included, most with max |m| in the export's range."""
    special = [C.VEC_LO, C.VEC_HI, 0, 1, -1]
    return _mix(rng, special, n, C.VEC_LO, C.VEC_HI)


def u_values(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    """A BitLinear input with magnitudes up to 2**bits (bits <= 62), one extreme value first."""
    lim = (1 << bits) - 1 if bits < 62 else C.U_LIMIT - 1
    special = [lim, -lim] if rng.integers(2) else [-lim]
    return _mix(rng, special, n, -lim, lim)


def z_values(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    """Products u' * n (the input of the sum of squares) with magnitudes up to 2**bits, at most P_MAX
    (= 2**(U_BITS + VEC_BITS - 1)), the extreme first."""
    lim = min((1 << bits) - 1, C.P_MAX) if bits > 0 else 0
    special = [lim, -lim] if rng.integers(2) else [-lim]
    return _mix(rng, special, n, -lim, lim)


def ternary(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """A ternary matrix ``[n, k]`` with an all -1 and an all +1 row when n allows."""
    t = rng.integers(-1, 1, size=(n, k), endpoint=True).astype(np.int8)
    if n > 1:
        t[0] = 1
        t[1] = -1
    return t


def codes(rng: np.random.Generator, k: int) -> np.ndarray:
    """int8 activation codes in -127..127 with both ends."""
    return _mix(rng, [-N.CODE_MAX, N.CODE_MAX, 0], k, -N.CODE_MAX, N.CODE_MAX)


def multiplier_inputs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """(P, S, sz, c_m, c_e) arrays: zeros, powers of two (and their neighbours) and the maxima first, then
    log-uniform values so that small magnitudes are as common as large ones; sz over its whole range."""
    pw = [0, 1, 2, 3]
    for b in range(1, 63):
        pw += [(1 << b) - 1, 1 << b, (1 << b) + 1]
    def logu(top):
        return (np.minimum((2.0 ** rng.uniform(0, np.log2(top), size=n)).astype(np.int64), top))
    P = _mix(rng, pw + [C.P_MAX], n, 0, C.P_MAX, logu(C.P_MAX))
    S = rng.permutation(_mix(rng, pw + [C.S_MAX], n, 0, C.S_MAX, logu(C.S_MAX)))
    sz = rng.permutation(_mix(rng, [0, 1, C.SZ_MAX], n, 0, C.SZ_MAX))
    c_m = _mix(rng, [C.CM_LO, C.CM_HI], n, C.CM_LO, C.CM_HI)
    c_e = rng.integers(-60, 20, size=n, endpoint=True, dtype=np.int64)
    return P, S, sz, c_m, c_e


#: Every activation format the nonlinearities accept.
FRACS = tuple(range(C.FRAC_LO, C.FRAC_HI + 1))

#: (rows, K) of the ternary products checked: odd, tiny, padded-to-the-byte and 1000-wide.
MATVEC_SHAPES = ((1, 1), (2, 5), (3, 80), (60, 60), (63, 63), (1000, 63), (63, 1000), (7, 1001))


def accumulators(rng: np.random.Generator, n: int, k: int = N.MAX_K) -> np.ndarray:
    """Ternary accumulators of a K-wide product: |acc| <= 127 * K, ends included."""
    lim = N.CODE_MAX * k
    return _mix(rng, [-lim, lim, 0, 1, -1], n, -lim, lim)


def bitlinear_case(rng: np.random.Generator, k: int, rows: int):
    """A random BitLinear in a small image: ``(image, (off_n, off_nw, off_w, c_m, c_e), reference)`` where
    ``reference(u)`` computes the outputs with :mod:`mmfree.pymodel.numerics`."""
    from mmfree.hls import spec as SP

    vt = np.dtype(SP.element_dtypes()["vec"])
    n, nw = vec_values(rng, k), vec_values(rng, k)
    t = ternary(rng, rows, k)
    packed = N.pack_ternary(t)
    c_m = int(rng.integers(C.CM_LO, C.CM_HI, endpoint=True))
    c_e = int(rng.integers(-40, 0))
    parts = [n.astype(vt).tobytes(), nw.astype(vt).tobytes(), packed.tobytes()]
    offs, pos = [], 0
    for p in parts:
        pos = LY.round_up(pos)
        offs.append(pos)
        pos += len(p)
    image = np.zeros(pos, dtype=np.uint8)
    for o, p in zip(offs, parts):
        image[o:o + len(p)] = np.frombuffer(p, dtype=np.uint8)

    def reference(u):
        codes, P, S, sz = N.quantize(np.asarray(u, dtype=np.int64), n, nw)
        acc = N.unpack_ternary(packed, k).astype(np.int64) @ codes
        M, sh = N.output_multiplier(P, S, sz, c_m, c_e)
        return N.dequantize(acc, M, sh)

    return image, (offs[0], offs[1], offs[2], c_m, c_e), reference
