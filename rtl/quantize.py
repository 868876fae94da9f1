"""The BitLinear activation side and its output scale, as streaming units.

A BitLinear input vector ``u`` (int64, any scale) becomes int8 codes in passes over an on-chip buffer,
because two quantities need the whole vector first (see docs/numerics.md and docs/rtl.md):

=========  =======================  ==============================================================
pass       unit                     what it computes
=========  =======================  ==============================================================
1          :class:`MaxAbs`          ``max|u|`` and the normalising shift (or fused into the unit
                                    that produced ``u``: it only watches the stream)
2          :class:`QuantStats`      per element ``p = u'*nw``; running ``S = sum rshift_round(u'*n, 15)**2``
                                    and ``P = max|p|`` (final on the element marked ``last``)
3          :class:`CodesFromP`      ``codes_from(p, P)``: the reciprocal ``R`` once per vector
                                    (:class:`Reciprocal`, sequential), then :class:`Codes` per element
=========  =======================  ==============================================================

Per token and BitLinear, :class:`OutputMultiplier` turns ``(P, S, c_m, c_e)`` into ``(M, shift)`` and
:class:`Dequantize` applies it to every accumulator.

Every unit here is a :class:`wiring.Component` with an input stream ``i`` and an output stream ``o``
(``amaranth.lib.stream``); payload fields are listed per class. Vector boundaries are marked by a
``last`` bit that travels with the data. Pipelined units take one element per cycle at steady state.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.pymodel import numerics as N
from mmfree.rtl.pipeline import ROM_ATTRS, Pipeline, absval, bitlen, rshift_round, saturate, to_signed, width_for

# ---- widths of the stream fields (all derived from the numerics spec) -----------------------------------
#: A BitLinear input u: int64 (ACT int32 values or Q32 products of two ACT values, |u| <= 2**62).
U_WIDTH = 64
#: Normalising shift sh = bitlen(max|u|) - U_BITS: right shifts up to bitlen(2**63) - U_BITS, left shifts
#: down to 1 - U_BITS (max|u| = 1).
U_SHIFT_MAX = U_WIDTH - N.U_BITS
U_SHIFT_MIN = 1 - N.U_BITS
U_SHIFT_WIDTH = max(U_SHIFT_MAX, -U_SHIFT_MIN).bit_length() + 1
#: u' = u * 2**-sh with |u'| <= 2**U_BITS.
UP_WIDTH = N.U_BITS + 2
#: n, nw: signed VEC_BITS mantissas with |n| < 2**(VEC_BITS - 1).
VEC_WIDTH = N.VEC_BITS
#: p = u' * nw: |p| < 2**(U_BITS + VEC_BITS - 1); P = max |p| unsigned in that many bits.
PMAX_WIDTH = N.U_BITS + N.VEC_BITS - 1
P_WIDTH = PMAX_WIDTH + 1
#: zs = rshift_round(u' * n, Z_SHIFT): |zs| <= 2**ZS_BITS; S = sum zs**2 over at most MAX_K elements.
ZS_BITS = PMAX_WIDTH - N.Z_SHIFT
S_WIDTH = 2 * ZS_BITS + N.MAX_K.bit_length()
#: Reciprocal R = (127 << k) // P <= 127 * 2**(RECIP_EXTRA + 1), k = bitlen(P) + RECIP_EXTRA.
R_WIDTH = (N.CODE_MAX << (N.RECIP_EXTRA + 1)).bit_length()
K_MAX = PMAX_WIDTH + N.RECIP_EXTRA
#: Output multiplier: M in [2**(M_BITS-1), 2**M_BITS]; c_m in [2**(M_BITS-1), 2**M_BITS); c_e int8; shift int10.
MULT_WIDTH = N.M_BITS + 1
CM_WIDTH = N.M_BITS
CE_WIDTH = 8
SHIFT_WIDTH = 10
ACT_WIDTH = 32


def _layout(**fields) -> data.StructLayout:
    return data.StructLayout(fields)


def _shl1(q, bit: int):
    """``(q << 1) | bit`` in the width of ``q``."""
    return Cat(Const(bit, 1), q[:-1])


class MaxAbs(wiring.Component):
    """Pass 1 of the quantizer: ``max|u|`` of a vector and the normalising shift of
    :func:`numerics.normalize_input`: ``sh = bitlen(max|u|) - U_BITS`` (0 for an all-zero vector);
    ``sh < 0`` means a left shift.

    * ``i``: ``{u: signed(64), last}``, one element per cycle.
    * ``o``: ``{maxabs: unsigned(64), shift: signed(U_SHIFT_WIDTH)}``, one per vector (after its ``last`` element).
    """

    IN = _layout(u=signed(U_WIDTH), last=1)
    OUT = _layout(maxabs=unsigned(U_WIDTH), shift=signed(U_SHIFT_WIDTH))

    def __init__(self):
        super().__init__({"i": In(stream.Signature(self.IN)), "o": Out(stream.Signature(self.OUT))})

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o)
        p["a"] = absval(self.i.payload.u)
        p["last"] = self.i.payload.last
        p.next()
        run = Signal(U_WIDTH)
        mx = Mux(p["a"] > run, p["a"], run)
        with m.If(p.fire):
            m.d.sync += run.eq(Mux(p["last"], 0, mx))
        p["mx"] = mx
        p.next()
        p["bl"] = bitlen(p["mx"])
        p.next()
        sh = Mux(p["mx"] == 0, 0, to_signed(p["bl"]) - N.U_BITS)[:U_SHIFT_WIDTH].as_signed()
        p.finish(when=p["last"], maxabs=p["mx"], shift=sh)
        return m


class QuantStats(wiring.Component):
    """Pass 2 of the quantizer (:func:`numerics.quantize` without the codes).

    * ``i``: ``{u: signed(64), n, nw: signed(VEC_WIDTH), shift: signed(U_SHIFT_WIDTH), last}``; ``shift``
      is :class:`MaxAbs`'s for this vector, ``n``/``nw`` the pre-norm and folded weights
      (|n|, |nw| < 2**(VEC_BITS - 1), as exported).
    * ``o``: ``{p: signed(P_WIDTH), S: unsigned(S_WIDTH), P: unsigned(PMAX_WIDTH), last}`` for every element:
      ``p = u' * nw`` with ``u' = rshift_round(u, shift)`` (``u << -shift`` for a negative shift);
      ``S`` and ``P`` are running values of ``sum rshift_round(u' * n, Z_SHIFT)**2`` and ``max|p|``
      that are final on the ``last`` element.
    """

    IN = _layout(u=signed(U_WIDTH), n=signed(VEC_WIDTH), nw=signed(VEC_WIDTH),
                 shift=signed(U_SHIFT_WIDTH), last=1)
    OUT = _layout(p=signed(P_WIDTH), S=unsigned(S_WIDTH), P=unsigned(PMAX_WIDTH), last=1)

    def __init__(self):
        super().__init__({"i": In(stream.Signature(self.IN)), "o": Out(stream.Signature(self.OUT))})

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o)
        for f in ("u", "n", "nw", "shift", "last"):
            p[f] = getattr(self.i.payload, f)
        p.next()
        sh = p["shift"]
        right = rshift_round(p["u"], Mux(sh < 0, 0, sh)[:width_for(U_SHIFT_MAX)], U_SHIFT_MAX)
        left = p["u"] << Mux(sh < 0, -sh, 0)[:width_for(-U_SHIFT_MIN)]
        p["up"] = Mux(sh < 0, left[:UP_WIDTH], right[:UP_WIDTH]).as_signed()
        p.next()
        p["z"] = p["up"] * p["n"]
        p["pv"] = (p["up"] * p["nw"])[:P_WIDTH].as_signed()
        p.next()
        p["zs"] = rshift_round(p["z"], N.Z_SHIFT)[:ZS_BITS + 2].as_signed()
        p["ap"] = absval(p["pv"])[:PMAX_WIDTH]
        p.next()
        p["sq"] = (p["zs"] * p["zs"]).as_unsigned()[:2 * ZS_BITS + 1]
        p.next()
        s_run = Signal(S_WIDTH)
        p_run = Signal(PMAX_WIDTH)
        s_new = (s_run + p["sq"])[:S_WIDTH]
        p_new = Mux(p["ap"] > p_run, p["ap"], p_run)
        with m.If(p.fire):
            m.d.sync += [s_run.eq(Mux(p["last"], 0, s_new)), p_run.eq(Mux(p["last"], 0, p_new))]
        p["S"] = s_new
        p["P"] = p_new
        p.next()
        p.finish(p=p["pv"], S=p["S"], P=p["P"], last=p["last"])
        return m


class Reciprocal(wiring.Component):
    """The activation reciprocal of :func:`numerics.codes_from`: ``R = (127 << k) // P``, ``k = bitlen(P) + 17``.

    Sequential restoring division, one quotient bit per cycle: with ``P`` normalised to
    ``Pn = P << (W - bitlen(P))`` in [2**(W-1), 2**W) (W = PMAX_WIDTH), ``R = (127 << (W + RECIP_EXTRA)) // Pn``
    has ``R_WIDTH`` bits. Latency ``R_WIDTH + 3`` cycles; one division at a time (it runs once per vector).

    * ``i``: ``{P: unsigned(PMAX_WIDTH)}``; ``o``: ``{R: unsigned(R_WIDTH), k: unsigned(6)}``; ``P = 0`` gives
      ``R = 0, k = 0`` (all codes zero).
    """

    IN = _layout(P=unsigned(PMAX_WIDTH))
    OUT = _layout(R=unsigned(R_WIDTH), k=unsigned(width_for(K_MAX)))

    def __init__(self):
        super().__init__({"i": In(stream.Signature(self.IN)), "o": Out(stream.Signature(self.OUT))})

    def elaborate(self, platform):
        m = Module()
        pn = Signal(PMAX_WIDTH)
        rem = Signal(PMAX_WIDTH + 1)
        q = Signal(R_WIDTH)
        k = Signal(width_for(K_MAX))
        count = Signal(range(R_WIDTH + 1))
        bl = Signal(width_for(PMAX_WIDTH))
        P = Signal(PMAX_WIDTH)
        m.d.comb += bl.eq(bitlen(P))
        rem2 = Signal(PMAX_WIDTH + 2)
        m.d.comb += rem2.eq(rem << 1)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += P.eq(self.i.payload.P)
                    m.next = "NORM"
            with m.State("NORM"):
                with m.If(P == 0):
                    m.d.sync += [q.eq(0), k.eq(0)]
                    m.next = "DONE"
                with m.Else():
                    m.d.sync += [
                        pn.eq((P << (PMAX_WIDTH - bl).as_unsigned()[:6])[:PMAX_WIDTH]),
                        k.eq(bl + N.RECIP_EXTRA),
                        # numerator 127 << (W + RECIP_EXTRA): its low R_WIDTH bits are zeros
                        rem.eq(N.CODE_MAX << (PMAX_WIDTH + N.RECIP_EXTRA - R_WIDTH)),
                        q.eq(0),
                        count.eq(R_WIDTH),
                    ]
                    m.next = "DIV"
            with m.State("DIV"):
                with m.If(rem2 >= pn):
                    m.d.sync += [rem.eq(rem2 - pn), q.eq(_shl1(q, 1))]
                with m.Else():
                    m.d.sync += [rem.eq(rem2), q.eq(_shl1(q, 0))]
                m.d.sync += count.eq(count - 1)
                with m.If(count == 1):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.R.eq(q), self.o.payload.k.eq(k)]
                with m.If(self.o.ready):
                    m.next = "IDLE"
        return m


class Codes(wiring.Component):
    """Pass 3 of the quantizer, per element: ``q = sign(p) * min(127, (|p| * R + 2**(k-1)) >> k)``.

    * ``i``: ``{p: signed(P_WIDTH), R: unsigned(R_WIDTH), k: unsigned(6), last}`` with ``R, k`` from
      :class:`Reciprocal` for this vector's ``P``;
    * ``o``: ``{q: signed(8), last}``.
    """

    IN = _layout(p=signed(P_WIDTH), R=unsigned(R_WIDTH), k=unsigned(width_for(K_MAX)), last=1)
    OUT = _layout(q=signed(8), last=1)

    def __init__(self):
        super().__init__({"i": In(stream.Signature(self.IN)), "o": Out(stream.Signature(self.OUT))})

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o)
        for f in ("p", "R", "k", "last"):
            p[f] = getattr(self.i.payload, f)
        p.next()
        p["neg"] = p["p"] < 0
        p["ap"] = absval(p["p"])
        p.next()
        p["prod"] = p["ap"] * p["R"]
        p.next()
        p["mag"] = rshift_round(p["prod"], p["k"], K_MAX)
        p.next()
        mag = Mux(p["mag"] > N.CODE_MAX, N.CODE_MAX, p["mag"][:8])
        p["q"] = Mux(p["neg"], -mag, mag)[:8].as_signed()
        p.next()
        p.finish(q=p["q"], last=p["last"])
        return m


class CodesFromP(wiring.Component):
    """Pass 3 as one unit: :func:`numerics.codes_from` per element from ``p`` and its vector's ``P``.

    The first element of every vector (the one after a ``last``) waits for :class:`Reciprocal`
    (``R_WIDTH + 4`` cycles); the rest stream at one element per cycle through :class:`Codes`.
    ``P`` must be the same on every element of a vector. A top that wants no bubble runs
    :class:`Reciprocal` ahead of time and feeds :class:`Codes` itself.

    * ``i``: ``{p: signed(P_WIDTH), P: unsigned(PMAX_WIDTH), last}``; ``o``: ``{q: signed(8), last}``.
    """

    IN = _layout(p=signed(P_WIDTH), P=unsigned(PMAX_WIDTH), last=1)
    OUT = Codes.OUT

    def __init__(self):
        super().__init__({"i": In(stream.Signature(self.IN)), "o": Out(stream.Signature(self.OUT))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.recip = recip = Reciprocal()
        m.submodules.codes = codes = Codes()
        have = Signal()
        asked = Signal()
        R = Signal(R_WIDTH)
        k = Signal(width_for(K_MAX))
        m.d.comb += [
            recip.i.payload.P.eq(self.i.payload.P),
            recip.i.valid.eq(self.i.valid & ~have & ~asked),
            recip.o.ready.eq(1),
            codes.i.valid.eq(self.i.valid & have),
            codes.i.payload.p.eq(self.i.payload.p),
            codes.i.payload.last.eq(self.i.payload.last),
            codes.i.payload.R.eq(R),
            codes.i.payload.k.eq(k),
            self.i.ready.eq(have & codes.i.ready),
        ]
        with m.If(recip.i.valid & recip.i.ready):
            m.d.sync += asked.eq(1)
        with m.If(recip.o.valid):
            m.d.sync += [R.eq(recip.o.payload.R), k.eq(recip.o.payload.k), have.eq(1), asked.eq(0)]
        with m.If(self.i.valid & self.i.ready & self.i.payload.last):
            m.d.sync += have.eq(0)
        wiring.connect(m, codes.o, wiring.flipped(self.o))
        return m


class OutputMultiplier(wiring.Component):
    """Per-token output multiplier of a BitLinear: :func:`numerics.output_multiplier` (with
    :func:`numerics.rsqrt` and its table :func:`numerics.rsqrt_table` in a dual-port ROM), pipelined,
    one token per cycle.

    * ``i``: ``{S: unsigned(S_WIDTH), P: unsigned(PMAX_WIDTH), c_m: unsigned(M_BITS), c_e: signed(8)}``
      with ``c_m`` in [2**(M_BITS-1), 2**M_BITS) (the export's per-BitLinear constant);
    * ``o``: ``{M: unsigned(M_BITS + 1), shift: signed(10)}``; ``P == 0`` or ``S == 0`` gives
      ``M = 0, shift = 0``.
    """

    IN = _layout(S=unsigned(S_WIDTH), P=unsigned(PMAX_WIDTH), c_m=unsigned(CM_WIDTH), c_e=signed(CE_WIDTH))
    OUT = _layout(M=unsigned(MULT_WIDTH), shift=signed(SHIFT_WIDTH))
    #: rsqrt normalises S to SN_BITS bits; the top RSQRT_INDEX_BITS index the table, the rest interpolate.
    SN_BITS = 32
    FRAC_BITS = SN_BITS - N.RSQRT_INDEX_BITS

    def __init__(self):
        super().__init__({"i": In(stream.Signature(self.IN)), "o": Out(stream.Signature(self.OUT))})

    def elaborate(self, platform):
        m = Module()
        table = [int(v) for v in N.rsqrt_table()]
        m.submodules.rom = rom = Memory(shape=unsigned(N.RSQRT_FRAC + 2), depth=len(table), init=table,
                                        attrs=ROM_ATTRS)
        rp0, rp1 = rom.read_port(), rom.read_port()
        SN, FR = self.SN_BITS, self.FRAC_BITS
        p = Pipeline(m, self.i, self.o)
        S, P = self.i.payload.S, self.i.payload.P
        p["ok"] = (S != 0) & (P != 0)
        p["S"] = Mux(p["ok"], S, 1 << (SN - 1))
        p["P"] = Mux(p["ok"], P, 1)
        p["c_m"] = self.i.payload.c_m
        p["c_e"] = self.i.payload.c_e
        p.next()
        # rsqrt: k = floor((bitlen(S) - 31) / 2); Sn = S >> 2k (or << -2k) has 31 or 32 bits
        p["k"] = ((to_signed(bitlen(p["S"])) - (SN - 1)) >> 1)[:6].as_signed()
        pb = bitlen(p["P"])
        p["ps"] = Mux(pb > N.P_BITS, pb - N.P_BITS, 0)[:6]
        p.next()
        k2 = p["k"] * 2
        left = Mux(p["k"] < 0, -k2, 0)[:6]
        right = Mux(p["k"] < 0, 0, k2)[:6]
        p["Sn"] = ((p["S"] << left) >> right)[:SN]
        p["Pr"] = rshift_round(p["P"], p["ps"], PMAX_WIDTH)[:N.P_BITS + 1]
        p.next()
        j = p["Sn"][FR:SN] - N.RSQRT_FIRST
        p.read(rp0, j, "t0")
        p.read(rp1, j + 1, "t1")
        p["frac"] = p["Sn"][:FR]
        p.next()
        p["prod"] = (p["t0"] - p["t1"])[:N.RSQRT_FRAC + 2] * p["frac"]
        p.next()
        p["r"] = (p["t0"] - (p["prod"] >> FR))[:N.RSQRT_FRAC + 2]
        p.next()
        p["cr"] = p["c_m"] * p["r"]
        p.next()
        p["b"] = rshift_round(p["cr"], N.M_BITS)[:N.RSQRT_FRAC + 3]
        p.next()
        p["mm"] = p["b"] * p["Pr"]
        p.next()
        p["em"] = bitlen(p["mm"])
        p.next()
        sh = (p["em"] - N.M_BITS)[:7]
        p["M"] = rshift_round(p["mm"], sh, len(p["mm"]))[:MULT_WIDTH]
        p["shift"] = (N.RSQRT_FRAC + p["k"] - p["em"] - p["c_e"] - p["ps"])[:SHIFT_WIDTH].as_signed()
        p.next()
        p.finish(M=Mux(p["ok"], p["M"], 0), shift=Mux(p["ok"], p["shift"], 0))
        return m


class Dequantize(wiring.Component):
    """BitLinear output in ACT, :func:`numerics.dequantize`: ``sat(rshift_round(acc * M, shift))``
    (shifts above 62 give 0) and ``saturating_shift_left(acc * M, -shift)`` for negative shifts.

    * ``i``: ``{acc: signed(24), M: unsigned(17), shift: signed(10), last}`` (``M, shift`` per element,
      so k tokens' accumulators can be interleaved);
    * ``o``: ``{y: signed(32), last}``. One ACC_BITS x (M_BITS + 1) multiply.
    """

    IN = _layout(acc=signed(N.ACC_BITS), M=unsigned(MULT_WIDTH), shift=signed(SHIFT_WIDTH), last=1)
    OUT = _layout(y=signed(ACT_WIDTH), last=1)
    #: |acc * M| < 2**(ACC_BITS - 1 + MULT_WIDTH); a right shift beyond that gives 0, so shifts clamp here.
    RIGHT_MAX = N.ACC_BITS - 1 + MULT_WIDTH + 1

    def __init__(self):
        super().__init__({"i": In(stream.Signature(self.IN)), "o": Out(stream.Signature(self.OUT))})

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o)
        for f in ("acc", "M", "shift", "last"):
            p[f] = getattr(self.i.payload, f)
        p.next()
        p["v"] = p["acc"] * p["M"]
        sh = p["shift"]
        p["neg"] = sh < 0
        p["rs"] = Mux(sh > self.RIGHT_MAX, self.RIGHT_MAX, Mux(sh < 0, 0, sh))[:width_for(self.RIGHT_MAX)]
        p["ls"] = Mux(-sh > 32, 32, Mux(sh < 0, -sh, 0))[:6]
        p.next()
        p["right"] = saturate(rshift_round(p["v"], p["rs"], self.RIGHT_MAX))
        # v * 2**ls for ls <= 32: place v 32 bits up, shift back arithmetically by 32 - ls
        p["left"] = saturate(Cat(Const(0, 32), p["v"]).as_signed() >> (32 - p["ls"])[:6])
        p.next()
        p.finish(y=Mux(p["neg"], p["left"], p["right"]), last=p["last"])
        return m
