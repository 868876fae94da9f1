"""Element-wise units of the MLGRU/GLU datapath: sigmoid, SiLU, the forget rate, the recurrence update,
the gated product, the residual add, and the greedy argmax.

All are pipelined stream units (one element per cycle at steady state, see
:class:`mmfree.rtl.pipeline.Pipeline`) with an input stream ``i`` and an output stream ``o``; every
payload carries a ``last`` bit that marks the end of a vector and is passed through unchanged.
The sigmoid-based units share one design: the tail table :func:`numerics.sigmoid_tail_table`
(``SIG_ENTRIES`` = 4097 entries of 31 bits) read at ``i`` and ``i + 1`` in the same cycle, and one
31 x (frac - SIG_STEPS_LOG2) interpolation multiply (:func:`numerics.sigmoid_tail`). The index ``i`` never
exceeds ``SIG_ENTRIES - 2``, so the ROM holds the first ``SIG_ENTRIES - 1`` = 4096 entries (a power of
two: 4 RAMB36 as a dual-port ROM instead of 8 for 4097 words) and the end point ``E[4096]``, read only as
``E[i + 1]`` for the last interval, is a constant selected by a register. Activations are int32 fixed point
Q(frac) with a per-model ``frac`` in [FRAC_MIN, FRAC_MAX]; the sigmoid-based units take ``frac`` in the
payload (``unsigned(5)``, constant in practice, but carried per element so that back-to-back operations
on different formats never mix).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from mmfree.pymodel import numerics as N
from mmfree.rtl.pipeline import ROM_ATTRS, Pipeline, absval, check_int, rshift_round, saturate, width_for

#: Activations: int32 fixed point Q(frac).
ACT = signed(32)
#: Q0.31 gate values 0..2**31 (one more bit than the fraction so that 1.0 is representable).
Q31 = unsigned(N.SIG_FRAC + 1)
#: A product of two activations: the input of o_proj and down_proj (|u| <= 2**62).
PRODUCT = signed(64)
#: The fractional bits of an activation: FRAC_MIN..FRAC_MAX (numerics).
FRAC = unsigned(width_for(N.FRAC_MAX))


def _layout(**fields) -> data.StructLayout:
    return data.StructLayout(fields)


def _pipelined_arg(owner, pipelined) -> bool:
    """Validate the ``pipelined`` constructor argument: ``False`` (the latency the datapath and the cycle model
    assume) or ``True`` (multiplies split into DSP-sized registered pieces, shifts and adds in their own
    stages: more latency, shorter paths; docs/rtl.md "Timing")."""
    if not isinstance(pipelined, bool):
        owner._MustUse__silence = True
        raise ValueError(f"pipelined must be True or False, got {pipelined!r}")
    return pipelined


def _stream_ports(self, inl, outl):
    wiring.Component.__init__(self, {"i": In(stream.Signature(inl)), "o": Out(stream.Signature(outl))})


def sigmoid_tail_stages(m: Module, p: Pipeline, a: str, out: str, name: str, frac: str = "frac",
                        pipelined: bool = False) -> None:
    """Add the stages of :func:`numerics.sigmoid_tail` to pipeline ``p``: ``p[out] = E(p[a])`` for the
    unsigned magnitude ``p[a]`` in Q(``p[frac]``); values at or above 16.0 use the last interval.
    Takes 4 stages (``pipelined``: more, with the limit, the index, the ROM data, the difference, the split
    multiply and the shift each registered); the ROM ``name`` becomes a submodule of ``m``.
    """
    table = [int(v) for v in N.sigmoid_tail_table()]
    body, end = table[:-1], table[-1]          # the index is at most len(table) - 2: body[i], body[i + 1] or end
    rom = Memory(shape=unsigned(N.SIG_FRAC), depth=len(body), init=body, attrs=ROM_ATTRS)
    m.submodules[name] = rom
    rp0, rp1 = rom.read_port(), rom.read_port()
    aw = len(p[a])
    limit = (Const(N.SIG_RANGE, width_for(N.SIG_RANGE)) << p[frac])
    if pipelined:             # the limit (a shift) registered before the compare
        p[f"{name}_lim"] = limit
        p.next()
        limit = p[f"{name}_lim"]
    p[f"{name}_ac"] = Mux(p[a] >= limit, limit - 1, p[a])[:aw]
    p[f"{name}_t"] = (p[frac] - N.SIG_STEPS_LOG2)[:len(p[frac])]
    p.next()
    t = p[f"{name}_t"]
    iw = width_for(len(body) - 1)
    tmax = N.FRAC_MAX - N.SIG_STEPS_LOG2
    if pipelined:             # index and fraction registered; the mask 2**t - 1 as a thermometer code
        p[f"{name}_idx"] = (p[f"{name}_ac"] >> t)[:iw]
        p[f"{name}_f"] = (p[f"{name}_ac"] & Cat(*[t > j for j in range(tmax)]))[:tmax]
        p.next()
        idx = p[f"{name}_idx"]
    else:
        idx = (p[f"{name}_ac"] >> t)[:iw]
        p[f"{name}_f"] = (p[f"{name}_ac"] & ((Const(1, tmax + 1) << t) - 1))[:tmax]
    p.read(rp0, idx, f"{name}_e0")
    p.read(rp1, (idx + 1)[:iw], f"{name}_b1")
    p[f"{name}_end"] = idx == len(body) - 1
    p.next()
    p.stage(pipelined)        # the block RAM's output registered before any logic
    e0 = p[f"{name}_e0"]
    e1 = Mux(p[f"{name}_end"], end, p[f"{name}_b1"])
    p[f"{name}_diff"] = (e0 - e1)[:N.SIG_FRAC]
    if pipelined:
        p.next()
    p.multiply(f"{name}_prod", p[f"{name}_diff"], p[f"{name}_f"], split=pipelined)
    p.next()
    p[f"{name}_sh"] = p[f"{name}_prod"] >> p[f"{name}_t"]
    if pipelined:
        p.next()
    p[out] = (p[f"{name}_e0"] - p[f"{name}_sh"])[:N.SIG_FRAC]
    p.next()


def sigmoid_stages(m: Module, p: Pipeline, x: str, out: str, name: str, negate: bool = False,
                   pipelined: bool = False) -> None:
    """``p[out] = sigmoid_q31(p[x], frac)`` (or, with ``negate``, the ``sigmoid(-x)`` of
    :func:`numerics.forget_rate`): ``E(|x|)`` on one side of zero, ``2**31 - E(|x|)`` on the other."""
    p[f"{name}_a"] = absval(p[x])
    p[f"{name}_pos"] = p[x] >= 0
    if pipelined:
        p.next()
    sigmoid_tail_stages(m, p, f"{name}_a", f"{name}_e", name, pipelined=pipelined)
    e = p[f"{name}_e"]
    flip = ~p[f"{name}_pos"] if negate else p[f"{name}_pos"]
    p[out] = Mux(flip, N.ONE_Q31 - e, e)[:Q31.width]


def silu_stages(m: Module, p: Pipeline, x: str, out: str, name: str, pipelined: bool = False) -> None:
    """``p[out] = silu(p[x], frac) = rshift_round(x * sigmoid_q31(x), 31)`` (int32)."""
    sigmoid_stages(m, p, x, f"{name}_sig", name, pipelined=pipelined)
    p.next()
    p.multiply(f"{name}_xs", p[x], p[f"{name}_sig"], split=pipelined)
    p.next()
    p[out] = rshift_round(p[f"{name}_xs"], N.SIG_FRAC)[:32].as_signed()


class Sigmoid(wiring.Component):
    """:func:`numerics.sigmoid_q31`. ``i``: ``{x: signed(32), frac, last}``; ``o``: ``{y: unsigned(32) Q0.31, last}``."""

    IN = _layout(x=ACT, frac=FRAC, last=1)
    OUT = _layout(y=Q31, last=1)

    def __init__(self, pipelined: bool = False):
        self.pipelined = _pipelined_arg(self, pipelined)
        _stream_ports(self, self.IN, self.OUT)

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o)
        p["x"], p["frac"], p["last"] = self.i.payload.x, self.i.payload.frac, self.i.payload.last
        sigmoid_stages(m, p, "x", "y", "sig", pipelined=self.pipelined)
        p.next()
        p.finish(y=p["y"], last=p["last"])
        return m


class Silu(wiring.Component):
    """:func:`numerics.silu`. ``i``: ``{x: signed(32), frac, last}``; ``o``: ``{y: signed(32), last}``."""

    IN = _layout(x=ACT, frac=FRAC, last=1)
    OUT = _layout(y=ACT, last=1)

    def __init__(self, pipelined: bool = False):
        self.pipelined = _pipelined_arg(self, pipelined)
        _stream_ports(self, self.IN, self.OUT)

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o)
        p["x"], p["frac"], p["last"] = self.i.payload.x, self.i.payload.frac, self.i.payload.last
        silu_stages(m, p, "x", "y", "silu", pipelined=self.pipelined)
        p.next()
        p.finish(y=p["y"], last=p["last"])
        return m


class ForgetRate(wiring.Component):
    """The MLGRU gate with its lower bound, :func:`numerics.forget_rate`:
    ``g = rshift_round((1 - lb) * sigmoid(-f), 31)`` in Q0.31.

    ``i``: ``{f: signed(32), one_minus_lb: unsigned(32) (Q0.31, <= 2**31), frac, last}``;
    ``o``: ``{g: unsigned(32), last}``.
    """

    IN = _layout(f=ACT, one_minus_lb=Q31, frac=FRAC, last=1)
    OUT = _layout(g=Q31, last=1)

    def __init__(self, pipelined: bool = False):
        self.pipelined = _pipelined_arg(self, pipelined)
        _stream_ports(self, self.IN, self.OUT)

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o)
        p["f"], p["oml"], p["last"] = self.i.payload.f, self.i.payload.one_minus_lb, self.i.payload.last
        p["frac"] = self.i.payload.frac
        sigmoid_stages(m, p, "f", "s", "sig", negate=True, pipelined=self.pipelined)
        p.next()
        p.multiply("prod", p["oml"], p["s"], split=self.pipelined)
        p.next()
        p["g"] = rshift_round(p["prod"], N.SIG_FRAC)[:Q31.width]
        if self.pipelined:
            p.next()
        p.finish(g=p["g"], last=p["last"])
        return m


class HgrnUpdate(wiring.Component):
    """The MLGRU step, :func:`numerics.hgrn_update`: ``h' = sat(h + rshift_round(g * (s - h), 31))``.

    ``i``: ``{h: signed(32), s: signed(32), g: unsigned(32) Q0.31, last}`` (``s = silu(i)``,
    ``g`` = :class:`ForgetRate`); ``o``: ``{h: signed(32), last}``.
    """

    IN = _layout(h=ACT, s=ACT, g=Q31, last=1)
    OUT = _layout(h=ACT, last=1)

    def __init__(self, pipelined: bool = False):
        self.pipelined = _pipelined_arg(self, pipelined)
        _stream_ports(self, self.IN, self.OUT)

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o)
        for f in ("h", "s", "g", "last"):
            p[f] = getattr(self.i.payload, f)
        p.next()
        p["d"] = p["s"] - p["h"]
        p.next()
        _update_tail(p, self.pipelined)
        return m


def _update_tail(p: Pipeline, pipelined: bool) -> None:
    """``h' = saturate(h + rshift_round(g * d, 31))`` from ``p["g"], p["d"], p["h"]`` to the output."""
    p.multiply("prod", p["g"], p["d"], split=pipelined)
    p.next()
    p["t"] = rshift_round(p["prod"], N.SIG_FRAC)
    p.next()
    p["hs"] = p["h"] + p["t"]
    if pipelined:
        p.next()
    p.finish(h=saturate(p["hs"]), last=p["last"])


class MlgruUpdate(wiring.Component):
    """The whole recurrence of one channel in one pipeline:
    ``h' = hgrn_update(h, silu(i), forget_rate(f, one_minus_lb))`` (two sigmoid ROMs, four multiplies).

    ``i``: ``{h, i, f: signed(32), one_minus_lb: unsigned(32) Q0.31, frac, last}``; ``o``: ``{h: signed(32), last}``.
    """

    IN = _layout(h=ACT, i=ACT, f=ACT, one_minus_lb=Q31, frac=FRAC, last=1)
    OUT = _layout(h=ACT, last=1)

    def __init__(self, pipelined: bool = False):
        self.pipelined = _pipelined_arg(self, pipelined)
        _stream_ports(self, self.IN, self.OUT)

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o)
        for f in ("h", "i", "f", "one_minus_lb", "frac", "last"):
            p[f] = getattr(self.i.payload, f)
        p["fa"] = absval(p["f"])
        p["fpos"] = p["f"] >= 0
        # two table look-ups (two ROMs), one after the other: simple, a few more registers
        sigmoid_stages(m, p, "i", "isig", "isig", pipelined=self.pipelined)
        sigmoid_tail_stages(m, p, "fa", "fe", "fsig", pipelined=self.pipelined)
        p["rate_s"] = Mux(p["fpos"], p["fe"], N.ONE_Q31 - p["fe"])[:Q31.width]
        if self.pipelined:     # the two products of the gate, each split, one after the other
            p.next()
            p.multiply("xs", p["i"], p["isig"], split=True)
            p.next()
            p["s"] = rshift_round(p["xs"], N.SIG_FRAC)[:32].as_signed()
            p.multiply("rprod", p["one_minus_lb"], p["rate_s"], split=True)
        else:
            p["xs"] = p["i"] * p["isig"]
            p.next()
            p["s"] = rshift_round(p["xs"], N.SIG_FRAC)[:32].as_signed()
            p["rprod"] = p["one_minus_lb"] * p["rate_s"]
        p.next()
        p["g"] = rshift_round(p["rprod"], N.SIG_FRAC)[:Q31.width]
        p["d"] = p["s"] - p["h"]
        p.next()
        _update_tail(p, self.pipelined)
        return m


class GatedProduct(wiring.Component):
    """``u = a * silu(b)`` kept at full precision (:func:`numerics.mul_act`): the o_proj input
    ``g * silu(h)`` and the down_proj input ``silu(gate) * up`` (``a = up, b = gate``).

    ``i``: ``{a: signed(32), b: signed(32), frac, last}`` (``frac``: b's format); ``o``: ``{u: signed(64), last}``.
    """

    IN = _layout(a=ACT, b=ACT, frac=FRAC, last=1)
    OUT = _layout(u=PRODUCT, last=1)

    def __init__(self, pipelined: bool = False):
        self.pipelined = _pipelined_arg(self, pipelined)
        _stream_ports(self, self.IN, self.OUT)

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o)
        p["a"], p["b"], p["last"] = self.i.payload.a, self.i.payload.b, self.i.payload.last
        p["frac"] = self.i.payload.frac
        silu_stages(m, p, "b", "sb", "silu", pipelined=self.pipelined)
        p.next()
        p.multiply("ab", p["a"], p["sb"], split=self.pipelined)
        p["u"] = p["ab"][:64].as_signed()
        p.next()
        p.finish(u=p["u"], last=p["last"])
        return m


class ResidualAdd(wiring.Component):
    """``z = saturate(x + y)`` to int32 (the residual adds). ``i``: ``{x, y: signed(32), last}``;
    ``o``: ``{z: signed(32), last}``."""

    IN = _layout(x=ACT, y=ACT, last=1)
    OUT = _layout(z=ACT, last=1)

    def __init__(self):
        _stream_ports(self, self.IN, self.OUT)

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o)
        p["z"] = saturate(self.i.payload.x + self.i.payload.y)
        p["last"] = self.i.payload.last
        p.next()
        p.finish(z=p["z"], last=p["last"])
        return m


class Argmax(wiring.Component):
    """Greedy decoding, :func:`numerics.argmax`: index of the largest logit, lowest index on ties.

    ``i``: ``{x: signed(32), last}``, one element per cycle; ``o``: ``{index, value}`` once per vector
    (after its ``last`` element). ``max_len``: the longest vector (the vocabulary), sets the index width.
    """

    def __init__(self, max_len: int = 1 << 17):
        check_int(self, "max_len", max_len, "an integer >= 1", lambda v: v >= 1)
        self.max_len = max_len
        self.IN = _layout(x=ACT, last=1)
        self.OUT = _layout(index=unsigned(width_for(max_len - 1)), value=ACT)
        _stream_ports(self, self.IN, self.OUT)

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o)
        p["x"], p["last"] = self.i.payload.x, self.i.payload.last
        p.next()
        iw = width_for(self.max_len - 1)
        count = Signal(iw)
        best = Signal(ACT)
        best_i = Signal(iw)
        first = Signal(init=1)
        take = first | (p["x"] > best)
        val = Mux(take, p["x"], best)
        idx = Mux(take, count, best_i)
        with m.If(p.fire):
            m.d.sync += [best.eq(val), best_i.eq(idx), count.eq(Mux(p["last"], 0, count + 1)), first.eq(p["last"])]
        p["value"], p["index"] = val, idx
        p.next()
        p.finish(when=p["last"], index=p["index"], value=p["value"])
        return m
