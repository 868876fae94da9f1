"""The pipelined variants (``pipelined=True``, rtl/catalog.py PIPELINED) under amaranth.sim against the
reference, exact, with and without stalls: the same cases as their base units; plus the split multiply of
rtl/pipeline.py on its own, and the bad-argument error."""

import numpy as np
import pytest
from amaranth import Module, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from mmfree.rtl import activation as A
from mmfree.rtl import quantize as Q
from mmfree.rtl.catalog import PIPELINED, VECTOR_UNITS
from mmfree.rtl.pipeline import Pipeline
from tests.rtl.cases import CASES, make_case
from tests.rtl.streams import pack, run_unit, unpack

COUNT = {"element": 600, "vector": 300}


def _run(factory, base, count, stall, seed):
    rng = np.random.default_rng(seed)
    case = make_case(base, rng, count)
    dut = factory()
    out = run_unit(dut, pack(dut.IN, **case.inputs), case.n_out, stall=stall, seed=seed)
    case.check(unpack(dut.OUT, out))


@pytest.mark.parametrize("stall", [0.0, 0.35], ids=["nostall", "stall"])
@pytest.mark.parametrize("name", sorted(PIPELINED))
def test_pipelined_variant_matches_reference(name, stall):
    factory, base = PIPELINED[name]
    assert base in VECTOR_UNITS
    _run(factory, base, COUNT[CASES[base][1]], stall, seed=hash(name) % 1000 + int(stall * 100))


class _Mul(wiring.Component):
    def __init__(self, wa, wb, sa, sb, split):
        self.sa, self.sb, self.split = sa, sb, split
        self.IN = data.StructLayout({"a": signed(wa) if sa else unsigned(wa), "b": signed(wb) if sb else unsigned(wb)})
        self.OUT = data.StructLayout({"y": signed(wa + wb + 1)})
        super().__init__({"i": In(stream.Signature(self.IN)), "o": Out(stream.Signature(self.OUT))})

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o)
        p["a"], p["b"] = self.i.payload.a, self.i.payload.b
        p.next()
        p.multiply("y", p["a"], p["b"], split=self.split)
        p.next()
        p.finish(y=p["y"])
        return m


@pytest.mark.parametrize("wa,wb,sa,sb", [(32, 32, True, False), (24, 17, True, False), (31, 20, False, False),
                                         (64, 18, True, True), (35, 35, True, True)])
def test_split_multiply_is_exact(wa, wb, sa, sb):
    rng = np.random.default_rng(wa * 100 + wb)
    n = 300

    def draw(w, s):
        lo, hi = (-(1 << (w - 1)), (1 << (w - 1)) - 1) if s else (0, (1 << w) - 1)
        edge = [lo, hi, 0, 1, lo + 1, hi - 1]
        return [int(x) for x in edge] + [int(rng.integers(0, 1 << 62)) % (hi - lo + 1) + lo for _ in range(n)]

    a, b = draw(wa, sa), draw(wb, sb)
    dut = _Mul(wa, wb, sa, sb, split=True)
    words = run_unit(dut, pack(dut.IN, a=np.array(a, dtype=object), b=np.array(b, dtype=object)), len(a),
                     stall=0.3, seed=1)
    w = wa + wb + 1
    got = [(x & ((1 << w) - 1)) - ((x >> (w - 1) & 1) << w) for x in words]    # raw payload, sign-extended
    assert got == [x * y for x, y in zip(a, b)]


class _Mul2(wiring.Component):
    """``y = a * b`` (32 x 32: four partial products, two adder levels) and ``z = a * c`` (32 x 17: two partial
    products, one level) through one :meth:`Pipeline.multiply_all`."""

    IN = data.StructLayout({"a": signed(32), "b": signed(32), "c": unsigned(17)})
    OUT = data.StructLayout({"y": signed(64), "z": signed(49)})

    def __init__(self):
        super().__init__({"i": In(stream.Signature(self.IN)), "o": Out(stream.Signature(self.OUT))})

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o)
        for f in ("a", "b", "c"):
            p[f] = getattr(self.i.payload, f)
        p.next()
        p.multiply_all({"y": (p["a"], p["b"]), "z": (p["a"], p["c"])}, split=True)
        self.depth = p.depth
        p.next()
        p.finish(y=p["y"], z=p["z"])
        return m


def test_multiply_all_is_exact_and_shares_stages():
    rng = np.random.default_rng(7)
    n = 200
    a = [-(1 << 31), (1 << 31) - 1, 0] + [int(x) for x in rng.integers(-(1 << 31), 1 << 31, n)]
    b = [(1 << 31) - 1, -(1 << 31), 5] + [int(x) for x in rng.integers(-(1 << 31), 1 << 31, n)]
    c = [(1 << 17) - 1, 1, 0] + [int(x) for x in rng.integers(0, 1 << 17, n)]
    dut = _Mul2()
    out = unpack(dut.OUT, run_unit(dut, pack(dut.IN, a=np.array(a, dtype=object), b=np.array(b, dtype=object),
                                                c=np.array(c, dtype=object)), len(a), stall=0.3, seed=2))
    assert [int(v) for v in out["y"]] == [x * y for x, y in zip(a, b)]
    assert [int(v) for v in out["z"]] == [x * y for x, y in zip(a, c)]
    assert dut.depth == 1 + 2      # the input stage + the 32 x 32 product's two adder levels, not 2 + 1


@pytest.mark.parametrize("cls", [A.Sigmoid, A.MlgruUpdate, Q.Dequantize, Q.OutputMultiplier, Q.Reciprocal,
                                 Q.QuantStats])
def test_pipelined_must_be_bool(cls):
    with pytest.raises(ValueError, match="pipelined must be True or False"):
        cls(pipelined=1)


class _Bitlen(wiring.Component):
    def __init__(self, w, hit_stage=False):
        self.hit_stage = hit_stage
        self.IN = data.StructLayout({"x": unsigned(w)})
        self.OUT = data.StructLayout({"y": unsigned(8)})
        super().__init__({"i": In(stream.Signature(self.IN)), "o": Out(stream.Signature(self.OUT))})

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o)
        p["x"] = self.i.payload.x
        p.bitlen("y", "x", split=True, hit_stage=self.hit_stage)
        p.next()
        p.finish(y=p["y"])
        return m


@pytest.mark.parametrize("hit_stage", [False, True], ids=["pick", "hitreg"])
@pytest.mark.parametrize("w", [9, 50, 64])
def test_split_bitlen_is_exact(w, hit_stage):
    rng = np.random.default_rng(w)
    xs = [0, 1, (1 << w) - 1] + [1 << j for j in range(w)] + [(1 << j) - 1 for j in range(1, w)]
    xs += [int(rng.integers(0, 1 << 62)) >> int(rng.integers(0, 62)) for _ in range(100)]
    xs = [x % (1 << w) for x in xs]
    dut = _Bitlen(w, hit_stage)
    out = unpack(dut.OUT, run_unit(dut, pack(dut.IN, x=np.array(xs, dtype=object)), len(xs), stall=0.2, seed=2))
    assert [int(v) for v in out["y"]] == [x.bit_length() for x in xs]
