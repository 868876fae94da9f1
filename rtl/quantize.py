"""The BitLinear activation side and its output scale, as streaming units.

A BitLinear input vector ``u`` (int64, any scale) becomes int8 codes in three passes over an on-chip
buffer, one element per cycle each, because three per-vector maxima are needed before the per-element
work can finish (see docs/numerics.md and docs/rtl.md):

=========  =========================  ==============================================================
pass       unit                       what it computes
=========  =========================  ==============================================================
1          :class:`MaxAbs`            ``max|u|`` and the normalising shift ``sh`` (or fused into the
                                      unit that produced ``u``: it only watches the stream)
2          :class:`QuantStats`        per element ``u' = u 2**-sh``, ``z = u'*n``, ``p = u'*nw``; per
                                      vector ``Z = max|z|`` with the sum-of-squares shift
                                      ``sz = max(0, bitlen(Z) - ZS_BITS)`` and ``P = max|p|``; then
                                      :class:`Reciprocal` turns ``P`` into ``(R, k, sp)`` (sequential,
                                      once per vector, while pass 2 of the next vector runs)
3          :class:`QuantStats` again  with pass 2's ``sz`` in its input: ``S = sum rshift_round(z, sz)**2``
           + :class:`Codes`           (final on ``last``), and its ``p`` -> :func:`numerics.codes_from`
                                      with ``(R, k, sp)``; :class:`CodesFromP` is Reciprocal + Codes
                                      in one unit for a top that stores ``p`` instead
=========  =========================  ==============================================================

Per token and BitLinear, :class:`OutputMultiplier` turns ``(P, S, sz, c_m, c_e)`` into ``(M, shift)`` and
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
from mmfree.rtl.pipeline import (
    ROM_ATTRS,
    Pipeline,
    absval,
    bitlen,
    bitlen_groups,
    bitlen_hits,
    bitlen_pick,
    rshift_round,
    saturate,
    to_signed,
    width_for,
)

# ---- widths of the stream fields (all derived from the numerics spec) -----------------------------------
#: A BitLinear input u: int64 (int32 activations or products of two, |u| <= 2**62).
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
#: z = u' * n and Z = max |z|: the same widths as p and P.
Z_WIDTH = P_WIDTH
ZMAX_WIDTH = PMAX_WIDTH
#: Sum-of-squares shift sz = max(0, bitlen(Z) - ZS_BITS) <= SZ_MAX; zs = rshift_round(z, sz) has
#: |zs| <= 2**ZS_BITS, and S = sum zs**2 over at most MAX_K elements.
ZS_BITS = N.ZS_BITS
SZ_MAX = ZMAX_WIDTH - ZS_BITS
SZ_WIDTH = width_for(SZ_MAX)
S_WIDTH = 2 * ZS_BITS + N.MAX_K.bit_length()
#: Code reduction sp = max(0, bitlen(P) - P_CODE_BITS) <= SP_MAX; P' = rshift_round(P, sp) <= 2**P_CODE_BITS.
SP_MAX = PMAX_WIDTH - N.P_CODE_BITS
SP_WIDTH = width_for(SP_MAX)
PC_WIDTH = N.P_CODE_BITS + 1
#: Reciprocal R = (127 << k) // P' <= 127 * 2**(RECIP_EXTRA + 1), k = bitlen(P') + RECIP_EXTRA <= K_MAX.
R_WIDTH = (N.CODE_MAX << (N.RECIP_EXTRA + 1)).bit_length()
K_MAX = PC_WIDTH + N.RECIP_EXTRA
#: Output multiplier: M in [2**(M_BITS-1), 2**M_BITS]; c_m in [2**(M_BITS-1), 2**M_BITS); c_e int8; shift int10.
MULT_WIDTH = N.M_BITS + 1
CM_WIDTH = N.M_BITS
CE_WIDTH = 8
SHIFT_WIDTH = 10
ACT_WIDTH = 32


def _pipelined_arg(owner, pipelined) -> bool:
    """``pipelined``: False (the latency the datapath and the cycle model assume) or True (multiplies split
    into DSP-sized registered pieces, variable shifts and their rounding adds in separate stages)."""
    if not isinstance(pipelined, bool):
        owner._MustUse__silence = True
        raise ValueError(f"pipelined must be True or False, got {pipelined!r}")
    return pipelined


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


def sz_of(Z):
    """numerics.sum_squares's shift ``max(0, bitlen(Z) - ZS_BITS)`` of an unsigned ``Z``."""
    return sz_of_bitlen(bitlen(Z))


def sz_of_bitlen(bl):
    """:func:`sz_of` given ``bl = bitlen(Z)``."""
    return Mux(bl > ZS_BITS, bl - ZS_BITS, 0)[:SZ_WIDTH]


def maximum(a, b):
    """The larger of two unsigned values (combining per-lane maxima of :class:`QuantStats`)."""
    return Mux(a > b, a, b)


class QuantStats(wiring.Component):
    """Passes 2 and 3 of the quantizer (:func:`numerics.quantize` without the codes): per element
    ``u' = u 2**-shift``, ``z = u'*n``, ``p = u'*nw``, and running per-vector values that are final on the
    element marked ``last``.

    * ``i``: ``{u: signed(64), n, nw: signed(VEC_WIDTH), shift: signed(U_SHIFT_WIDTH), last,
      sz: unsigned(SZ_WIDTH)}``; ``shift`` is :class:`MaxAbs`'s for this vector (``u' = rshift_round(u, shift)``,
      ``u << -shift`` for a negative shift), ``n``/``nw`` the pre-norm and folded weights
      (|n|, |nw| < 2**(VEC_BITS - 1), as exported), ``sz`` the vector's sum-of-squares shift (from
      ``o.sz`` of pass 2; only ``o.S`` depends on it).
    * ``o``: ``{p: signed(P_WIDTH), S: unsigned(S_WIDTH), P: unsigned(PMAX_WIDTH), last, z: signed(Z_WIDTH),
      Z: unsigned(ZMAX_WIDTH), sz: unsigned(SZ_WIDTH)}`` for every element: ``p``, ``z`` of this element;
      running ``P = max|p|``, ``Z = max|z|`` and ``o.sz = max(0, bitlen(Z) - ZS_BITS)`` (pass 2's results),
      and ``S = sum rshift_round(z, i.sz)**2`` (pass 3's result: :func:`numerics.sum_squares` when ``i.sz``
      is this vector's ``o.sz``; with a smaller ``i.sz`` it is meaningless).

    Latency 7 cycles, one element per cycle; ``pipelined``: 16 (both products and the square cut into registered
    DSP-sized partial products summed by registered adds, the two rounding shifts' adds and the bitlen of ``Z`` in
    stages of their own).
    """

    IN = _layout(u=signed(U_WIDTH), n=signed(VEC_WIDTH), nw=signed(VEC_WIDTH),
                 shift=signed(U_SHIFT_WIDTH), last=1, sz=unsigned(SZ_WIDTH))
    OUT = _layout(p=signed(P_WIDTH), S=unsigned(S_WIDTH), P=unsigned(PMAX_WIDTH), last=1,
                  z=signed(Z_WIDTH), Z=unsigned(ZMAX_WIDTH), sz=unsigned(SZ_WIDTH))

    def __init__(self, pipelined: bool = False):
        self.pipelined = _pipelined_arg(self, pipelined)
        super().__init__({"i": In(stream.Signature(self.IN)), "o": Out(stream.Signature(self.OUT))})

    def elaborate(self, platform):
        m = Module()
        split = self.pipelined
        p = Pipeline(m, self.i, self.o)
        for f in ("u", "n", "nw", "shift", "sz", "last"):
            p[f] = getattr(self.i.payload, f)
        p.next()
        self._normalise(p, split)
        p.next()
        # two UP_WIDTH x VEC_WIDTH products (four DSP-sized partial products each)
        p.multiply_all({"zf": (p["up"], p["n"]), "pf": (p["up"], p["nw"])}, split)
        p["zv"] = p["zf"][:Z_WIDTH].as_signed()
        p["pv"] = p["pf"][:P_WIDTH].as_signed()
        p.drop("zf", "pf")
        p.next()
        p["az"] = absval(p["zv"])[:ZMAX_WIDTH]
        p["ap"] = absval(p["pv"])[:PMAX_WIDTH]
        p.shift_round("zsr", "zv", "sz", SZ_MAX, split)
        p["zs"] = p["zsr"][:ZS_BITS + 2].as_signed()
        p.drop("zsr")
        p.next()
        p.multiply("sqf", p["zs"], p["zs"], split)
        p["sq"] = p["sqf"].as_unsigned()[:2 * ZS_BITS + 1]
        p.drop("sqf")
        p.next()
        s_run = Signal(S_WIDTH)
        p_run = Signal(PMAX_WIDTH)
        z_run = Signal(ZMAX_WIDTH)
        s_new = (s_run + p["sq"])[:S_WIDTH]
        p_new = Mux(p["ap"] > p_run, p["ap"], p_run)
        z_new = Mux(p["az"] > z_run, p["az"], z_run)
        with m.If(p.fire):
            m.d.sync += [s_run.eq(Mux(p["last"], 0, s_new)), p_run.eq(Mux(p["last"], 0, p_new)),
                         z_run.eq(Mux(p["last"], 0, z_new))]
        p["S"], p["P"], p["Z"] = s_new, p_new, z_new
        p.next()
        p.bitlen("blz", "Z", split, hit_stage=split)
        p["szo"] = sz_of_bitlen(p["blz"])
        p.drop("blz")
        p.next()
        p.finish(p=p["pv"], z=p["zv"], S=p["S"], P=p["P"], Z=p["Z"], sz=p["szo"], last=p["last"])
        return m

    @staticmethod
    def _normalise(p, split):
        """``p["up"] = u 2**-shift`` (rounded right shift, or left shift for a negative ``shift``); ``split``:
        the shift amounts, the rounding add and the shift in three stages."""
        sh = p["shift"]
        shr = Mux(sh < 0, 0, sh)[:width_for(U_SHIFT_MAX)]
        shl = Mux(sh < 0, -sh, 0)[:width_for(-U_SHIFT_MIN)]
        if split:
            p["shr"], p["shl"], p["neg"] = shr, shl, sh < 0
            p.next()
            p.shift_round("right", "u", "shr", U_SHIFT_MAX, split)
            right, left, neg = p["right"], p["u"] << p["shl"], p["neg"]
        else:
            right, left, neg = rshift_round(p["u"], shr, U_SHIFT_MAX), p["u"] << shl, sh < 0
        p["up"] = Mux(neg, left[:UP_WIDTH], right[:UP_WIDTH]).as_signed()


class Reciprocal(wiring.Component):
    """The activation reciprocal of :func:`numerics.codes_from`: ``P`` reduced to ``P_CODE_BITS`` bits
    (``sp = max(0, bitlen(P) - P_CODE_BITS)``, ``P' = rshift_round(P, sp)``), then
    ``R = (127 << k) // P'`` with ``k = bitlen(P') + RECIP_EXTRA``.

    Sequential restoring division, one quotient bit per cycle: with ``P'`` normalised to
    ``Pn = P' << (W - bitlen(P'))`` in [2**(W-1), 2**W) (W = PC_WIDTH), ``R = (127 << (W + RECIP_EXTRA)) // Pn``
    has ``R_WIDTH`` bits. Latency ``R_WIDTH + 4`` cycles (``pipelined``: nine more FSM states, so that no
    step is more than a compare-and-subtract, an add, one shift or a third of a bitlen); one division at a time (it runs once per
    vector).

    * ``i``: ``{P: unsigned(PMAX_WIDTH)}``;
    * ``o``: ``{R: unsigned(R_WIDTH), k: unsigned(width_for(K_MAX)), sp: unsigned(SP_WIDTH)}``; ``P = 0`` gives
      ``R = 0, k = 0, sp = 0`` (all codes zero). :class:`Codes` takes all three.
    """

    IN = _layout(P=unsigned(PMAX_WIDTH))
    OUT = _layout(R=unsigned(R_WIDTH), k=unsigned(width_for(K_MAX)), sp=unsigned(SP_WIDTH))

    def __init__(self, pipelined: bool = False):
        self.pipelined = _pipelined_arg(self, pipelined)
        super().__init__({"i": In(stream.Signature(self.IN)), "o": Out(stream.Signature(self.OUT))})

    def elaborate(self, platform):
        m = Module()
        W = PC_WIDTH
        P = Signal(PMAX_WIDTH)
        sp = Signal(SP_WIDTH)
        pc = Signal(W)
        pn = Signal(W)
        rem = Signal(W + 1)
        q = Signal(R_WIDTH)
        k = Signal(width_for(K_MAX))
        count = Signal(range(R_WIDTH + 1))
        blp = Signal(width_for(PMAX_WIDTH))
        bl = Signal(width_for(W))
        blr = Signal(width_for(W))
        blpr = Signal(width_for(PMAX_WIDTH))
        m.d.comb += [blp.eq(blpr if self.pipelined else bitlen(P)), bl.eq(blr if self.pipelined else bitlen(pc))]
        nzP_new, gP_new = bitlen_groups(P)      # pipelined: the two-step bitlens' group registers
        nzc_new, gc_new = bitlen_groups(pc)
        nzP = Signal(len(nzP_new))
        nzc = Signal(len(nzc_new))
        hitP = Signal(len(nzP_new))     # the one-hot "highest nonzero byte", registered before the pick
        hitc = Signal(len(nzc_new))
        gP = [Signal(len(g)) for g in gP_new]
        gc = [Signal(len(g)) for g in gc_new]
        nshr = Signal(width_for(W))       # pipelined: W - bitlen(pc), registered
        nsh = nshr if self.pipelined else (W - bl).as_unsigned()[:width_for(W)]
        Ph = Signal(PMAX_WIDTH + 1)       # pipelined: P + 2**(sp-1), registered (rshift_round's add)
        half_sp = (Const(1, SP_MAX + 1) << sp)[:SP_MAX + 1] >> 1
        sp_new = Mux(blp > N.P_CODE_BITS, blp - N.P_CODE_BITS, 0)[:SP_WIDTH]
        rem2 = Signal(W + 2)
        m.d.comb += rem2.eq(rem << 1)
        # pipelined: the compare is the borrow of the subtraction (one carry chain, not a compare beside it)
        diff = Signal(W + 3)
        if self.pipelined:
            m.d.comb += diff.eq(rem2 - pn)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += P.eq(self.i.payload.P)
                    m.next = "GROUPS_P" if self.pipelined else "REDUCE"
            if self.pipelined:       # bitlen(P), sp, the shift and bitlen(pc) each in their own cycle
                with m.State("GROUPS_P"):       # bitlen(P) in two steps: per byte, then the pick
                    m.d.sync += [nzP.eq(nzP_new)] + [r.eq(g) for r, g in zip(gP, gP_new)]
                    m.next = "HITS_P"
                with m.State("HITS_P"):
                    m.d.sync += hitP.eq(Cat(*bitlen_hits(nzP)))
                    m.next = "BITLEN_P"
                with m.State("BITLEN_P"):
                    m.d.sync += blpr.eq(bitlen_pick(hitP, gP, tree=True))
                    m.next = "REDUCE"
                with m.State("REDUCE"):
                    m.d.sync += sp.eq(sp_new)
                    m.next = "ROUND"
                with m.State("ROUND"):     # rshift_round as its add, then its shift
                    m.d.sync += Ph.eq(P + half_sp)
                    m.next = "SHIFT"
                with m.State("SHIFT"):
                    m.d.sync += pc.eq((Ph >> sp)[:W])
                    m.next = "GROUPS"
                with m.State("GROUPS"):         # bitlen(pc) in two steps, as bitlen(P)
                    m.d.sync += [nzc.eq(nzc_new)] + [r.eq(g) for r, g in zip(gc, gc_new)]
                    m.next = "HITS"
                with m.State("HITS"):
                    m.d.sync += hitc.eq(Cat(*bitlen_hits(nzc)))
                    m.next = "BITLEN"
                with m.State("BITLEN"):
                    m.d.sync += blr.eq(bitlen_pick(hitc, gc, tree=True))
                    m.next = "NSH"
                with m.State("NSH"):       # the normalising shift amount, registered before the shift
                    m.d.sync += nshr.eq((W - blr).as_unsigned()[:width_for(W)])
                    m.next = "NORM"
            else:
                with m.State("REDUCE"):
                    m.d.sync += [sp.eq(sp_new), pc.eq(rshift_round(P, sp_new, SP_MAX)[:W])]
                    m.next = "NORM"
            with m.State("NORM"):
                with m.If(pc == 0):
                    m.d.sync += [q.eq(0), k.eq(0)]
                    m.next = "DONE"
                with m.Else():
                    m.d.sync += [
                        pn.eq((pc << nsh)[:W]),
                        k.eq(bl + N.RECIP_EXTRA),
                        # numerator 127 << (W + RECIP_EXTRA): its low R_WIDTH bits are zeros
                        rem.eq(N.CODE_MAX << (W + N.RECIP_EXTRA - R_WIDTH)),
                        q.eq(0),
                        count.eq(R_WIDTH),
                    ]
                    m.next = "DIV"
            with m.State("DIV"):
                with m.If(~diff[W + 2] if self.pipelined else rem2 >= pn):
                    m.d.sync += [rem.eq(diff[:W + 1] if self.pipelined else rem2 - pn), q.eq(_shl1(q, 1))]
                with m.Else():
                    m.d.sync += [rem.eq(rem2), q.eq(_shl1(q, 0))]
                m.d.sync += count.eq(count - 1)
                with m.If(count == 1):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.R.eq(q), self.o.payload.k.eq(k),
                             self.o.payload.sp.eq(sp)]
                with m.If(self.o.ready):
                    m.next = "IDLE"
        return m


class Codes(wiring.Component):
    """Pass 3 of the quantizer, per element (:func:`numerics.codes_from` given the reciprocal):
    ``p' = rshift_round(p, sp)``, ``q = sign(p') * min(127, (|p'| * R + 2**(k-1)) >> k)``.

    * ``i``: ``{p: signed(P_WIDTH), R: unsigned(R_WIDTH), k: unsigned(width_for(K_MAX)), last,
      sp: unsigned(SP_WIDTH)}`` with ``R, k, sp`` from :class:`Reciprocal` for this vector's ``P``
      (``|p| <= P``);
    * ``o``: ``{q: signed(8), last}``. One (P_CODE_BITS + 1) x R_WIDTH multiply.
    """

    IN = _layout(p=signed(P_WIDTH), R=unsigned(R_WIDTH), k=unsigned(width_for(K_MAX)), last=1,
                 sp=unsigned(SP_WIDTH))
    OUT = _layout(q=signed(8), last=1)

    def __init__(self, pipelined: bool = False):
        self.pipelined = _pipelined_arg(self, pipelined)
        super().__init__({"i": In(stream.Signature(self.IN)), "o": Out(stream.Signature(self.OUT))})

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o)
        for f in ("p", "R", "k", "sp", "last"):
            p[f] = getattr(self.i.payload, f)
        p.next()
        # |p| <= P gives |p'| <= P' <= 2**P_CODE_BITS: PC_WIDTH + 1 bits signed
        split = self.pipelined
        p.shift_round("pcr", "p", "sp", SP_MAX, split)
        p["pc"] = p["pcr"][:PC_WIDTH + 1].as_signed()
        p.next()
        p["neg"] = p["pc"] < 0
        p["ap"] = absval(p["pc"])[:PC_WIDTH]
        p.next()
        p.multiply("prod", p["ap"], p["R"], split)
        p.next()
        p.shift_round("mag", "prod", "k", K_MAX, split)
        p.next()
        mag = Mux(p["mag"] > N.CODE_MAX, N.CODE_MAX, p["mag"][:8])
        p["q"] = Mux(p["neg"], -mag, mag)[:8].as_signed()
        p.next()
        p.finish(q=p["q"], last=p["last"])
        return m


class CodesFromP(wiring.Component):
    """Pass 3 as one unit: :func:`numerics.codes_from` per element from ``p`` and its vector's ``P``.

    The first element of every vector (the one after a ``last``) waits for :class:`Reciprocal`
    (``R_WIDTH + 5`` cycles); the rest stream at one element per cycle through :class:`Codes`.
    ``P`` must be the same on every element of a vector. A top that wants no bubble runs
    :class:`Reciprocal` ahead of time (at the end of pass 2) and feeds :class:`Codes` itself.

    * ``i``: ``{p: signed(P_WIDTH), P: unsigned(PMAX_WIDTH), last}``; ``o``: ``{q: signed(8), last}``.
    """

    IN = _layout(p=signed(P_WIDTH), P=unsigned(PMAX_WIDTH), last=1)
    OUT = Codes.OUT

    def __init__(self, pipelined: bool = False):
        self.pipelined = _pipelined_arg(self, pipelined)
        super().__init__({"i": In(stream.Signature(self.IN)), "o": Out(stream.Signature(self.OUT))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.recip = recip = Reciprocal(self.pipelined)
        m.submodules.codes = codes = Codes(self.pipelined)
        have = Signal()
        asked = Signal()
        R = Signal(R_WIDTH)
        k = Signal(width_for(K_MAX))
        sp = Signal(SP_WIDTH)
        m.d.comb += [
            recip.i.payload.P.eq(self.i.payload.P),
            recip.i.valid.eq(self.i.valid & ~have & ~asked),
            recip.o.ready.eq(1),
            codes.i.valid.eq(self.i.valid & have),
            codes.i.payload.p.eq(self.i.payload.p),
            codes.i.payload.last.eq(self.i.payload.last),
            codes.i.payload.R.eq(R),
            codes.i.payload.k.eq(k),
            codes.i.payload.sp.eq(sp),
            self.i.ready.eq(have & codes.i.ready),
        ]
        with m.If(recip.i.valid & recip.i.ready):
            m.d.sync += asked.eq(1)
        with m.If(recip.o.valid):
            m.d.sync += [R.eq(recip.o.payload.R), k.eq(recip.o.payload.k), sp.eq(recip.o.payload.sp),
                         have.eq(1), asked.eq(0)]
        with m.If(self.i.valid & self.i.ready & self.i.payload.last):
            m.d.sync += have.eq(0)
        wiring.connect(m, codes.o, wiring.flipped(self.o))
        return m


class OutputMultiplier(wiring.Component):
    """Per-token output multiplier of a BitLinear: :func:`numerics.output_multiplier` (with
    :func:`numerics.rsqrt`: its table :func:`numerics.rsqrt_table` in a dual-port ROM, linear
    interpolation, one Newton step), pipelined, one token per cycle.

    * ``i``: ``{S: unsigned(S_WIDTH), P: unsigned(PMAX_WIDTH), c_m: unsigned(M_BITS), c_e: signed(8),
      sz: unsigned(SZ_WIDTH)}`` with ``(S, sz)`` of :func:`numerics.sum_squares` (:class:`QuantStats`)
      and ``c_m`` in [2**(M_BITS-1), 2**M_BITS) (the export's per-BitLinear constant);
    * ``o``: ``{M: unsigned(M_BITS + 1), shift: signed(10)}``; ``P == 0`` or ``S == 0`` gives
      ``M = 0, shift = 0``.
    """

    IN = _layout(S=unsigned(S_WIDTH), P=unsigned(PMAX_WIDTH), c_m=unsigned(CM_WIDTH), c_e=signed(CE_WIDTH),
                 sz=unsigned(SZ_WIDTH))
    OUT = _layout(M=unsigned(MULT_WIDTH), shift=signed(SHIFT_WIDTH))
    #: rsqrt normalises S to SN_BITS bits; the top RSQRT_INDEX_BITS index the table, the rest interpolate.
    SN_BITS = 32
    FRAC_BITS = SN_BITS - N.RSQRT_INDEX_BITS
    #: Table values rsqrt(m) in Q2.30 for m in [1/4, 1]: at most 2**31.
    R_BITS = N.RSQRT_FRAC + 2

    def __init__(self, pipelined: bool = False):
        self.pipelined = _pipelined_arg(self, pipelined)
        super().__init__({"i": In(stream.Signature(self.IN)), "o": Out(stream.Signature(self.OUT))})

    def elaborate(self, platform):
        m = Module()
        table = [int(v) for v in N.rsqrt_table()]
        RB, F = self.R_BITS, N.RSQRT_FRAC
        m.submodules.rom = rom = Memory(shape=unsigned(RB), depth=len(table), init=table, attrs=ROM_ATTRS)
        rp0, rp1 = rom.read_port(), rom.read_port()
        SN, FR = self.SN_BITS, self.FRAC_BITS
        p = Pipeline(m, self.i, self.o)
        S, P = self.i.payload.S, self.i.payload.P
        p["ok"] = (S != 0) & (P != 0)
        p["S"] = Mux(p["ok"], S, 1 << (SN - 1))
        p["P"] = Mux(p["ok"], P, 1)
        p["c_m"] = self.i.payload.c_m
        p["c_e"] = self.i.payload.c_e
        p["sz"] = self.i.payload.sz
        p.next()
        split = self.pipelined
        # rsqrt: k = floor((bitlen(S) - 31) / 2); Sn = S >> 2k (or << -2k) has 31 or 32 bits
        p.bitlen("blS", "S", split, hit_stage=split)
        p.bitlen("pb", "P", split, hit_stage=split)
        p["k"] = ((to_signed(p["blS"]) - (SN - 1)) >> 1)[:6].as_signed()
        pb = p["pb"]
        p["ps"] = Mux(pb > N.P_BITS, pb - N.P_BITS, 0)[:6]
        p.next()
        k2 = p["k"] * 2
        p["left"] = Mux(p["k"] < 0, -k2, 0)[:6]
        p["right"] = Mux(p["k"] < 0, 0, k2)[:6]
        if split:     # one of the shifts is 0: both in parallel, each in two 3-bit steps, then pick
            p.next()
            p["Sl1"] = (p["S"] << (p["left"] & 0b111000))[:SN]
            p["Sr1"] = p["S"] >> (p["right"] & 0b111000)
            p.next()
            p["Sl"] = (p["Sl1"] << p["left"][:3])[:SN]
            p["Sr"] = (p["Sr1"] >> p["right"][:3])[:SN]
            p.next()
            p["Sn"] = Mux(p["k"] < 0, p["Sl"], p["Sr"])
        else:
            p["Sn"] = ((p["S"] << p["left"]) >> p["right"])[:SN]
        p.shift_round("Prr", "P", "ps", PMAX_WIDTH, split)
        p["Pr"] = p["Prr"][:N.P_BITS + 1]
        p.next()
        j = p["Sn"][FR:SN] - N.RSQRT_FIRST
        p.read(rp0, j, "t0")
        p.read(rp1, j + 1, "t1")
        p["frac"] = p["Sn"][:FR]
        if split:     # the exponent terms known so far, summed early (two adds per stage)
            p["pre1"] = (N.RSQRT_FRAC + p["k"] + p["sz"])[:SHIFT_WIDTH + 2].as_signed()
        p.next()
        if split:
            p["pre"] = (p["pre1"] - p["ps"] - p["c_e"])[:SHIFT_WIDTH + 2].as_signed()
        p["dt"] = (p["t0"] - p["t1"])[:RB]
        p.stage(split)
        p.multiply("prod", p["dt"], p["frac"], split)
        p.next()
        p["r0"] = (p["t0"] - (p["prod"] >> FR))[:RB]
        p.next()
        # one Newton step: t = r0**2 >> 30; v = ((Sn >> 2) * t) >> 30; r = (r0 * (3 * 2**30 - v)) >> 31.
        # r0 is within 3e-6 of rsqrt, so v stays within 1e-5 of 2**30 and 3 * 2**30 - v is positive.
        p.multiply("r0sq", p["r0"], p["r0"], split)
        p["t"] = p["r0sq"] >> F
        p.next()
        p.multiply("vp", p["Sn"] >> 2, p["t"], split)
        p.next()
        p["d"] = (Const(3 << F, F + 2) - (p["vp"] >> F))[:F + 2]
        p.next()
        p.multiply("rp", p["r0"], p["d"], split)
        p.next()
        p["r"] = (p["rp"] >> (F + 1))[:RB]
        p.next()
        p.multiply("cr", p["c_m"], p["r"], split)
        p.next()
        p["b"] = rshift_round(p["cr"], N.M_BITS)[:RB + 1]
        p.next()
        p.multiply("mm", p["b"], p["Pr"], split)
        p.next()
        p.bitlen("em", "mm", split, hit_stage=split)
        p.next()
        p["sh"] = (p["em"] - N.M_BITS)[:7]
        if split:
            p["shift"] = (p["pre"] - p["em"])[:SHIFT_WIDTH].as_signed()
        else:
            p["shift"] = (N.RSQRT_FRAC + p["k"] + p["sz"] - p["em"] - p["ps"] - p["c_e"])[:SHIFT_WIDTH].as_signed()
        p.stage(split)
        p.shift_round("Mr", "mm", "sh", len(p["mm"]), split)
        p["M"] = p["Mr"][:MULT_WIDTH]
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

    def __init__(self, pipelined: bool = False):
        self.pipelined = _pipelined_arg(self, pipelined)
        super().__init__({"i": In(stream.Signature(self.IN)), "o": Out(stream.Signature(self.OUT))})

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o)
        for f in ("acc", "M", "shift", "last"):
            p[f] = getattr(self.i.payload, f)
        p.next()
        split = self.pipelined
        sh = p["shift"]
        p["neg"] = sh < 0
        p["rs"] = Mux(sh > self.RIGHT_MAX, self.RIGHT_MAX, Mux(sh < 0, 0, sh))[:width_for(self.RIGHT_MAX)]
        p["ls"] = Mux(-sh > 32, 32, Mux(sh < 0, -sh, 0))[:6]
        p.multiply("v", p["acc"], p["M"], split)
        p.next()
        # v * 2**ls for ls <= 32: place v 32 bits up, shift back arithmetically by 32 - ls
        p["lsh"] = Cat(Const(0, 32), p["v"]).as_signed() >> (32 - p["ls"])[:6]
        p.shift_round("rsh", "v", "rs", self.RIGHT_MAX, split)
        p.stage(split)
        p["right"] = saturate(p["rsh"])
        p["left"] = saturate(p["lsh"])
        p.next()
        p.finish(y=Mux(p["neg"], p["left"], p["right"]), last=p["last"])
        return m
